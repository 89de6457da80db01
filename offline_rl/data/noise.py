"""Gaussian observation noise on offline batches: the training side of policy smoothing (Kumar et al. 2022).

`with_observation_noise(dataset, sigma)` returns the same dataset whose `sample` adds fresh N(0, σ²) noise to the
observations and, independently, to the next observations of every batch (both are inputs of the policy and the
critics), drawn from the sampler's generator so that runs stay reproducible. The stored data are unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from offline_rl.data.dataset import Batch, Dataset
from offline_rl.errors import UserError


@dataclass
class NoisyObservationDataset(Dataset):
    obs_noise: float = 0.0

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> Batch:
        batch = super().sample(batch_size, generator)
        noise = torch.randn((2, *batch.observations.shape), generator=generator, device=self.device) * self.obs_noise
        return batch._replace(observations=batch.observations + noise[0],
                              next_observations=batch.next_observations + noise[1])


def with_observation_noise(dataset: Dataset, sigma: float) -> NoisyObservationDataset:
    """`dataset` with noisy batches (module docstring); σ must be ≥ 0."""
    if sigma < 0:
        raise UserError(f"observation noise must be ≥ 0, got {sigma}")
    values = {f.name: getattr(dataset, f.name) for f in dataclasses.fields(dataset)
              if f.init and f.name not in ("_dones_f", "_hash")}
    values["source"] = f"{dataset.source}+obs_noise={float(sigma)}"  # another run than the noise-free one
    return NoisyObservationDataset(**values, obs_noise=float(sigma))
