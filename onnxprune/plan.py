"""The serialisable pruning plan: which units every prunable channel group keeps.

A plan is JSON, one line per group, editable by hand::

    {"format": "onnxprune-plan/1", "fingerprint": "<sha256>", "method": "l2",
     "options": {"policy": "average", ...},
     "groups": [
      {"id": 0, "size": 16, "layers": ["conv1", "conv2"], "kept": [0, 1, 3, ...]},
      ...]}

`kept` lists unit positions of the group (0 .. size-1, as in `op.analyze(model).groups[id]`); for a plain
conv group a position is the output channel index of its layers; in a grouped conv it is the position inside
every group, at a Reshape into heads a dim (or a head with whole-head pruning). Apply a plan with
`op.prune_with_plan(model, plan)`: it checks the fingerprint (graph structure, initializer names and shapes;
not weight values, so a fine-tuned copy of the model accepts the plan) and the groups.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.errors import InvalidRequestError
from onnxprune.options import Options

FORMAT = "onnxprune-plan/1"


@dataclass
class PlanGroup:
    id: int
    size: int
    layers: list[str]
    kept: list[int]


@dataclass
class Plan:
    fingerprint: str
    options: Options
    groups: list[PlanGroup]
    method: str | None = None

    def kept(self) -> dict[int, list[int]]:
        """group id -> kept unit positions."""
        return {g.id: list(g.kept) for g in self.groups}

    def as_dict(self) -> dict:
        return {"format": FORMAT, "fingerprint": self.fingerprint, "method": self.method,
                "options": dataclasses.asdict(self.options), "groups": [dataclasses.asdict(g) for g in self.groups]}

    def to_json(self) -> str:
        """Indented JSON with one group per line (easy to diff and edit)."""
        head = self.as_dict()
        groups = head.pop("groups")
        body = ",\n".join("  " + json.dumps(g) for g in groups)
        return json.dumps(head, indent=1)[:-2] + ',\n "groups": [\n' + body + "\n ]\n}\n"

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json())

    @classmethod
    def load(cls, source: "Plan | dict | str | os.PathLike") -> "Plan":
        """A plan from a Plan, a parsed dict, a JSON file path or JSON text."""
        if isinstance(source, Plan):
            return source
        if isinstance(source, (str, os.PathLike)):
            source = _read(source)
        if not isinstance(source, dict):
            raise InvalidRequestError("a plan must be a Plan, a dict, a JSON file or JSON text")
        return cls.from_dict(source)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if data.get("format") != FORMAT:
            raise InvalidRequestError(f"not an onnxprune plan (format {data.get('format')!r}, expected {FORMAT!r})")
        try:
            options = Options(**data.get("options", {}))
            groups = [PlanGroup(int(g["id"]), int(g["size"]), list(g.get("layers", [])), list(g["kept"]))
                      for g in data["groups"]]
            return cls(str(data["fingerprint"]), options, groups, data.get("method"))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"malformed plan: {type(exc).__name__}: {exc}") from None


def _read(source: str | os.PathLike) -> dict:
    text = str(source)
    if not text.lstrip().startswith("{"):
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            raise InvalidRequestError(f"plan file '{source}' does not exist") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"plan is not valid JSON: {exc}") from None


def fingerprint(model: onnx.ModelProto) -> str:
    """sha256 of the graph structure (nodes, attributes, inputs/outputs) and initializer names, types, shapes."""
    h = hashlib.sha256()
    graph = model.graph
    for node in graph.node:
        h.update(repr((node.op_type, node.domain, list(node.input), list(node.output),
                       [_attribute_key(a) for a in node.attribute])).encode())
    for value in list(graph.input) + list(graph.output):
        h.update(repr((value.name, value.type.tensor_type.elem_type)).encode())
    for tensor in graph.initializer:
        h.update(repr((tensor.name, tensor.data_type, list(tensor.dims))).encode())
    return h.hexdigest()


def _attribute_key(attr: onnx.AttributeProto) -> tuple:
    if attr.type == onnx.AttributeProto.TENSOR:
        return attr.name, attr.t.data_type, tuple(attr.t.dims)
    if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        return attr.name, attr.type
    return attr.name, repr(onnx.helper.get_attribute_value(attr))


def make_plan(analysis, removed: dict[int, np.ndarray], options: Options, method: str | None, model_fingerprint: str) -> Plan:
    """The plan of a pruning run: every prunable group with the units it keeps."""
    groups = []
    for group in analysis.groups:
        if not group.prunable:
            continue
        gone = set(removed.get(group.id, np.zeros(0, dtype=np.int64)).tolist())
        groups.append(PlanGroup(group.id, group.size, list(group.layers),
                                [k for k in range(group.size) if k not in gone]))
    return Plan(model_fingerprint, options, groups, method)


def plan_removal(analysis, plan: Plan) -> dict[int, np.ndarray]:
    """group id -> removed unit positions, after checking the plan against the analysed model."""
    removed: dict[int, np.ndarray] = {}
    for entry in plan.groups:
        if not 0 <= entry.id < len(analysis.groups):
            raise InvalidRequestError(f"plan group {entry.id} does not exist in this model")
        group = analysis.groups[entry.id]
        if group.size != entry.size or (entry.layers and list(entry.layers) != list(group.layers)):
            raise InvalidRequestError(f"plan group {entry.id} (layers {entry.layers[:4]}, size {entry.size}) does not "
                                      f"match the model's group {group.id} (layers {group.layers[:4]}, size "
                                      f"{group.size}); were the plan's options edited?")
        kept = _kept_positions(entry)
        if len(kept) < group.size:
            if not group.prunable:
                raise InvalidRequestError(f"plan group {entry.id} cannot be pruned: {group.reason}")
            removed[entry.id] = np.array(sorted(set(range(group.size)) - kept), dtype=np.int64)
    return removed


def _kept_positions(entry: PlanGroup) -> set[int]:
    bad = [k for k in entry.kept if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < entry.size]
    if bad:
        raise InvalidRequestError(f"plan group {entry.id}: kept positions {bad[:5]} are not in [0, {entry.size - 1}]")
    if not entry.kept:
        raise InvalidRequestError(f"plan group {entry.id} keeps nothing (layers {entry.layers[:4]}); keep at least one")
    return set(entry.kept)
