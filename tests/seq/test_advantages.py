"""P4 estimators against values derived by hand or by a plain re-implementation: GRPO, Dr.GRPO, RLOO, BNPO,
Stratified GRPO, EMPG, GTPO's shaped advantage, MA-RLHF's macro returns, f-DPG's partition estimate."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from scipy.stats import beta as beta_dist

from offline_rl.errors import UserError
from offline_rl.seq.methods.bnpo import beta_moment_fit, beta_pdf
from offline_rl.seq.methods.empg import modulated_advantage
from offline_rl.seq.registry import ADVANTAGES, SEGMENTERS


def adv(name, ctx, **kw):
    return ADVANTAGES.get(name)(ctx, **kw)


def with_rewards(make_ctx, rewards, G, T=5, seed=0):
    ctx = make_ctx(B=len(rewards), T=T, G=G, seed=seed)
    ctx.rewards = torch.tensor(rewards, dtype=torch.float32)
    return ctx


# --- GRPO family ------------------------------------------------------------------------------------------------

def test_grpo_hand_values(make_ctx) -> None:
    r = [1.0, 0.0, 0.0, 1.0, 1.0, 0.5]
    a = adv("grpo", with_rewards(make_ctx, r, G=3))
    expected = []
    for group in (r[:3], r[3:]):
        mu, sd = statistics.mean(group), statistics.stdev(group)  # unbiased std, eps 1e-4 (TRL)
        expected += [(x - mu) / (sd + 1e-4) for x in group]
    assert torch.allclose(a.double(), torch.tensor(expected, dtype=torch.double), atol=1e-6)


def test_grpo_singleton_group_has_mean_zero_std_one(make_ctx) -> None:
    a = adv("grpo", with_rewards(make_ctx, [0.7, 0.0, 1.0], G=1))
    assert torch.allclose(a, torch.tensor([0.7, 0.0, 1.0]) / (1 + 1e-4))


def test_grpo_batch_scale_uses_the_batch_std(make_ctx) -> None:
    r = [1.0, 0.0, 0.0, 1.0, 1.0, 0.5]
    a = adv("grpo", with_rewards(make_ctx, r, G=3), scale="batch")
    sd = statistics.stdev(r)
    means = [statistics.mean(r[:3])] * 3 + [statistics.mean(r[3:])] * 3
    assert torch.allclose(a.double(), torch.tensor([(x - m) / (sd + 1e-4) for x, m in zip(r, means)],
                                                   dtype=torch.double), atol=1e-6)


def test_dr_grpo_and_rloo(make_ctx) -> None:
    ctx = with_rewards(make_ctx, [1.0, 0.0, 2.0, 3.0], G=4)
    assert torch.allclose(adv("dr_grpo", ctx), torch.tensor([-0.5, -1.5, 0.5, 1.5]))
    # RLOO: r_i - mean of the others
    assert torch.allclose(adv("rloo", ctx), torch.tensor([1 - 5 / 3, 0 - 2.0, 2 - 4 / 3, 3 - 1.0]))
    assert torch.equal(adv("zero", ctx), torch.zeros(4))


# --- BNPO -------------------------------------------------------------------------------------------------------

def test_beta_pdf_three_halves_identity() -> None:
    p = torch.linspace(0.01, 0.99, 50, dtype=torch.double)
    assert torch.allclose(beta_pdf(p, 1.5, 1.5), (8 / math.pi) * torch.sqrt(p * (1 - p)))
    assert torch.allclose(beta_pdf(p, 2.5, 1.7), torch.tensor(beta_dist.pdf(p.numpy(), 2.5, 1.7)))


def test_bnpo_fitted_alpha_beta_and_advantage(make_ctx) -> None:
    """The official formula by hand: moment fit over the prompts' p, alpha = max(1 + a/3, 1), 1/f clamped."""
    groups = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]]
    ctx = with_rewards(make_ctx, [float(x) for g in groups for x in g], G=4)
    a = adv("bnpo", ctx)
    p = [statistics.mean(g) for g in groups]
    mu, var = statistics.mean(p), statistics.variance(p)
    common = mu * (1 - mu) / var - 1
    alpha, beta = max(1 + common * mu / 3, 1), max(1 + common * (1 - mu) / 3, 1)
    assert alpha > 1.5 and beta > 1.5  # far from the clamp, so a wrong divisor shows
    assert float(ctx.metrics["bnpo_alpha"]) == pytest.approx(alpha, rel=1e-6)
    assert float(ctx.metrics["bnpo_beta"]) == pytest.approx(beta, rel=1e-6)
    expected = [(x - pg) / beta_dist.pdf(pg, alpha, beta) for g, pg in zip(groups, p) for x in g]
    assert torch.allclose(a.double(), torch.tensor(expected, dtype=torch.double), atol=1e-5)


