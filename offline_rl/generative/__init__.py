"""The one generative core the diffusion-family methods share (see docs/diffusion.md):

- `schedules`: the Karras sampling schedule and churn, log-normal and geometric noise levels, sinusoidal embeddings;
- `nets`: `DenoiserMLP` (states, actions; optionally conditioned) and `UNet1D` (trajectories);
- `edm`: EDM preconditioning (`EDMDenoiser`), `edm_loss`, the Heun sampler `edm_sample` with its guidance hook,
  the EMA and the training loop `fit_edm`;
- `dsm`: denoising score matching (`ScoreModel`, `dsm_loss`) and `score_ascent`;
- `flow`: `flow_matching_loss`, the Euler ODE sampler `flow_sample` and `FlowPolicy`;
- `compose`: GPC, `compose_policies` and the test-time `search_weights`.

Methods on top of it: PGD (`offline_rl.augment.pgd`, `offline_rl.algos.pgd`), CDSA (`offline_rl.algos.cdsa`),
AWM (`offline_rl.algos.awm`) and GPC (`offline-rl compose`).
"""

from offline_rl.generative.compose import ComposedPolicy, compose_policies, search_weights, weight_grid
from offline_rl.generative.dsm import ScoreModel, dsm_loss, score_ascent
from offline_rl.generative.edm import EMA, EDMDenoiser, edm_loss, edm_sample, fit_edm
from offline_rl.generative.flow import FlowPolicy, flow_matching_loss, flow_sample
from offline_rl.generative.nets import DenoiserMLP, LevelEmbedding, UNet1D
from offline_rl.generative.schedules import (
    churn_gammas,
    geometric_sigmas,
    karras_sigmas,
    lognormal_sigmas,
    sinusoidal_embedding,
)

__all__ = ["EMA", "ComposedPolicy", "DenoiserMLP", "EDMDenoiser", "FlowPolicy", "LevelEmbedding", "ScoreModel",
           "UNet1D", "churn_gammas", "compose_policies", "dsm_loss", "edm_loss", "edm_sample", "fit_edm",
           "flow_matching_loss", "flow_sample", "geometric_sigmas", "karras_sigmas", "lognormal_sigmas",
           "score_ascent", "search_weights", "sinusoidal_embedding", "weight_grid"]
