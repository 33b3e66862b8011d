"""Importance criteria: one registry, each criterion scores every unit of every group.

A criterion is a function `(context: CriterionContext) -> dict[group_id, np.ndarray]` giving one
score per unit (higher = more important) for every group in `context.groups`. Register your own with
`register_criterion`.
"""
from __future__ import annotations

from onnxprune.criteria.registry import CRITERIA, CriterionContext, criterion_for, register_criterion
from onnxprune.criteria import weight, gradient  # noqa: F401  (register the weight- and gradient-based criteria)
from onnxprune.criteria import data  # noqa: F401  (registers the data-based criteria)
from onnxprune.criteria import refit_error  # noqa: F401  (registers obs, the re-fit-aware criterion)

__all__ = ["CRITERIA", "CriterionContext", "criterion_for", "register_criterion"]
