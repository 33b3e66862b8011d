"""The last stages of the pruning path (onnxprune.pruning): the mask oracle on the exact groups (verify), then
recovery (reconstruction.compensate / reconstruct) on the pruned model."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnx

from onnxprune.coupling import Analysis
from onnxprune.errors import InvalidRequestError, VerificationError
from onnxprune.result import PruneResult
from onnxprune.surgery.prune import apply


def mask_oracle(model: onnx.ModelProto, analysis: Analysis, removed: dict[int, np.ndarray], result: PruneResult):
    """The mask oracle on the exact groups (inexact ones legitimately change values)."""
    from onnxprune.verify import verify_pruning

    report = verify_pruning(model, exact_part(analysis, removed, result))
    if not report.ok:
        raise VerificationError(f"mask oracle failed (max relative error {report.max_rel_error:.3g}):\n{report}")
    return report


def exact_part(analysis: Analysis, removed: dict[int, np.ndarray],
                result: PruneResult) -> PruneResult:
    """`result` when every pruned group is exact, else the surgery of its exact groups alone (a new model)."""
    if result.exact:
        return result
    exact_only = {g: p for g, p in removed.items() if analysis.groups[g].exact}
    surgery = apply(analysis, analysis.channels.keep_mask(exact_only))
    return PruneResult(surgery.model, surgery.channels, None, result.summary, True)


def check_data_fixes(compensate: bool, reconstruct: bool, calibration):
    """The calibration data, kept as a list when compensation's own pass would use up a one-shot iterator."""
    for flag, on in (("compensate", compensate), ("reconstruct", reconstruct)):
        if on and calibration is None:
            raise InvalidRequestError(f"{flag}=True needs calibration data: pass calibration=... (a dict of input "
                                      "arrays, an array for a single-input model, an iterable of either, or a path)")
    if compensate and isinstance(calibration, Iterator):
        return list(calibration)
    return calibration


def recovered(model: onnx.ModelProto, result: PruneResult, compensate: bool, reconstruct: bool, calibration,
               ridge: float, verify: bool, analysis: Analysis, removed: dict[int, np.ndarray]) -> PruneResult:
    """The result with mean compensation and/or re-fitting applied in place, after the mask oracle (which
    checks the surgery); with verify, the compensation oracle checks the compensated model (its exact groups)."""
    if compensate:
        from onnxprune.reconstruction.compensate import compensate_pruned, verify_compensation

        done = compensate_pruned(model, result, calibration)
        if verify:
            target = exact_part(analysis, removed, result)
            if target is not result:
                compensate_pruned(model, target, None, tensor_means=done.tensor_means)
            report = verify_compensation(model, target)
            done.verification = report
            if not report.ok:
                raise VerificationError(f"compensation oracle failed (max relative error "
                                        f"{report.max_rel_error:.3g}):\n{report}")
    if reconstruct:
        from onnxprune.reconstruction import reconstruct_pruned

        reconstruct_pruned(model, result, calibration, ridge=ridge)
    return result