def binary_groups(n_groups: int = 5, G: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rates = torch.rand(n_groups, 1, generator=g)
    rewards = (torch.rand(n_groups, G, generator=g) < rates).float().reshape(-1)
    return rewards, torch.arange(n_groups * G) // G


def test_bnpo_reduces_to_grpo_at_three_halves(make_ctx) -> None:
    """alpha = beta = 3/2: A = (pi/8)(R - p)/sqrt(p(1-p)) = (pi/8) x GRPO with the population std (eps 0)."""
    ctx = make_ctx(B=40, G=8)
    ctx.rewards, ctx.group_ids = binary_groups()
    bnpo = adv("bnpo", ctx, alpha=1.5, beta=1.5)
    ref = adv("grpo", ctx, eps=0.0, unbiased=False).nan_to_num(0.0)
    assert torch.allclose(bnpo, (math.pi / 8) * ref, atol=1e-5)
    assert bnpo.abs().sum() > 1  # not all-degenerate


def test_bnpo_alpha_beta_one_is_reinforce_with_baseline(make_ctx) -> None:
    ctx = make_ctx(B=40, G=8)
    ctx.rewards, ctx.group_ids = binary_groups(seed=1)
    assert torch.allclose(adv("bnpo", ctx, alpha=1.0, beta=1.0), adv("dr_grpo", ctx))


def test_bnpo_moment_fit_recovers_beta() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)  # seeded: unseeded draws failed the 5% band about once in 700 runs
        p = torch.distributions.Beta(2.0, 5.0).sample((10_000,)).double()
    a, b = beta_moment_fit(p)
    assert a == pytest.approx(2.0, rel=0.05) and b == pytest.approx(5.0, rel=0.05)


def test_bnpo_degenerate_groups_give_zero_not_nan(make_ctx) -> None:
    ctx = with_rewards(make_ctx, [1.0] * 4 + [0.0] * 4 + [1.0, 0.0, 0.0, 1.0], G=4)
    a = adv("bnpo", ctx)
    assert torch.isfinite(a).all() and (a[:8] == 0).all() and (a[8:] != 0).all()


def test_bnpo_refuses_rewards_outside_the_range(make_ctx) -> None:
    ctx = with_rewards(make_ctx, [0.0, 2.0, 1.0, 0.0], G=2)
    with pytest.raises(UserError, match=r"BNPO needs rewards in \[0.0, 1.0\]"):
        adv("bnpo", ctx)
    scaled = adv("bnpo", ctx, reward_range=(0.0, 2.0), alpha=1.0, beta=1.0)  # affine map to [0, 1]
    assert torch.allclose(scaled, torch.tensor([-0.5, 0.5, 0.25, -0.25]))


def test_bnpo_components_are_summed_unless_decomposed(make_ctx) -> None:
    ctx = make_ctx(B=16, G=4)
    r1, _ = binary_groups(4, 4, seed=2)
    r2, _ = binary_groups(4, 4, seed=3)
    ctx.rewards = torch.stack([0.5 * r1, 0.5 * r2], dim=1)
    summed = adv("bnpo", ctx, alpha=1.2, beta=2.0)  # the official default: no decomposition
    both = adv("bnpo", ctx, alpha=1.2, beta=2.0, decompose=True)
    ctx.rewards = 0.5 * (r1 + r2)
    assert torch.allclose(summed, adv("bnpo", ctx, alpha=1.2, beta=2.0))
    singles = []
    for r in (0.5 * r1, 0.5 * r2):
        ctx.rewards = r
        singles.append(adv("bnpo", ctx, alpha=1.2, beta=2.0))
    assert torch.allclose(both, (singles[0] + singles[1]) / 2)
    assert not torch.allclose(both, summed)


