"""executor="ray": sensitivity, evaluate, calibration statistics and reconstruction give the in-process figures on
a local Ray cluster (started once for the module); a failed task is onnxprune's own error naming the task."""
from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
import ray  # in the `test` extra: CI runs these tests
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune.cli import main
from onnxprune.errors import InvalidRequestError, TaskError
from onnxprune.executor import RayExecutor, chunks, resolve, scope
from onnxprune.runtime import run


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster of 2 CPUs for every test of the module (a start takes ~10 s)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # test-module functions travel by value
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error", log_to_driver=False)
    yield "ray"
    ray.shutdown()


def cnn(seed: int = 0) -> onnx.ModelProto:
    """x (n, 3, 8, 8) -> Conv 12 -> Relu -> Conv 16 -> Relu -> GAP -> Gemm 10."""
    rng = np.random.default_rng(seed)
    inits, nodes, x, channels = [], [], "x", [3, 12, 16]
    for k in range(2):
        w = rng.standard_normal((channels[k + 1], channels[k], 3, 3)) / np.sqrt(9 * channels[k])
        w = (w * np.linspace(0.2, 2.0, channels[k + 1])[:, None, None, None]).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{k}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(channels[k + 1])).astype(np.float32), f"b{k}")]
        nodes += [helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"], name=f"relu{k}")]
        x = f"r{k}"
    inits += [numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32), "fc_w"),
              numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])], inits)
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(seed + 100).standard_normal((64, 3, 8, 8)).astype(np.float32)
    logits = run(model, {"x": x})["logits"]  # standardised per class: predictions spread over the classes
    mean, std = logits.mean(axis=0), logits.std(axis=0) + 1e-6
    fc_w = numpy_helper.to_array(model.graph.initializer[-2]) / std[:, None]
    model.graph.initializer[-2].CopyFrom(numpy_helper.from_array(fc_w.astype(np.float32), "fc_w"))
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array((-mean / std).astype(np.float32), "fc_b"))
    return model


