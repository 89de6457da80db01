"""P2 rollout budgets: `budget(ctx) -> completions per prompt`. Groups may be ragged; estimators use group ids.

The budget is computed once for the global batch (identical on every rank); each rank then rolls out its share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from offline_rl.seq.registry import BUDGETS
from offline_rl.seq.stats import PromptStats


@dataclass
class BudgetContext:
    prompt_keys: list[str]  # one per prompt of the global batch this step
    group_size: int  # the configured G
    stats: PromptStats
    state: dict[str, Any] = field(default_factory=dict)
    step: int = 0


@BUDGETS.register("fixed")
def fixed(ctx: BudgetContext) -> list[int]:
    """G completions for every prompt (GRPO)."""
    return [ctx.group_size] * len(ctx.prompt_keys)


@BUDGETS.register("oversample")
def oversample(ctx: BudgetContext, factor: float = 2.0) -> list[int]:
    """ceil(factor * G) per prompt, e.g. for down-sampling after the advantages (D3S over-generation)."""
    return [max(1, math.ceil(ctx.group_size * factor))] * len(ctx.prompt_keys)


@BUDGETS.register("none")
def no_rollouts(ctx: BudgetContext) -> list[int]:
    """No generation (methods that learn from demonstrations only, e.g. OTR; a hook adds the rows)."""
    return [0] * len(ctx.prompt_keys)
