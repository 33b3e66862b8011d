"""Regression tests of issue 15: every input ends in a valid result or onnxprune's own error.

One test per defect class of ../shared/reliability/ (each rebuilt here from a fixture or a tiny graph):
onnxruntime's exceptions, analysis vs surgery, input validation before allocation, the written-model guarantee.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune as op
from onnxprune import runtime
from onnxprune.cli import main
from onnxprune.ort_errors import translate
from graphs import GraphBuilder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "fixtures")


def fixture(name: str) -> onnx.ModelProto:
    return onnx.load(os.path.join(FIXTURES, f"{name}.onnx"))


def two_convs(group: int = 1) -> onnx.ModelProto:
    g = GraphBuilder()
    a = g.conv("x", 4, 8, "c1")
    b = g.node("Relu", [a], name="relu")
    g.conv(b, 8, 4, "c2", k=1)
    g.nodes[-1].output[0] = "y"
    return g.model({"x": (1, 4, 8, 8)}, {"y": (1, 4, 8, 8)})


def set_attr(model: onnx.ModelProto, node_name: str, **attrs) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    node = next(n for n in out.graph.node if n.name == node_name)
    for key, value in attrs.items():
        for attr in list(node.attribute):
            if attr.name == key:
                node.attribute.remove(attr)
        node.attribute.append(helper.make_attribute(key, value))
    return out


# --------------------------------------------------------------------------- onnxruntime boundary

def test_runtime_failure_is_onnxprune_error_naming_node_and_op():
    model = two_convs()
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node[0].input[0] = "x"  # fine; now feed a wrong channel count at run time
    with pytest.raises(op.OnnxRuntimeError) as info:
        runtime.run(bad, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    assert "onnxruntime cannot run" in str(info.value)


def test_translate_parses_node_and_op_from_the_message():
    class Fail(Exception):
        __module__ = "onnxruntime.capi.onnxruntime_pybind11_state"

    exc = Fail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Conv node. "
               "Name:'c2' Status Message: Input channels C is not equal to kernel channels * group.")
    err = translate(exc, two_convs(), "run")
    assert (err.node, err.op_type) == ("c2", "Conv")
    assert "node 'c2' (Conv)" in str(err) and "[ONNXRuntimeError]" not in str(err)
    exc = Fail("[ONNXRuntimeError] : 1 : FAIL : /onnxruntime_src/onnxruntime/core/graph/graph.cc:1357 "
               "onnxruntime::Graph::Graph(const onnxruntime::Model&, int) [ONNXRuntimeError] : 1 : FAIL : "
               "tensorprotoutils.cc:2678 ConstantNodeProtoToTensorProto Constant node: k has no data attributes")
    err = translate(exc, None, "load")
    assert (err.node, err.op_type) == ("k", "Constant")
    assert "graph.cc" not in str(err) and "Graph::Graph" not in str(err)


def test_verify_of_a_model_onnxruntime_cannot_run_is_refused_with_onnxprune_error():
    model = two_convs()
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    relu = next(n for n in bad.graph.node if n.name == "relu")
    relu.input[0] = "x"  # c2 now reads 4 channels where its weight wants 8: onnxruntime refuses to run it
    with pytest.raises(op.OnnxPruneError):
        op.prune(bad, "l2", ratio=0.3, verify=True)


def test_cli_prints_no_traceback_but_debug_does(tmp_path, capsys, monkeypatch):
    path = tmp_path / "m.onnx"
    onnx.save(two_convs(), path)

    def boom(*args, **kwargs):
        raise ValueError("internal")

    monkeypatch.setattr(op, "prune", boom)  # the command calls op.prune: a bug inside onnxprune
    argv = ["prune", str(path), "-o", str(tmp_path / "o.onnx"), "--ratio", "0.3"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" in err and "--debug" in err
    assert main(argv + ["--debug"]) == 3
    assert "Traceback" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o.onnx")


def test_generated_inputs_refuse_above_the_budget_with_names_and_hint():
    g = GraphBuilder()
    g.node("Relu", ["x"], name="r")
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": (100000, 3, 64, 64)}, {"y": (100000, 3, 64, 64)})
    with pytest.raises(op.InvalidRequestError, match=r"'x'.*inputs="):
        runtime.make_inputs(model)


# --------------------------------------------------------------------------- analysis and surgery agree

def test_group_minus_one_is_blocked_at_analysis_with_a_reason():
    source = fixture("mobilenetv2_dynamo")
    second_conv = [n.name for n in source.graph.node if n.op_type == "Conv"][1]  # reads tracked channels
    model = set_attr(source, second_conv, group=-1)
    analysis = op.analyze(model)
    assert any(g.reason and "group=-1" in g.reason for g in analysis.groups)
    op.prune(model, "l2", ratio=0.3)  # the other groups still prune


def test_kernel_shape_other_than_the_weight_is_blocked():
    model = set_attr(two_convs(), "c1", kernel_shape=[5, 5])
    try:
        analysis = op.analyze(model)
    except op.OnnxPruneError:
        return  # refused as invalid: fine
    c1 = [g for g in analysis.groups if "c1" in g.layers]
    assert c1 and not c1[0].prunable and "kernel_shape" in c1[0].reason


def test_weight_through_if_is_not_prunable_and_prune_works():
    model = two_convs()
    w = "c1.weight"
    cond = numpy_helper.from_array(np.array(True), "cond")
    then = helper.make_graph([helper.make_node("Identity", [w], ["tw"])], "then", [],
                             [helper.make_tensor_value_info("tw", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Neg", [w], ["ew"])], "else", [],
                              [helper.make_tensor_value_info("ew", TensorProto.FLOAT, None)])
    model.graph.initializer.append(cond)
    model.graph.node.insert(0, helper.make_node("If", ["cond"], ["w_if"], name="if_w", then_branch=then,
                                                else_branch=other))
    next(n for n in model.graph.node if n.name == "c1").input[1] = "w_if"
    analysis = op.analyze(model)
    c1 = [g for g in analysis.groups if "c1" in g.layers]
    assert c1 and not c1[0].prunable and "cannot be evaluated" in c1[0].reason
    op.prune(model, "l2", ratio=0.3, verify=True)


def test_shared_weight_on_inputs_of_another_width_is_refused_or_blocked():
    model = two_convs()
    c2 = next(n for n in model.graph.node if n.name == "c2")
    c2.input[1] = "c1.weight"  # 8 -> 8x4x3x3 weight on an 8-channel input: wrong channel count
    try:
        analysis = op.analyze(model)
    except op.OnnxPruneError:
        return
    assert not any(g.prunable and "c2" in g.layers for g in analysis.groups)


def test_decompose_weight_with_an_extra_unit_dim_is_skipped():
    model = two_convs()
    weight = next(t for t in model.graph.initializer if t.name == "c2.weight")
    weight.dims.insert(0, 1)
    try:
        result = op.decompose(model, method="svd", rank_ratio=0.5)
    except op.OnnxPruneError:
        return
    assert all(layer.name != "c2" for layer in result.layers)


def test_model_local_functions_are_inlined_and_dropped():
    model = two_convs()
    relu = next(n for n in model.graph.node if n.name == "relu")
    function = helper.make_function("local", "F", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                                    [helper.make_opsetid("", 18)])
    unused = helper.make_function("local", "Unused", ["a"], ["b"], [helper.make_node("Neg", ["a"], ["b"])],
                                  [helper.make_opsetid("", 18)])
    relu.op_type, relu.domain = "F", "local"
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.extend([function, unused])
    result = op.prune(model, "l2", ratio=0.5, verify=True)
    assert not result.model.functions
    assert any(g.prunable for g in op.analyze(model).groups)
    assert len(model.functions) == 2  # the argument is not changed


# --------------------------------------------------------------------------- validation before allocation

def tensor_case(mutate) -> onnx.ModelProto:
    model = two_convs()
    mutate(next(t for t in model.graph.initializer if t.name == "c1.weight"))
    return model


@pytest.mark.parametrize("mutate, words", [
    (lambda t: t.float_data.extend([1.0]), "float_data and raw_data"),
    (lambda t: setattr(t, "data_type", 99), "not an ONNX type"),
    (lambda t: t.dims.__setitem__(0, -8), "negative dim"),
    (lambda t: (t.ClearField("raw_data"), t.float_data.extend([0.0] * 3), t.dims.__setitem__(0, 10**6)),
     "holds 3 values"),
    (lambda t: (t.ClearField("raw_data"), t.dims.__setitem__(0, 10**12)), "elements"),
])
def test_bad_tensor_fields_are_refused_before_allocation(mutate, words, tmp_path):
    model = tensor_case(mutate)
    with pytest.raises(op.InvalidModelError, match=words):
        op.prune(model, "l2", ratio=0.3)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(op.InvalidModelError, match=words):
        op.analyze(str(path))


@pytest.mark.parametrize("key, value", [("offset", "12abc"), ("offset", "-4"), ("length", "1.5"),
                                        ("location", "w\0.bin"), ("location", "../outside.bin")])
def test_bad_external_data_fields_are_refused(tmp_path, key, value):
    model = two_convs()
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    stored = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    tensor = next(t for t in stored.graph.initializer if t.name == "c1.weight")
    entry = next((e for e in tensor.external_data if e.key == key), None) or tensor.external_data.add(key=key)
    entry.value = value
    with open(tmp_path / "bad.onnx", "wb") as f:
        f.write(stored.SerializeToString())
    with pytest.raises(op.OnnxPruneError):
        op.analyze(str(tmp_path / "bad.onnx"))


@pytest.mark.parametrize("dim", [0, 2**40])
def test_zero_and_huge_input_dims_are_refused(dim):
    model = two_convs()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = dim
    with pytest.raises(op.InvalidModelError, match="static input dim"):
        op.prune(model, "l2", ratio=0.3)


def test_graph_without_outputs_is_refused():
    model = two_convs()
    del model.graph.output[:]
    with pytest.raises(op.InvalidModelError, match="no outputs"):
        op.prune(model, "l2", ratio=0.3)


# --------------------------------------------------------------------------- written models

def test_written_model_loads_with_default_optimisations(tmp_path):
    result = op.prune(fixture("resnet_legacy"), "l2", ratio=0.3)
    path = tmp_path / "out.onnx"
    op.save_model(result.model, path, reference=fixture("resnet_legacy"))
    import onnxruntime as ort

    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_save_refuses_a_tensor_with_two_value_fields(tmp_path):
    """save_model's checker sees stubbed weights: the real tensors' fields are checked on their own."""
    model = two_convs()
    weight = next(t for t in model.graph.initializer if t.name == "c1.weight")
    weight.float_data.extend([1.0])
    with pytest.raises(op.OnnxPruneError, match="float_data and raw_data"):
        op.save_model(model, tmp_path / "out.onnx")
    assert not os.path.exists(tmp_path / "out.onnx")


# --------------------------------------------------------------------------- oracles that fit the data

def test_fp16_fixture_passes_verify_on_the_cli(tmp_path):
    out = tmp_path / "out.onnx"
    assert main(["prune", os.path.join(FIXTURES, "helper_fp16.onnx"), "-o", str(out), "--ratio", "0.3",
                 "--verify"]) == 0
    assert onnx.load(out).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16


def test_tolerance_follows_the_dtype():
    from onnxprune.verify import tolerance_for

    assert tolerance_for(np.dtype(np.float32), 1e-4) == 1e-4
    assert tolerance_for(np.dtype(np.float16), 1e-4) == 1e-2
    assert tolerance_for(np.dtype(np.float16), 0.1) == 0.1


def test_weight_that_is_a_graph_output_is_compared_not_inf():
    model = two_convs()
    model.graph.output.append(helper.make_tensor_value_info("c1.weight", TensorProto.FLOAT, [8, 4, 3, 3]))
    result = op.prune(model, "l2", ratio=0.5, verify=True)
    report = op.verify_pruning(model, result)
    assert report.ok and report.outputs["c1.weight"]["rel"] == 0.0


def test_declared_output_dims_that_contradict_onnxruntime_are_refused():
    """A graph output declared 16 wide that computes 1 wide (hidden from ONNX inference behind a Shape-computed
    Reshape): refused at analysis, not after surgery folded the Shape and the checker saw the contradiction."""
    g = GraphBuilder()
    a = g.conv("x", 4, 8, "c1")
    shape = g.node("Shape", [a], name="shape")
    b = g.node("Reshape", [a, shape], name="reshape")
    g.conv(b, 8, 4, "c2", k=1)
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": (1, 4, 8, 8)}, {"y": (1, 4, 8, 8)})
    model.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 16
    try:
        result = op.prune(model, "l2", ratio=0.5)
    except op.InvalidModelError as exc:
        assert "declared" in str(exc) or "checker" in str(exc) or "inference" in str(exc)
        return
    assert result.model.graph.output[0].type.tensor_type.shape.dim[3].dim_value == 16


def test_reshape_of_a_huge_block_is_blocked_without_allocating():
    """The channel axis merged with 2**16 x 2**16 spatial positions: the tracker would need 2**34 ids."""
    g = GraphBuilder()
    a = g.conv("x", 4, 8, "c1", k=1)
    g.node("Reshape", [a, g.const("flat", (2,), [1, -1], dtype=np.int64)], name="flatten")
    g.nodes[-1].output[0] = "y"
    model = g.model({"x": (1, 4, 2**16, 2**16)}, {"y": (1, 8 * 2**32)})
    analysis = op.analyze(model)
    assert not any(g.prunable for g in analysis.groups)
    assert any(g.reason and "more than onnxprune tracks" in g.reason for g in analysis.groups)


def test_function_of_an_older_opset_is_inlined_not_dropped(tmp_path):
    """The inliner leaves a function whose opset differs from the model's unless told to convert it."""
    model = two_convs()
    relu = next(n for n in model.graph.node if n.name == "relu")
    function = helper.make_function("local", "F", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                                    [helper.make_opsetid("", 13)])
    relu.op_type, relu.domain = "F", "local"
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(function)
    result = op.decompose(model, method="svd", rank_ratio=0.5)
    assert not result.model.functions and all(n.domain != "local" for n in result.model.graph.node)
    op.save_model(result.model, tmp_path / "out.onnx")


