"""PGD's training protocol (Jackson et al., RLC 2024; `train_agent.py --synthetic_experience`): an offline agent
trained on a mixture of real and policy-guided synthetic transitions, the synthetic data regenerated from the
current agent as it learns.

    before training:  D_syn ← unguided samples of the trajectory diffusion model of the dataset (`augment.pgd`)
    each update:      batch = 240 transitions from D_syn + 16 from the dataset → one update of the agent
    after update k·lifetime + 1 (k ≥ 1; the reference's 0-indexed step_idx % lifetime == 0, step_idx ≠ 0):
                      D_syn ← samples guided by the current agent's action likelihood (coefficient `guidance_coeff`)

The agent is any registered algorithm (`agent`, default `td3_bc`), built from its Config defaults and
`agent_config`: the toolkit's own TD3+BC or IQL, so a `pgd` run differs from a plain one only in its data (the
reference's agents differ slightly: TD3+BC updates its actor every step and its critics twice; see
docs/diffusion.md). The diffusion model is trained once per (dataset, diffusion config) and cached (see
`offline_rl.augment.pgd.load_or_train`), so seeds and guiding agents share it. Synthetic batches are drawn with
replacement (the reference draws each batch without replacement; at 240 of ~1M the difference is negligible).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from offline_rl.algos.base import Algorithm, make, register
from offline_rl.augment.pgd import (
    PGDConfig,
    TrajectoryModel,
    check_config,
    load_or_train,
    synthetic_transitions,
    target_log_prob,
)
from offline_rl.data.dataset import Batch, Dataset, Spec
from offline_rl.errors import ConfigError


@dataclass
class PGDAgentConfig(PGDConfig):
    """The reference's agent-side defaults (`util/args.py`, `parse_agent_args`) on top of the diffusion config.

    `batch_size` is the real part of each batch (the reference's batch_size − synth_batch_size = 256 − 240).
    `trajectories` = num_synth_workers × num_synth_rollouts = 32 × 256 in the reference.
    """

    agent: str = "td3_bc"
    agent_config: Any = None
    batch_size: int = 16
    synth_batch_size: int = 240
    synth_lifetime: int = 10_000
    trajectories: int = 8192
    guidance_coeff: float = 0.0


@register("pgd")
class PGD(Algorithm):
    Config = PGDAgentConfig

    def __init__(self, spec: Spec, config: PGDAgentConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        check_config(config)
        if config.agent == "pgd":
            raise ConfigError("pgd: agent must be an offline algorithm other than pgd")
        if config.synth_batch_size < 1 or config.synth_lifetime < 1 or config.trajectories < 1:
            raise ConfigError("pgd: synth_batch_size, synth_lifetime and trajectories must be ≥ 1")
        self.agent = make(config.agent, spec, dict(config.agent_config or {}), device)
        self.optimizers = self.agent.optimizers  # the agent's optimisers and schedulers are checkpointed as ours
        self.schedulers = self.agent.schedulers
        n = config.trajectories * ((config.rollout_length or config.trajectory_length) - 1)
        for key, shape in (("observations", (n, spec.obs_dim)), ("actions", (n, spec.act_dim)), ("rewards", (n,)),
                           ("next_observations", (n, spec.obs_dim)), ("dones", (n,))):
            self.register_buffer(f"synth_{key}", torch.zeros(shape))  # checkpointed: a resumed run is exact
        self.model: list[TrajectoryModel] = []  # not a submodule: cached on disk, not in every checkpoint
        self.model_info: dict[str, Any] = {}

    def configure_schedule(self, total_steps: int) -> None:
        self.agent.configure_schedule(total_steps)

    def prepare(self, dataset: Dataset) -> None:
        self.agent.prepare(dataset)
        model, self.model_info = load_or_train(dataset, self.config)
        self.model = [model.to(self.device)]
        self.regenerate(guided=False)

    def regenerate(self, guided: bool = True) -> None:
        """Replace the synthetic data by fresh samples, guided by the current agent when `guided`."""
        model = self.model[0]
        log_prob = target_log_prob(self.agent, model.action_bias - model.action_scale,
                                   model.action_bias + model.action_scale) if guided else None
        parts = synthetic_transitions(model, self.config.trajectories, self.config, log_prob)
        self.synth_observations.copy_(parts["observations"])
        self.synth_actions.copy_(parts["actions"])
        self.synth_rewards.copy_(parts["rewards"])
        self.synth_next_observations.copy_(parts["next_observations"])
        self.synth_dones.copy_(parts["terminals"].float())

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """`batch` is the real part; the synthetic part is drawn here (after regenerating, on a lifetime step)."""
        if step > 2 and (step - 2) % self.config.synth_lifetime == 0 and self.model:
            self.regenerate(guided=True)
        idx = torch.randint(0, len(self.synth_rewards), (self.config.synth_batch_size,), device=self.device)
        synthetic = Batch(self.synth_observations[idx], self.synth_actions[idx], self.synth_rewards[idx],
                          self.synth_next_observations[idx], self.synth_dones[idx])
        mixed = Batch(*(torch.cat([s, r]) for s, r in zip(synthetic, batch, strict=True)))
        return self.agent.update(mixed, step)

    @property
    def update_period(self) -> int:
        return self.agent.update_period

    def policy(self) -> nn.Module:
        return self.agent.policy()
