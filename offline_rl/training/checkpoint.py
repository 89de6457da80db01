"""Atomic checkpoints: torch.save to a temporary file in the same folder, fsync, rename into place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from offline_rl.utils.io import atomic_write


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=False)
