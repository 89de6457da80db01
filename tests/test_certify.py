"""Policy smoothing: the certificate's formula, its exact one-step tightness case (spec §4.3), monotonicity in the
budget, the `certify` CLI on a real run folder, and the observation-noise training option."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import beta, norm
from torch import nn

from offline_rl.data.noise import with_observation_noise
from offline_rl.evaluation.certify import certified_bound, certify, clopper_pearson_lower, smoothed_returns

ENV = "offline_rl/ThresholdStep-v0"


class Threshold(nn.Module):
    """The base policy of the tightness case: action 1 iff o > −c."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.register_buffer("c", torch.tensor(c))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs[:, 0] > -self.c).long()


def test_bound_matches_the_formula_written_out():
    rng = np.random.default_rng(0)
    returns = rng.choice([2.0, 5.0, 7.5, 10.0], p=[0.1, 0.2, 0.3, 0.4], size=500)
    sigma, budget, alpha, low = 0.4, 0.3, 0.05, 0.0
    nus = np.unique(returns)  # 2, 5, 7.5, 10: k = 4 thresholds, each at level α/4
    expected, prev = low, low
    for nu in nus:
        x = int((returns >= nu).sum())
        p = beta.ppf(alpha / len(nus), x, len(returns) - x + 1)
        expected += (nu - prev) * norm.cdf(norm.ppf(p) - budget / sigma)
        prev = nu
    assert certified_bound(returns, sigma, budget, alpha, low) == pytest.approx(expected, rel=1e-12)
    # without a known lowest return, a = ν_1 = 2 (the smallest observed): its term vanishes, k stays 4
    first_term = 2.0 * norm.cdf(norm.ppf(beta.ppf(alpha / 4, 500, 1)) - budget / sigma)
    assert certified_bound(returns, sigma, budget, alpha) == pytest.approx(expected - first_term + 2.0, rel=1e-12)


def test_clopper_pearson_lower_bound():
    assert clopper_pearson_lower(0, 100, 0.05) == 0.0
    assert clopper_pearson_lower(100, 100, 0.05) == pytest.approx(0.05 ** (1 / 100), rel=1e-9)  # x = n: α^(1/n)
    assert clopper_pearson_lower(30, 100, 0.025) == pytest.approx(beta.ppf(0.025, 30, 71), rel=1e-12)


def test_exact_one_step_tightness_case():
    """o = 0, act 1 iff o + δ > −c: P_clean = Φ(c/σ); the worst shift −B gives Φ((c − B)/σ) = Φ(Φ⁻¹(p) − B/σ),
    which the certificate must reach up to the confidence slack, and which a real attack attains."""
    c, sigma, n = 0.3, 0.5, 20_000
    policy = Threshold(c)
    budgets = [0.0, 0.25, 0.5, 1.0]
    cert = certify(policy, ENV, sigma, budgets, n, alpha=0.05, seed=1)
    assert cert.low == 0.0 and set(cert.returns) == {0.0, 1.0}
    p_hat = float(np.mean(cert.returns))
    assert abs(p_hat - norm.cdf(c / sigma)) < 4 * np.sqrt(0.25 / n)
    for row in cert.certified:
        exact = norm.cdf((c - row["budget"]) / sigma)
        # k = 2 thresholds (0 and 1); ν = 0 adds nothing since a = 0; so the bound is Φ(Φ⁻¹(p̲) − B/σ)
        p_low = beta.ppf(0.05 / 2, int(np.sum(cert.returns)), n - int(np.sum(cert.returns)) + 1)
        assert row["lower_bound"] == pytest.approx(norm.cdf(norm.ppf(p_low) - row["budget"] / sigma), rel=1e-12)
        assert exact - 0.02 < row["lower_bound"] < exact + 0.005
        attacked = smoothed_returns(policy, ENV, sigma, 5000, seed=2, shift=np.array([-row["budget"]]))
        assert row["lower_bound"] < attacked.mean() + 3 * np.sqrt(0.25 / 5000)  # no attack beats the certificate
        assert abs(attacked.mean() - exact) < 4 * np.sqrt(0.25 / 5000)


def test_bound_decreases_with_the_budget_and_starts_below_the_clean_mean():
    rng = np.random.default_rng(3)
    returns = np.round(rng.normal(100, 20, size=2000))
    bounds = [certified_bound(returns, 0.2, b, 0.05, 0.0) for b in (0.0, 0.1, 0.25, 0.5, 1.0, 2.0)]
    assert all(x > y for x, y in zip(bounds, bounds[1:]))
    assert returns.mean() - 5.0 < bounds[0] < returns.mean()  # the confidence slack only


def test_observation_noise_on_offline_batches_has_the_given_std():
    from helpers import pendulum_dataset

    data = pendulum_dataset(episodes=2)
    noisy = with_observation_noise(data, 0.3)
    b0 = data.sample(4000, torch.Generator().manual_seed(0))
    b1 = noisy.sample(4000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(b1.actions, b0.actions)  # the same rows, only the observations move
    torch.testing.assert_close(b1.rewards, b0.rewards)
    d, dn = b1.observations - b0.observations, b1.next_observations - b0.next_observations
    assert abs(float(d.std()) - 0.3) < 0.01 and abs(float(dn.std()) - 0.3) < 0.01 and abs(float(d.mean())) < 0.01
    assert abs(float(torch.corrcoef(torch.stack([d.reshape(-1), dn.reshape(-1)]))[0, 1])) < 0.05  # independent
    moved = noisy.to("cpu")  # the trainer moves the dataset to the device: the noise must survive
    assert moved.obs_noise == 0.3
    with pytest.raises(Exception, match="noise"):
        with_observation_noise(data, -1.0)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """`offline-rl ARGS` in this process (the console entry point, with its exit codes)."""
    from offline_rl.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out = capsys.readouterr()
    return int(exit_info.value.code or 0), out.out, out.err


def test_certify_cli_on_a_trained_run(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = _cli(capsys, "train", "--algo", "ppo", "--dataset", "CartPole-v1", "--steps", "512",
                        "--eval-every", "512", "--eval-episodes", "1", "--out", str(run), "--device", "cpu")
    assert code == 0, err
    code, stdout, err = _cli(capsys, "certify", str(run), "--sigma", "0.2", "--budgets", "0,0.5,1", "--episodes",
                             "30", "--json")
    assert code == 0, err
    out = json.loads(stdout)
    assert {"sigma", "alpha", "low", "returns", "mean", "certified"} <= set(out)
    assert out["sigma"] == 0.2 and out["alpha"] == 0.05 and len(out["returns"]) == 30
    assert out["mean"] == pytest.approx(np.mean(out["returns"]))
    assert [r["budget"] for r in out["certified"]] == [0.0, 0.5, 1.0]
    bounds = [r["lower_bound"] for r in out["certified"]]
    assert bounds[0] >= bounds[1] >= bounds[2] >= out["low"] == min(out["returns"])
    assert bounds == pytest.approx([certified_bound(out["returns"], 0.2, b, 0.05) for b in (0.0, 0.5, 1.0)])
    code, _, err = _cli(capsys, "certify", str(run), "--sigma", "0.2", "--budgets", "a,b")
    assert code == 2 and "--budgets" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
