"""Exact-gradient and simulator tests of the sequence-level losses: CoPG (IPO equivalence, the bandit fixed point),
f-DPG (Monte Carlo gradient against the exact gradient of D_f), OTR (Monte Carlo against the analytic loss) and
Automate-CoT's VR-PGE (its mean against the enumerated gradient, the projection, the optimisation)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from offline_rl.errors import UserError
from offline_rl.seq.context import LossContext, global_counts
from offline_rl.seq.methods.automate_cot import adam_step, clip_norm, exemplar_prompt, project_row, vr_pge
from offline_rl.seq.methods.copg import pair_mask
from offline_rl.seq.methods.otr import draw_counts, otr_weights
from offline_rl.seq.registry import ADVANTAGES, SURROGATES
from offline_rl.seq.tasks import Problem


def bandit_ctx(arms: torch.Tensor, logp_all: torch.Tensor, ref_all: torch.Tensor, reward_all: torch.Tensor,
               groups: torch.Tensor, old_all: torch.Tensor | None = None) -> LossContext:
    """Single-token "sequences": row i chose arm arms[i]."""
    B = arms.numel()
    ctx = LossContext(mask=torch.ones(B, 1), valid=torch.ones(B, 1), group_ids=groups, rewards=reward_all[arms],
                      token_ids=arms[:, None], logp=logp_all[arms][:, None],
                      old_logp=(old_all if old_all is not None else logp_all.detach())[arms][:, None],
                      ref_logp=ref_all[arms][:, None], prompt_keys=["x"] * B)
    ctx.counts = global_counts(ctx.mask)
    return ctx


# --- CoPG -------------------------------------------------------------------------------------------------------

def test_copg_pairs_and_ipo_equivalence() -> None:
    assert pair_mask(torch.tensor([0, 0, 0, 1]), "all").sum() == 6
    assert pair_mask(torch.tensor([0, 0, 0, 1, 1]), "adjacent").nonzero().tolist() == [[0, 1], [1, 0], [3, 4], [4, 3]]
    beta = 0.1
    logp = torch.tensor([[-1.0, -0.5], [-2.0, -0.25]], requires_grad=True)
    ref = torch.tensor([[-1.2, -0.4], [-1.5, -0.5]])
    ctx = LossContext(mask=torch.ones(2, 2), group_ids=torch.zeros(2, dtype=torch.long),
                      rewards=torch.tensor([0.5, 0.0]), token_ids=torch.zeros(2, 2, dtype=torch.long), logp=logp,
                      old_logp=logp.detach(), ref_logp=ref)
    per_row = SURROGATES.get("copg")(ctx)  # default beta 0.1
    h = float(((logp - ref).sum(-1)[0] - (logp - ref).sum(-1)[1]).detach())  # the log-ratio margin
    ipo = beta ** 2 * (h - 1 / (2 * beta)) ** 2  # R_w - R_l = 1/2: beta^2 x the IPO loss
    assert torch.allclose(per_row.detach(), torch.tensor([ipo, ipo]), atol=1e-6)


def test_copg_off_policy_bandit_converges_to_the_regularised_optimum() -> None:
    """Uniform behaviour, Adam on the logits: softmax(theta) -> softmax(log pi_ref + R / beta)."""
    g = torch.Generator().manual_seed(0)
    ref = torch.log_softmax(torch.randn(4, generator=g), -1)
    R = torch.tensor([0.2, 1.0, 0.5, 0.0])
    beta = 0.5
    theta = torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 400)
    for _ in range(400):
        arms = torch.randint(0, 4, (32,), generator=g)
        ctx = bandit_ctx(arms, torch.log_softmax(theta, -1), ref, R, torch.zeros(32, dtype=torch.long))
        loss = SURROGATES.get("copg")(ctx, beta=beta).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    target = torch.softmax(ref + R / beta, -1)
    assert (torch.softmax(theta, -1) - target).abs().sum() < 1e-2


# --- f-DPG ------------------------------------------------------------------------------------------------------

def f_divergence(pi: torch.Tensor, p: torch.Tensor, kind: str) -> torch.Tensor:
    """D_f(pi || p) = sum_y p f(pi/p), written from f itself (with the limits where p = 0)."""
    safe_p = torch.where(p > 0, p, torch.ones_like(p))
    t = torch.where(p > 0, pi / safe_p, torch.ones_like(pi))  # t = 1 where p = 0 (that branch is replaced)
    f = {"kl": lambda t: -torch.log(t), "reverse_kl": lambda t: t * torch.log(t),
         "js": lambda t: t * torch.log(t) - (1 + t) * torch.log((1 + t) / 2), "tv": lambda t: 0.5 * (t - 1).abs()}
    at_zero = {"kl": 0.0 * pi, "reverse_kl": None, "js": math.log(2.0) * pi, "tv": 0.5 * pi}[kind]
    inside = safe_p * f[kind](t)
    return torch.where(p > 0, inside, at_zero if at_zero is not None else inside).sum()


@pytest.mark.parametrize("kind,target", [("kl", "constraint"), ("js", "constraint"), ("tv", "constraint"),
                                         ("reverse_kl", "exp"), ("js", "exp")])
def test_fdpg_monte_carlo_gradient_matches_the_exact_gradient(kind: str, target: str) -> None:
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(5, generator=g, requires_grad=True)
    ref = torch.log_softmax(torch.randn(5, generator=g), -1)
    b = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    log_pi = torch.log_softmax(theta, -1)
    arms = torch.multinomial(log_pi.exp().detach(), 100_000, replacement=True, generator=g)
    ctx = bandit_ctx(arms, log_pi, ref, b, torch.zeros(arms.numel(), dtype=torch.long))
    ADVANTAGES.get("fdpg_partition")(ctx, target=target)
    mc = torch.autograd.grad(SURROGATES.get("fdpg")(ctx, divergence=kind).mean(), theta)[0]
    unnorm = torch.exp(ref) * (b if target == "constraint" else torch.exp(b / 1.0))
    p = unnorm / unnorm.sum()
    exact = torch.autograd.grad(f_divergence(torch.softmax(theta, -1), p.detach(), kind), theta)[0]
    cos = float(torch.nn.functional.cosine_similarity(mc, exact, dim=0))
    assert cos > 0.99, (cos, mc, exact)


def test_fdpg_reverse_kl_minimiser_and_refusal() -> None:
    g = torch.Generator().manual_seed(2)
    ref = torch.log_softmax(torch.randn(5, generator=g), -1)
    r = torch.tensor([0.0, 1.0, 0.5, 0.2, 0.9])
    star = ref + r  # pi* proportional to a exp(r / beta), beta = 1
    grads = []
    for theta0 in (star, star + torch.tensor([0.5, -0.5, 0.0, 0.3, 0.0])):
        theta = theta0.clone().requires_grad_(True)
        log_pi = torch.log_softmax(theta, -1)
        arms = torch.multinomial(log_pi.exp().detach(), 200_000, replacement=True, generator=g)
        ctx = bandit_ctx(arms, log_pi, ref, r, torch.zeros(arms.numel(), dtype=torch.long))
        ADVANTAGES.get("fdpg_partition")(ctx, target="exp")
        grads.append(torch.autograd.grad(SURROGATES.get("fdpg")(ctx, divergence="reverse_kl").mean(), theta)[0])
    assert grads[0].norm() < 0.1 * grads[1].norm()  # the minimiser is a exp(r / beta)
    ctx = bandit_ctx(torch.tensor([0, 1]), torch.log_softmax(torch.zeros(5), -1), ref, torch.tensor([1.0, 0.0, 1, 1, 1]),
                     torch.zeros(2, dtype=torch.long))
    ADVANTAGES.get("fdpg_partition")(ctx)
    with pytest.raises(UserError, match="full support"):
        SURROGATES.get("fdpg")(ctx, divergence="reverse_kl")


def test_fdpg_baseline_is_the_previous_window_mean_and_ratios_weight_off_policy_rows() -> None:
    ref = torch.log(torch.full((2,), 0.5))
    log_pi = torch.log(torch.tensor([0.5, 0.5]))
    ctx = bandit_ctx(torch.tensor([0, 0, 1, 1]), log_pi, ref, torch.tensor([1.0, 1.0]),
                     torch.zeros(4, dtype=torch.long), old_all=torch.log(torch.tensor([0.25, 0.75])))
    ADVANTAGES.get("fdpg_partition")(ctx)
    loss1 = SURROGATES.get("fdpg")(ctx, divergence="kl")
    # Z = mean(P / q) = mean(0.5/0.25, 0.5/0.25, 0.5/0.75, 0.5/0.75) = 4/3; p = 0.5 / (4/3) = 3/8; t = pi/p = 4/3
    pseudo = 1 / (4 / 3)  # -f'(t) = 1/t for the forward KL
    ratio = torch.tensor([2.0, 2.0, 2 / 3, 2 / 3])  # pi / q
    assert torch.allclose(loss1.detach(), -ratio * pseudo * math.log(0.5), atol=1e-6)  # no baseline yet
    loss2 = SURROGATES.get("fdpg")(ctx, divergence="kl")
    assert torch.allclose(loss2.detach(), torch.zeros(4), atol=1e-6)  # baseline = the same pseudo-reward
    ctx.state.clear()
    ADVANTAGES.get("fdpg_partition")(ctx)
    js = SURROGATES.get("fdpg")(ctx)  # the default divergence, JS: -f'(t) = -log(2t / (1 + t))
    pseudo_js = -math.log(2 * (4 / 3) / (1 + 4 / 3))
    assert torch.allclose(js.detach(), -ratio * pseudo_js * math.log(0.5), atol=1e-6)


# --- OTR --------------------------------------------------------------------------------------------------------

def test_otr_monte_carlo_loss_matches_the_analytic_loss() -> None:
    g = torch.Generator().manual_seed(0)
    logp_all = torch.log_softmax(torch.randn(2, 3, 7, generator=g), -1)
    target = torch.randint(0, 7, (2, 3), generator=g)
    kappa, beta, k = 1.3, -0.1, 200_000
    explore = torch.softmax(logp_all / kappa, -1)
    w = otr_weights(draw_counts(explore, k, g), target, k, beta)
    mc = -(w * logp_all).sum(-1)
    r = torch.full_like(explore, beta).scatter_(-1, target[..., None], 1.0)
    analytic = -(explore * r * logp_all).sum(-1)
    assert torch.allclose(mc, analytic, atol=2e-2)
    ctx = LossContext(mask=torch.ones(2, 3), group_ids=torch.zeros(2, dtype=torch.long), rewards=torch.zeros(2),
                      token_ids=target, logp=logp_all.gather(-1, target[..., None])[..., 0],
                      old_logp=torch.zeros(2, 3), vocab_logp=logp_all)

    big = torch.log_softmax(3 * torch.randn(40, 50, 7, generator=g), -1)  # 2000 positions: the K = 256 noise averages
    tgt = torch.randint(0, 7, (40, 50), generator=g)
    ctx = LossContext(mask=torch.ones(40, 50), group_ids=torch.zeros(40, dtype=torch.long), rewards=torch.zeros(40),
                      token_ids=tgt, logp=big.gather(-1, tgt[..., None])[..., 0], old_logp=torch.zeros(40, 50),
                      vocab_logp=big)
    torch.manual_seed(0)
    default = float(SURROGATES.get("otr")(ctx).mean())  # the defaults: K = 256, kappa = 1.3, beta = -0.1

    def analytic_mean(kappa, beta):
        e = torch.softmax(big / kappa, -1)
        r = torch.full_like(e, beta).scatter_(-1, tgt[..., None], 1.0)
        return float(-(e * r * big).sum(-1).mean())

    assert default == pytest.approx(analytic_mean(1.3, -0.1), abs=0.004)  # Monte Carlo error about 0.001
    assert abs(analytic_mean(1.0, -0.1) - analytic_mean(1.3, -0.1)) > 0.008  # so kappa and beta are pinned
    assert abs(analytic_mean(1.3, 0.0) - analytic_mean(1.3, -0.1)) > 0.008


def test_otr_beta_zero_kappa_one_is_a_scaled_cross_entropy_and_a_step_raises_log_pi() -> None:
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(7, generator=g, requires_grad=True)
    x = torch.tensor([[3]])

    def ctx_for(th):
        lp = torch.log_softmax(th, -1)[None, None, :]
        return LossContext(mask=torch.ones(1, 1), group_ids=torch.zeros(1, dtype=torch.long), rewards=torch.zeros(1),
                           token_ids=x, logp=lp[..., 3], old_logp=torch.zeros(1, 1), vocab_logp=lp)

    torch.manual_seed(0)
    grads = torch.stack([torch.autograd.grad(SURROGATES.get("otr")(ctx_for(theta), k=4096, kappa=1.0, beta=0.0).sum(),
                                             theta)[0] for _ in range(20)]).mean(0)
    pi = torch.softmax(theta, -1).detach()
    ce_grad = pi.clone()
    ce_grad[3] -= 1  # d(-log pi(x)) / d theta
    assert torch.allclose(grads, pi[3] * ce_grad, atol=3e-3)  # pi(x) grad of -log pi(x)
    before = float(torch.log_softmax(theta, -1)[3].detach())
    loss = SURROGATES.get("otr")(ctx_for(theta)).sum()
    (grad,) = torch.autograd.grad(loss, theta)
    assert float(torch.log_softmax(theta - 0.5 * grad, -1)[3].detach()) > before


# --- Automate-CoT -----------------------------------------------------------------------------------------------

LOSS = torch.tensor([[3.0, 1.0, 2.0], [0.5, 2.5, 1.5]])  # additive: L(j1, j2) = LOSS[0, j1] + LOSS[1, j2]


def table_loss(picks: torch.Tensor) -> torch.Tensor:
    return (LOSS[0, picks[:, 0]] + LOSS[1, picks[:, 1]]).double()


def test_vr_pge_mean_is_twice_the_shifted_exact_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]], dtype=torch.double)
    total = torch.zeros_like(probs)
    n = 10_000
    draws = torch.multinomial(probs, n * 10, replacement=True, generator=g).T.reshape(n, 10, 2)
    for picks in draws:
        total += vr_pge(probs, picks, table_loss(picks))
    p = probs.clone().requires_grad_(True)
    expected_loss = sum(p[0, a] * p[1, b] * (LOSS[0, a] + LOSS[1, b]) for a, b in itertools.product(range(3),
                                                                                                    range(3)))
    (exact,) = torch.autograd.grad(expected_loss, p)
    assert torch.allclose(total / n, 2 * (exact - expected_loss.detach()), atol=0.15)


def test_vr_pge_has_lower_variance_than_reinforce_without_a_baseline() -> None:
    g = torch.Generator().manual_seed(1)
    probs = torch.full((2, 3), 1 / 3, dtype=torch.double)
    vr, plain = [], []
    for _ in range(500):
        picks = torch.stack([torch.multinomial(probs, 1, generator=g).squeeze(1) for _ in range(10)])
        losses = table_loss(picks) + 10.0  # an offset the baseline removes
        vr.append(vr_pge(probs, picks, losses))
        shifted = vr_pge(probs, picks, losses - 1e3)  # centring is invariant to a shift...
        assert torch.allclose(shifted, vr[-1], atol=1e-9)
        d = torch.stack([torch.where(torch.arange(3)[None] == picks[i][:, None], 1 / probs, -1 / probs)
                         for i in range(10)])
        plain.append((losses[:, None, None] * d).mean(0))  # ...while REINFORCE without one is not
    assert torch.stack(vr).var(0).sum() < 0.1 * torch.stack(plain).var(0).sum()


def test_projection_adam_and_clip() -> None:
    row = torch.tensor([0.7, 0.6, -0.2], dtype=torch.double)
    out = project_row(row)
    assert abs(float(out.sum()) - 1) < 1e-3 and float(out.min()) >= 1e-4 and float(out[2]) == pytest.approx(1e-4)
    assert torch.allclose(clip_norm(torch.tensor([3.0, 4.0]), 3.0), torch.tensor([3.0, 4.0]) * 3 / (5 + 1e-6))
    st: dict = {}
    p = adam_step(torch.tensor([0.5]), torch.tensor([2.0]), st, lr=0.1)
    ref = torch.tensor([0.5], requires_grad=True)
    opt = torch.optim.Adam([ref], lr=0.1)
    ref.grad = torch.tensor([2.0])
    opt.step()
    assert torch.allclose(p, ref.detach()) and st["t"] == 1
    assert exemplar_prompt([Problem("1+1=", "2"), Problem("3=", "3")], "5=") == "3=3;1+1=2;5="


def test_prompt_losses_follow_the_code() -> None:
    """-log p(answer) * 1e7 for a right greedy answer, -log(0.05) * 1e7 for a wrong one; the mean over questions."""
    from offline_rl.seq.methods.automate_cot import prompt_losses
    from offline_rl.seq.points.hooks import HookContext
    from offline_rl.seq.rollout import RolloutBatch, empty_generation

    questions = [Problem("1=", "1"), Problem("2=", "2")]
    pool = [Problem(f"{i}=", str(i)) for i in range(4)]  # 2 slots x 2 candidates
    seen = []

    def generate(problems, n, prompt_texts=None, greedy=False):
        assert greedy
        seen.append(prompt_texts)
        right = [1.0 if t.startswith("3=3;") else 0.0 for t in prompt_texts]  # slot 1 picks exemplar 3
        return RolloutBatch(empty_generation(), torch.zeros(2, dtype=torch.long), problems, [""] * 2,
                            torch.tensor([right[0], 0.0]))

    ctx = HookContext(None, 0, questions, [1, 1], generate=generate,
                      score_answers=lambda prompts, answers: torch.tensor([-0.5, -2.0]))
    losses = prompt_losses(ctx, pool, torch.tensor([[0, 1], [1, 0]]), slots=2, size=2)
    assert seen[0] == ["3=3;0=0;1=", "3=3;0=0;2="] and seen[1] == ["2=2;1=1;1=", "2=2;1=1;2="]
    wrong = -math.log(0.05) * 1e7
    assert losses.tolist() == pytest.approx([(0.5e7 + wrong) / 2, wrong])


def test_vr_pge_optimisation_recovers_the_best_exemplars() -> None:
    g = torch.Generator().manual_seed(3)
    probs = torch.full((2, 3), 1 / 3, dtype=torch.double)
    st: dict = {}
    for _ in range(400):
        picks = torch.stack([torch.multinomial(probs, 1, generator=g).squeeze(1) for _ in range(10)])
        noisy = table_loss(picks) + 0.3 * torch.randn(10, generator=g, dtype=torch.double)
        stepped = adam_step(probs, clip_norm(vr_pge(probs, picks, noisy), 3.0), st, lr=1e-2)
        probs = torch.stack([project_row(r) for r in stepped])
        assert ((probs.sum(-1) - 1).abs() < 1e-3).all() and (probs >= 1e-4).all()
    assert probs.argmax(-1).tolist() == [1, 0]  # the lowest-loss exemplar of each slot
