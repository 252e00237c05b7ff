"""Evaluation: multiple-choice accuracy on Video-MME-like annotations, with bootstrap intervals."""

from .mcq import MCQResult, bootstrap_ci, evaluate_mcq, summarize

__all__ = ["MCQResult", "bootstrap_ci", "evaluate_mcq", "summarize"]
