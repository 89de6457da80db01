"""The dataset layer: cards, D4RL and Minari readers, the generator, and the in-memory `Dataset`.

    from offline_rl.data import load_dataset
    data = load_dataset("pendulum-medium")          # generated on first use, then read from the cache
    data = load_dataset("d4rl:hopper-medium-v2")    # exact d4rl.qlearning_dataset semantics
    data = load_dataset("minari:mujoco/hopper/medium-v0")

`load_dataset`, `generate_dataset`, `list_cards` and `get_card` are imported on first use, so importing
`offline_rl.data.dataset` stays light (no gymnasium, MuJoCo or Minari).
"""

from importlib import import_module
from typing import Any

from offline_rl.data.dataset import Batch, Dataset, Spec

_LAZY = {
    "load_dataset": "offline_rl.data.loader",
    "generate_dataset": "offline_rl.data.generate",
    "list_cards": "offline_rl.data.cards",
    "get_card": "offline_rl.data.cards",
}

__all__ = ["load_dataset", "generate_dataset", "list_cards", "get_card", "Dataset", "Batch", "Spec"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'offline_rl.data' has no attribute {name!r}")
