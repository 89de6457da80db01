"""P5/P6: GTPO conflict masks, filter and loss, D3S subsets, token masks and schedule, CAPO's curvature model,
the entropy top fraction, the degenerate-group filter."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from seq_helpers import prepared_loss

from offline_rl.seq.methods import get_method
from offline_rl.seq.methods.base import Method
from offline_rl.seq.methods.capo import (
    head_probs,
    joint_update_logits,
    logit_gradients,
    own_update_logits,
    predicted_kl,
)
from offline_rl.seq.methods.d3s import max_variance_subset, schedule
from offline_rl.seq.methods.gtpo import conflict_weights
from offline_rl.seq.registry import SELECTIONS, TOKEN_WEIGHTS

# --- GTPO -------------------------------------------------------------------------------------------------------

def gtpo_group(make_ctx):
    ctx = make_ctx(B=3, T=5, G=3)
    ctx.token_ids = torch.tensor([[5, 6, 7, 8, 4], [5, 6, 7, 9, 9], [5, 6, 7, 3, 0]])
    ctx.mask = torch.tensor([[1.0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    ctx.rewards = torch.tensor([1.0, 1.0, 0.0])  # two positives, one negative, shared 3-token prefix
    return ctx


def test_gtpo_conflict_masks_hand_built(make_ctx) -> None:
    delta, n_conflict = conflict_weights(gtpo_group(make_ctx))
    assert delta.tolist() == [[2, 2, 2, 1, 1], [2, 2, 2, 1, 1], [0, 0, 0, 1, 0]]
    assert n_conflict.tolist() == [3, 3, 3]


def test_gtpo_backward_run_aligned_from_the_end(make_ctx) -> None:
    ctx = make_ctx(B=2, T=4, G=2)
    ctx.token_ids = torch.tensor([[3, 4, 5, 6], [7, 5, 6, 0]])  # suffix "5 6" shared, different lengths
    ctx.mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]])
    ctx.rewards = torch.tensor([1.0, 0.0])
    delta, n = conflict_weights(ctx)
    assert delta.tolist() == [[1, 1, 2, 2], [1, 0, 0, 0]] and n.tolist() == [2, 2]


def test_gtpo_high_entropy_completion_gets_no_gradient(make_ctx) -> None:
    ctx = gtpo_group(make_ctx)
    ctx.old_entropy = torch.tensor([[0.1] * 5, [2.0] * 5, [0.1] * 5])
    loss = prepared_loss(get_method("gtpo"), ctx)
    (g,) = torch.autograd.grad(loss, ctx.logp)
    assert (g[1] == 0).all() and g[0].abs().sum() > 0


def test_gtpo_without_conflicts_or_filter_is_plain_policy_gradient(make_ctx) -> None:
    ctx = make_ctx(B=4, T=4, G=4, seed=2)
    ctx.token_ids = torch.arange(16).view(4, 4) + 3  # all distinct: no conflicts
    ctx.rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    method = get_method("gtpo").override({"advantage.entropy_threshold": math.inf, "advantage.entropy_scale": 0.0})
    loss = prepared_loss(method, ctx)
    a = torch.tensor([0.5, -0.5, 0.5, -0.5])  # r - mean (the code's advantage, no std)
    m = ctx.mask
    plain = (-(a[:, None] * ctx.logp * m).sum(-1) / m.sum(-1)).mean()
    g1, g2 = (torch.autograd.grad(x, ctx.logp, retain_graph=True)[0] for x in (loss, plain))
    assert torch.allclose(g1, g2, atol=1e-6)


def test_gtpo_loss_matches_the_code_per_completion(make_ctx) -> None:
    """-sum_t delta A rho / |o| per completion, divided by its conflict count, then the mean over completions."""
    ctx = gtpo_group(make_ctx)
    ctx.old_entropy = torch.full((3, 5), 0.3)
    loss = prepared_loss(get_method("gtpo"), ctx)
    a = [1 / 3 - 0.03, 1 / 3 - 0.03, -2 / 3 - 0.03]  # r - mean, shaped by -0.1 H
    delta = [[2, 2, 2, 1, 1], [2, 2, 2, 1, 1], [0, 0, 0, 1, 0]]
    lengths, conflicts = [5, 5, 4], [3, 3, 3]
    per = []
    for i in range(3):
        s = sum(-delta[i][t] * a[i] for t in range(lengths[i]))  # rho = 1 in value
        per.append(s / lengths[i] / conflicts[i])
    assert float(loss.detach()) == pytest.approx(sum(per) / 3, abs=1e-6)


# --- D3S --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("trial", range(20))
def test_max_variance_subset_matches_brute_force(trial: int) -> None:
    g = torch.Generator().manual_seed(trial)
    G = int(torch.randint(3, 11, (1,), generator=g))
    m = int(torch.randint(2, G + 1, (1,), generator=g))
    a = torch.randn(G, generator=g).double()
    best = max(a[list(s)].var(unbiased=False) for s in itertools.combinations(range(G), m))
    chosen = max_variance_subset(a, m)
    assert chosen.numel() == m and len(set(chosen.tolist())) == m
    assert float(a[chosen].var(unbiased=False)) == pytest.approx(float(best), rel=1e-9)


def test_d3s_token_mask_keeps_top_fraction(make_ctx) -> None:
    ctx = make_ctx(B=4, T=5)
    ctx.advantages = torch.tensor([1.0, -2.0, 0.5, 0.0])
    w = TOKEN_WEIGHTS.get("d3s")(ctx, rho=0.3, schedule_kind="constant")
    n = int(ctx.mask.sum())
    assert int(w.sum()) == math.ceil(0.3 * n) and (w * (1 - ctx.mask)).sum() == 0
    score = (ctx.token_advantages.abs() * ctx.old_entropy)[ctx.mask > 0]
    assert score[w[ctx.mask > 0] > 0].min() >= score[w[ctx.mask > 0] == 0].max()


def test_d3s_full_keep_is_grpo(make_ctx) -> None:
    ctx = make_ctx(B=12, T=5, G=4, seed=9)
    d3s = get_method("d3s").override({"selection.m_frac": 1.0, "token_weights.rho": 1.0})
    l1 = prepared_loss(d3s, ctx)
    l2 = prepared_loss(Method("grpo"), ctx)
    assert torch.allclose(l1, l2, atol=1e-7)


def test_d3s_selection_keeps_m_per_group_and_schedule(make_ctx) -> None:
    ctx = make_ctx(B=12, G=6)
    ctx.advantages = torch.randn(12)
    keep = SELECTIONS.get("d3s")(ctx, m_frac=0.5, schedule_kind="constant")
    assert keep.view(2, 6).sum(-1).tolist() == [3, 3]
    assert schedule(0, 100, 0.5, kind="linear") == 0.5 and schedule(100, 100, 0.5, kind="cosine") == 1.0
    assert schedule(50, 100, 0.5, kind="linear") == pytest.approx(0.75)


# --- CAPO -------------------------------------------------------------------------------------------------------

def linear_softmax_ctx(make_ctx, B: int = 4, T: int = 6, D: int = 8, V: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ctx = make_ctx(B=B, T=T, G=B)
    ctx.hidden = torch.randn(B, T, D, generator=g, dtype=torch.double)
    ctx.head_weight = torch.randn(V, D, generator=g, dtype=torch.double)
    probs = head_probs(ctx.hidden, ctx.head_weight)
    ctx.token_ids = torch.multinomial(probs.view(-1, V), 1, generator=g).view(B, T)
    ctx.advantages = torch.randn(B, generator=g)
    return ctx, probs


def realised_kl(ctx, dw: torch.Tensor) -> torch.Tensor:
    """KL(pi_old || pi_new) per token after W <- W + dW."""
    p = head_probs(ctx.hidden, ctx.head_weight)
    q = head_probs(ctx.hidden, ctx.head_weight + dw)
    return (p * (p.log() - q.log())).sum(-1)


def test_capo_predicted_kl_matches_realised(make_ctx) -> None:
    ctx, probs = linear_softmax_ctx(make_ctx)
    u = logit_gradients(ctx, probs)
    eta = 1e-3
    own = predicted_kl(own_update_logits(ctx, u, eta), probs)
    for i in range(4):
        dw_i = eta * torch.einsum("tv,td->vd", u[i], ctx.hidden[i])
        real = realised_kl(ctx, dw_i)[i]
        m = ctx.mask[i] > 0
        assert float(own[i][m].mean()) == pytest.approx(float(real[m].mean()), rel=0.05)
    keep = torch.ones(4, dtype=torch.bool)
    joint = predicted_kl(joint_update_logits(ctx, u, keep, eta), probs)
    dw = eta * torch.einsum("btv,btd->vd", u, ctx.hidden)
    m = ctx.mask > 0
    assert float(joint[m].mean()) == pytest.approx(float(realised_kl(ctx, dw)[m].mean()), rel=0.05)


def test_capo_masking_keeps_realised_kl_within_delta(make_ctx) -> None:
    ctx, probs = linear_softmax_ctx(make_ctx, B=8, seed=1)
    eta = 0.05
    u = logit_gradients(ctx, probs)
    full = predicted_kl(joint_update_logits(ctx, u, torch.ones(8, dtype=torch.bool), eta), probs)
    m = ctx.mask > 0
    delta = float(full[m].mean()) / 3  # a trust region the full update violates
    keep = SELECTIONS.get("capo")(ctx, delta=delta, eta=eta)
    assert 0 < int(keep.sum()) < 8
    dw = eta * torch.einsum("btv,btd->vd", u * keep[:, None, None], ctx.hidden)
    assert float(realised_kl(ctx, dw)[m].mean()) <= delta * 1.05


def test_capo_default_trust_region(make_ctx) -> None:
    ctx, _ = linear_softmax_ctx(make_ctx, B=8, seed=1)
    ctx.hidden = 3 * ctx.hidden  # a larger step: the joint predicted KL is above 0.05
    default = SELECTIONS.get("capo")(ctx)
    assert 0 < int(default.sum()) < 8
    assert torch.equal(default, SELECTIONS.get("capo")(ctx, delta=0.05, eta=1.0))
    assert not torch.equal(default, SELECTIONS.get("capo")(ctx, delta=0.1, eta=1.0))
    assert not torch.equal(default, SELECTIONS.get("capo")(ctx, delta=0.05, eta=0.5))


def test_capo_infinite_delta_is_the_base_loss(make_ctx) -> None:
    ctx, _ = linear_softmax_ctx(make_ctx, seed=2)
    ctx.advantages = None
    capo = get_method("capo").override({"selection.delta": math.inf})
    assert torch.allclose(prepared_loss(capo, ctx), prepared_loss(Method("grpo"), ctx))
    capo_tokens = get_method("capo").override({"selection.delta": math.inf, "token_weights.delta_token": 1e-9})
    assert prepared_loss(capo_tokens, ctx) != prepared_loss(Method("grpo"), ctx)




def test_d3s_batch_scope_keeps_the_batch_max_variance_subset(make_ctx) -> None:
    ctx = make_ctx(B=8, G=4)
    ctx.advantages = torch.tensor([0.1, 0.2, 3.0, -0.1, 0.0, -2.0, 0.3, 0.05])
    keep = SELECTIONS.get("d3s")(ctx, m_frac=0.25, scope="batch", schedule_kind="constant")
    assert torch.nonzero(keep).squeeze(1).tolist() == [2, 5]  # the extremes, across groups


def test_d3s_default_schedule_is_linear_from_one_half(make_ctx) -> None:
    ctx = make_ctx(B=12, G=6)
    ctx.advantages = torch.randn(12, generator=torch.Generator().manual_seed(0))
    ctx.step, ctx.total_steps = 0, 10
    assert SELECTIONS.get("d3s")(ctx).view(2, 6).sum(-1).tolist() == [3, 3]  # m = 0.5 G at the start
    ctx.step = 5
    assert SELECTIONS.get("d3s")(ctx).view(2, 6).sum(-1).tolist() == [4, 4]  # round(0.75 * 6) = 4 (banker's: 4.5 -> 4)
    ctx.step = 10
    assert SELECTIONS.get("d3s")(ctx).all()
    ctx.step = 0
    w = TOKEN_WEIGHTS.get("d3s")(ctx)
    assert int(w.sum()) == math.ceil(0.5 * int(ctx.mask.sum()))


def test_top_entropy_keeps_the_top_fraction_with_ties_to_the_earlier_token(make_ctx) -> None:
    ctx = make_ctx(B=2, T=3)
    ctx.mask = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    ctx.old_entropy = torch.tensor([[0.5, 2.0, 1.0], [2.0, 0.1, 9.0]])  # 9.0 is padding
    w = TOKEN_WEIGHTS.get("top_entropy")(ctx)  # rho 0.2 of 5 tokens: ceil -> 1, the first 2.0
    assert w.tolist() == [[0, 1, 0], [0, 0, 0]]
    w = TOKEN_WEIGHTS.get("top_entropy")(ctx, rho=0.5)  # 3 tokens: 2.0, 2.0, 1.0
    assert w.tolist() == [[0, 1, 1], [1, 0, 0]]


def test_nonzero_advantage_and_not_sft_selections(make_ctx) -> None:
    ctx = make_ctx(B=4, T=3)
    ctx.advantages = torch.tensor([0.0, 1.0, -0.5, 0.0])
    assert SELECTIONS.get("nonzero_advantage")(ctx).tolist() == [False, True, True, False]
    ctx.flags["sft"] = torch.tensor([True, False, True, False])
    assert SELECTIONS.get("not_sft")(ctx).tolist() == [False, True, False, True]
