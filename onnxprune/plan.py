"""Plan files: every prunable layer with a value slot to edit (like NetsPresso's "available layers"), plus,
once a plan has run, the channels each group actually kept, so that the run can be replayed exactly.

A plan is JSON, one line per layer and per group, editable by hand::

    {"format": "onnxprune-plan/1", "fingerprint": "<sha256>", "method": "l2",
     "scope": "uniform", "recommendation": "slamp", "ratio": 0.5, "seed": 0,
     "options": {"policy": "average", ...},
     "layers": [
      {"name": "conv1", "op_type": "Conv", "channels": 16, "group": 0, "group_size": 16, "ratio": 0.25},
      {"name": "conv2", "op_type": "Conv", "channels": 32, "group": 1, "group_size": 32, "indices": [0, 5]},
      ...],
     "layers_digest": "<sha256 of the layer values when the groups were recorded>",
     "groups": [
      {"id": 0, "size": 16, "layers": ["conv1", "conv3"], "kept": [0, 1, 3, ...]},
      ...]}

Making and applying plans is the pruning path's job (onnxprune.pruning); this module is the plan as data.

Making one: `op.make_plan(model, method, ratio, scope=, recommendation=, options=)` or
`onnxprune plan MODEL -o plan.json`. It lists every layer of a prunable channel group (the layers of a group
are coupled: they lose the same channels) with one value slot:

  * `ratio`: the fraction of the layer's group units to remove, in [0, 1) (as `op.prune(ratios=...)`; when
    layers of one group disagree, the larger ratio wins). Filled with the ratio asked for (scope "uniform"),
    or with each group's computed ratio (scope "global" or the SLAMP recommendation: removed / group size),
    or 0.0 when no ratio was given. The plan's `method`, `options` and `seed` choose which channels go.
  * `indices` (plans for method PR_ID / "index"): output channels of this layer to remove (as
    `op.prune_by_index`); `[]` removes nothing.

`scope`, `recommendation` and `ratio` in the header only record how the layer values were computed.

Applying one: `op.apply_plan(model, plan)` (alias `op.prune_with_plan`) or
`onnxprune apply plan.json MODEL -o OUT`. It checks the fingerprint (graph structure, initializer names and
shapes; not weight values, so a fine-tuned copy of the model accepts the plan), then

  1. if the plan has a `groups` section (written by every run: `result.plan`, `prune --save-plan`,
     `apply --save-plan`), it removes exactly what `groups` records (`kept` lists unit positions of the group,
     0 .. size-1, as in `op.analyze(model).groups[id]`; edit them by hand if you like): a byte-identical
     replay. If a layer value was edited after the recording (`layers_digest` differs), it refuses instead of
     silently ignoring the edit: delete `groups` (and `layers_digest`) to apply the edited values.
  2. otherwise it applies the layer values: first every `indices` entry (exactly those channels, and every
     channel coupled to them), then the `ratio` entries on the remaining groups, scored by the plan's method.
     A group cannot get both (non-empty indices on one of its layers and a ratio > 0 on another): that is an
     error, as is a layer the model does not have or cannot prune, a bad ratio or an out-of-range index.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnxprune.errors import InvalidRequestError
from onnxprune.files import write_text
from onnxprune.options import Options

FORMAT = "onnxprune-plan/1"
HELP = ("Edit a layer's ratio (fraction of its group's channels to remove, in [0, 1)) or indices (its output "
        "channels to remove), then run: onnxprune apply PLAN MODEL -o OUT. A 'groups' section (written by a run) "
        "records the channels kept and is replayed exactly; delete it and 'layers_digest' to apply edited values.")


@dataclass
class PlanGroup:
    id: int
    size: int
    layers: list[str]
    kept: list[int]


@dataclass
class PlanLayer:
    """One prunable layer and its value slot: `ratio` (fraction of its group's units) or `indices` (its channels)."""

    name: str
    op_type: str | None = None
    channels: int | None = None  # the layer's output channels (what `indices` index)
    group: int | None = None  # channel group id (layers of one group lose the same channels)
    group_size: int | None = None  # units of the group (what `ratio` is a fraction of)
    ratio: float | None = None
    indices: list[int] | None = None

    def as_dict(self) -> dict:
        out = {"name": self.name, "op_type": self.op_type, "channels": self.channels, "group": self.group,
               "group_size": self.group_size}
        if self.indices is not None:
            out["indices"] = [_plain(i) for i in self.indices]
        else:
            out["ratio"] = _plain(self.ratio)
        return out

    @classmethod
    def from_dict(cls, data) -> "PlanLayer":
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise InvalidRequestError(f"malformed plan: a layer entry must be an object with a 'name', not {data!r:.80}")
        name = data["name"]
        if ("ratio" in data) == ("indices" in data):
            raise InvalidRequestError(f"plan layer '{name}' must have exactly one of 'ratio' (a fraction of its "
                                      f"group's channels) or 'indices' (channels to remove)")
        indices = data.get("indices")
        if "indices" in data and not isinstance(indices, list):
            raise InvalidRequestError(f"plan layer '{name}': indices must be a list of channel indices, not "
                                      f"{indices!r}")
        return cls(name, data.get("op_type"), data.get("channels"), data.get("group"), data.get("group_size"),
                   data.get("ratio"), None if indices is None else list(indices))


@dataclass
class Plan:
    fingerprint: str
    options: Options
    groups: list[PlanGroup] = field(default_factory=list)  # recorded: what a run kept (replayed when present)
    method: str | None = None
    layers: list[PlanLayer] = field(default_factory=list)  # the editable request, one entry per prunable layer
    scope: str | None = None
    recommendation: str | None = None
    ratio: float | None = None
    seed: int = 0
    layers_digest: str | None = None  # digest of the layer values the groups were recorded for

    @property
    def recorded(self) -> bool:
        """True when the plan holds what a run removed (`groups`), which `apply_plan` replays."""
        return bool(self.groups)

    def kept(self) -> dict[int, list[int]]:
        """group id -> kept unit positions (recorded plans)."""
        return {g.id: list(g.kept) for g in self.groups}

    def removed(self) -> dict[int, list[int]]:
        """group id -> removed unit positions (recorded plans)."""
        return {g.id: sorted(set(range(g.size)) - set(g.kept)) for g in self.groups}

    def as_dict(self) -> dict:
        out = {"format": FORMAT, "help": HELP, "fingerprint": self.fingerprint, "method": self.method,
               "scope": self.scope, "recommendation": self.recommendation, "ratio": self.ratio, "seed": self.seed,
               "options": dataclasses.asdict(self.options), "layers": [layer.as_dict() for layer in self.layers]}
        if self.groups:
            if self.layers_digest is not None:
                out["layers_digest"] = self.layers_digest
            out["groups"] = [dataclasses.asdict(g) for g in self.groups]
        return out

    def to_json(self) -> str:
        """Indented JSON with one layer and one group per line (easy to diff and edit)."""
        head = self.as_dict()
        lists = {key: head.pop(key) for key in ("layers", "groups") if key in head}
        digest = head.pop("layers_digest", None)
        text = json.dumps(head, indent=1)[:-2]
        for key, rows in lists.items():
            if key == "groups" and digest is not None:
                text += f',\n "layers_digest": {json.dumps(digest)}'
            body = ",\n".join("  " + json.dumps(row) for row in rows)
            text += f',\n "{key}": [\n{body}\n ]' if rows else f',\n "{key}": []'
        return text + "\n}\n"

    def save(self, path: str | os.PathLike) -> None:
        write_text(path, self.to_json())

    @classmethod
    def load(cls, source: "Plan | dict | str | os.PathLike") -> "Plan":
        """A plan from a Plan, a parsed dict, a JSON file path or JSON text."""
        if isinstance(source, Plan):
            return source
        where = "plan"
        if isinstance(source, (str, os.PathLike)):
            where = "plan" if str(source).lstrip().startswith("{") else f"plan file '{os.fspath(source)}'"
            source = _read(source)
        if not isinstance(source, dict):
            raise InvalidRequestError(f"{where}: a plan must be a Plan, a JSON object, a JSON file or JSON text")
        try:
            return cls.from_dict(source)
        except InvalidRequestError as exc:
            if where == "plan":
                raise
            raise InvalidRequestError(f"{where}: {exc}") from None

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        if data.get("format") != FORMAT:
            raise InvalidRequestError(f"not an onnxprune plan (format {data.get('format')!r}, expected {FORMAT!r})")
        if "layers" not in data and "groups" not in data:
            raise InvalidRequestError("malformed plan: it has neither 'layers' nor 'groups'")
        try:
            options = Options(**data.get("options", {}))
            groups = [PlanGroup(int(g["id"]), int(g["size"]), list(g.get("layers", [])), list(g["kept"]))
                      for g in data.get("groups") or []]
            if not isinstance(data.get("layers", []), list):
                raise TypeError("'layers' must be a list")
            layers = [PlanLayer.from_dict(entry) for entry in data.get("layers", [])]
            ratio = data.get("ratio")
            return cls(str(data["fingerprint"]), options, groups, data.get("method"), layers, data.get("scope"),
                       data.get("recommendation"), None if ratio is None else float(ratio),
                       int(data.get("seed") or 0), data.get("layers_digest"))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRequestError(f"malformed plan: {type(exc).__name__}: {exc}") from None

    # -- filled in by the pruning functions ------------------------------------------------------------------
    def describe(self, analysis, *, ratios: dict[int, float] | None = None,
                 indices: dict[str, list[int]] | None = None, scope: str | None = None,
                 recommendation: str | None = None, ratio: float | None = None, seed: int = 0) -> "Plan":
        """Set the layer entries (group id -> ratio, or layer -> indices) and the header; seal the recording."""
        self.layers = plan_layers(analysis, ratios=ratios, indices=indices)
        self.scope, self.recommendation, self.ratio, self.seed = scope, recommendation, ratio, seed
        self.layers_digest = layers_digest(self.layers) if self.groups else None
        return self

    def adopt(self, request: "Plan") -> "Plan":
        """Take the layer entries and header of the plan this run applied; seal the recording."""
        self.layers = [dataclasses.replace(layer, indices=None if layer.indices is None else
                                           [_plain(i) for i in layer.indices]) for layer in request.layers]
        self.method = request.method if request.method is not None else self.method
        self.scope, self.recommendation, self.ratio = request.scope, request.recommendation, request.ratio
        self.seed = request.seed
        self.layers_digest = layers_digest(self.layers) if self.groups else None
        return self


def plan_layers(analysis, *, ratios: dict[int, float] | None = None,
                indices: dict[str, list[int]] | None = None) -> list[PlanLayer]:
    """One entry per layer of a prunable group, in graph order: `indices` slots when `indices` is given
    (layers not in it get []), else `ratio` slots (group id -> ratio; other groups 0.0)."""
    out = []
    for layer in analysis.layers:
        if layer.group is None or not analysis.groups[layer.group].prunable:
            continue
        entry = PlanLayer(layer.name, layer.op_type, layer.out_channels, layer.group, analysis.groups[layer.group].size)
        if indices is not None:
            entry.indices = [int(i) for i in indices.get(layer.name, [])]
        else:
            entry.ratio = float((ratios or {}).get(layer.group, 0.0))
        out.append(entry)
    return out


def layers_digest(layers: list[PlanLayer]) -> str:
    """sha256 of the layer names and values (what a recording was made for)."""
    values = [(layer.name, _plain(layer.ratio), None if layer.indices is None else [_plain(i) for i in layer.indices])
              for layer in layers]
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=repr).encode()).hexdigest()


