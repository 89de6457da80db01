"""A method is a named bundle of choices, one per extension point, plus a few loss coefficients."""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from offline_rl.errors import ConfigError
from offline_rl.seq.registry import EXTENSION_POINTS, LOSS_TERMS

REQUIREMENTS = {
    "turn_marker": "turn markers in the completions (a multi-turn task such as `multistep`, or --turn-marker)",
    "finite_pool": "a finite problem pool (a JSONL file or a finite built-in task)",
    "categories": "problem categories (Problem.meta['category'], e.g. the `levels` task)",
    "hints": "tiered hints (Problem.meta knowledge_components_parts / solution_breakdown_parts)",
    "exemplars": "an exemplar pool (Task.exemplars)",
}
"""Task features a method may require, and what provides them (checked before training starts)."""


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
    terms: tuple[Choice, ...] = ()  # P8 add-ons: scalars added to the loss, each with its `coef` (HPT's SFT term)
    kl_coef: float = 0.0  # beta of the k3 KL to the reference model
    entropy_coef: float = 0.0
    needs_hidden: bool = False  # the context carries the LM head's inputs and weight (CAPO)
    needs_reference: bool = False  # load a frozen reference model (also loaded when kl_coef != 0)
    needs_vocab_logp: bool = False  # the context carries log pi over the whole vocabulary (OTR)
    num_iterations: int | None = None  # the paper's optimiser passes per rollout batch (None: 1); config overrides
    minibatches: int | None = None  # the paper's optimiser steps per pass (None: 1); config overrides
    trains_policy: bool = True  # False: the LM is a frozen black box (Automate-CoT optimises its prompts)
    requires: tuple[str, ...] = ()  # task features (REQUIREMENTS) the method cannot work without

    def fn(self, point: str) -> Callable[..., Any]:
        """The registered function of `point` with this method's parameters bound."""
        choice: Choice = getattr(self, point)
        return partial(EXTENSION_POINTS[point].get(choice.name), **choice.params)

    def term_fns(self) -> list[Callable[..., Any]]:
        """The loss terms with their parameters bound (each returns its scalar contribution, coef included)."""
        return [partial(LOSS_TERMS.get(c.name), **c.params) for c in self.terms]

    def requirements(self) -> list[str]:
        """The task features the method needs: its own `requires` plus those its chosen functions declare
        (a function's `requires` attribute: a tuple, or a function of the choice's parameters)."""
        needs = list(self.requires)
        for point, registry in EXTENSION_POINTS.items():
            choice: Choice = getattr(self, point)
            declared = getattr(registry.get(choice.name), "requires", ())
            needs += declared(choice.params) if callable(declared) else declared
        return list(dict.fromkeys(needs))

    @property
    def uses_reference(self) -> bool:
        return bool(self.kl_coef) or self.needs_reference or self.segmenter.name == "ppl"

    def override(self, overrides: Mapping[str, Any]) -> Method:
        """Apply `{"kl_coef": 0.04, "advantage": "rloo", "surrogate.eps_high": 0.28}`; strings are parsed."""
        m = self
        for key, raw in overrides.items():
            value = parse_value(raw)
            point, _, param = key.partition(".")
            if point in EXTENSION_POINTS and not param:
                m = dataclasses.replace(m, **{point: Choice(EXTENSION_POINTS[point].canonical(str(value)))})
            elif point in EXTENSION_POINTS:
                old: Choice = getattr(m, point)
                m = dataclasses.replace(m, **{point: Choice(old.name, {**old.params, param: value})})
            elif point == "terms" and not param:
                names = [n.strip() for n in str(value or "").split(",") if n.strip()]
                m = dataclasses.replace(m, terms=tuple(Choice(LOSS_TERMS.canonical(n)) for n in names))
            elif point == "terms":
                name, _, sub = param.partition(".")
                if not sub or name not in [c.name for c in m.terms]:
                    raise ConfigError(f"{key!r}: use terms.NAME.PARAM for a term of the method "
                                      f"({', '.join(c.name for c in m.terms) or 'it has none'})")
                m = dataclasses.replace(m, terms=tuple(Choice(c.name, {**c.params, sub: value}) if c.name == name
                                                       else c for c in m.terms))
            elif point in SCALARS:
                m = dataclasses.replace(m, **{point: value})
            else:
                raise ConfigError(f"unknown method setting {key!r}; use POINT.PARAM (points: "
                                  f"{', '.join(EXTENSION_POINTS)}), terms.NAME.PARAM or one of {', '.join(SCALARS)}")
        return m

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "terms":
                out[f.name] = [c.to_dict() for c in v]
            elif f.name != "name":
                out[f.name] = v.to_dict() if isinstance(v, Choice) else (list(v) if isinstance(v, tuple) else v)
        return out


SCALARS = ("kl_coef", "entropy_coef", "needs_hidden", "needs_reference", "num_iterations", "minibatches")


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
