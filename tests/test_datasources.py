"""Image folders and Hugging Face datasets as calibration / evaluation data (onnxprune.datasources), in Python and
from the CLI: labels from sorted class folders, preprocessing, lazy batches, clear errors naming the file."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from PIL import Image

import onnxprune as op
from onnxprune import calibration, datasources
from onnxprune.cli import main
from onnxprune.errors import InvalidDataError
from tests.graphs import GraphBuilder

CLASSES = ("cat", "dog", "eel", "fox")
SIZE = 32


def small_classifier(channels: int = 3, layout: str = "NCHW") -> onnx.ModelProto:
    """Conv(3->8) -> Relu -> Conv(8->8) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(8->4): (N, 3, 32, 32) in."""
    g = GraphBuilder()
    x = "x"
    if layout == "NHWC":
        x = g.node("Transpose", ["x"], name="to_nchw", perm=[0, 3, 1, 2])
    h = g.node("Relu", [g.conv(x, channels, 8, "conv1")], name="relu1")
    h = g.node("Relu", [g.conv(h, 8, 8, "conv2")], name="relu2")
    h = g.node("Flatten", [g.node("GlobalAveragePool", [h], name="gap")], name="flat")
    g.node("Gemm", [h, g.const("fc.weight", (len(CLASSES), 8)), g.const("fc.bias", (len(CLASSES),))], name="fc", transB=1)
    g.nodes[-1].output[0] = "logits"
    shape = ("N", channels, SIZE, SIZE) if layout == "NCHW" else ("N", SIZE, SIZE, channels)
    return g.model({"x": shape}, {"logits": ("N", len(CLASSES))})


def make_folder(root, per_class: int = 60, size: int = SIZE) -> str:
    """`per_class` JPEGs per class: noise around a class colour, so the classes differ."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        os.makedirs(root / name)
        colour = np.array([60 * label, 255 - 60 * label, 40 + 50 * label])
        for k in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k:03d}.jpg", quality=90)
    return str(root)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "classifier.onnx"
    onnx.save(small_classifier(), path)
    return str(path)


# --------------------------------------------------------------------------- Python

def test_labels_follow_sorted_class_folders_and_batches_are_lazy(folder, monkeypatch):
    data = op.ImageFolder(folder)
    assert data.classes == list(CLASSES) and len(data) == 240
    assert data.samples[0] == (os.path.join(folder, "cat", "000.jpg"), 0)
    specs = calibration.input_specs(small_classifier())
    pairs = data.pairs(specs, 100)
    loaded = []
    real_load = datasources.Pipeline.load
    monkeypatch.setattr(datasources.Pipeline, "load", lambda self, path: loaded.append(path) or real_load(self, path))
    feed, labels = next(pairs)
    assert len(loaded) == 100  # one batch decoded; the rest not yet
    assert feed["x"].shape == (100, 3, SIZE, SIZE) and feed["x"].dtype == np.float32
    assert labels.tolist() == [0] * 60 + [1] * 40
    assert [len(y) for _, y in pairs] == [100, 40]
    assert 0.0 <= feed["x"].min() and feed["x"].max() <= 1.0  # default: pixels / 255