# --- Stratified GRPO --------------------------------------------------------------------------------------------

def test_stratified_hand_values_at_the_default_blend(make_ctx) -> None:
    ctx = with_rewards(make_ctx, [0.0, 1.0, 1.0, 0.0, 1.0, 1.0], G=6)
    key = torch.tensor([0, 0, 0, 1, 1, 1])
    a = adv("stratified", ctx, stratum=lambda c: key)
    r = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    mu, sd = statistics.mean(r), statistics.stdev(r)
    gn = [(x - mu) / (sd + 1e-4) for x in r]
    san = []
    for s in (r[:3], r[3:]):
        m, d = statistics.mean(s), statistics.stdev(s)
        san += [(x - m) / (d + 1e-4) for x in s]
    expected = [0.5 * x + 0.5 * y for x, y in zip(san, gn)]  # alpha = 0.5
    assert torch.allclose(a.double(), torch.tensor(expected, dtype=torch.double), atol=1e-5)


def test_stratified_one_stratum_or_alpha_zero_is_grpo(make_ctx) -> None:
    ctx = make_ctx(B=12, G=6, seed=4)
    one = adv("stratified", ctx, stratum=lambda c: torch.zeros(12, dtype=torch.long), alpha=0.7)
    assert torch.allclose(one, adv("grpo", ctx), atol=1e-6)
    strata = lambda c: torch.arange(12) % 2  # noqa: E731
    assert torch.allclose(adv("stratified", ctx, stratum=strata, alpha=0.0), adv("grpo", ctx), atol=1e-6)


def test_stratified_turn_count_strata(make_ctx) -> None:
    ctx = with_rewards(make_ctx, [1.0, 0.0, 1.0, 0.0], G=4, T=4)
    ctx.mask = torch.ones(4, 4)
    ctx.token_ids = torch.tensor([[9, 4, 4, 4], [4, 4, 4, 4], [9, 4, 4, 4], [4, 9, 4, 4]])
    ctx.turn_marker_id = 9
    # turn counts 1, 0, 1, 1: strata {1: rows 0, 2, 3}, {0: row 1 (a singleton: global fallback)}
    a = adv("stratified", ctx, alpha=1.0)
    san = [(x - 2 / 3) / (statistics.stdev([1.0, 1.0, 0.0]) + 1e-4) for x in (1.0, 1.0, 0.0)]
    gn = adv("grpo", ctx)
    assert torch.allclose(a[[0, 2, 3]].double(), torch.tensor(san, dtype=torch.double), atol=1e-5)
    assert a[1] == pytest.approx(float(gn[1]))


def test_stratified_singleton_fallback_zero(make_ctx) -> None:
    ctx = with_rewards(make_ctx, [0.0, 1.0, 1.0, 0.0], G=4)
    key = torch.tensor([0, 1, 1, 1])
    assert adv("stratified", ctx, stratum=lambda c: key, alpha=1.0, singleton="zero")[0] == 0


# --- EMPG -------------------------------------------------------------------------------------------------------

def empg_reference(a, step_h, k=1.0, k_f=1.0, zeta=0.1):
    """A plain loop over (row, step): min-max normalise, g = e^{-k h}/mean, bonus zeta e^{-k_f h_next}, centre."""
    flat = [h for row in step_h for h in row]
    lo, hi = min(flat), max(flat)
    norm = [[(h - lo) / (hi - lo + 1e-8) for h in row] for row in step_h]
    e_mean = statistics.mean(math.exp(-k * h) for row in norm for h in row)
    out = []
    for ai, row in zip(a, norm):
        vals = []
        for j, h in enumerate(row):
            bonus = zeta * math.exp(-k_f * row[j + 1]) if j + 1 < len(row) else 0.0
            vals.append(math.exp(-k * h) / e_mean * ai + bonus)
        out.append(vals)
    mean = statistics.mean(v for row in out for v in row)
    return [[v - mean for v in row] for row in out]


