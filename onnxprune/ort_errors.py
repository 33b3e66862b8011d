"""onnxruntime's exceptions turned into onnxprune's: the node and op parsed from onnxruntime's message.

onnxruntime raises its own exception classes (Fail, InvalidArgument, InvalidGraph, NotImplemented, ...) whose
text names the failing node in one of a handful of formats; `translate` finds the node and its op (looked up in
the model when the message gives only one of them) and says what the user can do.
"""
from __future__ import annotations

import re

import onnx

from .errors import OnnxRuntimeError

# (node name, op type) in onnxruntime's messages, most specific first
_NODE_PATTERNS = (
    re.compile(r"running (?P<op>[\w.]+) node\. Name:'(?P<name>[^']*)'"),
    re.compile(r"Node \((?P<name>[^)]*)\) Op \((?P<op>[\w.]+)\)"),
    re.compile(r"implementation for (?P<op>[\w.]+)\(\d+\) node with name '(?P<name>[^']*)'"),
    re.compile(r"In Node, \(\"(?P<name>[^\"]*)\", (?P<op>[\w.]+),"),
    re.compile(r"(?P<op>Constant) node: (?P<name>\S+) "),
    re.compile(r"[Nn]ode name: (?P<name>[^\s,)]+)"),
)
_SIGNATURE = re.compile(r"[\w:<>,~*& ]*::\w+(?=\()")
_PREFIX = re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE = re.compile(r"\S+\.(?:cc|cpp|h):\d+ ")  # a C++ source position, followed by a function signature
# suffixes onnxruntime's optimisers give to the nodes they rewrite
_REWRITE_SUFFIXES = ("_nchwc", "_token")
MAX_DETAIL = 600

WHAT_TO_DO = {
    "load": "check that the model loads in onnxruntime (onnxruntime.InferenceSession) as it is",
    "run": "check that the model runs in onnxruntime on inputs of its declared shapes (onnxprune generates "
           "random ones); with real inputs, prune without verify and check with op.verify_pruning(model, result, "
           "inputs=...)",
    "kernel": "onnxruntime has no kernel for this op at the model's opset: convert the model to a newer opset "
              "(onnx.version_converter.convert_version) first",
}


def is_onnxruntime_error(exc: BaseException) -> bool:
    """True for onnxruntime's own exception classes (they all come from its pybind11 state module)."""
    return type(exc).__module__.startswith("onnxruntime")


def translate(exc: BaseException, model: onnx.ModelProto | None, stage: str, what: str = "this model") -> OnnxRuntimeError:
    """OnnxRuntimeError for an onnxruntime exception raised while `stage` ("load" or "run") `what`."""
    text = str(exc)
    name, op_type = _node_of(text, model)
    detail = _without_sources(_PREFIX.sub("", text)).strip()
    if len(detail) > MAX_DETAIL:
        detail = detail[:MAX_DETAIL] + " ..."
    where = ""
    if name:
        where = f" at node '{name}' ({op_type or 'op unknown'})"
    elif op_type:
        where = f" at an unnamed {op_type} node"
    verb = "load" if stage == "load" else "run"
    advice = WHAT_TO_DO["kernel" if "Could not find an implementation" in text else verb]
    message = (f"onnxruntime cannot {verb} {what} as given{where}: {detail}; onnxprune needs a model onnxruntime "
               f"{'loads' if verb == 'load' else 'runs'} to check its results: {advice}")
    return OnnxRuntimeError(message, node=name, op_type=op_type)


def _node_of(text: str, model: onnx.ModelProto | None) -> tuple[str | None, str | None]:
    for pattern in _NODE_PATTERNS:
        found = pattern.search(text)
        if found:
            groups = found.groupdict()
            name = groups.get("name")
            op_type = _op_in_model(name, model) or groups.get("op")  # the model's op, not a fused one
            return name, op_type
    return None, None


def _op_in_model(name: str | None, model: onnx.ModelProto | None) -> str | None:
    if not name or model is None:
        return None
    candidates = [name] + [name[: -len(s)] for s in _REWRITE_SUFFIXES if name.endswith(s)]
    for node in model.graph.node:
        if node.name in candidates:
            return node.op_type
    return None


def _without_sources(text: str) -> str:
    """The message without C++ source positions and the function signatures that follow them."""
    while (found := _SOURCE.search(text)) is not None:
        end = found.end()
        signature = _SIGNATURE.match(text, end)
        if signature is not None:  # skip to the parenthesis closing the signature's parameter list
            depth, end = 0, signature.end()
            while end < len(text):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
                if depth == 0:
                    break
        text = text[:found.start()] + text[end:].lstrip()
    return text
