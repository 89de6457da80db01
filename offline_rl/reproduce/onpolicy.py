"""`reproduce` entries of the on-policy family, and the experiments behind them (also run, larger, by
`benchmarks/onpolicy.py`). Every number is computed live.

| entry | what it runs | reference |
|---|---|---|
| `npg_igt`, `harpg` | the LQR of `offline_rl/LQR-v0`, linear-Gaussian policy | J* from the Riccati equation (exact) |
| `props` | fixed-target sampling error on a 10-armed bandit (spec §2.3) | on-policy sampling's error (direction) |
| `pmoe` | mode coverage on the bimodal bandit (spec §3.3) | routing mass > 0.2 on each mode |
| `poly_ppo` | pass@k on the multi-path grid with a blocked path, from a BC policy (spec §6.4) | PPO's pass@k (direction) |
| `policy_smoothing` | the one-step tightness case (spec §4.3) | Φ((c − B)/σ) (exact) |
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from offline_rl.reproduce import Row, register_entry, row

LQR_ENV = "offline_rl/LQR-v0"
LQR_SIGMA = 0.5  # the policy noise of the GPOMDP family's default (log_std_init = log 0.5)
LQR_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    # label: (algorithm, overrides). The normalised methods share one step schedule γ_t = 0.05 (t + 1)^-½ and
    # η = 0.2; the unnormalised ones a constant step tuned on {1e-3, 3e-3} (see benchmarks/results/lqr-pg.md).
    "GPOMDP": ("gpomdp", {"lr": 1e-3, "lr_power": 0.0}),
    "normalised GPOMDP": ("gpomdp", {"normalized": True}),
    "N-PG-IGT": ("npg_igt", {}),
    "HARPG": ("harpg", {"normalized": False, "lr": 1e-3, "lr_power": 0.0}),
    "N-HARPG": ("harpg", {}),
}


def _build(name: str, env_id: str, overrides: dict[str, Any], seed: int):
    from offline_rl.algos import build_config, get, load_preset
    from offline_rl.training.onpolicy import env_family, env_spec

    env = gym.make(env_id)
    cls = get(name)
    defaults = cls.env_defaults(env) if hasattr(cls, "env_defaults") else {}
    config = build_config(cls, {**defaults, **load_preset(cls.name, env_id, env_family(env_id)),
                                **overrides})
    torch.manual_seed(seed)
    return cls(env_spec(env), config), env


def lqr_gap_curve(name: str, overrides: dict[str, Any], seed: int, trajectories: int) -> np.ndarray:
    """J(K) − J* after every iteration (exact), indexed by trajectories used (HARPG uses two per iteration)."""
    from offline_rl.training.onpolicy import RolloutCollector

    algo, env = _build(name, LQR_ENV, overrides, seed)
    lqr = env.unwrapped
    j_star = lqr.optimal_cost(LQR_SIGMA)
    collector = RolloutCollector(algo, LQR_ENV, seed, {})
    gaps = np.full(trajectories, np.nan)
    used, iteration = 0, 0
    while used < trajectories:
        rollout, _ = collector.collect(algo.rollout_length)
        algo.update_rollout(rollout, iteration)
        iteration += 1
        gap = lqr.cost(-algo.actor.mean.weight.detach().double().numpy(), LQR_SIGMA) - j_star
        gaps[used:used + algo.num_envs] = gap
        used += algo.num_envs
    collector.close()
    return gaps


def _lqr_entry(label: str, quick: bool) -> list[Row]:
    from offline_rl.envs.lqr import LQR

    seeds, trajectories = (3, 200) if quick else (10, 400)
    name, overrides = LQR_METHODS[label]
    curves = np.stack([lqr_gap_curve(name, overrides, s, trajectories) for s in range(seeds)])
    lqr = LQR()
    j_star, j_zero = lqr.optimal_cost(LQR_SIGMA), lqr.cost(np.zeros((1, 1)), LQR_SIGMA)
    case = f"LQR σ={LQR_SIGMA}, {seeds} seeds, {trajectories} traj."
    final = float(curves[:, -1].mean())
    return [row(case, "J(K_T), mean (within 10% of J*)", j_star + final, j_star, 0.10, relative=True),
            row(case, "gap left (J(K_T)−J*)/(J(K_0)−J*)", final / (j_zero - j_star), 0.0, 0.10)]


@register_entry("npg_igt", "N-PG-IGT on the LQR: J(K_T) against the Riccati optimum J*")
def npg_igt_entry(quick: bool) -> list[Row]:
    return _lqr_entry("N-PG-IGT", quick)


@register_entry("harpg", "N-HARPG on the LQR: J(K_T) against the Riccati optimum J*")
def harpg_entry(quick: bool) -> list[Row]:
    return _lqr_entry("N-HARPG", quick)


def props_sampling_errors(sampler: str, seed: int, batches: int = 16, steps: int = 64, se_steps: int = 2000,
                          measure_at: tuple[int, ...] = (1, 2, 4, 8, 16), env_id: str = "offline_rl/ArmedBandit-v0"
                          ) -> dict[int, float]:
    """Spec §2.3.1 (`local/se_fixed.py`): a fixed target (no PPO updates), `batches` × `steps` env steps kept in
    the buffer, and the sampling error of the buffer after the given numbers of batches."""
    from offline_rl.training.onpolicy import RolloutCollector

    algo, _ = _build("props", env_id, {"sampler": sampler, "num_steps": steps, "buffer_batches": batches,
                                       "update_epochs": 0, "se_every": 0, "se_steps": se_steps}, seed)
    from offline_rl.algos.pg_core import cat_rollouts
    from offline_rl.algos.props import sampling_error

    collector = RolloutCollector(algo, env_id, seed, {})
    errors = {}
    for it in range(1, batches + 1):
        rollout, _ = collector.collect(steps)
        algo.update_rollout(rollout, it - 1)
        if it in measure_at:
            data = cat_rollouts(algo.buffer)
            errors[it] = float(sampling_error(algo.actor, data.flat("observations"), data.flat("actions"), se_steps))
    collector.close()
    return errors


@register_entry("props", "PROPS vs on-policy sampling: sampling error of a fixed target's buffer (10-armed bandit)")
def props_entry(quick: bool) -> list[Row]:
    seeds, se_steps = (2, 500) if quick else (5, 2000)
    at = (4, 16)
    runs = {m: [props_sampling_errors(m, s, se_steps=se_steps, measure_at=at) for s in range(seeds)]
            for m in ("on_policy", "props")}
    rows = []
    for n in at:
        on = float(np.mean([r[n] for r in runs["on_policy"]]))
        props = float(np.mean([r[n] for r in runs["props"]]))
        # passes when PROPS's error is at most on-policy sampling's (reference 0 = no sampling error)
        rows.append(row(f"10-armed bandit, {n}×64 steps, {seeds} seeds", "sampling error (≤ on-policy's)", props,
                        0.0, on))
    return rows


def bimodal_coverage(name: str, seed: int, steps: int, **overrides: Any) -> dict[str, Any]:
    """Train `pmoe`/`sac` (online loop) or `ppo` (on-policy loop) on the bimodal bandit and measure where its
    policy puts mass: the fraction of sampled actions within 0.15 of each mode and, for mixtures, the routing mass
    of the experts whose mean sits within 0.15 of each mode (and the experts' mean actions, `expert_means`)."""
    from offline_rl.training import train_online
    from offline_rl.training.onpolicy import train_onpolicy

    env_id = "offline_rl/BimodalBandit-v0"
    algo, _ = _build(name, env_id, overrides, seed)
    if name == "ppo":
        train_onpolicy(algo, env_id, steps, seed=seed, eval_every=0, progress=False)
    else:
        train_online(algo, env_id, steps, seed=seed, eval_every=0, progress=False)
    return mode_coverage(algo.actor)


@torch.no_grad()
def mode_coverage(actor: torch.nn.Module, n: int = 4000) -> dict[str, Any]:
    """Where a bandit policy (a SAC-style actor with `sample`, or a PPO head with `dist`) puts its mass at s = 0:
    the fractions of n sampled actions within 0.15 of +0.6 and of −0.6 and, for mixtures (`parts`), the routing
    mass of the experts whose mean action (tanh μ_k for SAC-style heads) lies within 0.15 of each mode."""
    obs = torch.zeros(n, 1)
    squashed = hasattr(actor, "sample")
    actions = (actor.sample(obs)[0] if squashed else actor.dist(obs).sample()).clamp(-1, 1)
    out: dict[str, Any] = {"near_plus": float(((actions - 0.6).abs() < 0.15).float().mean()),
                           "near_minus": float(((actions + 0.6).abs() < 0.15).float().mean())}
    if hasattr(actor, "parts"):
        parts = actor.parts(obs[:1])
        alpha, means = parts[0][0], parts[1][0, :, 0]
        means = torch.tanh(means) if squashed else means.clamp(-1, 1)
        out["mass_plus"] = float(alpha[(means - 0.6).abs() < 0.15].sum())
        out["mass_minus"] = float(alpha[(means + 0.6).abs() < 0.15].sum())
        out["expert_means"] = [round(float(m), 2) for m in means]
    return out


PMOE_BANDIT = {"hidden": (64, 64), "batch_size": 256, "start_steps": 1000}
"""The PMOE example's settings (`examples/PMOEsac.py`: lr 3e-4, τ 5e-3, batch 256, temperature tuned from α = 1,
1,000 steps before training, one update per env step) with the spec's 64-64 networks; SAC gets the same."""
PPO_BANDIT = {"num_envs": 8, "num_steps": 32, "num_minibatches": 4, "update_epochs": 10, "lr": 3e-3,
              "anneal_lr": False, "log_std_init": -0.5}


@register_entry("pmoe", "PMOE on the one-step bimodal bandit: routing mass on each of the two modes")
def pmoe_entry(quick: bool) -> list[Row]:
    seeds, steps = (2, 5000) if quick else (3, 20_000)
    rows = []
    for s in range(seeds):
        cov = bimodal_coverage("pmoe", s, steps, k=4, **PMOE_BANDIT)
        # passes when both routing masses are > 0.2 (the spec's criterion); 0.5 each is the even split
        rows.append(row(f"PMOE-SAC k=4, seed {s}, {steps} steps", "min routing mass on a mode",
                        min(cov["mass_plus"], cov["mass_minus"]), 0.5, 0.3))
    return rows


def grid_demos(episodes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Demonstrations on the multi-path grid: each episode picks a path uniformly and follows it (10% random
    actions), the stochastic behaviour that Poly-PPO's benchmark starts from by behaviour cloning."""
    from offline_rl.envs.grid import COLS, PATH_ROWS

    env = gym.make("offline_rl/MultiPathGrid-v0")
    rng = np.random.default_rng(seed)
    observations, actions = [], []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed * 100_000 + ep)
        goal_row = PATH_ROWS[int(rng.integers(len(PATH_ROWS)))]
        for _ in range(20):
            r, c = divmod(int(np.argmax(obs)), COLS)
            if rng.random() < 0.1:
                a = int(rng.integers(4))
            elif c == 0 and r != goal_row:
                a = 0 if goal_row < r else 2
            else:
                a = 1 if c < COLS - 1 else (0 if r > 2 else 2)
            observations.append(obs)
            actions.append(a)
            obs, _, term, trunc, _ = env.step(a)
            if term or trunc:
                break
    return torch.tensor(np.array(observations)), torch.tensor(actions)


@torch.no_grad()
def grid_metrics(actor: torch.nn.Module, problems: int = 60, samples: int = 32, seed: int = 20_000) -> dict[str, Any]:
    """Success rate and path distribution (unblocked, 200 episodes) and pass@{1,4,16} with a random blocked path
    (`problems` blocked grids, `samples` attempts each, the unbiased pass@k estimator)."""
    from offline_rl.algos.poly_ppo import pass_at_k

    env_id = "offline_rl/MultiPathGrid-v0"
    out: dict[str, Any] = {}
    for blocked in (False, True):
        n = samples if blocked else 200
        envs = gym.make_vec(env_id, num_envs=n, vectorization_mode="sync", random_block=blocked)
        wins_per_problem, paths = [], []
        for p in range(problems if blocked else 1):
            obs, _ = envs.reset(seed=[seed + p] * n if blocked else [seed + i for i in range(n)])
            done, wins, last_path = np.zeros(n, bool), np.zeros(n), np.full(n, -1)
            while not done.all():
                obs, r, term, trunc, info = envs.step(actor.dist(torch.as_tensor(obs)).sample().numpy())
                wins += r * ~done
                last_path = np.where(done, last_path, info["path"])
                done |= term | trunc
            wins_per_problem.append(int(wins.sum()))
            paths += last_path[wins > 0].tolist()
        envs.close()
        if blocked:
            for k in (1, 4, 16):
                out[f"pass@{k}"] = float(np.mean([pass_at_k(c, samples, k) for c in wins_per_problem]))
        else:
            out["success"] = wins_per_problem[0] / n
            out["paths"] = (np.bincount(paths, minlength=3) / max(1, len(paths))).round(3).tolist()
            out["distinct_paths"] = int((np.bincount(paths, minlength=3) >= 0.05 * max(1, len(paths))).sum())
    return out


def poly_finetune(name: str, seed: int, iterations: int, **overrides: Any) -> dict[str, Any]:
    """BC on `grid_demos`, then `iterations` PPO or Poly-PPO updates on the unblocked grid; `grid_metrics` after."""
    from offline_rl.training.onpolicy import RolloutCollector

    env_id = "offline_rl/MultiPathGrid-v0"
    algo, _ = _build(name, env_id, overrides, seed)
    obs, actions = grid_demos(100, seed)
    opt = torch.optim.Adam(algo.actor.parameters(), lr=1e-3)
    for _ in range(500):
        loss = -algo.actor.dist(obs).log_prob(actions).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    algo.attach_env(lambda: gym.make(env_id))
    algo.configure_schedule(iterations * algo.num_envs * algo.rollout_length)
    collector = RolloutCollector(algo, env_id, seed, {})
    samples = 0
    for it in range(iterations):
        rollout, _ = collector.collect(algo.rollout_length)
        algo.update_rollout(rollout, it)
        samples += rollout.rewards.numel() + algo.extra_samples()
    collector.close()
    return {**grid_metrics(algo.actor, seed=20_000 + 1000 * seed), "env_samples": samples, "iterations": iterations}


@register_entry("poly_ppo", "Poly-PPO vs PPO from a BC policy on the multi-path grid: pass@k with a blocked path")
def poly_ppo_entry(quick: bool) -> list[Row]:
    seeds, iterations = (1, 30) if quick else (3, 60)
    rows = []
    for s in range(seeds):
        ppo, poly = poly_finetune("ppo", s, iterations), poly_finetune("poly_ppo", s, iterations)
        case = f"seed {s}, {iterations} updates"
        rows.append(row(case, "pass@1 (any goal-reaching policy: 2/3)", poly["pass@1"], 2 / 3, 0.1))
        for k in (4, 16):  # passes when Poly-PPO's pass@k is at least PPO's
            rows.append(row(case, f"pass@{k} (≥ PPO's {ppo[f'pass@{k}']:.3f})", poly[f"pass@{k}"], 1.0,
                            1.0 - ppo[f"pass@{k}"]))
    return rows


class _Threshold(torch.nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.register_buffer("c", torch.tensor(c))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs[:, 0] > -self.c).long()


@register_entry("policy_smoothing", "certified reward on the one-step tightness case vs Φ((c − B)/σ)")
def policy_smoothing_entry(quick: bool) -> list[Row]:
    from scipy.stats import norm

    from offline_rl.evaluation.certify import certify

    c, sigma = 0.3, 0.5
    episodes = 40_000 if quick else 200_000
    budgets = (0.0, 0.25, 0.5, 1.0)
    cert = certify(_Threshold(c), "offline_rl/ThresholdStep-v0", sigma, budgets, episodes, alpha=0.05, seed=0)
    # the Clopper–Pearson bound at α/2 sits ≈ 2 standard errors below p̂, and p̂ itself is within ≈ 3 of p
    slack = 5.0 * np.sqrt(0.25 / episodes)
    return [row(f"c={c} σ={sigma} N={episodes} B={r['budget']:g}", "certified E[F] vs exact",
                r["lower_bound"], float(norm.cdf((c - r["budget"]) / sigma)), slack) for r in cert.certified]
