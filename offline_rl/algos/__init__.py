"""Plug-in algorithms on one base class. Built-ins register on import; others via the `offline_rl.algos` entry points."""

from offline_rl.algos import a2pr, awm, bc, cdsa, iql, odice, pgd, prdc, sac, td3_bc  # noqa: F401  (registration side effects)
from offline_rl.algos.base import (
    Algorithm,
    PolicyWithNormalizer,
    available,
    build_config,
    get,
    load_preset,
    make,
    parse_overrides,
    register,
)

__all__ = ["Algorithm", "PolicyWithNormalizer", "available", "build_config", "get", "load_preset", "make",
           "parse_overrides", "register"]
