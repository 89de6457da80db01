"""Atomic checkpoints: torch.save to a temporary file in the same folder, fsync, rename into place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from offline_rl.errors import UserError
from offline_rl.utils.io import atomic_write


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The state saved at `path`; a truncated or foreign file is a UserError naming it."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch.load raises RuntimeError, EOFError, UnpicklingError, ... on a bad file
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        "); it may be truncated: delete it or pass --overwrite to start again") from e
    if not isinstance(state, dict):
        raise UserError(f"{path}: not an offline-rl checkpoint (holds a {type(state).__name__})")
    return state
