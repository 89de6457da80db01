"""LPG-lite: Learned Policy Gradient (Oh et al. 2020) meta-trained on tabular grid levels, with GROOVE's
algorithmic-regret level sampling (Jackson et al., NeurIPS 2023; code `EmptyJackson/groove`), at CPU scale.

The update rule η is a reverse-time GRU over an agent's rollout. Per step its inputs (all stop-gradient) are
[r_t, d_t, π(a_t|s_t), φ(y_t), (1 − d_t)·φ(y_{t+1})], φ a small MLP shared by both, the GRU state is zeroed at an
episode's end, and it outputs π̂_t (a scalar) and ŷ_t (a softmax over `target_width`).

Agent (tables: policy logits θ[s, a] and prediction logits ψ[s, ·], K SGD steps, each on a fresh rollout):

    L_agent(θ, ψ) = mean_t[ π̂_t · log π_θ(a_t|s_t) ] + α_y · mean_t KL(y_ψ(s_t) ‖ ŷ_t)

(minimised as written, so η learns the sign; each table's gradient clipped to norm 0.5, as GROOVE's tabular agents).

Meta-objective, differentiated through the K unrolled agent updates (`torch.func.grad` of the inner loss inside
`torch.func.grad` of the outer one):

    L_meta(η) = −mean[ log π_{θ_K}(a|s) · Â ] − β₀·H(π) + β₁·mean π̂² − β₂·H(y) + β₃·mean Σ ŷ²

on an evaluation rollout of π_{θ_K}; H(π), H(y), π̂², ŷ² averaged over the K updates. GROOVE estimates Â by GAE
with a separately trained value critic; the levels here are small known MDPs, so Â = Q^{π_K} − V^{π_K} is exact
(backward induction), then normalised over the rollout as in GROOVE.

Agents persist across meta-steps for a `lifetime` of updates; then a new agent starts on a level from the
`LevelSampler`. Scores at the end of a lifetime: "alg_regret" (GROOVE) = R(A2C antagonist) − R(LPG agent), the
antagonist a fixed-hyperparameter tabular A2C trained for the same lifetime; "regret" = V* − R; "random" = domain
randomisation. Returns are exact (discounted values from the start cell).

Deviations, for a CPU: GRU width 32 (GROOVE 256), 8 env workers per agent (64), lifetime 50 updates (2500), 16
agents (512), meta learning rate 1e-3 (1e-4); Â exact instead of a learned critic.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad

from offline_rl.envs.gridlevels import N_ACTIONS, GridLevel, LevelBatch, evaluate, random_level, start_values
from offline_rl.envs.level_sampler import LevelSampler

N_CELLS = 49
EPS = 1e-8


@dataclass
class LPGConfig:
    """LPG-lite settings; GROOVE's values (`experiments/parse_args.py`, tabular agent hypers) unless noted."""

    embedding_width: int = 16
    gru_width: int = 32                 # GROOVE 256
    target_width: int = 8
    agent_target_coeff: float = 0.5    # α_y
    actor_lr: float = 40.0              # tabular SGD
    target_lr: float = 4.0
    max_grad_norm: float = 0.5
    num_agent_updates: int = 5          # K
    rollout_len: int = 20
    workers: int = 8                    # GROOVE 64
    lifetime: int = 50                  # agent updates; GROOVE's tabular 2500
    horizon: int = 20                   # episode length cap
    discount: float = 0.99
    num_agents: int = 16                # GROOVE 512
    meta_lr: float = 1e-3               # GROOVE 1e-4
    meta_max_grad_norm: float = 0.5
    policy_entropy_coeff: float = 5e-2  # β₀
    policy_l2_coeff: float = 5e-3       # β₁ (π̂)
    target_entropy_coeff: float = 1e-3  # β₂
    target_l2_coeff: float = 1e-3       # β₃ (ŷ)
    a2c_entropy_coeff: float = 0.01
    gae_lambda: float = 0.95


