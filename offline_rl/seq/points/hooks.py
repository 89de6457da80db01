"""P3 rollout hooks: `hook(ctx) -> RolloutBatch`, run after scoring and before the advantages.

A hook may regenerate (with hints), inject demonstrations or drop rows; it gets the scored batch and functions to
generate and score more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from offline_rl.seq.registry import HOOKS


@dataclass
class HookContext:
    batch: Any  # offline_rl.seq.rollout.RolloutBatch
    step: int
    generate: Callable[..., Any]  # generate(prompt_token_lists, n_per_prompt) -> RolloutBatch without rewards
    score: Callable[..., Any]  # score(batch) -> rewards tensor


@HOOKS.register("none")
def none(ctx: HookContext) -> Any:
    return ctx.batch
