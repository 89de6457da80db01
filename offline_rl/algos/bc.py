"""Behaviour cloning: a deterministic tanh actor regressed onto dataset actions, L = MSE(π(s), a) (CORL any_percent_bc)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from offline_rl.algos.base import Algorithm, Phase, PhaseResult, PolicyWithNormalizer, register
from offline_rl.algos.core import StateNormalizer
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.nets import DeterministicActor


@dataclass
class BCConfig:
    """CORL `any_percent_bc.py` defaults (frac = 1.0: all data)."""

    lr: float = 3e-4
    batch_size: int = 256
    normalize_states: bool = True
    hidden: tuple[int, ...] = (256, 256)


@register("bc")
class BC(Algorithm):
    Config = BCConfig
    graph_safe = True

    def __init__(self, spec: Spec, config: BCConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        self.normalizer = StateNormalizer(spec.obs_dim)
        self.actor = DeterministicActor(spec.obs_dim, spec.act_dim, spec.max_action, config.hidden)
        self.add_optimizer("actor", self.actor.parameters(), config.lr)

    def prepare(self, dataset: Dataset) -> None:
        if self.config.normalize_states:
            self.normalizer.fit(dataset)

    def phases(self, step: int) -> Iterator[Phase]:
        yield Phase(self.bc_phase, "actor", name="bc")

    def bc_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        """MSE(π(s), a) over batch and action dimensions."""
        batch = ctx["batch"]
        pi = self.actor(self.normalizer(batch.observations))
        loss = (pi - batch.actions).pow(2).mean()
        return PhaseResult(loss, {"actor_loss": loss.detach()})

    def policy(self) -> nn.Module:
        return PolicyWithNormalizer(self.normalizer, self.actor)
