"""O-DICE (Mao et al., "ODICE: Revealing the Mystery of Distribution Correction Estimation via Orthogonal-gradient
Update", ICLR 2024), as `maoliyuan/ODICE-Pytorch` `odice.py` `orthogonal_true_g_update`.

V-DICE with Pearson χ², f*(x) = x·w* − (w* − 1)², w* = max(x/2 + 1, 0):

    min_V  (1 − λ)·E[V(s)] + λ·E[f*(r + γ(1 − d)·V(s′) − V(s))]

Its residual gradient splits into a forward part (through −V(s), V(s′) from the target net) and a backward part
(through γV(s′), V(s) from the target net, scaled by η). The update keeps the forward gradient g_f and adds only the
component of the backward gradient g_b orthogonal to it, over all V parameters at once:

    g = g_f + (g_b − c·g_f),   c = ⟨g_f, g_b⟩ / max(‖g_f‖², 1e-10),   ∇V-loss = ∇(1 − λ)·mean V(s) + g

The policy is weighted behaviour cloning, L_π = mean(w · −log π(a|s)) with w = min(max(δ_f, 0), 100).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from offline_rl.algos.base import Algorithm, Phase, PhaseResult, PolicyWithNormalizer, register
from offline_rl.algos.core import StateNormalizer, frozen_copy, return_range_multiplier, soft_update
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.errors import ConfigError
from offline_rl.nets import EnsembleMLP
from offline_rl.nets.mlp import GaussianActor

MODES = ("orthogonal_true_g", "true_g", "semi_g")


@dataclass
class ODICEConfig:
    """`configs/offline_RL.yaml` and `main_odice_rl.py` defaults (λ and η: the CLI defaults; tune per dataset)."""

    Lambda: float = 0.6  # named as the reference's --Lambda flag
    eta: float = 1.0
    mode: str = "orthogonal_true_g"  # the reference's --type; "true_g" and "semi_g" are its ablations
    value_lr: float = 2e-4
    policy_lr: float = 2e-4
    weight_decay: float = 1e-4  # policy only
    discount: float = 0.99
    tau: float = 0.005  # target EMA rate (the reference's `beta`)
    max_weight: float = 100.0  # EXP_ADV_MAX
    batch_size: int = 256
    hidden: tuple[int, ...] = (256, 256)
    layer_norm: bool = True
    use_twin_v: bool = True
    policy_hidden: tuple[int, ...] = (1024, 1024)  # hard-coded hidden_dim=1024 in main_odice_rl.py
    normalize_states: bool = False  # normalize: False for offline RL
    reward_norm: str = "none"  # "return_range": r·T/(max − min) (the reference's MuJoCo rule, preset for
    # halfcheetah/hopper/walker2d); "antmaze": −3 if r == 0 else 0; "none" (every other family, as the reference)
    max_episode_steps: int = 1000  # T of the return-range scaling (scale and chunk length)


def f_star(x: torch.Tensor) -> torch.Tensor:
    """Convex conjugate of Pearson χ²: x·w* − (w* − 1)² with w* = max(x/2 + 1, 0) (= x²/4 + x for x ≥ −2, else −1)."""
    w = torch.clamp(x / 2 + 1, min=0.0)
    return x * w - (w - 1).pow(2)


def orthogonal_combination(g_f: torch.Tensor, g_b: torch.Tensor) -> torch.Tensor:
    """g = g_f + (g_b − c·g_f), c = ⟨g_f, g_b⟩ / max(‖g_f‖², 1e-10), on flattened gradients."""
    c = torch.dot(g_f, g_b) / torch.dot(g_f, g_f).clamp(min=1e-10)  # the guard: f* is flat for x < −2
    return g_f + (g_b - c * g_f)


def orthogonal_gradient(forward_loss: torch.Tensor, backward_loss: torch.Tensor,
                        params: list[nn.Parameter]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """g = g_f + (g_b − c·g_f) over the flattened gradient of all `params` (autograd). Returns (g, g_f, g_b)."""
    g_f = torch.cat([g.reshape(-1) for g in torch.autograd.grad(forward_loss, params, retain_graph=True)])
    g_b = torch.cat([g.reshape(-1) for g in torch.autograd.grad(backward_loss, params, retain_graph=True)])
    return orthogonal_combination(g_f, g_b), g_f, g_b


@register("odice")
class ODICE(Algorithm):
    Config = ODICEConfig

    def __init__(self, spec: Spec, config: ODICEConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        c = config
        if c.mode not in MODES:
            raise ConfigError(f"O-DICE mode must be one of {', '.join(MODES)}, got '{c.mode}'")
        if c.reward_norm not in ("return_range", "antmaze", "none"):
            raise ConfigError(f"O-DICE reward_norm must be return_range, antmaze or none, got '{c.reward_norm}'")
        self.normalizer = StateNormalizer(spec.obs_dim)
        self.vf = EnsembleMLP(2 if c.use_twin_v else 1, spec.obs_dim, 1, c.hidden, layer_norm=c.layer_norm)
        self.vf_target = frozen_copy(self.vf)
        # GaussianPolicy: unsquashed mean, state-independent log-std clamped to [−5, 2]; evaluation clips the mean.
        self.actor = GaussianActor(spec.obs_dim, spec.act_dim, spec.max_action, c.policy_hidden, tanh_mean=False,
                                   log_std_min=-5.0)
        self.register_buffer("reward_multiplier", torch.ones(()))
        self.add_optimizer("value", self.vf.parameters(), c.value_lr)
        self.add_optimizer("actor", self.actor.parameters(), c.policy_lr, weight_decay=c.weight_decay)

    def prepare(self, dataset: Dataset) -> None:
        if self.config.normalize_states:
            self.normalizer.fit(dataset)
        if self.config.reward_norm == "return_range":  # main_odice_rl.get_env_and_dataset (MuJoCo)
            self.reward_multiplier.fill_(return_range_multiplier(dataset, self.config.max_episode_steps))

    def shape_rewards(self, rewards: torch.Tensor) -> torch.Tensor:
        if self.config.reward_norm == "antmaze":
            return torch.where(rewards == 0, -3.0, 0.0)  # the reference's AntMaze rule (not IQL's r − 1)
        return rewards * self.reward_multiplier

    def values(self, net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """Every twin's V(s): [n, B]."""
        return net(obs).squeeze(-1)

    def phases(self, step: int) -> Iterator[Phase]:
        yield Phase(self.prepare_phase, name="prepare")
        yield Phase(self.value_phase, "value", after=lambda: soft_update(self.vf_target, self.vf, self.config.tau),
                    name="value")
        yield Phase(self.policy_phase, "actor", name="policy")

    def prepare_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        batch = ctx["batch"]
        return PhaseResult(updates={"obs": self.normalizer(batch.observations),
                                    "next_obs": self.normalizer(batch.next_observations),
                                    "rewards": self.shape_rewards(batch.rewards), "not_done": 1.0 - batch.dones})

    def value_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        """One V update in the configured mode; leaves the residual that weights the policy, [n, B]."""
        c = self.config
        obs, next_obs, rewards = ctx["obs"], ctx["next_obs"], ctx["rewards"]
        lam, disc = c.Lambda, c.discount * ctx["not_done"]
        if c.mode != "orthogonal_true_g":
            v = self.values(self.vf, obs)
            if c.mode == "true_g":  # full gradient through both V(s) and V(s′)
                next_v = self.values(self.vf, next_obs)
            else:  # semi_g: V(s′) from the target network
                with torch.no_grad():
                    next_v = self.values(self.vf_target, next_obs).min(0).values
            residual = rewards + disc * next_v - v
            loss = ((1 - lam) * v + lam * f_star(residual)).mean()
            return PhaseResult(loss, self._value_metrics(v, residual), {"residual": residual.detach()})
        with torch.no_grad():  # V_targ(x) is the minimum over the target twins; s and s′ in one forward
            target_v, target_v_next = self.values(self.vf_target, torch.cat([obs, next_obs])).min(0).values \
                .split(obs.shape[0])

        def terms(v: torch.Tensor, v_next: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
            residual = rewards + disc * target_v_next - v  # forward: through −V(s)
            backward_residual = rewards + disc * v_next - target_v  # backward: through γV(s′)
            return (((1 - lam) * v).mean(), (lam * f_star(residual)).mean(),
                    (lam * c.eta * f_star(backward_residual)).mean()), residual.detach()

        params = dict(self.vf.named_parameters())
        v, pullback_s = torch.func.vjp(lambda p: functional_call(self.vf, p, (obs,)).squeeze(-1), params)
        v_next, pullback_next = torch.func.vjp(lambda p: functional_call(self.vf, p, (next_obs,)).squeeze(-1), params)
        _, term_pullback, residual = torch.func.vjp(terms, v, v_next, has_aux=True)
        # ∂term_i/∂V(s) and ∂term_i/∂V(s′) of the three terms at once, then each term back through the network
        # from the one output it depends on (V(s) for the first two, V(s′) for the third), no pass through zeros
        d_v, d_v_next = torch.func.vmap(term_pullback)(tuple(torch.eye(3, dtype=v.dtype, device=v.device)))
        g_v, g_f = (_flat(pullback_s(d_v[i])[0]) for i in range(2))
        g_b = _flat(pullback_next(d_v_next[2])[0])
        g = g_v + orthogonal_combination(g_f, g_b)  # ∇(1 − λ)·mean V(s) plus the projected residual gradient
        v = v.detach()
        grads, offset = {}, 0
        for name, p in params.items():
            grads[f"vf.{name}"] = g[offset:offset + p.numel()].view_as(p).detach()
            offset += p.numel()
        cos = (torch.dot(g_f, g_b) / (g_f.norm() * g_b.norm()).clamp(min=1e-12)).detach()
        return PhaseResult(None, {**self._value_metrics(v, residual), "grad_cos": cos}, {"residual": residual},
                           grads)

    @staticmethod
    def _value_metrics(v: torch.Tensor, residual: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"v_mean": v.detach().mean(), "residual_mean": residual.detach().mean()}

    def policy_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        """Weighted BC with the reference's f′⁻¹ for χ²: the positive part of the residual (not δ/2 + 1), clipped."""
        weight = ctx["residual"].clamp(min=0.0, max=self.config.max_weight)  # [n, B]: averages over the twins
        log_prob = self.actor.dist(ctx["obs"]).log_prob(ctx["batch"].actions / self.actor.max_action).sum(-1)
        policy_loss = (weight * -log_prob).mean()
        return PhaseResult(policy_loss, {"policy_loss": policy_loss.detach(), "weight_mean": weight.mean()})

    def value_step(self, obs: torch.Tensor, next_obs: torch.Tensor, rewards: torch.Tensor,
                   not_done: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One V update on given (normalised) tensors, as the update's value phase. Returns (residual, metrics)."""
        value = next(p for p in self.phases(1) if p.name == "value")
        result = self.run_phase(value, {"obs": obs, "next_obs": next_obs, "rewards": rewards, "not_done": not_done})
        return result.updates["residual"], result.metrics

    def policy(self) -> nn.Module:
        return PolicyWithNormalizer(self.normalizer, self.actor)


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads.values()])
