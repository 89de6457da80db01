"""The behaviour-policy zoo: small SAC actor checkpoints that ship with the package, for generating datasets.

`manifest.toml` lists, per env, the ordered actor snapshots of one SAC run (index 0 is the untrained actor at
step 0), the level names (`random`, `medium`, `expert`) that point into them, each one's measured return over 20
episodes and the command that trained it. `python -m offline_rl.zoo.train` makes them. The weights are the actor's
float32 state_dict only; loading needs no critic, optimiser or SAC config.

    policy = load_policy("Hopper-v5", "medium")             # or an index into the ordered snapshots
    action = policy(obs)                                     # numpy in → numpy out, tensor in → tensor out
    stochastic = load_policy("Hopper-v5", "medium", deterministic=False)
"""

from __future__ import annotations

import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from offline_rl.errors import UserError
from offline_rl.nets import TanhGaussianActor

ZOO_DIR = Path(__file__).resolve().parent
WEIGHTS_DIR = ZOO_DIR / "weights"
MANIFEST = ZOO_DIR / "manifest.toml"

__all__ = ["MANIFEST", "WEIGHTS_DIR", "ZooPolicy", "actor_from_state_dict", "checkpoints", "envs", "load_policy",
           "manifest"]


def manifest() -> dict[str, Any]:
    """The parsed manifest: {env_id: {..., "levels": {...}, "checkpoints": [...]}}; {} when none is shipped."""
    return _read_manifest(MANIFEST.stat().st_mtime_ns if MANIFEST.exists() else 0)


@lru_cache(maxsize=4)
def _read_manifest(_mtime: int) -> dict[str, Any]:
    if not MANIFEST.exists():
        return {}
    return tomllib.loads(MANIFEST.read_text())


def envs() -> list[str]:
    """Env ids with shipped checkpoints."""
    return sorted(manifest())


def checkpoints(env_id: str) -> list[dict[str, Any]]:
    """The manifest rows of `env_id`'s shipped checkpoints, ordered by training step."""
    entry = manifest().get(env_id)
    if entry is None:
        raise UserError(f"no zoo policies for '{env_id}'; available: {', '.join(envs()) or 'none'}")
    return sorted(entry["checkpoints"], key=lambda c: c["step"])


def actor_from_state_dict(state: dict[str, torch.Tensor]) -> TanhGaussianActor:
    """Rebuild a TanhGaussianActor from its state_dict alone (sizes from the weight shapes)."""
    layers = sorted((k for k in state if k.startswith("net.") and k.endswith(".weight")),
                    key=lambda k: int(k.split(".")[1]))
    shapes = [tuple(state[k].shape) for k in layers]  # nn.Linear weights are [out, in]
    obs_dim, act_dim = shapes[0][1], shapes[-1][0] // 2
    scale, bias = state["action_scale"], state["action_bias"]
    actor = TanhGaussianActor(obs_dim, act_dim, (bias - scale).tolist(), (bias + scale).tolist(),
                              [s[0] for s in shapes[:-1]])
    actor.load_state_dict(state)
    return actor.eval().requires_grad_(False)


class ZooPolicy(nn.Module):
    """obs batch → action batch (also a single obs → a single action). Deterministic: scale·tanh(μ) + bias;
    otherwise a sample from the tanh-Gaussian, drawn with `generator` (or torch's global RNG)."""

    def __init__(self, actor: TanhGaussianActor, deterministic: bool = True, info: dict[str, Any] | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.actor = actor
        self.deterministic = deterministic
        self.info = dict(info or {})
        self.generator = generator

    @torch.no_grad()
    def forward(self, obs: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        is_numpy = not isinstance(obs, torch.Tensor)
        x = torch.as_tensor(np.asarray(obs) if is_numpy else obs, dtype=torch.float32,
                            device=self.actor.action_scale.device)
        single = x.dim() == 1
        x = x.unsqueeze(0) if single else x
        action = self.actor(x) if self.deterministic else self.actor.sample(x, self.generator)[0]
        action = action.squeeze(0) if single else action
        return action.cpu().numpy() if is_numpy else action


def load_policy(env_id: str, level_or_index: str | int, deterministic: bool = True,
                device: str | torch.device = "cpu", generator: torch.Generator | None = None) -> ZooPolicy:
    """The shipped policy `level_or_index` of `env_id`: a level name from the manifest (`random`, `medium`,
    `expert`) or an index into its ordered checkpoints (negative indices count from the end)."""
    rows = checkpoints(env_id)
    if isinstance(level_or_index, str) and not level_or_index.lstrip("-").isdigit():
        levels = manifest()[env_id].get("levels", {})
        if level_or_index not in levels:
            raise UserError(f"'{env_id}' has no level '{level_or_index}'; levels: {', '.join(levels)}")
        index = int(levels[level_or_index])
    else:
        index = int(level_or_index)
    if not -len(rows) <= index < len(rows):
        raise UserError(f"'{env_id}' has {len(rows)} checkpoints; index {index} is out of range")
    row = rows[index]
    path = WEIGHTS_DIR / row["file"]
    if not path.exists():
        raise UserError(f"{path}: zoo weights missing (is the package data installed?)")
    actor = actor_from_state_dict(torch.load(path, map_location="cpu", weights_only=True)).to(device)
    return ZooPolicy(actor, deterministic, {"env_id": env_id, **row}, generator)
