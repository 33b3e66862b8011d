"""Loading that reads no weight twice: raw_data lengths and places from the wire format (onnxprune.wire)."""
from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune.errors import InvalidModelError
from onnxprune import external_data as ext
from onnxprune import loading
from onnxprune.loading import load_with_weights
from onnxprune.wire import initializer_data_types, initializer_raw_sizes, without_raw_data

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted(ROOT.glob("fixtures/*.onnx"))[::4], ids=lambda p: p.stem)
def test_wire_sizes_are_the_raw_data_lengths(path):
    data = path.read_bytes()
    model = onnx.ModelProto.FromString(data)
    expected = [len(t.raw_data) if t.HasField("raw_data") else None for t in model.graph.initializer]
    assert initializer_raw_sizes(data) == expected


def test_weights_read_at_load_are_the_initializers_values_as_views_of_the_file(tmp_path):
    model = _fielded_model()
    half = numpy_helper.from_array(np.linspace(-1, 1, 6, dtype=np.float16).reshape(2, 3), "half")
    flags = numpy_helper.from_array(np.array([True, False, True]), "flags")
    model.graph.initializer.extend([half, flags])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    loaded, weights = load_with_weights(str(path))
    assert sorted(weights.arrays) == ["big", "flags", "half", "small"]  # "listed" has float_data, no raw bytes
    for tensor in loaded.graph.initializer:
        if tensor.name in weights.arrays:
            value = weights.arrays[tensor.name]
            expected = numpy_helper.to_array(tensor)
            assert value.dtype == expected.dtype and value.shape == expected.shape
            assert np.array_equal(value, expected) and not value.flags.writeable
    assert load_with_weights(model)[1].arrays == {}  # a ModelProto given: nothing read, nothing to view


def test_a_lazy_load_refers_into_the_file_until_inline_gives_the_bytes_back(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_fielded_model(), path)
    whole = onnx.load(str(path))
    lazy, weights = load_with_weights(str(path), lazy=True)
    assert weights.lazy == ("big",)  # the one raw tensor of LAZY_MIN_BYTES or more
    big = lazy.graph.initializer[1]
    assert ext.is_external(big) and not big.HasField("raw_data") and ext.external_ref(big).location == "m.onnx"
    assert np.array_equal(ext.tensor_array(big, str(tmp_path)), numpy_helper.to_array(whole.graph.initializer[1]))
    weights.inline(lazy)
    ext.record_origin(lazy, None, [])
    assert lazy == whole


LAZY_FIXTURES = sorted(str(p) for p in ROOT.glob("fixtures/**/*.onnx") if "light" not in p.name)


@pytest.mark.parametrize("path", LAZY_FIXTURES, ids=lambda p: pathlib.Path(p).stem)
def test_prune_of_a_path_loads_lazily_and_equals_prune_of_the_loaded_model(path, monkeypatch):
    """Floating-point raw initializers of 1 KiB and more left in the file's bytes (as exporters choose what goes to
    external data): the result is the model that pruning the loaded ModelProto gives (where the mask oracle runs),
    and self-contained."""
    monkeypatch.setattr(loading, "LAZY_MIN_BYTES", 1024)
    try:
        by_proto = op.prune(op.load_model(path), method="l2", ratio=0.3, verify=True)
    except op.errors.OnnxPruneError as exc:  # blocked on purpose: the path must say the same
        with pytest.raises(type(exc)):
            op.prune(path, method="l2", ratio=0.3)
        return
    by_path = op.prune(path, method="l2", ratio=0.3)
    assert not any(ext.is_external(t) and ext.external_ref(t).location == pathlib.Path(path).name
                   for t in ext.iter_tensors(by_path.model))
    assert by_path.model.graph == by_proto.model.graph and by_path.channels == by_proto.channels


def test_without_raw_data_leaves_out_those_fields_and_nothing_else():
    data = _fielded_model().SerializeToString()
    stripped = onnx.ModelProto.FromString(without_raw_data(data, {1}))
    expected = _fielded_model()
    expected.graph.initializer[1].ClearField("raw_data")
    assert stripped == expected
    assert initializer_data_types(data) == [TensorProto.INT64, TensorProto.FLOAT, TensorProto.FLOAT]
    assert without_raw_data(data, set()) == data


