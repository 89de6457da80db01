"""CDSA (Liu, Yang & Li 2024, "Conservative Denoising Score-based Algorithm", arXiv 2406.07541): a plug-and-play
correction of a frozen offline policy towards high-density states of the dataset.

RECONSTRUCTION, paper fidelity unverified: no public code is known, so this follows the paper's abstract and
public summaries (the composition and every default below are this toolkit's choices, not the paper's).

    base:      π₀ = a trained offline policy (`base` = td3_bc | iql trained here, or `base_run` = a run folder), frozen
    score:     s_φ(z, σ) ≈ ∇_z log p_σ(z) on normalised dataset states z, by denoising score matching,
               L = E[σ²‖s_φ(z + σε, σ) + ε/σ‖²], σ uniform on a geometric ladder σ_min … σ_max
    inverse:   I_ψ(z, z′) ≈ a/max_action, MSE;   forward (optional): f(z, a) ≈ z′ − z, MSE
    act(s):    a₀ = π₀(s);  ẑ′ = z + f(z, a₀/max_action) (or ẑ′ = z without a forward model)
               z* = ẑ′ + Σ_k η·s_φ(z_k, σ_q) over `ascent_steps` steps (σ_q = `query_sigma`, default σ_min)
               Δa = I_ψ(z, z*) − I_ψ(z, ẑ′)  (or the first-order J_{I,z′}·(z* − ẑ′) with `linearize`)
               a  = clip(a₀ + κ·max_action·Δa, low, high)

With η = 0 or κ = 0 the wrapped policy returns π₀(s) exactly. η defaults to σ_min², the step that takes ẑ′ to
Tweedie's denoised estimate E[z | z̃ = ẑ′] = ẑ′ + σ²·∇ log p_σ(ẑ′). The score model, inverse dynamics and
forward model train on the same batches as the base (one step each per update); with `base_run` the base is
loaded and stays frozen. Evaluation reports the base policy beside the corrected one (`companion_policies`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from offline_rl.algos.base import Algorithm, make, register
from offline_rl.algos.core import StateNormalizer
from offline_rl.data.dataset import Batch, Dataset, Spec
from offline_rl.errors import ConfigError
from offline_rl.generative import ScoreModel, dsm_loss, geometric_sigmas, score_ascent
from offline_rl.generative.dsm import sample_ladder_sigmas
from offline_rl.nets import mlp

RUN_FILE, CHECKPOINT_FILE = "run.json", "checkpoint.pt"
"""A run folder's record and last checkpoint (written by offline_rl.training)."""


@dataclass
class CDSAConfig:
    """Reconstruction defaults (UNVERIFIED: the paper's values are not public)."""

    base: str = "td3_bc"
    base_config: Any = None
    base_run: str = ""
    batch_size: int = 256
    score_hidden: tuple[int, ...] = (256, 256, 256)
    score_lr: float = 3e-4
    sigma_min: float = 0.1
    sigma_max: float = 1.0
    sigma_levels: int = 3
    inverse_hidden: tuple[int, ...] = (256, 256)
    inverse_lr: float = 3e-4
    forward_model: bool = True
    forward_hidden: tuple[int, ...] = (256, 256)
    forward_lr: float = 3e-4
    eta: float = 0.01
    kappa: float = 1.0
    query_sigma: float = 0.0
    ascent_steps: int = 1
    linearize: bool = False


class CDSAPolicy(nn.Module):
    """The corrected policy of the module docstring; `base` is the frozen π₀ (raw observations -> actions)."""

    def __init__(self, base: nn.Module, owner: CDSA) -> None:
        super().__init__()
        self.base = base
        self.normalizer, self.score, self.inverse = owner.normalizer, owner.score, owner.inverse
        self.forward_net = owner.forward_net
        c = owner.config
        self.eta, self.kappa, self.steps, self.linearize = c.eta, c.kappa, c.ascent_steps, c.linearize
        self.sigma = c.query_sigma or c.sigma_min
        self.max_action = owner.spec.max_action
        self.register_buffer("low", torch.tensor(owner.spec.action_low))
        self.register_buffer("high", torch.tensor(owner.spec.action_high))

    def inverse_action(self, z: torch.Tensor, z_next: torch.Tensor) -> torch.Tensor:
        return self.inverse(torch.cat([z, z_next], dim=-1))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        a0 = self.base(obs)
        z = self.normalizer(obs)
        z_next = z
        if self.forward_net is not None:
            z_next = z + self.forward_net(torch.cat([z, a0 / self.max_action], dim=-1))
        z_star = score_ascent(self.score, z_next, self.eta, self.sigma, self.steps)
        if self.linearize:
            with torch.enable_grad():
                _, delta = torch.autograd.functional.jvp(lambda zn: self.inverse_action(z, zn), z_next,
                                                         z_star - z_next)
        else:
            delta = self.inverse_action(z, z_star) - self.inverse_action(z, z_next)
        return torch.maximum(torch.minimum(a0 + self.kappa * self.max_action * delta, self.high), self.low)