def test_preprocessing_matches_a_hand_computation(tmp_path):
    root = tmp_path / "one"
    os.makedirs(root / "a")
    pixels = np.random.default_rng(1).integers(0, 256, (40, 50, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(root / "a" / "p.png")
    spec = calibration.InputSpec("x", ("N", 3, 32, 32), np.dtype(np.float32))
    pre = op.Preprocess.preset("imagenet", resize=36, crop=32)
    (feed, labels), = op.ImageFolder(root, pre).pairs([spec], 8)
    resized = Image.fromarray(pixels).resize((45, 36), Image.BILINEAR)  # shorter side 40 -> 36, aspect kept
    top, left = 2, round((45 - 32) / 2)
    expected = np.asarray(resized)[top:top + 32, left:left + 32] / 255.0
    expected = ((expected - datasources.IMAGENET_MEAN) / datasources.IMAGENET_STD).transpose(2, 0, 1)
    np.testing.assert_allclose(feed["x"][0], expected, atol=1e-5)
    assert labels.tolist() == [0]
    nhwc = calibration.InputSpec("x", (1, 32, 32, 1), np.dtype(np.float16))
    (feed, _), = op.ImageFolder(root, op.Preprocess(resize=(32, 32))).pairs([nhwc], 8)
    assert feed["x"].shape == (1, 32, 32, 1) and feed["x"].dtype == np.float16  # layout, gray, dtype from the model


def test_evaluate_and_calibration_take_a_folder_path(folder):
    model = small_classifier()
    whole = op.ImageFolder(folder)
    arrays = [(f, y) for f, y in whole.pairs(calibration.input_specs(model), 32)]
    x = np.concatenate([f["x"] for f, _ in arrays])
    y = np.concatenate([y for _, y in arrays])
    assert op.evaluate(model, folder) == op.evaluate(model, (x, y))
    stat = {"s": calibration.SampleMean(("x",), lambda t: t.mean(axis=(2, 3)))}
    np.testing.assert_allclose(calibration.collect(model, folder, stat)["s"], x.mean(axis=(0, 2, 3)), rtol=1e-6)
    assert calibration.length(folder) == 8


def test_channels_last_model(folder):
    got = op.evaluate(small_classifier(layout="NHWC"), op.ImageFolder(folder))
    assert got["n"] == 240


def test_hugging_face_dataset(folder):
    datasets = pytest.importorskip("datasets")
    files = op.ImageFolder(folder).samples[::10]
    ds = datasets.Dataset.from_dict({"image": [Image.open(p).convert("RGB") for p, _ in files],
                                     "label": [y for _, y in files]})
    model = small_classifier()
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32).transpose(2, 0, 1) / 255 for p, _ in files])
    got = op.evaluate(model, ds, batch_size=5)
    assert got == pytest.approx(op.evaluate(model, (x, np.array([y for _, y in files]))))
    named = datasets.Dataset.from_dict({"x": x.tolist()})  # a column named after the input, cast to its dtype
    stat = {"s": calibration.SampleMean(("x",), lambda t: t.mean(axis=(2, 3)))}
    np.testing.assert_allclose(calibration.collect(model, named, stat)["s"], x.mean(axis=(0, 2, 3), dtype=np.float64),
                               rtol=1e-6)
    with pytest.raises(op.InvalidRequestError, match="no column for the model's input"):
        op.evaluate(model, datasets.Dataset.from_dict({"pixels": x.tolist(), "label": [0] * len(x)}))