def test_empg_matches_a_plain_loop(make_ctx) -> None:
    ctx = with_rewards(make_ctx, [1.0, 0.0, 1.0, 0.0], G=2, T=6)
    ctx.mask = torch.tensor([[1.0] * 6, [1.0] * 6, [1.0] * 4 + [0.0] * 2, [1.0] * 6])
    ctx.segment_ids = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    ctx.old_entropy = torch.rand(4, 6, generator=torch.Generator().manual_seed(3)) * 2
    got = adv("empg", ctx)
    a = adv("grpo", ctx).tolist()
    step_h = []
    for b in range(4):
        steps = []
        for k in range(int(ctx.segment_ids[b].max()) + 1):
            sel = (ctx.segment_ids[b] == k) & (ctx.mask[b] > 0)
            if sel.any():
                steps.append(float(ctx.old_entropy[b][sel].mean()))
        step_h.append(steps)
    ref = empg_reference(a, step_h)
    for b in range(4):
        for t in range(6):
            if ctx.mask[b, t] > 0:
                assert float(got[b, t]) == pytest.approx(ref[b][int(ctx.segment_ids[b, t])], abs=1e-5)
            else:
                assert got[b, t] == 0


def test_empg_calibration_and_limits(make_ctx) -> None:
    ctx = make_ctx(B=6, T=5)
    a = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, 0.0])
    h = torch.rand(6, 5, generator=torch.Generator().manual_seed(1))
    exists = torch.ones(6, 5, dtype=torch.bool)
    exists[0, 3:] = False
    modulated_advantage(a, h, exists, ctx, k=1.0, k_f=1.0, zeta=0.1)
    assert float(ctx.metrics["empg_g_mean"]) == pytest.approx(1.0, abs=1e-6)  # mean g = 1
    flat = modulated_advantage(a, torch.full((6, 5), 0.7), exists, ctx, 1.0, 1.0, zeta=0.0)
    per_step = a[:, None].expand(6, 5)[exists]
    assert torch.allclose(flat[exists], per_step - per_step.mean(), atol=1e-6)  # equal entropies: centred A
    two = modulated_advantage(torch.tensor([1.0, 1.0]), torch.tensor([[0.1], [0.9]]),
                              torch.ones(2, 1, dtype=torch.bool), ctx, 1.0, 1.0, zeta=0.0)
    assert two[0, 0] > two[1, 0]  # the lower-entropy step gets the larger modulated advantage


# --- GTPO, MA-RLHF, f-DPG -----------------------------------------------------------------------------------------

def test_gtpo_advantage_is_r_minus_mean_shaped_and_filtered(make_ctx) -> None:
    ctx = with_rewards(make_ctx, [1.0, 0.0, 0.0, 1.0, 1.0, 0.0], G=6, T=3)
    ctx.mask = torch.ones(6, 3)
    ctx.old_entropy = torch.tensor([[0.2, 0.4, 0.6], [0.5] * 3, [0.9] * 3, [0.6, 0.7, 0.8], [0.75] * 3, [0.1] * 3])
    a = adv("gtpo", ctx)
    h = [0.4, 0.5, 0.9, 0.7, 0.75, 0.1]  # mean entropies; above 0.7 is filtered, 0.7 itself is kept
    expected = [(r - 0.5) - 0.1 * hh if hh <= 0.7 + 1e-6 else 0.0 for r, hh in zip([1, 0, 0, 1, 1, 0], h)]
    assert torch.allclose(a, torch.tensor(expected), atol=1e-6)
    assert float(ctx.metrics["entropy_filtered"]) == pytest.approx(2 / 6)


