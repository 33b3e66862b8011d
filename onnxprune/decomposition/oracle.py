"""Reconstruction oracle (DESIGN.md §4.2): every chain equals the original op carrying the low-rank kernel
the chain encodes (exact at any rank); the whole model equals the original with those kernels swapped in,
and equals the original itself when every layer kept its full Tucker / SVD rank."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune import ir
from onnxprune.runtime import make_inputs, run
from onnxprune.verify import compare_arrays, verify
from onnxprune.decomposition.candidates import layer_name
from onnxprune.decomposition.chains import encoded_kernel
from onnxprune.decomposition.results import DecompositionResult, LayerDecomposition
from onnxprune.graph import NameSource
from onnxprune.rebuild import rebuild


@dataclass
class DecompositionReport:
    ok: bool
    tol: float
    chains: dict[str, float] = field(default_factory=dict)  # layer -> chain vs op with encoded kernel
    lowrank_error: float = 0.0  # whole model vs the original carrying the encoded kernels
    original_error: float = 0.0  # whole model vs the original
    full_rank: bool = True  # every layer at full Tucker / SVD rank: original_error must be within tol

    def __str__(self) -> str:
        lines = [f"reconstruction oracle: {'OK' if self.ok else 'FAILED'} (tol {self.tol:g})"]
        lines += [f"  chain {name}: rel error {err:.3g}" for name, err in self.chains.items()]
        lines.append(f"  whole model vs original with low-rank kernels: rel error {self.lowrank_error:.3g}")
        kind = "must match, all layers at full rank" if self.full_rank else "informative, ranks below full"
        lines.append(f"  whole model vs original: rel error {self.original_error:.3g} ({kind})")
        return "\n".join(lines)


def verify_decomposition(original, result: DecompositionResult, inputs=None, *, tol: float = 1e-4,
                         seed: int = 0) -> DecompositionReport:
    """Check `result` against the `original` model it was made from, in onnxruntime."""
    source = ir.load_model(original)
    inputs = make_inputs(source, seed=seed) if inputs is None else inputs
    done = result.decomposed
    nodes = {layer_name(n): n for n in source.graph.node}
    factor_arrays = _initializer_arrays(result.model)
    kernels = {layer.name: _kernel(layer, nodes[layer.name], factor_arrays, source) for layer in done}
    source_inits = {t.name for t in source.graph.initializer}
    captured_names = [t for layer in done for i, t in enumerate(nodes[layer.name].input)
                      if t and i != 1 and t not in source_inits]
    captured = run(source, inputs, list(dict.fromkeys(captured_names))) if captured_names else {}
    report = DecompositionReport(ok=True, tol=tol)
    for layer in done:
        report.chains[layer.name] = _check_chain(source, result.model, layer, nodes[layer.name],
                                                 kernels[layer.name], captured)
    lowrank = _with_kernels(source, done, nodes, kernels)
    report.lowrank_error = verify(lowrank, result.model, inputs, tol=tol).max_rel_error
    report.original_error = verify(source, result.model, inputs, tol=tol).max_rel_error
    report.full_rank = all(layer.method != "cp" and layer.ranks == layer.full_ranks for layer in done)
    errors = [*report.chains.values(), report.lowrank_error] + ([report.original_error] if report.full_rank else [])
    report.ok = all(e <= tol for e in errors)
    return report


def _initializer_arrays(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _kernel(layer: LayerDecomposition, node: onnx.NodeProto, inits: dict, source: onnx.ModelProto) -> np.ndarray:
    """The encoded kernel, in the original weight's dtype."""
    factors = [ir.tensor_array(inits[name], ir.base_dir(source)) for name in layer.factors]
    return encoded_kernel(layer.method, node, factors).astype(factors[0].dtype)


def _check_chain(source, model, layer, node, kernel, captured) -> float:
    """Max relative error of the chain against the single original op with the encoded kernel."""
    weight = numpy_helper.from_array(kernel, node.input[1])
    reference = _mini_model(source, [node], [weight], source, captured)
    by_name = {n.name: n for n in model.graph.node}
    chain = _mini_model(source, [by_name[n] for n in layer.nodes], [], model, captured)
    feeds = {v.name: captured[v.name] for v in reference.graph.input}
    feeds.update({v.name: captured[v.name] for v in chain.graph.input})
    out = node.output[0]
    expected = run(reference, feeds)[out]
    got = run(chain, feeds)[out]
    return compare_arrays(expected, got)["rel"]


def _mini_model(source, nodes, extra_inits, owner, captured) -> onnx.ModelProto:
    """A model of just `nodes`: constants of `owner` inlined, everything else fed from `captured`."""
    owner_inits = _initializer_arrays(owner)
    produced = {o for n in nodes for o in n.output}
    given = {t.name for t in extra_inits}
    inits, inputs = list(extra_inits), []
    for name in dict.fromkeys(t for n in nodes for t in n.input):
        if not name or name in produced or name in given:
            continue
        if name in owner_inits:
            array = ir.tensor_array(owner_inits[name], ir.base_dir(owner))
            inits.append(numpy_helper.from_array(np.array(array), name))
        else:
            array = captured[name]
            inputs.append(helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(array.dtype),
                                                        array.shape))
    elem = inits[0].data_type
    outputs = [helper.make_tensor_value_info(nodes[-1].output[0], elem, None)]
    graph = helper.make_graph(list(nodes), "oracle", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=source.opset_import, ir_version=source.ir_version)


def _with_kernels(source, done, nodes, kernels) -> onnx.ModelProto:
    """The original whose decomposed layers read the encoded kernels (the original is left as it was)."""
    namer = NameSource(source.graph)
    index = {layer_name(n): i for i, n in enumerate(source.graph.node)}
    swapped: dict[int, onnx.NodeProto] = {}
    added = {}
    for layer in done:
        name = namer(f"{layer.name}/oracle_kernel")
        added[name] = numpy_helper.from_array(kernels[layer.name], name)
        node = onnx.NodeProto()
        node.CopyFrom(source.graph.node[index[layer.name]])
        node.input[1] = name
        swapped[index[layer.name]] = node
    graph_nodes = [swapped.get(i, n) for i, n in enumerate(source.graph.node)]
    return rebuild(source, graph_nodes, added=added, keep_value_info=True)
