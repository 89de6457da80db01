"""Registries of small functions: one per extension point, plus tasks, checkers and methods.

A registry maps a name to an object. Registering the same name twice with a different object raises
`ValueError` (as verl's advantage registry does); asking for an unknown name raises `UserError` listing the
names that exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from offline_rl.errors import UserError
from offline_rl.names import find, resolve

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table with a decorator for registering and a friendly lookup."""

    def __init__(self, kind: str, doc: str = "") -> None:
        self.kind = kind
        self.doc = doc
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        old = self._items.get(name)
        if old is not None and old is not obj and getattr(old, "__qualname__", 1) != getattr(obj, "__qualname__", 2):
            raise ValueError(f"{self.kind} {name!r} is already registered with a different object")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name")`."""
        return lambda obj: self.add(name, obj)

    def get(self, name: str) -> T:
        """The entry `name` means (case, `-`, `_` and `+` ignored), or a UserError with the closest names."""
        return self._items[self.canonical(name)]

    def canonical(self, name: str) -> str:
        """The registered spelling of `name`, or a UserError with the closest names."""
        return resolve(name, self._items, self.kind, UserError)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and find(name, self._items) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


# The extension points (names as in the spec, P1-P10). Each entry is a small function of one context object.
SAMPLERS: Registry[Callable[..., Any]] = Registry("prompt sampler", "P1: which prompts to roll out this step")
BUDGETS: Registry[Callable[..., Any]] = Registry("rollout budget", "P2: how many completions per prompt")
HOOKS: Registry[Callable[..., Any]] = Registry("rollout hook", "P3: rewrite a scored group (hints, demos)")
ADVANTAGES: Registry[Callable[..., Any]] = Registry("advantage estimator", "P4: A of shape (B,) or (B, T)")
SELECTIONS: Registry[Callable[..., Any]] = Registry("sample selection", "P5: keep mask (B,)")
TOKEN_WEIGHTS: Registry[Callable[..., Any]] = Registry("token weights", "P6: weights (B, T)")
RATIOS: Registry[Callable[..., Any]] = Registry("ratio transform", "P7: log-ratio per token from segment_ids")
SURROGATES: Registry[Callable[..., Any]] = Registry("surrogate loss", "P8: per-token (B, T) or per-sequence (B,) loss")
LOSS_TERMS: Registry[Callable[..., Any]] = Registry("loss term", "P8 add-on: a scalar added to the loss (SFT, ...)")
AGGREGATIONS: Registry[Callable[..., Any]] = Registry("aggregation", "P9: per-token loss -> scalar, DP-invariant")
LOSS_SCALES: Registry[Callable[..., Any]] = Registry("loss scale", "P9 hook: a scalar multiplier of the loss")
SEGMENTERS: Registry[Callable[..., Any]] = Registry("segmenter", "P10: segment_ids (B, T) per sequence")
STRATA: Registry[Callable[..., Any]] = Registry("stratum function", "Stratified GRPO: a stratum key (B,)")

EXTENSION_POINTS: dict[str, Registry[Callable[..., Any]]] = {
    "sampler": SAMPLERS,
    "budget": BUDGETS,
    "hook": HOOKS,
    "segmenter": SEGMENTERS,
    "advantage": ADVANTAGES,
    "selection": SELECTIONS,
    "token_weights": TOKEN_WEIGHTS,
    "ratio": RATIOS,
    "surrogate": SURROGATES,
    "aggregation": AGGREGATIONS,
    "loss_scale": LOSS_SCALES,
}
"""Method field name -> the registry its choice is looked up in."""

ALL_REGISTRIES: dict[str, Registry[Any]] = {**EXTENSION_POINTS, "terms": LOSS_TERMS, "stratum": STRATA}