def _fielded_model() -> onnx.ModelProto:
    """Large and small raw_data, a large float_data tensor, and fields on both sides of initializer / raw_data."""
    big = numpy_helper.from_array(np.arange(40000, dtype=np.float32).reshape(200, 200), "big")
    big.doc_string = "after raw_data"
    big.metadata_props.add(key="k", value="v")
    listed = helper.make_tensor("listed", TensorProto.FLOAT, [20000], np.ones(20000, np.float32).tolist())
    small = numpy_helper.from_array(np.arange(3, dtype=np.int64), "small")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "big"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 200])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 200])],
                              [small, big, listed], doc_string="graph doc")
    graph.value_info.add(name="unused")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string="model doc")
    model.metadata_props.add(key="author", value="test")
    return model


def test_encode_gives_protobufs_own_bytes_with_large_raw_data_apart(tmp_path):
    from onnxprune import external_data

    model = _fielded_model()
    encoded = external_data.encode(model)
    assert b"".join(encoded.parts) == model.SerializeToString()
    data = b"".join(encoded.parts)
    raw = model.graph.initializer[1].raw_data
    assert raw in encoded.parts  # written as it is, not re-encoded
    assert encoded.raw.sizes == [24, 160000, None] and encoded.raw.offsets[::2] == [None, None]
    assert data[encoded.raw.offsets[1]:][:len(raw)] == raw
    onnx.save(model, tmp_path / "m.onnx")
    loaded = op.load_model(str(tmp_path / "m.onnx"))  # carries the origin record, which is left out
    assert external_data.serialize(loaded) == model.SerializeToString()


def test_a_short_large_raw_tensor_is_refused_at_save(tmp_path):
    model = _fielded_model()
    model.graph.initializer[1].raw_data = model.graph.initializer[1].raw_data[:-4]
    with pytest.raises(InvalidModelError, match="'big' holds 159996 bytes but its shape \\[200, 200\\] needs 160000"):
        op.save_model(model, str(tmp_path / "out.onnx"))
    assert not (tmp_path / "out.onnx").exists()


def _model(raw: bytes) -> onnx.ModelProto:
    w = TensorProto(name="w", dims=[4], data_type=TensorProto.FLOAT, raw_data=raw)
    b = numpy_helper.from_array(np.arange(3, dtype=np.int64), "unused_int")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"], name="add")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [b, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_short_raw_tensor_is_refused_at_load(tmp_path):
    path = tmp_path / "short.onnx"
    onnx.save(_model(b"\0" * 12), path)  # 3 floats where dims say 4
    assert initializer_raw_sizes(path.read_bytes()) == [24, 12]
    with pytest.raises(InvalidModelError, match="'w' holds 12 bytes but its shape \\[4\\] needs 16"):
        op.load_model(str(path))


def test_a_valid_file_loads(tmp_path):
    path = tmp_path / "ok.onnx"
    onnx.save(_model(b"\0" * 16), path)
    assert len(op.load_model(str(path)).graph.initializer) == 2


@pytest.mark.parametrize("loaded", [True, False], ids=["loaded", "in_memory"])
def test_a_short_raw_tensor_is_refused_at_save(tmp_path, loaded):
    """save_model reads the sizes from the bytes it wrote (one serialized part, or the graph part beside the
    origin record of a loaded model) and writes nothing when a tensor is short."""
    if loaded:
        path = tmp_path / "ok.onnx"
        onnx.save(_model(b"\0" * 16), path)
        model = op.load_model(str(path))
        model.graph.initializer[1].raw_data = b"\0" * 12
    else:
        model = _model(b"\0" * 12)
    out = tmp_path / "out.onnx"
    with pytest.raises(InvalidModelError, match="'w' holds 12 bytes but its shape \\[4\\] needs 16"):
        op.save_model(model, str(out))
    assert not out.exists()


@pytest.mark.parametrize("path", sorted(ROOT.glob("fixtures/*.onnx"))[::6], ids=lambda p: p.stem)
def test_write_proto_returns_the_written_raw_data_lengths(tmp_path, path):
    from onnxprune import external_data

    for model in (op.load_model(str(path)), onnx.load(str(path))):  # with and without the origin record
        expected = [len(t.raw_data) if t.HasField("raw_data") else None for t in model.graph.initializer]
        assert external_data.write_proto(model, str(tmp_path / "w.onnx")).sizes == expected
