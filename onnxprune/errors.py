"""Typed exceptions. Every error onnxprune raises derives from OnnxPruneError."""
from __future__ import annotations


class OnnxPruneError(Exception):
    """Base class of every error raised by onnxprune."""


class InvalidModelError(OnnxPruneError):
    """The input is not a loadable, valid ONNX model (not ONNX, truncated, fails the checker)."""


class ExternalDataError(OnnxPruneError):
    """External data is missing or points outside the model's folder."""


class InvalidRequestError(OnnxPruneError):
    """The request itself is wrong: unknown layer, index out of range, ratio outside [0, 1), ..."""


class BudgetOutOfReachError(InvalidRequestError):
    """A budget (target_macs, target_params, target_latency) cannot be reached: removing all that Options.max_ratio
    and "never empty a group" allow still costs more than the target."""


class InvalidDataError(InvalidRequestError):
    """Calibration or evaluation data cannot be read: a malformed image, a missing or empty class folder, ..."""


class UnsupportedError(OnnxPruneError):
    """The requested layer or group cannot be changed (an op with no rule touches it, a graph input/output fixes it, ...)."""


class UnknownShapesError(UnsupportedError):
    """Tensor shapes cannot be worked out without running a model too big to run for them; `tensors` names them,
    `inputs` the graph inputs whose shapes to declare."""

    def __init__(self, message: str, *, tensors: list[str], inputs: list[str]):
        super().__init__(message)
        self.tensors = tensors
        self.inputs = inputs


class VerificationError(OnnxPruneError):
    """A written or produced model failed an oracle, onnx.checker, or onnxruntime loading."""


class MissingExtraError(OnnxPruneError):
    """An optional dependency (an extra of the onnxprune package: torch, plot) is not installed."""


class OnnxRuntimeError(OnnxPruneError):
    """onnxruntime cannot load or run a model as given; `node` and `op_type` name the node it reported (or None)."""

    def __init__(self, message: str, *, node: str | None = None, op_type: str | None = None):
        super().__init__(message)
        self.node = node
        self.op_type = op_type


class ExecutorError(OnnxPruneError):
    """The distributed engine (executor="ray") could not be started or reached, or one of its tasks failed."""


class TaskError(ExecutorError):
    """A task of a distributed map (executor="ray") failed with an exception that is not onnxprune's own;
    `task` names the task (e.g. "sensitivity of group 3 (conv1) at ratio 0.5")."""

    def __init__(self, task: str, message: str):
        super().__init__(f"{task} failed: {message}")
        self.task = task
