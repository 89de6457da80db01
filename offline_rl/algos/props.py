"""PROPS: Proximal Robust On-Policy Sampling (Corrado & Hanna, "On-Policy Policy Gradient Reinforcement Learning
Without On-Policy Sampling", arXiv:2311.08290), as in `NicholasCorrado/PROPS` `ppo_discrete.py` and
`ppo_continuous.py`: PPO whose data is collected by a separate *behaviour* policy π_φ that is adapted to make the
replay buffer D (the last `buffer_batches` rollouts) look as if it had been sampled from the target π_θ.

Every `props_num_steps` env steps, with r = π_φ(a|s) / π_θ(a|s) on every (s, a) in D:

    φ ← θ,   then minibatch Adam (`props_update_epochs` × `props_num_minibatches`, lr `props_lr`) on
    L_PROPS(φ) = E_D[ max(r, clip(r, 1 − ε, 1 + ε)) ] + λ·KL(π_θ ‖ π_φ)           (ε = `props_clip_coef`)

stopping once the approximate KL E[(r − 1) − log r] exceeds `props_target_kl`. This is PPO's clipped surrogate
with every advantage −1: it lowers the probability of actions D already over-samples. `sampler = "ros"` (Robust
On-policy Sampling, Zhong et al. 2022) is one unclipped gradient step on E_D[r] instead; `sampler = "on_policy"`
samples from π_θ itself (with buffer_batches = b > 1: PROPS's PPO-buffer baseline). The target PPO then trains on
all of D with log-probabilities and values under θ, as if D were on-policy (`offline_rl.algos.ppo`).

Sampling error (§2.2, `compute_se`): fit the empirical policy π_D by maximum likelihood on D, warm-started from
π_θ with the feature layers frozen (2000 full-batch Adam steps, lr 1e-3 ramped by `LinearLR`), and report
KL(π_D ‖ π_θ) ≈ mean_D [log π_D(a|s) − log π_θ(a|s)]; logged as `sampling_error` every `se_every` iterations.

Trap kept out: the repository's GAE loop runs over `num_steps` rows only, so with b > 1 it computes advantages
for the oldest batch alone; here GAE runs over all of D in time order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import kl_divergence

from offline_rl.algos.base import register
from offline_rl.algos.pg_core import Rollout, cat_rollouts
from offline_rl.algos.ppo import PPO, PPOConfig
from offline_rl.data.dataset import Spec
from offline_rl.errors import ConfigError

SAMPLERS = ("on_policy", "ros", "props")


@dataclass
class PROPSConfig(PPOConfig):
    """The PROPS repository's `Args` (ppo_discrete.py); see `algos/props.toml`."""

    lr: float = 1e-3
    anneal_lr: bool = False
    num_minibatches: int = 16
    update_epochs: int = 16
    ent_coef: float = 0.01
    target_kl: float | None = 0.03
    sampler: str = "props"
    props_num_steps: int = 16
    props_lr: float = 1e-3
    props_update_epochs: int = 16
    props_num_minibatches: int = 4
    props_clip_coef: float = 0.3
    props_target_kl: float | None = 0.01
    props_lambda: float = 0.0
    se_every: int = 0                 # iterations between sampling-error measurements (0: never)
    se_steps: int = 2000


def feature_frozen_copy(policy: nn.Module) -> nn.Module:
    """A copy of `policy` whose layers before the last Linear are frozen (ROS/PROPS's empirical policy)."""
    mle = copy.deepcopy(policy)
    linears = [m for m in mle.modules() if isinstance(m, nn.Linear)]
    for layer in linears[:-1]:
        layer.requires_grad_(False)
    return mle