def labelled(n: int = 200, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    logits = run(cnn(), {"x": x})["logits"]
    labels = np.where(rng.random(n) < 0.7, logits.argmax(axis=1), rng.integers(0, 10, n))  # ~70% right
    return x, labels


def calibration(n: int = 20, batch: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    return [rng.standard_normal((batch, 3, 8, 8)).astype(np.float32) for _ in range(n)]


# --------------------------------------------------------------------------- the executor itself

def test_in_process_by_default_and_chunks_keep_order():
    assert resolve(None).name == "in-process" and resolve("ray").name == "ray"
    with scope("ray"):
        assert resolve(None).name == "ray"
    assert resolve(None).name == "in-process"
    assert list(chunks(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]] and list(chunks(range(3), None)) == [[0, 1, 2]]
    with pytest.raises(InvalidRequestError, match="unknown executor"):
        resolve("dask")


def test_import_onnxprune_never_imports_ray():
    import subprocess

    code = "import sys, onnxprune; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_signatures_show_executor():
    import inspect

    for fn in (op.prune, op.prune_by_index, op.make_plan, op.apply_plan, op.decompose, op.sparsify,
               op.prune_blocks, op.evaluate, op.sensitivity, op.profile):
        assert "executor" in inspect.signature(fn).parameters, fn.__name__


# --------------------------------------------------------------------------- same figures as in-process

def test_evaluate_equals_in_process(cluster):
    x, y = labelled()
    model, other = cnn(), cnn(seed=3)

    def mse(outputs, labels):
        return {"mse": float(np.mean(outputs ** 2)), "first": float(outputs[0, 0])}

    for kwargs in ({}, {"reference": other}, {"metric": mse}):
        here = op.evaluate(model, (x, y), batch_size=8, **kwargs)  # 25 batches: 4 shards
        there = op.evaluate(model, (x, y), batch_size=8, executor=cluster, **kwargs)
        assert here == there, kwargs


def test_sensitivity_equals_in_process(cluster):
    x, y = labelled()
    model = cnn()
    here = op.sensitivity(model, (x, y), ratios=(0.25, 0.5), batch_size=50)
    there = op.sensitivity(model, (x, y), ratios=(0.25, 0.5), batch_size=50, executor=cluster)
    assert there.baseline == here.baseline and len(there.curves) == len(here.curves) == 2
    assert any(p["drop"] > 0.05 for c in here.curves for p in c.points)  # the figures compared mean something
    for a, b in zip(here.curves, there.curves):
        assert a.layer == b.layer and [p["ratio"] for p in a.points] == [p["ratio"] for p in b.points]
        for p, q in zip(a.points, b.points):
            assert abs(p["value"] - q["value"]) <= 1e-6 and p["macs"] == q["macs"] and p["kept"] == q["kept"]
    agreement = op.sensitivity(model, (x, None), ratios=(0.5,), executor=cluster)  # no labels: vs the model
    assert agreement.key == "agreement" and agreement.curves[0].points[0]["value"] <= 1.0


def test_calibration_statistics_and_reconstruction_equal_in_process(cluster):
    model, data = cnn(), calibration()
    here = op.prune(model, "activation", ratio=0.4, calibration=data, compensate=True, reconstruct=True)
    there = op.prune(model, "activation", ratio=0.4, calibration=data, compensate=True, reconstruct=True,
                     executor=cluster)
    assert here.channels == there.channels
    # in this process the re-fit's passes run the models in segments (reconstruction/segments.py), whose
    # onnxruntime graphs differ from the whole models' on Ray: the same sums up to float32 rounding, not bit for bit
    for a, b in zip(here.reconstruction.layers, there.reconstruction.layers):
        assert (a.name, a.rows, a.updated) == (b.name, b.rows, b.updated)
        assert abs(a.error_after - b.error_after) <= 1e-6
    x = labelled(16)[0]
    np.testing.assert_allclose(run(there.model, {"x": x})["logits"], run(here.model, {"x": x})["logits"], atol=1e-4)
    weights = {t.name: numpy_helper.to_array(t) for t in there.model.graph.initializer}
    for t in here.model.graph.initializer:
        np.testing.assert_allclose(numpy_helper.to_array(t), weights[t.name], rtol=1e-4, atol=1e-5)


def test_decompose_reconstruction_equals_in_process(cluster):
    model, data = cnn(), calibration(12)
    here = op.decompose(model, "svd", rank_ratio=0.5, calibration=data, reconstruct=True, force=True)
    there = op.decompose(model, "svd", rank_ratio=0.5, calibration=data, reconstruct=True, force=True,
                         executor=cluster)
    x = labelled(16)[0]
    np.testing.assert_allclose(run(there.model, {"x": x})["logits"], run(here.model, {"x": x})["logits"], atol=1e-4)


# --------------------------------------------------------------------------- failures and the CLI

def test_a_failed_task_is_onnxprunes_error_naming_the_task(cluster):
    x, y = labelled(40)

    def broken(outputs, labels):
        raise RuntimeError("metric exploded")

    with pytest.raises(TaskError, match=r"evaluate shard 0 \(data\[0:8\] to .*RuntimeError: metric exploded") as info:
        op.evaluate(cnn(), (x, y), broken, batch_size=8, executor=cluster)
    assert info.value.task.startswith("evaluate shard 0")
    batches = [(x[:8], y[:8]), (x[8:16].astype(np.float64), y[8:16])]  # checked in the task: its own error type
    with pytest.raises(InvalidRequestError, match=r"evaluate shard 0 .*batch 1: input 'x' has dtype float64"):
        op.evaluate(cnn(), batches, executor=cluster)


def test_cli_ray_flag_gives_the_in_process_table(cluster, tmp_path, capsys):
    x, y = labelled()
    path, data = tmp_path / "cnn.onnx", tmp_path / "data.npz"
    onnx.save(cnn(), path)
    np.savez(data, x=x, labels=y)
    outputs = []
    for extra in ([], ["--ray"]):
        out = tmp_path / f"sens{len(extra)}.json"
        assert main(["sensitivity", str(path), "--data", str(data), "--ratios", "0.5", "--json", str(out),
                     *extra]) == 0
        outputs.append(json.loads(out.read_text()))
    assert outputs[0] == outputs[1]
    capsys.readouterr()
    assert main(["sensitivity", str(path), "--data", str(data), "--ray", str(data)]) == 2  # a file, not an address
    assert "put --ray after the model" in capsys.readouterr().err


def test_cli_prune_reconstruct_on_ray(cluster, tmp_path):
    path, data = tmp_path / "cnn.onnx", tmp_path / "calib.npy"
    onnx.save(cnn(), path)
    np.save(data, np.concatenate(calibration(10)))
    written = []
    for extra in ([], ["--ray"]):
        out = tmp_path / f"pruned{len(extra)}.onnx"
        assert main(["prune", str(path), "-o", str(out), "--method", "activation", "--ratio", "0.5",
                     "--calibration", str(data), "--reconstruct", *extra]) == 0
        written.append(onnx.load(out))
    # the same model up to float32 rounding (in this process the re-fit's passes run in segments: see above)
    assert [n.input for n in written[0].graph.node] == [n.input for n in written[1].graph.node]
    weights = {t.name: numpy_helper.to_array(t) for t in written[1].graph.initializer}
    for t in written[0].graph.initializer:
        np.testing.assert_allclose(numpy_helper.to_array(t), weights[t.name], rtol=1e-4, atol=1e-5)


def test_profile_maps_layer_signatures_on_ray(cluster):
    class Fake:  # picklable stand-in for timing.Timer: latency grows with the kept channels
        def points(self, spec, counts):
            return [0.001 * i * o for i, o in counts]

        def model(self, source, feed):
            return 1.0

    here = op.profile(cnn(), cache=False, timer=Fake())
    there = op.profile(cnn(), cache=False, timer=Fake(), executor=RayExecutor())
    assert there.as_dict() == here.as_dict()


def test_a_statistic_without_merge_streams_in_process_and_is_refused_on_ray(cluster):
    from onnxprune.calibration import collect

    class Last:  # no merge(): summed in one streamed pass here, refused on Ray
        tensors = ("x",)

        def __init__(self):
            self.seen = 0

        def update(self, x):
            self.seen += len(x)

        def result(self):
            return self.seen

    data = calibration(20)
    assert collect(cnn(), data, {"n": Last()}, batch_size=4) == {"n": 80}
    with pytest.raises(InvalidRequestError, match=r"\['Last'\] have no merge"):
        collect(cnn(), data, {"n": Last()}, executor=cluster)