def macro_reference(r_outcome, old, ref, mask, seg, kl=0.05, lam=0.95, gamma=1.0, sigma="equal"):
    """The code's macro modelling by loops: per-token KL rewards + outcome at the last token, sigma per macro,
    then GAE with V = 0 over macros."""
    out = []
    for b in range(len(mask)):
        n = int(sum(mask[b]))
        rew = [-kl * (old[b][t] - ref[b][t]) for t in range(n)]
        rew[n - 1] += r_outcome[b]
        macros: dict[int, list[int]] = {}
        for t in range(n):
            macros.setdefault(seg[b][t], []).append(t)
        keys = sorted(macros)
        macro_r = []
        for key in keys:
            ts = macros[key]
            if sigma == "equal":
                w = [1 / len(ts)] * len(ts)
            elif sigma == "unit":
                w = [0.0] * (len(ts) - 1) + [1.0]
            else:
                raw = [1 / (i + 1) for i in range(len(ts))]
                w = [x / sum(raw) for x in raw]
            macro_r.append(sum(wi * rew[t] for wi, t in zip(w, ts)))
        gae, acc = [0.0] * len(keys), 0.0
        for j in reversed(range(len(keys))):
            acc = macro_r[j] + gamma * lam * acc
            gae[j] = acc
        row = [0.0] * len(mask[b])
        for j, key in enumerate(keys):
            for t in macros[key]:
                row[t] = gae[j]
        out.append(row)
    return out


@pytest.mark.parametrize("sigma", ["equal", "unit", "position"])
def test_macro_advantage_matches_the_code_by_loops(make_ctx, sigma: str) -> None:
    ctx = make_ctx(B=6, T=9, G=3, seed=5)
    ctx.ref_logp = ctx.old_logp + 0.3 * torch.randn(6, 9, generator=torch.Generator().manual_seed(2))
    ctx.segment_ids = SEGMENTERS.get("fixed")(ctx, n=2)
    got = adv("macro", ctx, sigma=sigma)
    ref = macro_reference(adv("grpo", ctx).tolist(), ctx.old_logp.tolist(), ctx.ref_logp.tolist(),
                          ctx.mask.tolist(), ctx.segment_ids.tolist(), sigma=sigma)
    assert torch.allclose(got.double(), torch.tensor(ref, dtype=torch.double), atol=1e-5)


def test_macro_limits(make_ctx) -> None:
    ctx = make_ctx(B=6, T=6, G=3, seed=1)
    ctx.ref_logp = ctx.old_logp - 0.2
    ctx.segment_ids = torch.arange(6).expand(6, 6).clone()  # n = 1, sigma unit: plain GAE with V = 0
    got = adv("macro", ctx, sigma="unit")
    a = adv("grpo", ctx)
    for b in range(6):
        n = int(ctx.mask[b].sum())
        rew = [-0.05 * 0.2] * n  # r_t = -beta (log pi_old - log pi_ref)
        rew[-1] += float(a[b])
        acc, gae = 0.0, []
        for t in reversed(range(n)):
            acc = rew[t] + 0.95 * acc
            gae.append(acc)
        assert torch.allclose(got[b, :n].double(), torch.tensor(gae[::-1], dtype=torch.double), atol=1e-6)
    no_kl = adv("macro", ctx, kl_coef=0.0, lam=1.0)
    assert torch.allclose(no_kl, a[:, None] * ctx.mask, atol=1e-6)  # beta = 0, lambda = 1: GRPO's advantage


def test_fdpg_partition_is_a_cumulative_importance_average(make_ctx) -> None:
    ctx = with_rewards(make_ctx, [1.0, 0.0, 1.0, 1.0], G=2, T=3)
    ctx.mask = torch.ones(4, 3)
    ctx.ref_logp = ctx.old_logp - 0.1
    ctx.prompt_keys = ["a", "a", "b", "b"]
    assert torch.equal(adv("fdpg_partition", ctx), torch.zeros(4))
    w = torch.exp(torch.tensor([-0.3, -0.3, -0.3, -0.3])) * torch.tensor([1.0, 0.0, 1.0, 1.0])  # pi_ref b / q
    assert ctx.state["fdpg"]["z"]["a"] == pytest.approx([float(w[:2].mean()), 2], rel=1e-5)
    assert torch.allclose(ctx.flags["log_z"], torch.log(torch.tensor([w[:2].mean(), w[:2].mean(),
                                                                       w[2:].mean(), w[2:].mean()])).double(),
                          atol=1e-5)
    adv("fdpg_partition", ctx)  # a second batch of the same prompts: the running mean over 4 samples
    assert ctx.state["fdpg"]["z"]["a"] == pytest.approx([float(w[:2].mean()), 4], rel=1e-5)
