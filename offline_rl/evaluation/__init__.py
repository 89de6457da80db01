"""The evaluation harness: batched deterministic policy rollouts in a gymnasium vector env."""

from offline_rl.evaluation.harness import EvalResult, evaluate, normalized_score

__all__ = ["EvalResult", "evaluate", "normalized_score"]
