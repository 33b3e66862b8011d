"""LatencyCostModel, the measured-latency implementation of onnxprune.cost.CostModel; cost files (save / load).

A cost file (`cost.save(path)`, `onnxprune profile MODEL -o cost.json`) is JSON:

    {"format": "onnxprune-cost/1", "fingerprint": "<onnxprune.plan.fingerprint of the model>",
     "environment": {"provider": ..., "threads": ..., "batch": ..., "onnxruntime": ..., "cpu": ...},
     "total_ms": 12.3, "scale": 1.1, "skipped": {layer: reason},
     "layers": {name: {"op_type": "Conv", "in": 64, "out": 128, "tied": false, "signature": "<key>"}},
     "curves": {"<signature>": [[kept_in, kept_out, ms], ...]},
     "tensors": {tensor: [size_in, size_out, ms]},
     "products": {tensor: [ms, [[kept, ms], ...]]},   (products of two activations on a term: profile.products)
     "chains": {...}}   (only when profiled with decomposition=: profile.chains.ChainCosts.as_dict)

"scale" multiplies every curve: the layers' time in the whole model over their micro-graphs' (1 when absent).
load_cost refuses a file made for another model, provider, thread count, batch, onnxruntime version or CPU.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from onnxprune.cost import TENSOR_TERM, predicted_cost
from onnxprune.errors import InvalidRequestError
from onnxprune.profile.chains import ChainCosts
from onnxprune.profile.curves import LayerCurve, axis_curve, check_counts, stair_value

FORMAT = "onnxprune-cost/1"


@dataclass(frozen=True)
class LayerInfo:
    """A modelled layer in a cost model: its op, whether in/out are tied (depthwise), its signature key."""

    op_type: str
    tied: bool
    signature: str


class LatencyCostModel:
    """Measured onnxruntime latency (ms): `total` of the whole model, `layer_cost` per layer and kept counts.

    Predicted latency of a pruned model = total - sum(layer_cost(n, *layers[n])) + sum(layer_cost(n, kin, kout))
    plus the change of the `tensors` terms (the latency outside the layers put on the activation tensors,
    profile.activations); layer_cost is the measured curve times `scale` (the layers' time in the whole model
    over their micro-graphs', from its profile): `predict` and onnxprune.cost.predicted_cost compute it. Layers listed in `skipped` are
    not modelled (their cost is in the part outside the layers).
    Its curves are staircases (`stepped`): the budget allocator snaps kept counts to the top of their stair.
    """

    stepped = True

    def __init__(self, *, total: float, layers: Mapping[str, tuple[int, int]], info: Mapping[str, LayerInfo],
                 curves: Mapping[str, LayerCurve], fingerprint: str, environment: Mapping[str, Any],
                 skipped: Mapping[str, str] | None = None, chains: ChainCosts | None = None,
                 tensors: Mapping[str, tuple[int, int, float]] | None = None, scale: float = 1.0,
                 products: Mapping[str, tuple[float, list[tuple[int, float]]]] | None = None) -> None:
        self.total = float(total)
        self.layers = dict(layers)
        self.info = dict(info)
        self.curves = dict(curves)
        self.fingerprint = fingerprint
        self.environment = dict(environment)
        self.skipped = dict(skipped or {})
        self.chains = chains  # measured factor chains (op.profile(..., decomposition=...)), else None
        self.tensors = dict(tensors or {})
        self.scale = float(scale)
        # products of two activations on a tensor term (profile.products): {tensor: (ms in the model, measured
        # (kept count, ms) points)}, charged along their measured curve
        self.products = {name: (float(ms), [(int(c), float(t)) for c, t in points])
                         for name, (ms, points) in (products or {}).items()}
        self._product_curves = {name: axis_curve(points) for name, (_, points) in self.products.items()}

    def tensor_cost(self, tensor: str, kept_in: float, kept_out: float) -> float:
        """A tensor term's latency (ms) at these kept counts: its elementwise part scales with the kept elements,
        a product of two activations on it (products) follows its measured curve."""
        size_in, size_out, linear = self.tensors[tensor]
        ms = linear * kept_in / size_in * kept_out / size_out
        if tensor in self.products:
            curve = self._product_curves[tensor]
            ms += self.products[tensor][0] * stair_value(curve, kept_out) / max(float(curve[1][-1]), 1e-12)
        return ms

    def layer_cost(self, node: str, kept_in: float, kept_out: float) -> float:
        """Latency in ms of layer `node` with kept_in input and kept_out output channels (depthwise: pass the
        same count twice; the kept input count decides)."""
        if node not in self.layers:
            raise InvalidRequestError(f"layer '{node}' is not in the cost model"
                                      + (f" ({self.skipped[node]})" if node in self.skipped else ""))
        check_counts(node, self.layers[node], kept_in, kept_out)
        return self.scale * self.curves[self.info[node].signature].cost(kept_in, kept_out)

    def predict(self, kept: Mapping[str, tuple[int, int]]) -> float:
        """Predicted latency (ms) of the model with these terms (layers by node name, tensor terms by
        onnxprune.cost.TENSOR_TERM + tensor name) at these (kept_in, kept_out) counts; a layer not given stays."""
        unknown = [name for name in kept if name not in self.layers and not name.startswith(TENSOR_TERM)]
        for name in unknown:
            self.layer_cost(name, 1, 1)  # raises the usual error
        return predicted_cost(self, kept)

    def layer_latencies(self) -> dict[str, float]:
        """{layer: latency ms at full channels} (divide by `total` for its share of the model)."""
        return {name: self.layer_cost(name, *counts) for name, counts in self.layers.items()}

    def check_errors(self) -> dict[str, list[float]]:
        """{layer: relative errors of the 2-D model at its held-out diagonal points} (measured, never fitted)."""
        return {name: self.curves[i.signature].check_errors() for name, i in self.info.items()}

    # ------------------------------------------------------------------ files

    def as_dict(self) -> dict[str, Any]:
        layers = {name: {"op_type": self.info[name].op_type, "in": c[0], "out": c[1], "tied": self.info[name].tied,
                         "signature": self.info[name].signature} for name, c in self.layers.items()}
        used = {i.signature for i in self.info.values()}
        return {"format": FORMAT, "fingerprint": self.fingerprint, "environment": self.environment,
                "total_ms": self.total, "scale": self.scale, "skipped": self.skipped, "layers": layers,
                "curves": {s: self.curves[s].as_list() for s in sorted(used)},
                "tensors": {name: list(term) for name, term in sorted(self.tensors.items())},
                **({"products": {name: [ms, [list(p) for p in points]] for name, (ms, points)
                                 in sorted(self.products.items())}} if self.products else {}),
                **({"chains": self.chains.as_dict()} if self.chains is not None else {})}

    def save(self, path: str | os.PathLike) -> None:
        """Write the cost file (atomically)."""
        from onnxprune.profile.cache import write_json

        write_json(os.fspath(path), self.as_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyCostModel:
        layers, info = {}, {}
        for name, entry in data["layers"].items():
            layers[name] = (int(entry["in"]), int(entry["out"]))
            info[name] = LayerInfo(entry["op_type"], bool(entry["tied"]), entry["signature"])
        curves = {}
        for name, entry in info.items():
            if entry.signature not in curves:
                points = {(int(i), int(o)): float(ms) for i, o, ms in data["curves"][entry.signature]}
                curves[entry.signature] = LayerCurve(*layers[name], entry.tied, points)
        return cls(total=data["total_ms"], layers=layers, info=info, curves=curves,
                   fingerprint=data["fingerprint"], environment=data["environment"], skipped=data.get("skipped"),
                   chains=ChainCosts.from_dict(data["chains"]) if "chains" in data else None,
                   tensors={name: (int(i), int(o), float(ms)) for name, (i, o, ms) in data.get("tensors", {}).items()},
                   scale=float(data.get("scale", 1.0)), products=data.get("products"))

    def __repr__(self) -> str:
        return (f"LatencyCostModel(total={self.total:.3f} ms, {len(self.layers)} layers, "
                f"{self.environment.get('provider')}, threads={self.environment.get('threads')})")


def load_cost(path: str | os.PathLike, model: Any, *, provider: str = "CPUExecutionProvider",
              threads: int | None = None, batch: int = 1) -> LatencyCostModel:
    """The cost model in a cost file, refused (InvalidRequestError with the reason) when it was made for another
    model, provider, thread count, batch, onnxruntime version or CPU than `model` and these settings here."""
    from onnxprune.ir import load_model
    from onnxprune.plan import fingerprint
    from onnxprune.profile.timing import environment

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise InvalidRequestError(f"cost file '{path}' does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"cost file '{path}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InvalidRequestError(f"cost file '{path}' is not an onnxprune cost file (format {FORMAT}); "
                                  "make one with `onnxprune profile MODEL -o cost.json`")
    if data.get("fingerprint") != fingerprint(load_model(model)):
        raise InvalidRequestError(f"cost file '{path}' was made for another model (graph fingerprint differs); "
                                  "profile this model again")
    here = environment(provider, threads, batch)
    for key, value in here.items():
        recorded = data.get("environment", {}).get(key)
        if recorded != value:
            raise InvalidRequestError(f"cost file '{path}' was measured with {key} {recorded!r}, not {value!r} "
                                      "as here; profile again with these settings")
    try:
        return LatencyCostModel.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidRequestError(f"cost file '{path}' is damaged: {exc!r}") from None
