"""Policy-guided diffusion: windows, encoding, the guidance (weight, gradient, semantics), the model cache, the
training protocol's regeneration schedule, and `augment pgd` -> `datasets info NAME` -> `train --dataset NAME`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from helpers import pendulum_dataset
from test_cli import cli
from torch.distributions import Normal

from offline_rl import algos
from offline_rl.augment import pgd
from offline_rl.augment.synthetic import pgd_augment

TINY = dict(features=16, blocks=2, train_steps=20, sampling_steps=4, diffusion_batch_size=8, val_ratio=0.0)


def reference_windows(done, terminal, timeout, length, stride):
    """The reference's `_assemble_dataset` on flat flags (convolution for 'no done in the first L − 1 rows', sets)."""
    done_idx = np.flatnonzero(done)
    if done_idx[-1] == len(done) - 1:
        done_idx = done_idx[:-1]
    init = set([0] + (done_idx + 1).tolist())
    any_done = np.convolve(np.ones(length - 1), done[:-1].astype(float), mode="valid")
    valid = np.flatnonzero(any_done == 0)
    starts = set(valid[::stride].tolist())
    starts |= set(valid.tolist()) & set((np.flatnonzero(terminal) - (length - 1)).tolist())
    starts |= set(valid.tolist()) & init
    starts -= set((np.flatnonzero(timeout) - (length - 1)).tolist())
    return sorted(starts)


def test_window_starts_match_the_reference_construction():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(1, 15, size=6)
        episode = np.repeat(np.arange(6), lengths)
        last = np.concatenate([episode[1:] != episode[:-1], [True]])
        ends_terminal = rng.random(6) < 0.5
        terminal = last & ends_terminal[episode]
        timeout = last & ~ends_terminal[episode]
        for length, stride in ((4, 3), (2, 1), (5, 8)):
            got = pgd.window_starts(last, terminal, timeout, np.concatenate([[True], last[:-1]]), length, stride)
            assert got.tolist() == reference_windows(last, terminal, timeout, length, stride)


def test_encode_decode_round_trip_and_the_episode_split():
    data = pendulum_dataset(episodes=4)
    rows = pgd.episode_rows(data)
    train, val = pgd.split_episodes(rows["episode"], 0.25, seed=0)
    assert len(val) == 1 and sorted(np.concatenate([train, val]).tolist()) == [0, 1, 2, 3]
    windows = pgd.subset_windows(rows, train, 32, 8)
    assert (data.episode_ids[torch.as_tensor(windows)] == data.episode_ids[torch.as_tensor(windows[:, :1])]).all()
    assert not np.isin(data.episode_ids.numpy()[windows[:, 0]], val).any()
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    model = pgd.TrajectoryModel(3, 1, low, high, features=16, blocks=2)
    raw = model.raw_steps(data, windows)
    model.fit_stats(raw)
    flat = raw.reshape(-1, 6)
    assert torch.allclose(model.mean, flat.mean(0)) and model.std[-1] == 1.0  # no terminals: std 0 → 1
    model.fit_stats(raw[:1])  # one window: population std (1/n), as the reference's jnp.std
    few = raw[0]
    assert torch.allclose(model.std[:-1], ((few - few.mean(0)) ** 2).mean(0).sqrt()[:-1])
    model.fit_stats(raw)
    assert torch.allclose(raw[..., 3], torch.atanh((data.actions[torch.as_tensor(windows)][..., 0] / 2).clamp(-0.999, 0.999)))
    out = model.decode(model.normalize(raw))
    idx = torch.as_tensor(windows[:, :-1])
    assert torch.allclose(out["observations"], data.observations[idx], atol=1e-5)
    assert torch.allclose(out["next_observations"], data.next_observations[idx], atol=1e-5)
    assert torch.allclose(out["actions"], data.actions[idx].clamp(-2 * 0.999, 2 * 0.999), atol=1e-4)
    assert torch.allclose(out["rewards"], data.rewards[idx], atol=1e-4)
    assert not out["terminals"].any()


def test_decoding_thresholds_done_at_one_half_and_rescales_actions():
    model = pgd.TrajectoryModel(1, 1, torch.tensor([-2.0]), torch.tensor([4.0]), features=16, blocks=2)
    model.mean.copy_(torch.tensor([1.0, 0.5, -1.0, 0.2]))
    model.std.copy_(torch.tensor([2.0, 1.5, 3.0, 0.5]))
    raw = torch.tensor([[[3.0, 0.3, 5.0, 0.45], [1.0, -0.7, 2.0, 0.55], [0.0, 0.0, 0.0, 0.0]]])
    out = model.decode(model.normalize(raw))
    assert out["terminals"][0].tolist() == [False, True]
    assert torch.allclose(out["actions"][0, :, 0], 1.0 + 3.0 * torch.tanh(torch.tensor([0.3, -0.7])))
    assert torch.allclose(out["rewards"][0], torch.tensor([5.0, 2.0]))
    assert torch.allclose(out["next_observations"][0, :, 0], torch.tensor([1.0, 0.0]))


