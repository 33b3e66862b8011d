"""Shapes without running the model: ONNX inference + symbolic propagation (onnxprune.symbolic), onnxruntime
observation only for what is left, never for a model over the weight limit."""
from __future__ import annotations

import pathlib
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune import runtime, shapes
from onnxprune.errors import UnknownShapesError
from onnxprune.symbolic_dims import div, example_dim, is_unknown_dim, mul

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = sorted(ROOT.glob("fixtures/*.onnx")) + sorted(ROOT.glob("fixtures/deploy/*.onnx"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _llama  # noqa: E402

# fixtures whose shapes still need an onnxruntime observation: none (com.microsoft ops: symbolic_contrib.py)
NEEDS_OBSERVATION: set[str] = set()


@pytest.fixture
def no_runs(monkeypatch):
    """Any onnxruntime run (shape observation or otherwise) fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("onnxruntime was run to learn shapes")

    monkeypatch.setattr(runtime, "observe", refuse)
    monkeypatch.setattr(runtime, "run", refuse)


def _concrete(model: onnx.ModelProto, shape: tuple) -> tuple | None:
    return shapes.example_shape(model, shape)


@pytest.mark.parametrize("path", [p for p in FIXTURES if p.stem not in NEEDS_OBSERVATION], ids=lambda p: p.stem)
def test_fixture_shapes_and_analysis_never_run_the_model(path, no_runs):
    model = onnx.load(str(path))
    inferred, _ = shapes.infer_shapes_and_types(op.load_model(str(path)))
    unknown = [o for n in model.graph.node for o in n.output
               if o and (inferred.get(o) is None or any(is_unknown_dim(d) for d in inferred[o]))]
    assert not unknown
    op.analyze(str(path))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_propagated_shapes_match_an_onnxruntime_run(path):
    model = op.load_model(str(path))
    inferred, _ = shapes.infer_shapes_and_types(model)
    names = [o for n in model.graph.node for o in n.output if o]
    outputs = runtime.run(model, runtime.make_inputs(model), outputs=names)
    for name, array in outputs.items():
        if not isinstance(array, np.ndarray) or name not in inferred:
            continue
        concrete = _concrete(model, inferred[name])
        if concrete is not None:
            assert concrete == array.shape, name


def test_llama_decoder_shapes_are_symbolic_and_exact(no_runs):
    model = _llama.llama_decoder(_llama.LlamaConfig.small())
    inferred, _ = shapes.infer_shapes_and_types(model)
    by_op = {}
    for node in model.graph.node:
        by_op.setdefault(node.op_type, []).append(inferred[node.output[0]])
    assert by_op["Range"][0] == ("sequence",)
    assert by_op["Cos"][0] == ("sequence", 16)
    assert by_op["Trilu"][0] == ("sequence", "sequence")
    assert by_op["Softmax"][0] == ("batch", 4, "sequence", "sequence")
    assert inferred["logits"] == ("batch", "sequence", 512)
    assert all(o in inferred for n in model.graph.node for o in n.output)


def test_llama_decoder_shapes_match_onnxruntime_at_another_size():
    model = _llama.llama_decoder(_llama.LlamaConfig.small())
    inferred, _ = shapes.infer_shapes_and_types(model)
    names = [o for n in model.graph.node for o in n.output]
    ids = np.array([[1, 2, 3, 4, 5]] * 3, dtype=np.int64)
    outputs = runtime.run(model, {"input_ids": ids}, outputs=names)
    for name, array in outputs.items():
        assert tuple(example_dim(d, {"batch": 3, "sequence": 5}) for d in inferred[name]) == array.shape, name


def test_llama_decoder_prunes_without_running(no_runs, tmp_path):
    model = _llama.llama_decoder(_llama.LlamaConfig.small())
    result = op.prune(model, ratio=0.3)
    assert result.pruned_groups
    out = tmp_path / "pruned.onnx"
    onnx.save(result.model, out)
    onnx.checker.check_model(str(out), full_check=True)


def _data_dependent_model(weight_elems: int) -> onnx.ModelProto:
    """x -> NonZero -> ... : the shape of NonZero's output depends on the values, no rule can know it."""
    w = numpy_helper.from_array(np.ones((weight_elems,), np.float32), "w")
    nodes = [helper.make_node("Mul", ["x", "w"], ["y"], name="scale"),
             helper.make_node("NonZero", ["y"], ["nz"], name="nonzero"),
             helper.make_node("Cast", ["nz"], ["out"], name="cast", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_small_model_with_data_dependent_shape_is_observed():
    model = _data_dependent_model(4)
    inferred, _ = shapes.infer_shapes_and_types(model)
    assert len(inferred["nz"]) == 2


def test_model_over_the_weight_limit_is_never_run(monkeypatch):
    monkeypatch.setattr(shapes, "OBSERVE_MAX_WEIGHT_BYTES", 8)

    def refuse(*args, **kwargs):
        raise AssertionError("observed")

    monkeypatch.setattr(runtime, "observe", refuse)
    with pytest.raises(UnknownShapesError) as info:
        shapes.infer_shapes_and_types(_data_dependent_model(4))
    assert info.value.tensors == ["nz", "out"]
    assert info.value.inputs == ["x"]
    assert "'nz' (NonZero node 'nonzero')" in str(info.value) and "declare" in str(info.value)


def test_symbolic_dim_arithmetic():
    assert mul("batch", 12) == "12*batch"
    assert mul(mul("sequence", "batch"), 2) == "2*batch*sequence"
    assert div("12*batch*sequence", "batch") == "12*sequence"
    assert div(7, 2) is None
    assert example_dim("(sequence)+(1)", {"sequence": 8}) == 9
    assert example_dim("(2*batch)/(4)", {"batch": 6}) == 3
    assert example_dim("(2*batch)/(4)", {"batch": 3}) is None
    assert example_dim("unk__3", {}) is None


def test_prune_and_save_serialise_the_model_once(monkeypatch, tmp_path):
    """analyze + prune + save (validated) of a file with external data: the weights are written once (the new
    data file); no serialised proto carries them, no onnxruntime run or observation happens."""
    from onnxprune import external_data

    path = tmp_path / "llama.onnx"
    _llama.write_llama(str(path), _llama.LlamaConfig.small())
    sizes, builds = [], []
    encode, build = external_data.encode, external_data.build_output

    def counted_encode(model):
        out = encode(model)
        sizes.append(sum(len(p) for p in out.parts))
        return out

    monkeypatch.setattr(external_data, "encode", counted_encode)
    monkeypatch.setattr(external_data, "build_output", lambda *a, **k: builds.append(1) or build(*a, **k))
    monkeypatch.setattr(runtime, "observe", lambda *a, **k: pytest.fail("observed"))
    monkeypatch.setattr(runtime, "run", lambda *a, **k: pytest.fail("ran the model"))
    result = op.prune(str(path), ratio=0.3)
    op.save_model(result.model, tmp_path / "out.onnx", reference=result.reference, external_data=True)
    weights = path.with_name("llama.onnx.data").stat().st_size
    assert builds == [1] and sizes and max(sizes) < weights / 10
    assert (tmp_path / "out.onnx.data").stat().st_size < weights
