"""P2 rollout budgets: `budget(ctx) -> completions per prompt`. Groups may be ragged; estimators use group ids."""

from __future__ import annotations

from dataclasses import dataclass

from offline_rl.seq.registry import BUDGETS
from offline_rl.seq.stats import PromptStats


@dataclass
class BudgetContext:
    prompt_keys: list[str]  # one per prompt this step
    group_size: int  # the configured G
    stats: PromptStats


@BUDGETS.register("fixed")
def fixed(ctx: BudgetContext) -> list[int]:
    """G completions for every prompt (GRPO)."""
    return [ctx.group_size] * len(ctx.prompt_keys)


@BUDGETS.register("oversample")
def oversample(ctx: BudgetContext, factor: float = 2.0) -> list[int]:
    """ceil(factor * G) per prompt, e.g. for down-sampling after the advantages (D3S over-generation)."""
    return [max(1, int(-(-ctx.group_size * factor // 1)))] * len(ctx.prompt_keys)
