"""OTR: One-Token Rollout (Ming, Wu et al., arXiv 2509.26313; no public code): token-level policy gradient on
supervised data, with no sequence generation.

The rows are demonstrations (x_<t, x_t) (the `demonstrations` hook, with no rollouts). At each position:
    pi'(. | s_t) = softmax(l_t / kappa), kappa = 1.3 > 1, no gradient   (the exploratory policy)
    K = 256 candidates a_j ~ pi'; R(a, x_t) = 1 if a = x_t else beta
    L_t = -(1/K) sum_j R(a_j, x_t) log pi_theta(a_j | s_t)
        = -(c_{x_t}/K) log pi(x_t) - beta sum_{a != x_t} (c_a/K) log pi(a)      (c_a: the draw counts)
averaged over the valid positions. UNVERIFIED: the default of beta (-0.1 here: sampled wrong tokens are pushed
down a little). With beta = 0 and kappa = 1 the expected gradient is pi(x) grad log pi(x), a scaled CE.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.hooks import HookContext
from offline_rl.seq.registry import HOOKS, SURROGATES


@HOOKS.register("demonstrations")
def demonstrations_only(ctx: HookContext) -> Any:
    """The batch is one demonstration row per prompt (use with the `none` budget: nothing is generated)."""
    demos = ctx.demonstrations(ctx.problems)
    return ctx.concat([ctx.batch, demos]) if ctx.batch.size else demos


def draw_counts(probs: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """c_a: how often each token is drawn in k samples from each row of `probs` (..., V)."""
    flat = probs.reshape(-1, probs.shape[-1])
    draws = torch.multinomial(flat, k, replacement=True, generator=generator)
    counts = torch.zeros_like(flat).scatter_add_(1, draws, torch.ones_like(draws, dtype=flat.dtype))
    return counts.view_as(probs)


def otr_weights(counts: Tensor, target: Tensor, k: int, beta: float) -> Tensor:
    """(c_a / K) R(a, x_t): R = 1 on the target token, beta elsewhere. counts (B, T, V), target (B, T)."""
    reward = torch.full_like(counts, beta).scatter_(-1, target.unsqueeze(-1), 1.0)
    return counts / k * reward


@SURROGATES.register("otr")
def otr(ctx: LossContext, k: int = 256, kappa: float = 1.3, beta: float = -0.1) -> Tensor:
    """Per-token L_t = -sum_a (c_a / K) R(a, x_t) log pi(a | s_t) with a ~ softmax(l / kappa)."""
    assert ctx.vocab_logp is not None, "OTR needs the vocabulary log-probs (needs_vocab_logp)"
    explore = torch.softmax(ctx.vocab_logp.detach() / kappa, dim=-1)  # log-softmax differs from l by a constant
    w = otr_weights(draw_counts(explore, k), ctx.token_ids, k, beta)
    return -(w * ctx.vocab_logp).sum(-1)


@register_method("otr")
def otr_method() -> Method:
    return Method("otr", description="one-token rollouts on demonstrations: K draws per position, reward 1/beta",
                  budget=Choice("none"), hook=Choice("demonstrations"), advantage=Choice("zero"),
                  surrogate=Choice("otr"), aggregation=Choice("token-mean"), needs_vocab_logp=True)