def test_guidance_weight_schedule_by_hand():
    n, coeff, c = 10, 0.5, 0.3
    for i in range(n - 1):
        assert pgd.guidance_weight(i, n, coeff, c) == pytest.approx(coeff * (1 - i / n + c * math.sin(math.pi * (i + 1) / n)))
    assert pgd.guidance_weight(n - 1, n, coeff, c) == 0.0  # never at the last step
    assert pgd.guidance_weight(2, n, coeff, c, delay=3) == 0.0 and pgd.guidance_weight(3, n, coeff, c, delay=3) > 0


def _model_with_stats(seed: int = 0) -> pgd.TrajectoryModel:
    torch.manual_seed(seed)
    model = pgd.TrajectoryModel(2, 2, torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]), features=16, blocks=2)
    model.mean.copy_(torch.randn(6) * 0.3)
    model.std.copy_(torch.rand(6) + 0.5)
    return model


def test_guidance_gradient_is_the_chain_rule_through_tanh_and_unnormalisation():
    model = _model_with_stats()

    def mu(s):
        return torch.tanh(s @ torch.tensor([[0.5, -0.3], [0.2, 0.8]]))

    def log_prob(s, a):
        return Normal(mu(s), 1.0).log_prob(a).sum(-1)

    x = torch.randn(16, 5, 6, generator=torch.Generator().manual_seed(1))
    g = pgd.action_guidance(model, log_prob, x)
    u = x[..., 2:4] * model.std[2:4] + model.mean[2:4]
    s = model.unnormalize(x)[..., :2]
    by_hand = -(torch.tanh(u) - mu(s)) * (1 - torch.tanh(u) ** 2) * model.std[2:4]
    assert torch.allclose(g, by_hand, atol=1e-5)

    def total(z):
        return log_prob(model.unnormalize(z)[..., :2].reshape(-1, 2), model.unit_actions(z).reshape(-1, 2)).sum()

    stepped = x.clone()
    stepped[..., 2:4] += 0.05 * g / g.flatten(1).norm(dim=1)[:, None, None]
    assert total(stepped) > total(x)  # a small step along g raises Σ log π_T
    ref = pgd.action_guidance(model, log_prob, x, norm="reference")
    fixed = pgd.action_guidance(model, log_prob, x, norm="fixed")
    size = g.flatten(1).norm(dim=1)[:, None, None]
    assert torch.allclose(ref, g / size + 1e-8) and torch.allclose(fixed, g / (size + 1e-8))
    assert ref[0, 0, 0].item() != fixed[0, 0, 0].item()  # the released code's precedence: + 1e-8 elementwise


class IsotropicDenoiser(torch.nn.Module):
    """The exact denoiser of N(0, I) (normalised trajectories whose every coordinate is standard normal)."""

    def forward(self, x, sigma, *cond):
        return x / (1.0 + torch.as_tensor(sigma) ** 2)


def test_guidance_moves_actions_to_the_target_and_leaves_states_and_rewards_alone():
    model = pgd.TrajectoryModel(1, 1, torch.tensor([-1.0]), torch.tensor([1.0]), features=16, blocks=2)
    model.denoiser = IsotropicDenoiser()  # mean 0, std 1: unit actions are tanh(x_a)

    def log_prob(s, a):
        return Normal(torch.full_like(a, 0.6), 1.0).log_prob(a).sum(-1)

    distance, samples = [], {}
    for coeff in (0.0, 0.1, 0.2, 0.5, 1.0):
        cfg = pgd.PGDConfig(sampling_steps=32, guidance_coeff=coeff, trajectory_length=6, euler_from="x_hat")
        x = pgd.sample_trajectories(model, 2000, cfg, log_prob, torch.Generator().manual_seed(0))
        samples[coeff] = x
        distance.append((model.unit_actions(x) - 0.6).abs().mean().item())
    unguided = pgd.sample_trajectories(model, 2000, pgd.PGDConfig(sampling_steps=32, trajectory_length=6,
                                                                  euler_from="x_hat"), None,
                                       torch.Generator().manual_seed(0))
    assert torch.equal(samples[0.0], unguided)  # coefficient 0: the unguided sampler, draw for draw
    assert abs(unguided[..., 1].mean().item()) < 0.03 and abs(unguided[..., 1].std().item() - 1) < 0.08
    assert all(a > b for a, b in zip(distance, distance[1:], strict=False)), distance  # monotone towards μ
    assert distance[-1] < 0.25 * distance[0]
    for coeff, x in samples.items():  # states, rewards and dones are never guided
        assert torch.allclose(x[..., [0, 2, 3]], unguided[..., [0, 2, 3]], atol=1e-5), coeff
    term = pgd.make_guidance(model, log_prob, pgd.PGDConfig(guidance_coeff=0.1), 8)(torch.randn(4, 6, 4), 1, 5.0)
    assert term[..., [0, 2, 3]].abs().max() == 0 and term[..., 1].abs().min() > 0