class FakeDataset:
    """What onnxprune reads of a datasets.Dataset (column_names, iter, len), so CI checks the mapping without the
    `datasets` package (the test above runs the real one when it is installed)."""

    __module__ = "datasets.arrow_dataset"

    def __init__(self, columns: dict[str, list]):
        self.columns = columns
        self.column_names = list(columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def iter(self, batch_size: int):
        for start in range(0, len(self), batch_size):
            yield {k: v[start:start + batch_size] for k, v in self.columns.items()}


def test_dataset_columns_map_to_inputs_and_labels(folder):
    files = op.ImageFolder(folder).samples[::20]
    images = [Image.open(p).convert("RGB") for p, _ in files]
    labels = [y for _, y in files]
    model = small_classifier()
    x = np.stack([np.asarray(im, np.float32).transpose(2, 0, 1) / 255 for im in images])
    expected = op.evaluate(model, (x, np.array(labels)))
    assert op.evaluate(model, FakeDataset({"image": images, "label": labels}), batch_size=4) == pytest.approx(expected)
    assert op.evaluate(model, FakeDataset({"x": x.tolist(), "labels": labels})) == pytest.approx(expected)
    with pytest.raises(InvalidDataError, match="no column for the model's input 'x'"):
        op.evaluate(model, FakeDataset({"pixels": images, "label": labels}))


@pytest.mark.parametrize("damage, message", [
    ("malformed", "dog/007.jpg' cannot be read"),
    ("truncated", "dog/003.jpg' cannot be read"),
    ("empty", "class folder '.*dog' holds no images"),
    ("flat", "has no class folders"),
    ("missing", "class folder '.*emu' is missing"),
])
def test_bad_folders_name_the_file(tmp_path, damage, message):
    root = tmp_path / "data"
    make_folder(root, per_class=8)
    classes = None
    if damage == "malformed":
        (root / "dog" / "007.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    elif damage == "truncated":
        whole = (root / "dog" / "003.jpg").read_bytes()
        (root / "dog" / "003.jpg").write_bytes(whole[: len(whole) // 2])
    elif damage == "empty":
        for f in (root / "dog").iterdir():
            f.unlink()
    elif damage == "flat":
        root = tmp_path / "flat"
        os.makedirs(root)
        Image.new("RGB", (SIZE, SIZE)).save(root / "a.jpg")
    else:
        classes = [*CLASSES, "emu"]
    with pytest.raises(InvalidDataError, match=message):
        op.evaluate(small_classifier(), op.ImageFolder(root, classes=classes))


def test_preprocessing_that_cannot_fit_the_model_is_refused(folder):
    with pytest.raises(op.InvalidRequestError, match="gives 224x224 images .* takes 32x32"):
        op.evaluate(small_classifier(), op.ImageFolder(folder, "imagenet"))


# --------------------------------------------------------------------------- CLI, end to end

def test_cli_calibration_evaluate_and_sensitivity_from_a_folder(folder, model_path, tmp_path, capsys):
    out = str(tmp_path / "pruned.onnx")
    assert main(["prune", model_path, "-o", out, "--method", "nn", "--ratio", "0.5", "--reconstruct",
                 "--calibration", folder]) == 0
    assert "reconstruct" in capsys.readouterr().out
    assert os.path.getsize(out) < os.path.getsize(model_path)
    assert main(["evaluate", model_path, "--data", folder, "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["n"] == 240 and 0 <= before["top1"] <= 1
    assert main(["evaluate", out, "--data", folder, "--reference", model_path, "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["n"] == 240 and "agreement" in after
    sens = str(tmp_path / "sens.json")
    assert main(["sensitivity", model_path, "--data", folder, "--ratios", "0.5", "--json", sens]) == 0
    result = json.loads(open(sens).read())
    assert result["n"] == 240 and result["baseline"] == pytest.approx(before["top1"])


def test_cli_report_eval_data_folder(folder, model_path, tmp_path, capsys):
    report = tmp_path / "r.json"
    assert main(["prune", model_path, "-o", str(tmp_path / "p.onnx"), "--ratio", "0.25", "--report", str(report),
                 "--eval-data", folder]) == 0
    metric = json.loads(report.read_text())["metric"]
    assert metric["before"]["n"] == 240 and "agreement" in metric["after"]


def test_cli_preprocessing_flags(tmp_path, capsys):
    root = make_folder(tmp_path / "big", per_class=3, size=48)
    path = str(tmp_path / "m.onnx")
    onnx.save(small_classifier(), path)
    assert main(["evaluate", path, "--data", root, "--preprocess", "imagenet", "--resize", "36", "--crop", "32",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 12
    assert main(["evaluate", path, "--data", root, "--preprocess", "imagenet"]) == 2
    assert "gives 224x224 images" in capsys.readouterr().err


@pytest.mark.parametrize("damage, expected", [
    ("malformed", "eel/002.jpg' cannot be read"),
    ("empty", "eel' holds no images"),
    ("missing", "emu' is missing"),
])
def test_cli_bad_folder_exits_non_zero_and_writes_nothing(tmp_path, model_path, capsys, damage, expected):
    root = tmp_path / "data"
    make_folder(root, per_class=4)
    extra = []
    if damage == "malformed":
        (root / "eel" / "002.jpg").write_bytes(b"GIF89a garbage")
    elif damage == "empty":
        for f in (root / "eel").iterdir():
            f.unlink()
    else:
        extra = ["--classes", "cat,dog,emu,fox"]
    out, sens = tmp_path / "out.onnx", tmp_path / "s.json"
    commands = [["prune", model_path, "-o", str(out), "--method", "nn", "--ratio", "0.5", "--calibration", str(root)],
                ["sensitivity", model_path, "--data", str(root), "--json", str(sens)],
                ["evaluate", model_path, "--data", str(root)]]
    for command in commands:
        assert main(command + extra) == 2
        err = capsys.readouterr().err
        assert expected in err and "error" in err and "Traceback" not in err
    assert not out.exists() and not sens.exists()
