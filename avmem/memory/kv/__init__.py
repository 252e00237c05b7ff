"""KV-level memory of the LLM: budgets, importance scores and hard-budget selection (work in progress:
the chunked-prefill engine and the policies that use these come next)."""

from .budgets import BudgetSchedule, LayerBudget, LayerSignals, compute_budgets
from .selection import (
    AUDIO,
    TEXT,
    VISUAL,
    joint_topk,
    omnimem_score,
    per_layer_topk,
    prompt_importance,
    redundancy,
    select_with_budget,
)

__all__ = [
    "AUDIO", "TEXT", "VISUAL", "BudgetSchedule", "LayerBudget", "LayerSignals", "compute_budgets", "joint_topk",
    "omnimem_score", "per_layer_topk", "prompt_importance", "redundancy", "select_with_budget",
]