def test_target_log_prob_of_trained_agents():
    spec = pendulum_dataset(episodes=1).spec
    low, high = torch.tensor([-2.0]), torch.tensor([2.0])
    s, a = torch.randn(7, 3), torch.rand(7, 1) * 2 - 1
    iql = algos.make("iql", spec, {"hidden": [16, 16]}, seed=0)
    want = iql.actor.dist(iql.normalizer(s)).log_prob(a * 2.0 / 2.0).sum(-1)
    assert torch.allclose(pgd.target_log_prob(iql, low, high)(s, a), want)
    td3 = algos.make("td3_bc", spec, {"actor_hidden": [16, 16], "critic_hidden": [16, 16]}, seed=0)
    with torch.no_grad():
        mu = td3.policy()(s) / 2.0
    assert torch.allclose(pgd.target_log_prob(td3, low, high)(s, a), Normal(mu, 1.0).log_prob(a).sum(-1))


def test_protocol_regenerates_after_update_k_lifetime_plus_one():
    data = pendulum_dataset(episodes=3)
    agent = algos.make("pgd", data.spec, {**TINY, "trajectories": 4, "synth_lifetime": 3, "guidance_coeff": 0.5,
                                          "synth_batch_size": 6, "agent_config": {"actor_hidden": [16, 16],
                                                                                  "critic_hidden": [16, 16]}}, seed=0)
    agent.prepare(data)
    assert agent.model_info["reused"] is False and agent.synth_rewards.shape == (4 * 31,)
    changed = []
    for step in range(1, 12):
        before = agent.synth_observations.clone()
        agent.update(data.sample(16, torch.Generator().manual_seed(step)), step)
        if not torch.equal(before, agent.synth_observations):
            changed.append(step)
    assert changed == [5, 8, 11]  # after updates 4, 7, 10 = k·3 + 1 (the reference's 0-indexed step_idx % 3 == 0)
    again = algos.make("pgd", data.spec, {**TINY, "trajectories": 4, "guidance_coeff": 2.0}, seed=1)
    again.prepare(data)
    assert again.model_info["reused"] is True  # another guidance setting: the cached model
    other = algos.make("pgd", data.spec, {**TINY, "trajectories": 4, "features": 32}, seed=1)
    other.prepare(data)
    assert other.model_info["reused"] is False and other.model_info["path"] != again.model_info["path"]


def test_augment_pgd_writes_a_named_dataset_that_info_and_train_read(tmp_path):
    from offline_rl.data import load_dataset
    from offline_rl.errors import UserError
    from offline_rl.training import load_run, run_experiment

    run = tmp_path / "agent"
    run_experiment("td3_bc", "pendulum-medium", 0, 20, 20, 1, run, progress=False,
                   overrides={"actor_hidden": [16, 16], "critic_hidden": [16, 16]})
    sets = [arg for k, v in TINY.items() for arg in ("--set", f"{k}={v}")]
    proc = cli("augment", "pgd", "--dataset", "pendulum-medium", "--agent", str(run), "--out", "pend-pgd-test",
               "--trajectories", "12", "--guidance", "0.2", "--json", *sets)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["synthetic"] and record["agent_algo"] == "td3_bc" and record["guidance_coeff"] == 0.2
    assert record["synthetic_transitions"] == 12 * 31 and record["real_transitions"] == 51200
    assert record["config"]["features"] == 16 and record["source"] == "pendulum-medium"
    info = json.loads(cli("datasets", "info", "pend-pgd-test", "--json").stdout)
    assert info["label"].startswith("offline-rl synthetic") and info["env_id"] == "Pendulum-v1"
    # Default loading drops each synthetic trajectory's final (truncated) row, as it drops the real time-limit rows.
    assert 0 < record["synthetic_truncated"] <= 12
    assert info["n_transitions"] == 12 * 31 + 51200  # Minari keeps every step, truncated ones included
    result = run_experiment("td3_bc", "pend-pgd-test", 0, 10, 10, 1, tmp_path / "on-synthetic", progress=False)
    assert result["dataset"] == "pend-pgd-test" and result["status"] == "completed"

    source, (agent, _) = load_dataset("pendulum-medium"), load_run(run)
    with pytest.raises(UserError, match="--overwrite"):
        pgd_augment(source, agent, "pend-pgd-test", 4, pgd.PGDConfig(**TINY))
    again = pgd_augment(source, agent, "pend-pgd-test2", 4, pgd.PGDConfig(**TINY, guidance_coeff=1.0))
    assert again["model"]["reused"] and again["model"]["path"] == record["model"]["path"]
    assert again["real_episodes"] == 0 and again["synthetic_transitions"] == 4 * 31
