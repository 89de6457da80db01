"""PPO with the clipped surrogate (Schulman, Wolski, Dhariwal, Radford, Klimov, 2017), as in CleanRL's
`ppo.py` / `ppo_continuous_action.py`.

Per iteration: GAE advantages Â and λ-returns R from a rollout, then `update_epochs` passes over shuffled
minibatches (`num_minibatches` per pass) of

    r_t(θ) = π_θ(a_t|s_t) / π_old(a_t|s_t),    Â normalised per minibatch (`norm_adv`)
    L^CLIP = −E[min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t)]
    L^V    = ½ E[max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²)]      (`clip_vloss`; else ½ E[(V − R)²])
    loss   = L^CLIP − c_ent·H[π] + c_V·L^V,   gradient norm clipped to `max_grad_norm`, one Adam (eps 1e-5)

with the learning rate annealed linearly to 0 over the run (`anneal_lr`) and an optional early stop once the
approximate KL E[(r − 1) − log r] exceeds `target_kl` (checked after each minibatch, as in the PROPS repository's
`ppo_update`). `buffer_batches` = b > 1 trains on the last b rollouts, with log-probabilities and values
recomputed under the current θ (PROPS's PPO-buffer). `policy_head = "gmm"` swaps in PMOE's Gaussian-mixture head
(exact mixture log-density). Truncated episodes bootstrap from V of their true last observation (CleanRL treats
them as terminations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from offline_rl.algos.base import register
from offline_rl.algos.pg_core import ActorCritic, ActorCriticConfig, Rollout, cat_rollouts
from offline_rl.data.dataset import Spec
from offline_rl.errors import ConfigError


@dataclass
class PPOConfig(ActorCriticConfig):
    """CleanRL `ppo_continuous_action.py` defaults; sources for every value in `algos/ppo.toml`."""

    lr: float = 3e-4
    anneal_lr: bool = True
    num_envs: int = 1
    num_steps: int = 2048
    gamma: float = 0.99
    gae_lambda: float = 0.95
    num_minibatches: int = 32
    update_epochs: int = 10
    norm_adv: bool = True
    clip_coef: float = 0.2
    clip_vloss: bool = True
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    buffer_batches: int = 1


@register("ppo")
class PPO(ActorCritic):
    Config = PPOConfig

    def __init__(self, spec: Spec, config: PPOConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        if config.policy_head == "gmm" and config.ent_coef:
            raise ConfigError("ppo: a Gaussian-mixture head has no closed-form entropy; set ent_coef=0")
        if config.buffer_batches < 1:
            raise ConfigError(f"ppo: buffer_batches must be ≥ 1, got {config.buffer_batches}")
        self.optimizers["ppo"] = torch.optim.Adam([*self.actor.parameters(), *self.critic.parameters()],
                                                  lr=config.lr, eps=1e-5)
        self.buffer: list[Rollout] = []
        self.total_iterations = 1

    def configure_schedule(self, total_steps: int) -> None:
        batch = self.config.num_envs * self.config.num_steps  # the loop runs ⌈steps / batch⌉ iterations
        self.total_iterations = max(1, -(-total_steps // batch))

    def update_rollout(self, rollout: Rollout, iteration: int) -> dict[str, torch.Tensor]:
        self.buffer = (self.buffer + [rollout])[-self.config.buffer_batches:]
        data = cat_rollouts(self.buffer) if len(self.buffer) > 1 else rollout
        if self.config.anneal_lr:
            frac = 1.0 - iteration / self.total_iterations
            self.optimizers["ppo"].param_groups[0]["lr"] = frac * self.config.lr
        values, adv, returns = self.advantages(data)
        return self.ppo_epochs(data, values, adv, returns)

    def ppo_epochs(self, data: Rollout, values: torch.Tensor, adv: torch.Tensor,
                   returns: torch.Tensor) -> dict[str, torch.Tensor]:
        """The clipped-surrogate minibatch epochs of the module docstring on flattened data."""
        c = self.config
        obs, actions = data.flat("observations"), data.flat("actions")
        b_values, b_adv, b_returns = values.reshape(-1), adv.reshape(-1), returns.reshape(-1)
        with torch.no_grad():
            old_log_prob = self.actor.dist(obs).log_prob(actions)
        n = obs.shape[0]
        params = [*self.actor.parameters(), *self.critic.parameters()]
        if c.update_epochs == 0:  # a fixed target (PROPS's sampling-error experiment)
            return {}
        stop = False
        for _ in range(c.update_epochs):
            perm = torch.randperm(n, device=obs.device)
            for idx in torch.tensor_split(perm, min(c.num_minibatches, n)):  # CleanRL's slices when n divides
                dist = self.actor.dist(obs[idx])
                log_ratio = dist.log_prob(actions[idx]) - old_log_prob[idx]
                ratio = log_ratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1.0) - log_ratio).mean()
                    clip_frac = ((ratio - 1.0).abs() > c.clip_coef).float().mean()
                mb_adv = b_adv[idx]
                if c.norm_adv:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss = torch.max(-mb_adv * ratio, -mb_adv * ratio.clamp(1 - c.clip_coef, 1 + c.clip_coef)).mean()
                new_v = self.value(obs[idx])
                if c.clip_vloss:
                    v_clipped = b_values[idx] + (new_v - b_values[idx]).clamp(-c.clip_coef, c.clip_coef)
                    v_loss = 0.5 * torch.max((new_v - b_returns[idx]) ** 2, (v_clipped - b_returns[idx]) ** 2).mean()
                else:
                    v_loss = 0.5 * ((new_v - b_returns[idx]) ** 2).mean()
                entropy = dist.entropy().mean() if c.ent_coef else torch.zeros((), device=obs.device)
                loss = pg_loss - c.ent_coef * entropy + c.vf_coef * v_loss
                opt = self.optimizers["ppo"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(params, c.max_grad_norm)
                opt.step()
                self._updates += 1
                if c.target_kl is not None and approx_kl > c.target_kl:
                    stop = True
                    break
            if stop:
                break
        return {"policy_loss": pg_loss.detach(), "value_loss": v_loss.detach(), "entropy": entropy.detach(),
                "approx_kl": approx_kl, "clip_frac": clip_frac}

    def state_dict(self, *args, **kwargs):  # type: ignore[override]
        return {**super().state_dict(*args, **kwargs), "buffer": self.buffer}

    def load_state_dict(self, state, strict: bool = True):  # type: ignore[override]
        self.buffer = list(state.get("buffer", []))
        return super().load_state_dict(state, strict)