def _plain(value):
    """numpy scalars as Python numbers (a Plan edited in Python may hold them); anything else as is."""
    return value.item() if isinstance(value, np.generic) else value


def _read(source: str | os.PathLike) -> dict:
    text = str(source)
    where = "plan"
    if not text.lstrip().startswith("{"):
        where = f"plan file '{os.fspath(source)}'"
        try:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
        except FileNotFoundError:
            raise InvalidRequestError(f"{where} does not exist") from None
        except IsADirectoryError:
            raise InvalidRequestError(f"{where} is a folder, not a JSON file") from None
        except UnicodeDecodeError:
            raise InvalidRequestError(f"{where} is not valid JSON (binary data; is it a model? `onnxprune apply` "
                                      "takes PLAN first, then MODEL)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"{where} is not valid JSON: {exc}") from None


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


def record_plan(analysis, removed: dict[int, np.ndarray], options: Options, method: str | None,
                model_fingerprint: str) -> Plan:
    """The recording of a pruning run: every prunable group with the units it keeps."""
    groups = []
    for group in analysis.groups:
        if not group.prunable:
            continue
        gone = set(removed.get(group.id, np.zeros(0, dtype=np.int64)).tolist())
        groups.append(PlanGroup(group.id, group.size, list(group.layers),
                                [k for k in range(group.size) if k not in gone]))
    return Plan(model_fingerprint, options, groups, method)


def plan_removal(analysis, plan: Plan) -> dict[int, np.ndarray]:
    """group id -> removed unit positions of a recorded plan, after checking it against the analysed model."""
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