@register("cdsa")
class CDSA(Algorithm):
    Config = CDSAConfig

    def __init__(self, spec: Spec, config: CDSAConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        c = config
        if c.sigma_min <= 0 or c.sigma_max < c.sigma_min or c.sigma_levels < 1:
            raise ConfigError("cdsa: needs 0 < sigma_min ≤ sigma_max and sigma_levels ≥ 1")
        if c.ascent_steps < 0:
            raise ConfigError(f"cdsa: ascent_steps must be ≥ 0, got {c.ascent_steps}")
        self.frozen_base = bool(c.base_run)
        self.base = self._load_base(c.base_run, spec, device) if c.base_run else make(c.base, spec,
                                                                                       dict(c.base_config or {}),
                                                                                       device)
        if self.frozen_base:
            self.base.requires_grad_(False)
        else:
            self.optimizers = self.base.optimizers  # the base trains here: its optimisers are checkpointed as ours
            self.schedulers = self.base.schedulers
        self.normalizer = StateNormalizer(spec.obs_dim)
        self.score = ScoreModel(spec.obs_dim, c.score_hidden)
        self.inverse = mlp(2 * spec.obs_dim, spec.act_dim, c.inverse_hidden)
        self.forward_net = mlp(spec.obs_dim + spec.act_dim, spec.obs_dim, c.forward_hidden) if c.forward_model else None
        self.register_buffer("sigmas", geometric_sigmas(c.sigma_min, c.sigma_max, c.sigma_levels))
        self.add_optimizer("score", self.score.parameters(), c.score_lr)
        self.add_optimizer("inverse", self.inverse.parameters(), c.inverse_lr)
        if self.forward_net is not None:
            self.add_optimizer("forward", self.forward_net.parameters(), c.forward_lr)

    @staticmethod
    def _load_base(run_dir: str, spec: Spec, device: str | torch.device) -> Algorithm:
        """The trained algorithm of a run folder (its `run.json` config and last checkpoint)."""
        run = Path(run_dir).expanduser()
        if not (run / RUN_FILE).is_file() or not (run / CHECKPOINT_FILE).is_file():
            raise ConfigError(f"cdsa: base_run '{run}' is not a run folder (needs {RUN_FILE} and {CHECKPOINT_FILE})")
        info = json.loads((run / RUN_FILE).read_text())
        if Spec.from_dict(info["spec"]) != spec:
            raise ConfigError(f"cdsa: base_run '{run}' was trained on another observation/action space")
        base = make(info["algo"], spec, info["config"], device)
        base.configure_schedule(int(info.get("steps") or 1))
        base.load_state_dict(torch.load(run / CHECKPOINT_FILE, map_location=device, weights_only=False)["algo"])
        return base

    def configure_schedule(self, total_steps: int) -> None:
        if not self.frozen_base:
            self.base.configure_schedule(total_steps)

    def prepare(self, dataset: Dataset) -> None:
        self.normalizer.fit(dataset)
        if not self.frozen_base:
            self.base.prepare(dataset)

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """One update of the base (unless frozen), then one of each CDSA model."""
        metrics = {} if self.frozen_base else dict(self.base.update(batch, step))
        return metrics | self.fit_models(batch)

    def fit_models(self, batch: Batch) -> dict[str, torch.Tensor]:
        """One step each of the score model, the inverse dynamics and the forward model on `batch`."""
        z, z_next = self.normalizer(batch.observations), self.normalizer(batch.next_observations)
        a = batch.actions / self.spec.max_action
        score_loss = dsm_loss(self.score, z, sample_ladder_sigmas(self.sigmas, len(z)))
        self.optimize("score", score_loss)
        inverse_loss = (self.inverse(torch.cat([z, z_next], dim=-1)) - a).pow(2).mean()
        self.optimize("inverse", inverse_loss)
        metrics = {"score_loss": score_loss.detach(), "inverse_loss": inverse_loss.detach()}
        if self.forward_net is not None:
            forward_loss = (self.forward_net(torch.cat([z, a], dim=-1)) - (z_next - z)).pow(2).mean()
            self.optimize("forward", forward_loss)
            metrics["forward_loss"] = forward_loss.detach()
        return metrics

    @property
    def update_period(self) -> int:
        return 1 if self.frozen_base else self.base.update_period

    def policy(self) -> nn.Module:
        return CDSAPolicy(self.base.policy(), self)

    def companion_policies(self) -> dict[str, nn.Module]:
        return {"base": self.base.policy()}