class LPGNet(nn.Module):
    """η: φ (MLP target_width → embedding_width → 1), a reverse GRU cell, heads π̂ (1) and ŷ (softmax)."""

    def __init__(self, c: LPGConfig) -> None:
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(c.target_width, c.embedding_width), nn.ReLU(),
                                 nn.Linear(c.embedding_width, 1))
        self.gru = nn.GRUCell(5, c.gru_width)
        self.pi_head = nn.Linear(c.gru_width, 1)
        self.y_head = nn.Linear(c.gru_width, c.target_width)

    def forward(self, r: torch.Tensor, d: torch.Tensor, pi: torch.Tensor, y_t: torch.Tensor,
                y_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs [B, T] (y's [B, T, m]) → (π̂ [B, T], ŷ [B, T, m]), scanning t = T−1 … 0."""
        x = torch.stack([r, d, pi, self.phi(y_t)[..., 0], (1 - d) * self.phi(y_next)[..., 0]], dim=-1)
        h = x.new_zeros(x.shape[0], self.gru.hidden_size)
        outs = []
        for t in range(x.shape[1] - 1, -1, -1):
            h = torch.where(d[:, t, None] > 0, torch.zeros_like(h), h)  # the future beyond an episode's end
            h = _gru_cell(x[:, t], h, self.gru)
            outs.insert(0, h)
        out = torch.relu(torch.stack(outs, dim=1))
        return self.pi_head(out)[..., 0], torch.softmax(self.y_head(out), dim=-1)


def _gru_cell(x: torch.Tensor, h: torch.Tensor, cell: nn.GRUCell) -> torch.Tensor:
    """nn.GRUCell's equations written out (so that torch.func can differentiate them twice)."""
    gi = x @ cell.weight_ih.T + cell.bias_ih
    gh = h @ cell.weight_hh.T + cell.bias_hh
    i_r, i_z, i_n = gi.chunk(3, -1)
    h_r, h_z, h_n = gh.chunk(3, -1)
    r, z = torch.sigmoid(i_r + h_r), torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return (1 - z) * n + z * h


@dataclass
class Rollout:
    """[A, W, T] tensors: cell, action, reward, done, next cell, step in the episode."""

    cell: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    next_cell: torch.Tensor
    t: torch.Tensor


@dataclass
class Workers:
    """Each agent's env workers: current cells and steps within the episode, [A, W]."""

    cell: torch.Tensor
    t: torch.Tensor

    @classmethod
    def reset(cls, levels: LevelBatch, workers: int) -> Workers:
        return cls(levels.start[:, None].repeat(1, workers), torch.zeros(len(levels), workers, dtype=torch.long))


@torch.no_grad()
def collect(levels: LevelBatch, logits: torch.Tensor, workers: Workers, steps: int, horizon: int,
            generator: torch.Generator) -> Rollout:
    """`steps` steps of every agent's workers under softmax(logits); finished episodes restart (in place)."""
    agent = torch.arange(len(levels))[:, None]
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("cell", "action", "reward", "done", "next_cell", "t")}
    for _ in range(steps):
        probs = torch.softmax(logits[agent, workers.cell], -1)  # [A, W, 4]
        action = torch.multinomial(probs.reshape(-1, N_ACTIONS), 1, generator=generator).view_as(workers.cell)
        nxt, reward, terminal = levels.step(workers.cell, action)
        done = terminal | (workers.t + 1 >= horizon)
        for key, value in (("cell", workers.cell), ("action", action), ("reward", reward),
                           ("done", done.float()), ("next_cell", nxt), ("t", workers.t)):
            rows[key].append(value)
        workers.cell = torch.where(done, levels.start[:, None].expand_as(nxt), nxt)
        workers.t = torch.where(done, 0, workers.t + 1)
    return Rollout(**{k: torch.stack(v, dim=-1) for k, v in rows.items()})


def _gather(table: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """table [A, C, k], cells [A, W, T] → [A, W, T, k]."""
    a, w, t = cells.shape
    return torch.gather(table, 1, cells.reshape(a, -1, 1).expand(-1, -1, table.shape[-1])).view(a, w, t, -1)


def _clip(g: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Per-agent gradient clipping to a global norm (the first dimension indexes agents)."""
    norm = g.flatten(1).norm(dim=1).clamp(min=1e-12)
    return g * (max_norm / norm).clamp(max=1.0).view(-1, *([1] * (g.dim() - 1)))


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    p = probs + EPS
    return -(p * p.log()).sum(-1)


def agent_loss(agent: tuple[torch.Tensor, torch.Tensor], eta: dict[str, torch.Tensor], net: LPGNet,
               roll: Rollout, c: LPGConfig) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Σ over agents of L_agent (module docstring); aux = (mean π̂², mean Σŷ²) per agent."""
    theta, psi = agent
    probs = torch.softmax(_gather(theta, roll.cell), -1)
    pi_a = torch.gather(probs + EPS, -1, roll.action[..., None])[..., 0]  # [A, W, T]
    y_t, y_next = torch.softmax(_gather(psi, roll.cell), -1), torch.softmax(_gather(psi, roll.next_cell), -1)
    a, w, t = roll.cell.shape
    flat = lambda x: x.reshape(a * w, t, *x.shape[3:])  # noqa: E731
    pi_hat, y_hat = functional_call(net, eta, (flat(roll.reward), flat(roll.done), flat(pi_a.detach()),
                                               flat(y_t.detach()), flat(y_next.detach())))
    pi_hat, y_hat = pi_hat.view(a, w, t), y_hat.view(a, w, t, -1)
    kl = (y_t * ((y_t + EPS).log() - (y_hat + EPS).log())).sum(-1)
    per_agent = (pi_a.log() * pi_hat).mean((1, 2)) + c.agent_target_coeff * kl.mean((1, 2))
    return per_agent.sum(), (pi_hat.pow(2).mean((1, 2)), y_hat.pow(2).sum(-1).mean((1, 2)))


def agent_step(theta: torch.Tensor, psi: torch.Tensor, eta: dict[str, torch.Tensor], net: LPGNet, roll: Rollout,
               c: LPGConfig) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One clipped SGD step of every agent on L_agent; differentiable in η."""
    (g_theta, g_psi), aux = grad(agent_loss, has_aux=True)((theta, psi), eta, net, roll, c)
    theta = theta - c.actor_lr * _clip(g_theta, c.max_grad_norm)
    psi = psi - c.target_lr * _clip(g_psi, c.max_grad_norm)
    return theta, psi, aux


def exact_advantage(levels: LevelBatch, policy: torch.Tensor, roll: Rollout, c: LPGConfig) -> torch.Tensor:
    """Â = Q^π_t(s, a) − V^π_t(s) along the rollout [A, W, T], exact, normalised over each agent's rollout."""
    q, v = evaluate(levels, policy, c.horizon, c.discount)
    agent = torch.arange(len(levels))[:, None, None].expand_as(roll.cell)
    adv = q[roll.t, agent, roll.cell, roll.action] - v[roll.t, agent, roll.cell]
    mean, std = adv.mean((1, 2), keepdim=True), adv.std((1, 2), keepdim=True)
    return (adv - mean) / (std + EPS)


@dataclass
class Population:
    """The agents being trained: tables, env workers, levels, ages and their levels' buffer ids."""

    theta: torch.Tensor
    psi: torch.Tensor
    workers: Workers
    levels: LevelBatch
    level_ids: list[int]
    grid_levels: list[GridLevel]
    age: np.ndarray

    @classmethod
    def start(cls, sampler: LevelSampler, c: LPGConfig) -> Population:
        picks = [sampler.sample() for _ in range(c.num_agents)]
        levels = LevelBatch.from_levels([lv for _, lv in picks])
        return cls(torch.zeros(c.num_agents, N_CELLS, N_ACTIONS), torch.zeros(c.num_agents, N_CELLS, c.target_width),
                   Workers.reset(levels, c.workers), levels, [i for i, _ in picks], [lv for _, lv in picks],
                   np.zeros(c.num_agents, dtype=int))


def meta_loss(eta: dict[str, torch.Tensor], net: LPGNet, pop: Population, c: LPGConfig,
              generator: torch.Generator) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, dict]]:
    """Unroll K agent updates from the population's tables and return the regularised LPG loss (mean over
    agents); aux = (θ_K, ψ_K, metrics)."""
    theta, psi = pop.theta, pop.psi
    h_pi = h_y = l2_pi = l2_y = 0.0
    for _ in range(c.num_agent_updates):
        roll = collect(pop.levels, theta.detach(), pop.workers, c.rollout_len, c.horizon, generator)
        theta, psi, (pi_l2, y_l2) = agent_step(theta, psi, eta, net, roll, c)
        h_pi = h_pi + _entropy(torch.softmax(_gather(theta, roll.cell), -1)).mean((1, 2)) / c.num_agent_updates
        h_y = h_y + _entropy(torch.softmax(_gather(psi, roll.cell), -1)).mean((1, 2)) / c.num_agent_updates
        l2_pi, l2_y = l2_pi + pi_l2 / c.num_agent_updates, l2_y + y_l2 / c.num_agent_updates
    roll = collect(pop.levels, theta.detach(), pop.workers, c.rollout_len, c.horizon, generator)
    lpg = policy_gradient_loss(theta, pop.levels, roll, c)
    reg = regularised_loss(lpg, h_pi, l2_pi, h_y, l2_y, c)
    metrics = {"lpg_loss": lpg.mean().detach(), "policy_entropy": h_pi.mean().detach()}
    return reg.mean(), (theta.detach(), psi.detach(), metrics)


def policy_gradient_loss(theta: torch.Tensor, levels: LevelBatch, roll: Rollout, c: LPGConfig) -> torch.Tensor:
    """−mean[log π_θ(a|s)·Â] per agent [A] on an evaluation rollout, Â exact and normalised (stop-gradient)."""
    adv = exact_advantage(levels, torch.softmax(theta.detach(), -1), roll, c)
    log_pi = torch.log(torch.gather(torch.softmax(_gather(theta, roll.cell), -1) + EPS, -1,
                                    roll.action[..., None])[..., 0])
    return -(log_pi * adv).mean((1, 2))


def regularised_loss(lpg: torch.Tensor, h_pi: torch.Tensor, l2_pi: torch.Tensor, h_y: torch.Tensor,
                     l2_y: torch.Tensor, c: LPGConfig) -> torch.Tensor:
    """L_meta = lpg − β₀·H(π) + β₁·mean π̂² − β₂·H(y) + β₃·mean Σŷ² (GROOVE's `reg_lpg_loss`)."""
    return (lpg - c.policy_entropy_coeff * h_pi + c.policy_l2_coeff * l2_pi
            - c.target_entropy_coeff * h_y + c.target_l2_coeff * l2_y)


def train_agents(net: LPGNet, eta: dict[str, torch.Tensor] | None, levels: LevelBatch, updates: int, c: LPGConfig,
                 generator: torch.Generator) -> torch.Tensor:
    """Fresh agents trained by the rule η (default: the net's own weights) for `updates` steps; their policies."""
    eta = eta if eta is not None else {k: v.detach() for k, v in net.named_parameters()}
    theta = torch.zeros(len(levels), N_CELLS, N_ACTIONS)
    psi = torch.zeros(len(levels), N_CELLS, c.target_width)
    workers = Workers.reset(levels, c.workers)
    for _ in range(updates):
        roll = collect(levels, theta, workers, c.rollout_len, c.horizon, generator)
        theta, psi, _ = agent_step(theta, psi, eta, net, roll, c)
        theta, psi = theta.detach(), psi.detach()
    return torch.softmax(theta, -1)


def train_a2c(levels: LevelBatch, updates: int, c: LPGConfig, generator: torch.Generator) -> torch.Tensor:
    """The antagonist: tabular A2C with GAE(λ) from a tabular value critic, normalised advantages, entropy bonus,
    the same clipped SGD (actor lr, critic lr = target lr) and rollouts; returns its policies."""
    theta = torch.zeros(len(levels), N_CELLS, N_ACTIONS, requires_grad=True)
    values = torch.zeros(len(levels), N_CELLS, 1, requires_grad=True)
    workers = Workers.reset(levels, c.workers)
    for _ in range(updates):
        roll = collect(levels, theta.detach(), workers, c.rollout_len, c.horizon, generator)
        v, v_next = _gather(values, roll.cell)[..., 0], _gather(values, roll.next_cell)[..., 0]
        with torch.no_grad():
            adv = torch.zeros_like(v)
            running = torch.zeros_like(v[..., 0])
            for t in range(v.shape[-1] - 1, -1, -1):
                not_done = 1 - roll.done[..., t]
                delta = roll.reward[..., t] + c.discount * not_done * v_next[..., t] - v[..., t]
                running = delta + c.discount * c.gae_lambda * not_done * running
                adv[..., t] = running
            target = adv + v
            adv = (adv - adv.mean((1, 2), keepdim=True)) / (adv.std((1, 2), keepdim=True) + EPS)
        critic_loss = (target - v).pow(2).mean((1, 2)).sum()
        probs = torch.softmax(_gather(theta, roll.cell), -1) + EPS
        log_pi = torch.gather(probs.log(), -1, roll.action[..., None])[..., 0]
        actor_loss = (-(log_pi * adv).mean((1, 2)) + c.a2c_entropy_coeff * (probs * probs.log()).sum(-1).mean((1, 2)))
        g_theta, g_v = torch.autograd.grad([actor_loss.sum(), critic_loss], [theta, values])
        with torch.no_grad():
            theta -= c.actor_lr * _clip(g_theta, c.max_grad_norm)
            values -= c.target_lr * _clip(g_v, c.max_grad_norm)
    return torch.softmax(theta.detach(), -1)


def level_scores(kind: str, net: LPGNet, pop: Population, done: np.ndarray, c: LPGConfig,
                 generator: torch.Generator) -> np.ndarray:
    """Scores of the finished agents' levels: alg_regret = R(A2C) − R(LPG agent), regret = V* − R, random = 0."""
    if kind == "random":
        return np.zeros(int(done.sum()))
    idx = torch.from_numpy(np.flatnonzero(done))
    levels = pop.levels.select(idx)
    ours = start_values(levels, torch.softmax(pop.theta[idx], -1), c.horizon, c.discount)
    if kind == "regret":
        best = start_values(levels, None, c.horizon, c.discount)
    else:
        best = start_values(levels, train_a2c(levels, c.lifetime, c, generator), c.horizon, c.discount)
    return (best - ours).numpy()


@dataclass
class MetaRun:
    net: LPGNet
    initial: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def meta_train(meta_steps: int, score: str = "alg_regret", config: LPGConfig | None = None, seed: int = 0,
               level_fn: Callable[[np.random.Generator], GridLevel] = random_level, buffer_size: int = 64,
               log_every: int = 0) -> MetaRun:
    """Meta-train η for `meta_steps` steps on levels from a LevelSampler scored by `score`."""
    c = config or LPGConfig()
    torch.manual_seed(seed)
    net = LPGNet(c)
    run = MetaRun(net, {k: v.detach().clone() for k, v in net.named_parameters()})
    opt = torch.optim.Adam(net.parameters(), lr=c.meta_lr)
    sampler = LevelSampler(level_fn, buffer_size=buffer_size, score=score, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    pop = Population.start(sampler, c)
    start = time.perf_counter()
    for step in range(1, meta_steps + 1):
        eta = dict(net.named_parameters())
        grads, (pop.theta, pop.psi, metrics) = grad(meta_loss, has_aux=True)(eta, net, pop, c, generator)
        opt.zero_grad(set_to_none=True)
        for name, p in net.named_parameters():
            p.grad = grads[name]
        torch.nn.utils.clip_grad_norm_(net.parameters(), c.meta_max_grad_norm)
        opt.step()
        pop.age += c.num_agent_updates
        done = pop.age >= c.lifetime
        if done.any():
            for i, s in zip(np.flatnonzero(done), level_scores(score, net, pop, done, c, generator)):
                sampler.update(pop.level_ids[i], float(s))
                pop.level_ids[i], level = sampler.sample()
                pop.grid_levels[i] = level
                pop.levels.replace(int(i), LevelBatch.from_levels([level]))
                pop.theta[i], pop.psi[i], pop.age[i] = 0.0, 0.0, 0
                pop.workers.cell[i], pop.workers.t[i] = level.start, 0
        if log_every and step % log_every == 0:
            run.history.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
    run.seconds = time.perf_counter() - start
    return run


def evaluate_rule(net: LPGNet, eta: dict[str, torch.Tensor] | None, levels: list[GridLevel], c: LPGConfig,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(returns, regrets V* − R) of fresh agents trained by η for one lifetime on each level, exact."""
    batch = LevelBatch.from_levels(levels)
    policy = train_agents(net, eta, batch, c.lifetime, c, torch.Generator().manual_seed(seed))
    returns = start_values(batch, policy, c.horizon, c.discount)
    best = start_values(batch, None, c.horizon, c.discount)
    return returns.numpy(), (best - returns).numpy()


def held_out_levels(n: int, seed: int = 10_007) -> list[GridLevel]:
    rng = np.random.default_rng(seed)
    return [random_level(rng) for _ in range(n)]


def lpg_lite_checks(meta_steps: int, n_levels: int = 32, seed: int = 0,
                    config: LPGConfig | None = None) -> dict[str, float]:
    """The two checks of LPG-lite (a smoke test: there is no published number to match on a CPU).

    1. On held-out levels, agents trained for one lifetime by the meta-learned rule (uniform level sampling)
       beat agents trained by the initial rule: mean return.
    2. Meta-training with algorithmic-regret level sampling (GROOVE) gives a lower worst-level regret V* − R on
       the held-out levels than uniform sampling (domain randomisation), from the same initial rule.
    """
    c = config or LPGConfig()
    levels = held_out_levels(n_levels, seed=10_007 + seed)
    uniform = meta_train(meta_steps, "random", c, seed)
    groove = meta_train(meta_steps, "alg_regret", c, seed)
    r_init, g_init = evaluate_rule(uniform.net, uniform.initial, levels, c, seed)
    r_uniform, g_uniform = evaluate_rule(uniform.net, None, levels, c, seed)
    r_groove, g_groove = evaluate_rule(groove.net, None, levels, c, seed)
    return {"return_initial": float(r_init.mean()), "return_uniform": float(r_uniform.mean()),
            "return_groove": float(r_groove.mean()), "worst_regret_initial": float(g_init.max()),
            "worst_regret_uniform": float(g_uniform.max()), "worst_regret_groove": float(g_groove.max()),
            "mean_regret_uniform": float(g_uniform.mean()), "mean_regret_groove": float(g_groove.mean()),
            "seconds_uniform": uniform.seconds, "seconds_groove": groove.seconds}
