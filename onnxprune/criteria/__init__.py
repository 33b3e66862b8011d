"""Importance criteria: one registry, each criterion scores every unit of every group.

A criterion is a function `(context: CriterionContext) -> dict[group_id, np.ndarray]` giving one
score per unit (higher = more important). Register your own with `register_criterion`.
"""
from __future__ import annotations

from onnxprune.criteria.registry import CRITERIA, CriterionContext, criterion_for, register_criterion
from onnxprune.criteria import weight  # noqa: F401  (registers the weight-based criteria)

__all__ = ["CRITERIA", "CriterionContext", "criterion_for", "register_criterion"]
