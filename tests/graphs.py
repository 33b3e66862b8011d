"""Tiny hand-built graphs for rule-level tests (onnx.helper, IR 10 so onnxruntime loads them)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


class GraphBuilder:
    """Collects nodes and random float initializers; `model()` makes a checked ModelProto."""

    def __init__(self, opset: int = 18):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opset = opset
        self.count = 0

    def const(self, name: str, shape, values=None, dtype=np.float32) -> str:
        array = RNG.standard_normal(shape).astype(dtype) if values is None else np.asarray(values, dtype=dtype)
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], name: str | None = None, outputs: int = 1, **attrs) -> list[str] | str:
        self.count += 1
        name = name or f"{op.lower()}{self.count}"
        outs = [f"{name}_out{k}" if outputs > 1 else f"{name}_out" for k in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs if outputs > 1 else outs[0]

    def conv(self, x: str, cin: int, cout: int, name: str, k: int = 3, group: int = 1, bias: bool = True) -> str:
        w = self.const(f"{name}.weight", (cout, cin // group, k, k))
        inputs = [x, w] + ([self.const(f"{name}.bias", (cout,))] if bias else [])
        return self.node("Conv", inputs, name=name, pads=[k // 2] * 4, group=group)

    def model(self, inputs: dict[str, tuple], outputs: dict[str, tuple], elem=TensorProto.FLOAT) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "test",
            [helper.make_tensor_value_info(n, elem, s) for n, s in inputs.items()],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)], ir_version=10)
        onnx.checker.check_model(model, full_check=True)
        return model
