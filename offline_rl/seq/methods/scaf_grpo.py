"""Scaf-GRPO: hint scaffolding (arXiv 2510.19807; code dvlab-research/Scaf-GRPO `hint_mix_grpo/trainer/
ray_trainer.py`, `build_new_message` and the `trainer.with_hint` branch).

After a guidance-free warm-up (`warmup_steps` = 50), every "true-hard" group (all G rewards 0) is retried with
cumulative tiered hints: for each tier (the released code enables Knowledge, then Solution), hint levels
k = 1..4 show the tier's first k parts, so levels run 1-4 (knowledge) and 5-8 (solution). One completion is
drawn per level; the minimal level with reward 1 wins (the first at that level), and that sample replaces the
group's first rollout (`replace_num` = 1). By default the hinted prompt replaces the prompt too (the run's
`replace_hint_prompt=False`); with `replace_hint_prompt` only the completion is swapped. The group then has one
success, so its GRPO advantages are non-zero. Groups with any success are untouched.
The hints come from Problem.meta (knowledge_components_parts, planning_skeleton_parts, solution_breakdown_parts);
the hinted prompt is "(" + the joined hints + ")" + the prompt.
"""

from __future__ import annotations

from typing import Any

import torch

from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.hooks import HookContext
from offline_rl.seq.registry import HOOKS

RELEASED_TIERS = ("knowledge_components_parts", "solution_breakdown_parts")


def hint_prompts(problem: Any, tiers: tuple[str, ...], levels_per_tier: int = 4) -> list[tuple[int, str]]:
    """(level, hinted prompt) for every level, the tiers in order, each tier's parts accumulated."""
    out, level = [], 1
    for tier in tiers:
        parts = list(problem.meta.get(tier) or [])
        for k in range(1, levels_per_tier + 1):
            out.append((level, f"({' '.join(parts[:k])}){problem.prompt}"))
            level += 1
    return out


def first_success(levels: list[int], rewards: list[float]) -> int | None:
    """Position of the first sample at the minimal level with a positive reward, or None."""
    solved = [i for i, r in enumerate(rewards) if r > 0]
    if not solved:
        return None
    best = min(levels[i] for i in solved)
    return next(i for i in solved if levels[i] == best)


@HOOKS.register("scaf_hints")
def scaf_hints(ctx: HookContext, warmup_steps: int = 50, tiers: tuple[str, ...] = RELEASED_TIERS,
               levels_per_tier: int = 4, replace_hint_prompt: bool = False) -> Any:
    """Replace one failed rollout of each all-fail group by its minimal-hint success (see the module doc)."""
    batch = ctx.batch
    if ctx.step < warmup_steps or not batch.size:
        return batch
    reward = batch.rewards.reshape(batch.size, -1)[:, 0]
    hard = [rows for rows in batch.group_rows().values() if bool((reward[rows] == 0).all())]
    if not hard:
        return batch
    problems, texts, levels, owner = [], [], [], []
    for h, rows in enumerate(hard):
        for level, text in hint_prompts(batch.problems[rows[0]], tiers, levels_per_tier):
            problems.append(batch.problems[rows[0]])
            texts.append(text)
            levels.append(level)
            owner.append(h)
    hinted = ctx.generate(problems, [1] * len(problems), prompt_texts=texts)
    hinted_reward = hinted.rewards.reshape(hinted.size, -1)[:, 0].tolist()
    replace: dict[int, int] = {}  # batch row -> hinted row
    solved_levels = []
    for h, rows in enumerate(hard):
        mine = [j for j, o in enumerate(owner) if o == h]
        pick = first_success([levels[j] for j in mine], [hinted_reward[j] for j in mine])
        if pick is not None:
            replace[rows[0]] = mine[pick]
            solved_levels.append(levels[mine[pick]])
    ctx.state.setdefault("scaf", {"solved_by_hint": 0, "hard": 0})
    ctx.state["scaf"]["solved_by_hint"] += len(replace)
    ctx.state["scaf"]["hard"] += len(hard)
    if not replace:
        return batch
    merged = ctx.concat([batch, hinted])
    order = [batch.size + replace[i] if i in replace else i for i in range(batch.size)]
    out = merged.rows(torch.tensor(order))
    out.group_ids = batch.group_ids.clone()  # the hinted sample joins the group it replaces
    if replace_hint_prompt:  # keep the original prompt, swap only the completion
        rows = torch.tensor(sorted(replace))
        original = merged.rows(rows)  # the merged batch's first rows are the original ones
        out.gen.prompt_ids[rows] = original.gen.prompt_ids
        out.gen.prompt_mask[rows] = original.gen.prompt_mask
    return out


scaf_hints.requires = ("hints",)  # type: ignore[attr-defined]


@register_method("scaf_grpo")
def scaf_grpo() -> Method:
    return Method("scaf_grpo", description="tiered in-prompt hints for all-fail groups after a warm-up",
                  hook=Choice("scaf_hints"))