def test_generated_shape_operand_with_millions_of_entries_is_refused():
    g = GraphBuilder()
    g.node("Expand", ["x", "shape"], name="expand")
    g.nodes[-1].output[0] = "y"
    graph = helper.make_graph(g.nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4]),
                                             helper.make_tensor_value_info("shape", TensorProto.INT64, [10**7])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    with pytest.raises(op.InvalidRequestError, match="shape operand"):
        runtime.make_inputs(model)


def test_function_whose_conversion_breaks_ssa_is_kept(tmp_path):
    """Fuzz finding: a Tile (opset 9) wrapped in a function of a model moved to opset 23; the inliner's version
    conversion reuses the name of an existing tensor. The function is then kept, and the result stays valid."""
    source = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "pytorch-operator",
                          "test_operator_repeat_dim_overflow", "model.onnx")
    model = onnx.load(source)
    tile = next(n for n in model.graph.node if n.op_type == "Tile")
    body = helper.make_node("Tile", ["x0", "x1"], ["y0"])
    model.functions.append(helper.make_function("fz.local", "F", ["x0", "x1"], ["y0"], [body],
                                                [helper.make_opsetid("", 9)]))
    model.opset_import.append(helper.make_opsetid("fz.local", 1))
    tile.op_type, tile.domain = "F", "fz.local"
    next(o for o in model.opset_import if o.domain == "").version = 23
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    try:
        result = op.prune(str(path), target_macs=0.7)
    except op.OnnxPruneError:
        return
    op.save_model(result.model, tmp_path / "out.onnx")


def test_budget_on_a_conv_whose_weight_is_a_vector_is_refused_cleanly():
    """Fuzz finding: a grouped Conv rewired to read its 1-D bias as weight made the MAC cost code index past the
    weight's rank."""
    model = onnx.load(os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "pytorch-converted",
                                   "test_Conv2d_groups_thnn", "model.onnx"))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input[1] = conv.input[2]
    with pytest.raises(op.OnnxPruneError):
        op.prune(model, target_macs=0.7)
