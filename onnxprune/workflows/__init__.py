"""Workflows built on the pruning stages: evaluate, bench, sensitivity analysis, iterative pruning, reports."""
