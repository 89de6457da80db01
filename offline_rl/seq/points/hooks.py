"""P3 rollout hooks: `hook(ctx) -> RolloutBatch`, run after scoring and before the advantages.

A hook may regenerate (with hints), inject demonstrations or drop rows. It gets the scored batch and:
    ctx.generate(problems, n, prompt_texts=None, greedy=False) -> a scored RolloutBatch (prompt_texts: what the
                                                model sees; greedy: temperature 0)
    ctx.demonstrations(problems, group_ids)     -> teacher-forced rows of the reference answers, flag "sft"
    ctx.score(batch)                            -> the task's rewards of a batch's texts
    ctx.concat(batches)                         -> one batch
    ctx.exemplars(k)                            -> k problems with reference answers from the training pool
    ctx.score_answers(prompt_texts, answers)    -> log pi(answer + eos | prompt) per pair (teacher forced)
plus the statistics store and the method's persistent `state`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from offline_rl.seq.registry import HOOKS


@dataclass
class HookContext:
    batch: Any  # offline_rl.seq.rollout.RolloutBatch
    step: int
    problems: list[Any] = field(default_factory=list)  # this rank's prompts this step (also with no rollouts)
    n: list[int] = field(default_factory=list)  # their group sizes
    group_size: int = 1  # the configured G
    generate: Callable[..., Any] = None  # type: ignore[assignment]
    score: Callable[..., Any] = None  # type: ignore[assignment]
    demonstrations: Callable[..., Any] = None  # type: ignore[assignment]
    concat: Callable[..., Any] = None  # type: ignore[assignment]
    exemplars: Callable[..., Any] = None  # type: ignore[assignment]
    score_answers: Callable[..., Any] = None  # type: ignore[assignment]
    task: Any = None
    stats: Any = None
    state: dict[str, Any] = field(default_factory=dict)
    world: Any = None
    total_steps: int = 1


@HOOKS.register("none")
def none(ctx: HookContext) -> Any:
    return ctx.batch
