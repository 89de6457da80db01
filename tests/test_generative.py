"""The generative core against closed forms: the Karras schedule, EDM preconditioning, loss and sampler (with the
analytic Gaussian denoiser), the U-Net's size, denoising score matching, flow matching and GPC composition."""

from __future__ import annotations

import math

import pytest
import torch

from offline_rl.errors import UserError
from offline_rl.generative import (
    EDMDenoiser,
    ScoreModel,
    UNet1D,
    churn_gammas,
    compose_policies,
    dsm_loss,
    edm_loss,
    edm_sample,
    flow_matching_loss,
    flow_sample,
    geometric_sigmas,
    karras_sigmas,
    score_ascent,
    weight_grid,
)
from offline_rl.generative.dsm import sample_ladder_sigmas
from offline_rl.reproduce.diffusion import GaussianField, gaussian_denoiser, gaussian_velocity


def test_karras_schedule_and_churn_by_hand():
    n, lo, hi, rho = 4, 0.002, 80.0, 7.0
    want = [(hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for i in range(n)] + [0.0]
    got = karras_sigmas(n, lo, hi, rho)
    assert torch.allclose(got, torch.tensor(want), rtol=1e-6)
    assert got[0].item() == pytest.approx(80.0) and got[n - 1].item() == pytest.approx(0.002)
    gammas = churn_gammas(torch.tensor([80.0, 40.0, 1.0, 0.01, 0.0]), s_churn=80.0)
    g = min(80.0 / 4, math.sqrt(2) - 1)
    assert gammas.tolist() == pytest.approx([0.0, g, g, 0.0, 0.0])
    assert churn_gammas(torch.tensor([1.0] * 11), s_churn=2.0)[0].item() == pytest.approx(0.2)  # S_churn/N < √2 − 1


def test_edm_preconditioning_and_loss_by_hand():
    class Raw(torch.nn.Module):  # F(x_in, c_noise) = 2·x_in + c_noise, to expose every coefficient
        def forward(self, x, c_noise):
            return 2 * x + c_noise[:, None]

    d = EDMDenoiser(Raw(), sigma_data=0.5)
    x = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    sigma = torch.tensor([0.3, 2.0])
    s = sigma[:, None]
    c_skip, c_out, c_in = 0.25 / (s ** 2 + 0.25), s * 0.5 / torch.sqrt(s ** 2 + 0.25), 1 / torch.sqrt(s ** 2 + 0.25)
    want = c_skip * x + c_out * (2 * c_in * x + 0.25 * torch.log(s))
    assert torch.allclose(d(x, sigma), want, atol=1e-6)

    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    loss = edm_loss(d, x, p_mean=-1.2, p_std=1.2, generator=g1)
    sig = torch.exp(-1.2 + 1.2 * torch.randn(2, generator=g2))[:, None]
    noise = torch.randn(x.shape, generator=g2)
    weight = (sig ** 2 + 0.25) / (sig * 0.5) ** 2
    assert loss.item() == pytest.approx((weight * (d(x + sig * noise, sig[:, 0]) - x) ** 2).mean().item(), rel=1e-5)


def test_sampler_steps_match_a_plain_reimplementation():
    """Two steps of the sampler (churn on the first, Heun on the first, Euler on the last), written out by hand."""
    d = gaussian_denoiser(0.4, 0.8)
    steps, kw = 2, dict(sigma_min=0.05, sigma_max=3.0, rho=7.0, s_churn=1.0, s_tmin=0.0, s_tmax=100.0, s_noise=1.1)
    for euler_from in ("x", "x_hat"):
        out = edm_sample(d, (5, 3), steps, euler_from=euler_from, generator=torch.Generator().manual_seed(7), **kw)
        g = torch.Generator().manual_seed(7)
        sig = [3.0, 0.05, 0.0]
        gamma = min(1.0 / 2, math.sqrt(2) - 1)
        x = torch.randn(5, 3, generator=g) * sig[0]
        for i in range(2):
            s_hat = sig[i] * (1 + gamma)  # σ_i ∈ [0, 100]: churn at both steps
            x_hat = x + math.sqrt(s_hat ** 2 - sig[i] ** 2) * 1.1 * torch.randn(5, 3, generator=g)
            dx = (x_hat - d(x_hat, s_hat)) / s_hat
            x_next = (x if euler_from == "x" else x_hat) + (sig[i + 1] - s_hat) * dx
            if sig[i + 1] > 0:
                x_next = x_hat + 0.5 * (sig[i + 1] - s_hat) * (dx + (x_next - d(x_next, sig[i + 1])) / sig[i + 1])
            x = x_next
        assert torch.allclose(out, x, atol=1e-5), euler_from


def test_sampler_reproduces_gaussian_moments_with_the_analytic_denoiser():
    m, sd, n = torch.tensor([0.5, -1.0]), 0.7, 40_000
    se_mean, se_std = sd / math.sqrt(n), sd / math.sqrt(2 * n)
    # EDM Algorithm 2 with churn (S_noise = 1): the data moments within Monte Carlo error.
    x = edm_sample(gaussian_denoiser(m, sd), (n, 2), 256, euler_from="x_hat", s_noise=1.0,
                   generator=torch.Generator().manual_seed(0))
    assert (x.mean(0) - m).abs().max() < 4 * se_mean
    assert (x.std(0) - sd).abs().max() < 4 * se_std
    # Without churn both predictor variants are the deterministic Heun ODE (identical draws).
    a = edm_sample(gaussian_denoiser(m, sd), (n, 2), 64, s_churn=0.0, generator=torch.Generator().manual_seed(1))
    b = edm_sample(gaussian_denoiser(m, sd), (n, 2), 64, s_churn=0.0, euler_from="x_hat",
                   generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert (a.std(0) - sd).abs().max() < 4 * se_std
    # The reference's Euler-from-x with churn inflates the spread (the spec's trap; 64 steps: std ≈ 0.80 for 0.7).
    ref = edm_sample(gaussian_denoiser(m, sd), (n, 2), 64, generator=torch.Generator().manual_seed(2))
    assert (ref.std(0) - sd).min() > 20 * se_std


def test_unet_size_matches_the_spec_at_f256_and_f1024():
    with torch.device("meta"):
        small, large = UNet1D(25, 256, 3), UNet1D(25, 1024, 3)
    assert sum(p.numel() for p in small.parameters()) == pytest.approx(11.1e6, rel=0.005)
    assert sum(p.numel() for p in large.parameters()) == pytest.approx(177.7e6, rel=0.001)
    net = UNet1D(6, 16, 3, groups=4)
    for length in (32, 129):  # fully convolutional: a length that does not halve evenly works too
        assert net(torch.randn(2, length, 6), torch.rand(2)).shape == (2, length, 6)


def test_dsm_score_matches_the_analytic_noised_score_and_ascent_raises_density():
    torch.manual_seed(0)
    m, s = torch.tensor([1.0, -0.5]), torch.tensor([0.6, 1.2])
    data = m + s * torch.randn(8000, 2)
    ladder = torch.tensor([0.1, 0.3, 1.0])
    score = ScoreModel(2, (64, 64))
    opt = torch.optim.Adam(score.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(600):
        batch = data[torch.randint(0, len(data), (256,), generator=gen)]
        loss = dsm_loss(score, batch, sample_ladder_sigmas(ladder, 256, gen), gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = m + s * torch.randn(2000, 2, generator=gen) + 0.3 * torch.randn(2000, 2, generator=gen)
    with torch.no_grad():
        learned = score(x, 0.3)
    analytic = -(x - m) / (s ** 2 + 0.3 ** 2)
    assert torch.nn.functional.cosine_similarity(learned, analytic, dim=1).mean() > 0.9

    def log_density(z):
        return (-0.5 * ((z - m) / s) ** 2 - torch.log(s) - 0.5 * math.log(2 * math.pi)).sum(-1).mean()

    start = m + 2.0 * s * torch.randn(2000, 2, generator=gen)
    moved = score_ascent(score, start, eta=0.05, sigma=0.1, steps=3)
    assert log_density(moved) > log_density(start) + 1.0


def test_dsm_loss_by_hand():
    score = ScoreModel(3, (8,))
    x = torch.randn(4, 3)
    sigma = torch.tensor([0.1, 0.5, 1.0, 0.3])
    loss = dsm_loss(score, x, sigma, torch.Generator().manual_seed(5))
    eps = torch.randn(4, 3, generator=torch.Generator().manual_seed(5))
    s = sigma[:, None]
    assert loss.item() == pytest.approx((s ** 2 * (score(x + s * eps, sigma) + eps / s) ** 2).sum(-1).mean().item(),
                                        rel=1e-5)
    assert geometric_sigmas(0.1, 1.0, 3).tolist() == pytest.approx([1.0, math.sqrt(0.1), 0.1])


def test_flow_matching_loss_by_hand_and_the_sampler_integrates_from_noise_to_data():
    v = torch.nn.Linear(2, 2)
    x0, w = torch.randn(6, 2), torch.rand(6)
    loss = flow_matching_loss(lambda x, t, c: v(x) * t[:, None], x0, weights=w, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    t, eps = torch.rand(6, generator=g), torch.randn(6, 2, generator=g)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    want = (w * ((v(x_t) * t[:, None] - (eps - x0)) ** 2).mean(-1)).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)

    mean, sd = torch.tensor([1.5, -0.5]), 0.4
    samples = flow_sample(gaussian_velocity(mean, sd), torch.randn(20_000, 2, generator=g), steps=200)
    assert (samples.mean(0) - mean).abs().max() < 0.02
    assert (samples.std(0) - sd).abs().max() < 0.02


def test_gpc_composition_of_biased_fields_is_the_closed_form_gaussian():
    """Two fields of N(m + δ_i, s²I); their w-composition is exactly the field of N(m + w·δ₁ + (1 − w)·δ₂, s²I), so the
    expected NLL under the true N(m, s²I) is NLL* + ½‖w·δ₁ + (1 − w)·δ₂‖²/s², best at w = ½ (Prop. 1's toy)."""
    m, s = torch.tensor([0.5, -0.5]), 0.5
    d1, d2 = torch.tensor([0.6, 0.0]), torch.tensor([0.0, 0.6])

    p1, p2 = GaussianField(m + d1, s), GaussianField(m + d2, s)
    noise = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(0))
    nll_star = 1.0 + 2 * math.log(s) + math.log(2 * math.pi)  # E[−log N(x; m, s²I)] for x ~ N(m, s²I)
    nll = {}
    for w in (0.0, 0.25, 0.5, 0.75, 1.0):
        composed = compose_policies([p1, p2], [w, 1 - w])
        x = flow_sample(composed.velocity, noise, steps=200)
        bias = w * d1 + (1 - w) * d2
        assert (x.mean(0) - (m + bias)).abs().max() < 0.02
        nll[w] = (0.5 * ((x - m) / s).pow(2).sum(-1) + 2 * math.log(s) + math.log(2 * math.pi)).mean().item()
        assert nll[w] == pytest.approx(nll_star + 0.5 * bias.pow(2).sum().item() / s ** 2, abs=0.05)
        y = edm_sample(composed.denoise, (20_000, 2), 64, euler_from="x_hat", s_noise=1.0,
                       generator=torch.Generator().manual_seed(1))
        assert (y.mean(0) - (m + bias)).abs().max() < 0.02
    assert min(nll, key=nll.get) == 0.5 and nll[0.5] < nll[0.0] - 0.3 and nll[0.5] < nll[1.0] - 0.3


def test_compose_checks_weights_and_the_grid():
    f = type("F", (), {"velocity": staticmethod(lambda x, t, c: x)})()
    with pytest.raises(UserError, match="sum to 1"):
        compose_policies([f, f], [0.7, 0.7])
    with pytest.raises(UserError, match="non-negative"):
        compose_policies([f, f], [1.5, -0.5])
    with pytest.raises(UserError, match="2 weight"):
        compose_policies([f, f, f], [0.5, 0.5])
    assert weight_grid(2, 0.25) == [[0.0, 1.0], [0.25, 0.75], [0.5, 0.5], [0.75, 0.25], [1.0, 0.0]]
    grid3 = weight_grid(3, 0.5)
    assert len(grid3) == 6 and all(abs(sum(w) - 1) < 1e-9 for w in grid3)
