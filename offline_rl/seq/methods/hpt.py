"""HPT: Hybrid Post-Training (Lv, Zuo et al., arXiv 2509.04419, "Towards a Unified View of LLM Post-Training";
code TsinghuaC3I/Unify-Post-Training `mix_trainer.select_on_off_ada_balance`, `mix_actor.py`).

For each prompt q, n on-policy rollouts are scored: P = (number solved) / n. The code's "switch" strategy:
    solved <= switch_gate (0):  drop the n rollouts and add the prompt's demonstration (an SFT row)
    otherwise:                  keep the rollouts (an RL group)
    L = L_RL + sft_coef L_SFT, with
    L_RL  = the clipped GRPO surrogate over the RL rows, token mean over their tokens (verl's masked mean)
    L_SFT = mean over the SFT rows' tokens of -log pi(demo) (`compute_sft_pure_loss`)
Defaults (exp_scripts/train.sh): n = 8, switch_gate = 0, sft_coef = 1.0 (0.3 for Qwen2.5-Math-1.5B).
switch_gate = -1 gives pure GRPO; switch_gate = n gives pure SFT. The demonstration is the task's reference
answer (every built-in task has one; a JSONL file's "answer").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.hooks import HookContext
from offline_rl.seq.registry import HOOKS, LOSS_TERMS, SELECTIONS


@HOOKS.register("hpt_switch")
def hpt_switch(ctx: HookContext, switch_gate: int = 0) -> Any:
    """Groups with at most `switch_gate` solved rollouts become one demonstration row (flag "sft")."""
    batch = ctx.batch
    if not batch.size:
        return batch
    solved = batch.rewards.reshape(batch.size, -1)[:, 0] > 0
    groups = batch.group_rows()
    switch = {g for g, rows in groups.items() if int(solved[rows].sum()) <= switch_gate}
    ctx.state.setdefault("hpt", {"sft_groups": 0, "rl_groups": 0})
    ctx.state["hpt"]["sft_groups"] += len(switch)
    ctx.state["hpt"]["rl_groups"] += len(groups) - len(switch)
    if not switch:
        return batch
    keep = torch.tensor([i for i, g in enumerate(batch.group_ids.tolist()) if g not in switch], dtype=torch.long)
    demo_groups = [g for g in groups if g in switch]
    demos = ctx.demonstrations([batch.problems[groups[g][0]] for g in demo_groups], demo_groups)
    return ctx.concat([batch.rows(keep), demos]) if keep.numel() else demos


@SELECTIONS.register("not_sft")
def not_sft(ctx: LossContext) -> Tensor:
    """Keep the on-policy rows: demonstration rows (flag "sft") leave the RL term and its normaliser."""
    return ~ctx.flag("sft")


@LOSS_TERMS.register("sft")
def sft_term(ctx: LossContext, coef: float = 1.0) -> Tensor:
    """coef * (token mean over the SFT rows of -log pi), normalised over the global batch's SFT tokens."""
    assert ctx.valid is not None
    weight = ctx.valid * ctx.flag("sft")[:, None].to(ctx.valid.dtype)
    loss = ctx.global_mean(-ctx.logp, weight)
    ctx.metrics["sft_loss"] = loss.detach()
    return coef * loss


@register_method("hpt")
def hpt() -> Method:
    return Method("hpt", description="switch between SFT on the demonstration and GRPO by the solve count",
                  hook=Choice("hpt_switch"), selection=Choice("not_sft"), aggregation=Choice("token-mean"),
                  terms=(Choice("sft", {"coef": 1.0}),))
