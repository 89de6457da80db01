"""A method is a named bundle of choices, one per extension point, plus a few loss coefficients."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from offline_rl.errors import ConfigError
from offline_rl.seq.registry import EXTENSION_POINTS


@dataclass(frozen=True)
class Choice:
    """A registered function's name and the keyword arguments it is called with."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": {k: _jsonable(v) for k, v in self.params.items()}}


def _c(name: str, **params: Any) -> Choice:
    return Choice(name, params)


@dataclass(frozen=True)
class Method:
    """One choice per extension point. Defaults give GRPO with token-level ratios and no KL."""

    name: str
    description: str = ""
    sampler: Choice = _c("uniform")  # P1
    budget: Choice = _c("fixed")  # P2
    hook: Choice = _c("none")  # P3
    segmenter: Choice = _c("token")  # P10
    advantage: Choice = _c("grpo")  # P4
    selection: Choice = _c("all")  # P5
    token_weights: Choice = _c("ones")  # P6
    ratio: Choice = _c("token")  # P7
    surrogate: Choice = _c("clip", eps_low=0.2, eps_high=0.2)  # P8
    aggregation: Choice = _c("seq-mean-token-mean")  # P9
    loss_scale: Choice = _c("none")  # P9 hook
    kl_coef: float = 0.0  # beta of the k3 KL to the reference model (a reference is loaded only if beta != 0)
    entropy_coef: float = 0.0
    needs_hidden: bool = False  # the context carries the LM head's inputs and weight (CAPO)

    def fn(self, point: str) -> Callable[..., Any]:
        """The registered function of `point` with this method's parameters bound."""
        choice: Choice = getattr(self, point)
        return partial(EXTENSION_POINTS[point].get(choice.name), **choice.params)

    def override(self, overrides: Mapping[str, Any]) -> Method:
        """Apply `{"kl_coef": 0.04, "advantage": "rloo", "surrogate.eps_high": 0.28}`; strings are parsed."""
        m = self
        for key, raw in overrides.items():
            value = parse_value(raw)
            point, _, param = key.partition(".")
            if point in EXTENSION_POINTS and not param:
                EXTENSION_POINTS[point].get(str(value))  # validate
                m = dataclasses.replace(m, **{point: Choice(str(value))})
            elif point in EXTENSION_POINTS:
                old: Choice = getattr(m, point)
                m = dataclasses.replace(m, **{point: Choice(old.name, {**old.params, param: value})})
            elif point in {"kl_coef", "entropy_coef", "needs_hidden"}:
                m = dataclasses.replace(m, **{point: value})
            else:
                raise ConfigError(f"unknown method setting {key!r}; use POINT.PARAM (points: "
                                  f"{', '.join(EXTENSION_POINTS)}) or kl_coef / entropy_coef")
        return m

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name != "name":
                out[f.name] = v.to_dict() if isinstance(v, Choice) else v
        return out


def parse_value(raw: Any) -> Any:
    """'0.2' -> 0.2, 'true' -> True, 'none' -> None, '[1,2]' -> [1, 2]; anything else stays a string."""
    if not isinstance(raw, str):
        return raw
    low = raw.strip().lower()
    if low in {"true", "false"}:
        return low == "true"
    if low in {"none", "null"}:
        return None
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool, list, tuple, dict, type(None))) else repr(v)
