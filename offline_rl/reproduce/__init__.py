"""`offline-rl reproduce NAME`: each seed method's minimal faithful benchmark, run live, against its reference.

An entry is a function `entry(quick: bool) -> list[Row]` registered with `@register_entry("name", "what it checks")`
in a module of this package (one module per method family, imported in `_ENTRY_MODULES`). It computes every number
it reports when it is called (never a stored result); `quick=True` must fit in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import import_module
from typing import Any

from offline_rl.errors import UserError
from offline_rl.names import resolve


@dataclass(frozen=True)
class Row:
    """One line of a reproduction table. `case` names its parameters (e.g. `lost sales L=2 p=9`)."""

    case: str
    metric: str
    ours: float
    reference: float
    gap: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def row(case: str, metric: str, ours: float, reference: float, tolerance: float, relative: bool = False) -> Row:
    """A row that passes when |ours − reference| ≤ tolerance (× |reference| when `relative`)."""
    gap = abs(float(ours) - float(reference))
    bound = tolerance * abs(float(reference)) if relative else tolerance
    return Row(case, metric, float(ours), float(reference), gap, bool(math.isfinite(gap) and gap <= bound))


@dataclass(frozen=True)
class Entry:
    name: str
    description: str
    run: Callable[[bool], list[Row]]


_ENTRIES: dict[str, Entry] = {}
_ENTRY_MODULES: tuple[str, ...] = ("inventory", "hybrid", "offline", "groove", "onpolicy", "diffusion")
"""Modules of this package that register entries on import (one per method family)."""


def register_entry(name: str, description: str) -> Callable[[Callable[[bool], list[Row]]], Callable[[bool], list[Row]]]:
    """Decorator: `@register_entry("hdpo", "gap to the DP optimum on the inventory suite")`."""

    def wrap(fn: Callable[[bool], list[Row]]) -> Callable[[bool], list[Row]]:
        _ENTRIES[name] = Entry(name, description, fn)
        return fn

    return wrap


def _load() -> None:
    for module in _ENTRY_MODULES:
        import_module(f"offline_rl.reproduce.{module}")


def entries() -> list[Entry]:
    """Every registered entry, by name."""
    _load()
    return [_ENTRIES[k] for k in sorted(_ENTRIES)]


def run_entry(name: str, quick: bool = False) -> dict[str, Any]:
    """`{"name": ..., "rows": [{"case", "metric", "ours", "reference", "gap", "passed"}]}` for one entry."""
    _load()
    entry = _ENTRIES[resolve(name, _ENTRIES, "reproduce entry", UserError)]
    return {"name": entry.name, "rows": [r.to_dict() for r in entry.run(quick)]}
