"""Plug-in algorithms on one base class. Built-ins register on import; others via the `offline_rl.algos` entry points."""

from offline_rl.algos import (  # noqa: F401  (registration side effects)
    a2pr,
    awm,
    bc,
    cdsa,
    gpomdp,
    harpg,
    hdpo,
    hnpg,
    iql,
    npg,
    npg_igt,
    odice,
    pgd,
    pmoe,
    poly_ppo,
    ppo,
    prdc,
    props,
    sac,
    td3_bc,
)
from offline_rl.algos.base import (
    Algorithm,
    PolicyWithNormalizer,
    available,
    build_config,
    get,
    load_preset,
    load_protocol,
    make,
    parse_overrides,
    register,
)

__all__ = ["Algorithm", "PolicyWithNormalizer", "available", "build_config", "get", "load_preset", "load_protocol", "make",
           "parse_overrides", "register"]
