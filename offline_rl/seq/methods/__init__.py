"""Methods: named bundles of extension-point choices, registered like algorithms.

Register one with `@register_method("name")` on a zero-argument function returning a `Method` (or pass a
`Method`), or from another package through the entry-point group `offline_rl.seq_methods` (an entry point may name
a module that registers on import, a `Method`, or a factory).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.registry import Registry

METHODS: Registry[Callable[[], Method]] = Registry("method", "named bundles of extension-point choices")
ENTRY_POINT_GROUP = "offline_rl.seq_methods"
_plugins_loaded = False


def register_method(name: str, method: Method | None = None) -> Any:
    """`@register_method("name")` on a factory, or `register_method("name", Method(...))`."""
    if method is not None:
        METHODS.add(name, lambda: method)
        return method

    def deco(factory: Callable[[], Method]) -> Callable[[], Method]:
        return METHODS.add(name, factory)

    return deco


def load_plugins() -> None:
    """Import the `offline_rl.seq_methods` entry points once."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if isinstance(obj, Method):
            register_method(ep.name, obj)
        elif callable(obj):
            register_method(ep.name)(obj)


def get_method(name: str) -> Method:
    load_plugins()
    method = METHODS.get(name)()
    return method


def available_methods() -> list[str]:
    load_plugins()
    return METHODS.names()


from offline_rl.seq.methods import (  # noqa: E402, F401  (built-in methods register on import)
    automate_cot,
    bnpo,
    capo,
    copg,
    d3s,
    empg,
    fdpg,
    grpo,
    grpo_guard,
    gtpo,
    hpt,
    knapsack,
    ma_rlhf,
    mmr1,
    otr,
    scaf_grpo,
    sec,
    st_ppo,
    stratified,
    vade,
)

__all__ = ["Choice", "Method", "METHODS", "register_method", "get_method", "available_methods", "load_plugins"]
