"""Tests of onnxprune.ir: loading, external data, atomic saving, shapes."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import ir
from onnxprune.verify import verify
from onnxprune.errors import ExternalDataError, InvalidModelError, InvalidRequestError, VerificationError

RNG = np.random.default_rng(0)
W = RNG.standard_normal((16, 32)).astype(np.float32)  # 2 KiB: goes external
B = RNG.standard_normal(32).astype(np.float32)  # 128 B: stays inline


def mlp(output: str = "y") -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
         helper.make_node("Add", ["h", "B"], ["a"], name="add"),
         helper.make_node("Relu", ["a"], [output], name="relu")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", 32])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def write(path, model: onnx.ModelProto) -> str:
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    return str(path)


def external_tensor(name: str, location: str, dims=(16, 32)) -> TensorProto:
    tensor = TensorProto(name=name, dims=dims, data_type=TensorProto.FLOAT, data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * int(np.prod(dims))))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


# --------------------------------------------------------------------------- load errors

def test_load_returns_proto_unchanged():
    model = mlp()
    assert ir.load_model(model) is model


def test_load_missing_file(tmp_path):
    with pytest.raises(InvalidModelError, match="not found"):
        ir.load_model(tmp_path / "nope.onnx")


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(InvalidModelError, match="empty"):
        ir.load_model(path)


def test_load_text_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is definitely not a protobuf model\n")
    with pytest.raises(InvalidModelError, match="notes.onnx"):
        ir.load_model(path)


def test_load_truncated_model(tmp_path):
    data = mlp().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError, match="cut.onnx"):
        ir.load_model(path)


def test_load_checker_failure(tmp_path):
    model = mlp()
    model.graph.node[0].input[1] = "undefined_tensor"
    with pytest.raises(InvalidModelError, match="checker"):
        ir.load_model(write(tmp_path / "bad.onnx", model))


def test_external_data_outside_folder_refused(tmp_path, monkeypatch):
    (tmp_path / "secret.bin").write_bytes(b"\0" * 4 * 16 * 32)
    folder = tmp_path / "model"
    folder.mkdir()
    model = mlp()
    model.graph.initializer[0].CopyFrom(external_tensor("W", "../secret.bin"))
    path = write(folder / "m.onnx", model)
    monkeypatch.setattr(np, "memmap", lambda *a, **k: pytest.fail("external data was read"))
    with pytest.raises(ExternalDataError, match="outside the model folder"):
        ir.load_model(path)


def test_external_data_absolute_location_in_constant_refused(tmp_path):
    model = mlp()
    del model.graph.initializer[0]
    model.graph.node.insert(0, helper.make_node("Constant", [], ["W"], value=external_tensor("Wc", "/etc/passwd")))
    with pytest.raises(ExternalDataError, match="outside the model folder"):
        ir.load_model(write(tmp_path / "m.onnx", model))


def test_external_data_missing_file(tmp_path):
    model = mlp()
    model.graph.initializer[0].CopyFrom(external_tensor("W", "weights.bin"))
    with pytest.raises(ExternalDataError, match="missing"):
        ir.load_model(write(tmp_path / "m.onnx", model))


# --------------------------------------------------------------------------- external data round trip

def test_external_round_trip_is_lazy_and_streams(tmp_path):
    model = mlp()
    first = tmp_path / "a" / "m.onnx"
    first.parent.mkdir()
    ir.save_model(model, first, external_data=True, reference=model)
    assert sorted(os.listdir(first.parent)) == ["m.onnx", "m.onnx.data"]

    loaded = ir.load_model(first)
    w = next(t for t in loaded.graph.initializer if t.name == "W")
    b = next(t for t in loaded.graph.initializer if t.name == "B")
    assert ir.is_external(w) and not ir.is_external(b)
    assert ir.base_dir(loaded) == str(first.parent)
    array = ir.tensor_array(w, ir.base_dir(loaded))
    assert isinstance(array, np.memmap)
    np.testing.assert_array_equal(array, W)
    np.testing.assert_array_equal(ir.tensor_array(b, None), B)

    second = tmp_path / "b" / "out.onnx"
    second.parent.mkdir()
    ir.save_model(loaded, second, external_data=True, reference=model)
    resaved = ir.load_model(second)
    assert os.path.isfile(str(second) + ".data")
    w2 = next(t for t in resaved.graph.initializer if t.name == "W")
    np.testing.assert_array_equal(ir.tensor_array(w2, ir.base_dir(resaved)), W)
    assert verify(model, resaved).ok

    inline = tmp_path / "inline.onnx"
    ir.save_model(loaded, inline)
    assert not any(ir.is_external(t) for t in ir.load_model(inline).graph.initializer)


def test_load_external_data_into_memory(tmp_path):
    path = tmp_path / "m.onnx"
    ir.save_model(mlp(), path, external_data=True)
    loaded = ir.load_model(path, load_external_data=True)
    assert not any(ir.is_external(t) for t in loaded.graph.initializer)
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), W)


# --------------------------------------------------------------------------- atomic save

def test_save_leaves_nothing_on_validation_failure(tmp_path):
    path = tmp_path / "out.onnx"
    with pytest.raises(VerificationError, match="outputs differ"):
        ir.save_model(mlp(output="renamed"), path, reference=mlp(), external_data=True)
    assert os.listdir(tmp_path) == []


def test_save_leaves_nothing_when_checker_fails(tmp_path):
    model = mlp()
    model.graph.node[1].op_type = "NoSuchOp"
    with pytest.raises(VerificationError, match="checker"):
        ir.save_model(model, tmp_path / "out.onnx")
    assert os.listdir(tmp_path) == []


def _big_mlp(op_type: str = "MatMul", domain: str = "") -> onnx.ModelProto:
    """A 256 KiB weight: inline, so the checks read it out of the written file (see ir._structure_copy)."""
    weight = RNG.standard_normal((256, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node(op_type, ["x", "W"], ["y"], name="mm", domain=domain)], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])], [numpy_helper.from_array(weight, "W")])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, ir_version=10, opset_imports=opsets)


def test_save_leaves_nothing_when_onnxruntime_refuses_the_written_model(tmp_path):
    model = _big_mlp("NoKernel", domain="com.example")  # the checker knows no schema for it; onnxruntime no kernel
    with pytest.raises(VerificationError, match="does not load in onnxruntime"):
        ir.save_model(model, tmp_path / "out.onnx")
    assert os.listdir(tmp_path) == []


def test_save_checks_inline_weights_in_the_written_file_and_leaves_only_it(tmp_path):
    model = _big_mlp()
    ir.save_model(model, tmp_path / "out.onnx")
    assert os.listdir(tmp_path) == ["out.onnx"]
    assert (tmp_path / "out.onnx").read_bytes() == model.SerializeToString()


def test_save_refuses_to_overwrite_input(tmp_path):
    path = write(tmp_path / "in.onnx", mlp())
    before = open(path, "rb").read()
    loaded = ir.load_model(path)
    with pytest.raises(InvalidRequestError, match="overwrite"):
        ir.save_model(loaded, path)
    assert open(path, "rb").read() == before


def test_save_does_not_mutate_model(tmp_path):
    model = mlp()
    before = model.SerializeToString()
    ir.save_model(model, tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before


# --------------------------------------------------------------------------- shapes

def test_infer_shapes_symbolic():
    shapes, types = ir.infer_shapes_and_types(mlp())
    assert shapes["x"] == ("batch", 16)
    assert shapes["h"] == ("batch", 32)
    assert shapes["W"] == (16, 32)
    assert types["y"] == TensorProto.FLOAT
    assert ir.infer_shapes(mlp()) == shapes


def test_infer_shapes_falls_back_to_onnxruntime():
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
         helper.make_node("Relu", ["g"], ["y"])],
        "contrib", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17),
                                                                   helper.make_opsetid("com.microsoft", 1)])
    shapes, types = ir.infer_shapes_and_types(model)
    assert shapes["g"] == (3, 5) and shapes["y"] == (3, 5)
    assert types["g"] == TensorProto.FLOAT


def test_opset_version():
    assert ir.opset_version(mlp()) == 17
    assert ir.opset_version(mlp(), "ai.onnx") == 17
    with pytest.raises(InvalidModelError):
        ir.opset_version(mlp(), "com.microsoft")


def test_large_models_go_external_automatically(tmp_path, monkeypatch):
    monkeypatch.setattr(ir, "PROTO_LIMIT", 1000)  # pretend the 2 KiB weight crosses the 2 GB limit
    model = mlp()
    path = tmp_path / "big.onnx"
    ir.save_model(model, path)
    assert os.path.isfile(str(path) + ".data")
    with pytest.raises(InvalidRequestError, match="external_data=True"):
        ir.save_model(model, tmp_path / "inline.onnx", external_data=False)
    assert verify(model, ir.load_model(path)).ok  # sessions go through a temporary file


def test_derived_model_needs_base_dir(tmp_path):
    path = tmp_path / "m.onnx"
    ir.save_model(mlp(), path, external_data=True)
    derived = onnx.ModelProto()
    derived.CopyFrom(ir.load_model(path))
    derived.graph.name = "derived"
    with pytest.raises(ExternalDataError, match="source folder is unknown"):
        ir.save_model(derived, tmp_path / "out.onnx")
    ir.set_base_dir(derived, ir.base_dir(ir.load_model(path)))
    ir.save_model(derived, tmp_path / "out.onnx")
    assert verify(mlp(), ir.load_model(tmp_path / "out.onnx")).ok