def sampling_error(policy: nn.Module, obs: torch.Tensor, actions: torch.Tensor, steps: int = 2000,
                   lr: float = 1e-3) -> torch.Tensor:
    """KL(π_D ‖ π_θ) on (obs, actions), π_D the maximum-likelihood fit described in the module docstring."""
    mle = feature_frozen_copy(policy)
    params = [p for p in mle.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LinearLR(opt, total_iters=steps)
    for _ in range(steps):
        loss = -mle.dist(obs).log_prob(actions).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    with torch.no_grad():
        return (mle.dist(obs).log_prob(actions) - policy.dist(obs).log_prob(actions)).mean()


@register("props")
class PROPS(PPO):
    Config = PROPSConfig

    def __init__(self, spec: Spec, config: PROPSConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        if config.sampler not in SAMPLERS:
            raise ConfigError(f"props: sampler must be one of {', '.join(SAMPLERS)}, got '{config.sampler}'")
        self.behaviour = copy.deepcopy(self.actor)
        self.optimizers["props"] = torch.optim.Adam(self.behaviour.parameters(), lr=config.props_lr, eps=1e-5)
        self.register_buffer("global_steps", torch.zeros((), dtype=torch.long))
        self.behaviour_metrics: dict[str, torch.Tensor] = {}

    def act(self, obs: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sampler = self.actor if self.config.sampler == "on_policy" else self.behaviour
        return sampler.dist(obs).sample(), {}

    def on_step(self, rollout: Rollout, t: int) -> None:
        """After each vector step: every `props_num_steps` env steps, adapt π_φ to the buffer D."""
        c = self.config
        before = int(self.global_steps)
        self.global_steps += rollout.observations.shape[1]
        if c.sampler == "on_policy" or int(self.global_steps) // c.props_num_steps == before // c.props_num_steps:
            return
        parts = [*self.buffer[-(c.buffer_batches - 1):]] if c.buffer_batches > 1 else []
        current = rollout.slice(0, t + 1)
        obs = torch.cat([*(p.flat("observations") for p in parts), current.flat("observations")])
        actions = torch.cat([*(p.flat("actions") for p in parts), current.flat("actions")])
        self.behaviour_metrics = self.adapt_behaviour(obs, actions)

    def adapt_behaviour(self, obs: torch.Tensor, actions: torch.Tensor) -> dict[str, torch.Tensor]:
        """φ ← θ, then the PROPS (or ROS) update on D = (obs, actions)."""
        c = self.config
        with torch.no_grad():
            target = self.actor.dist(obs)
            target_log_prob = target.log_prob(actions)
        self.behaviour.load_state_dict(self.actor.state_dict())
        opt = self.optimizers["props"]
        if c.sampler == "ros":
            log_ratio = self.behaviour.dist(obs).log_prob(actions) - target_log_prob
            loss = log_ratio.exp().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.behaviour.parameters(), c.max_grad_norm)
            opt.step()
            with torch.no_grad():
                return {"behaviour_loss": loss.detach(), "behaviour_kl": ((log_ratio.exp() - 1) - log_ratio).mean()}
        n = obs.shape[0]
        size = max(n // c.props_num_minibatches, 1)
        for _ in range(c.props_update_epochs):
            perm = torch.randperm(n, device=obs.device)
            for start in range(0, n, size):
                idx = perm[start:start + size]
                dist = self.behaviour.dist(obs[idx])
                log_ratio = dist.log_prob(actions[idx]) - target_log_prob[idx]
                ratio = log_ratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1.0) - log_ratio).mean()
                loss = torch.max(ratio, ratio.clamp(1 - c.props_clip_coef, 1 + c.props_clip_coef)).mean()
                if c.props_lambda:
                    loss = loss + c.props_lambda * kl_divergence(self.actor.dist(obs[idx]), dist).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self.behaviour.parameters(), c.max_grad_norm)
                opt.step()
                if c.props_target_kl is not None and approx_kl > c.props_target_kl:
                    return {"behaviour_loss": loss.detach(), "behaviour_kl": approx_kl}
        return {"behaviour_loss": loss.detach(), "behaviour_kl": approx_kl}

    def update_rollout(self, rollout: Rollout, iteration: int) -> dict[str, torch.Tensor]:
        c = self.config
        metrics: dict[str, torch.Tensor] = dict(self.behaviour_metrics)
        if c.se_every and iteration % c.se_every == 0:
            data = cat_rollouts([*self.buffer[-(c.buffer_batches - 1):], rollout]) if c.buffer_batches > 1 else rollout
            metrics["sampling_error"] = sampling_error(self.actor, data.flat("observations"), data.flat("actions"),
                                                       c.se_steps)
        return {**super().update_rollout(rollout, iteration), **metrics}

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        return {**super().state_dict(*args, **kwargs), "behaviour_metrics": self.behaviour_metrics}

    def load_state_dict(self, state, strict: bool = True):  # type: ignore[override]
        self.behaviour_metrics = dict(state.get("behaviour_metrics", {}))
        return super().load_state_dict(state, strict)
