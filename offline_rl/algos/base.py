"""The `Algorithm` base class, the registry and hyperparameter resolution (dataclass defaults ← preset ← overrides).

An algorithm gets tensors and returns metrics. It knows nothing of files, the CLI or logging.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from offline_rl.data.dataset import Batch, Dataset, Spec
from offline_rl.errors import ConfigError
from offline_rl.names import resolve
from offline_rl.paths import resource_dir

ENTRY_POINT_GROUP = "offline_rl.algos"
_REGISTRY: dict[str, type[Algorithm]] = {}


class PhaseResult(NamedTuple):
    """What a phase computed: the loss its optimiser minimises (or, with `grads`, the gradients it applies), the
    metrics to report, and tensors for the later phases of the same update (the context)."""

    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = {}
    updates: dict[str, Any] = {}
    grads: dict[str, torch.Tensor] | None = None  # parameter name (as in `named_parameters`) -> gradient


@dataclass
class Phase:
    """One step of an update, in order: `fn(ctx)` computes from the context (the batch, the noise draws, what
    earlier phases left) a `PhaseResult`; `optimizer` (a name in `Algorithm.optimizers`) then steps on its loss or
    gradients; `after()` does what follows that step in place (Polyak averaging, an LR schedule step).

    A phase computes for one seed: `offline_rl.training.seeds` runs it for many seeds at once under `torch.vmap`,
    so it must be pure tensor code of the context and the parameters (random draws come from `Algorithm.noise`).
    A `host` phase instead runs once on the context of all seeds together (a leading seed dimension), outside
    vmap: for work that is not tensor code, such as a KD-tree query.
    """

    fn: Callable[[dict[str, Any]], PhaseResult]
    optimizer: str | None = None
    after: Callable[[], None] | None = None
    host: bool = False
    name: str = field(default="")


class Algorithm(nn.Module):
    """One offline-RL method. Subclasses set `name`, `Config`, build networks in `__init__` and implement `update`.

    Modules are registered as attributes (so `nn.Module.state_dict` covers them); optimisers and LR schedulers go in
    `self.optimizers` / `self.schedulers` so that checkpoints include them.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    graph_safe: ClassVar[bool] = False
    """True when `update` can be captured in a CUDA graph (offline_rl.training.graphs says what that needs)."""
    loop: ClassVar[str] = "offline"
    """The training loop the algorithm needs: "offline" (`training.train`: offline data), "onpolicy"
    (`training.onpolicy`: an env factory, and offline data for hybrids) or "simulator" (its own loop through a model
    it differentiates, built from its config rather than a dataset's spec: HDPO, `algos.hdpo.train_hdpo`)."""

    def __init__(self, spec: Spec, config: Any, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.spec = spec
        self.config = config
        self.device = torch.device(device)
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}

    def prepare(self, dataset: Dataset) -> None:
        """Optional phases before the main loop (statistics, KD-tree, VAE pre-training...)."""

    def configure_schedule(self, total_steps: int) -> None:
        """Called once before training (and before a checkpoint is loaded) with the run's length, for LR schedules."""

    def update(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        """One gradient step: the algorithm's `phases(step)` in order. Metrics stay tensors (no host sync).

        An algorithm either defines `phases` (then it also trains many seeds at once, `offline_rl.training.seeds`)
        or overrides `update` itself."""
        return self.run_phases(batch, step)[0]

    def run_phases(self, batch: Batch, step: int) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """`update`, also returning the context the phases left (for inspection and tests)."""
        ctx: dict[str, Any] = {"batch": batch}
        metrics: dict[str, torch.Tensor] = {}
        for phase in self.phases(step):
            metrics.update(self.run_phase(phase, ctx).metrics)
        return metrics, ctx

    def run_phase(self, phase: Phase, ctx: dict[str, Any]) -> PhaseResult:
        """One phase: compute, add its updates to `ctx`, step its optimiser, then its `after`."""
        result = phase.fn(ctx)
        ctx.update(result.updates)
        if phase.optimizer is not None:
            if result.grads is not None:
                self.apply_grads(phase.optimizer, result.grads)
            else:
                self.optimize(phase.optimizer, result.loss)
        if phase.after is not None:
            phase.after()
        return result

    def phases(self, step: int) -> Iterator[Phase]:
        """The phases of update `step` (counted from 1), in order."""
        raise NotImplementedError(f"{type(self).__name__} defines neither phases() nor update()")

    @property
    def seed_batchable(self) -> bool:
        """Whether many seeds can train at once in one process (the algorithm defines `phases`)."""
        return type(self).phases is not Algorithm.phases and type(self).update is Algorithm.update

    def noise_shapes(self, batch_size: int, step: int) -> dict[str, tuple[int, ...]]:
        """The standard-normal draws one update takes, by name, in the order it takes them."""
        return {}

    @staticmethod
    def noise(ctx: dict[str, Any], name: str, like: torch.Tensor) -> torch.Tensor:
        """A standard-normal draw shaped like `like`: from torch's global generator, or, when many seeds train at
        once, the draw prepared for this seed (`ctx["noise"]`), so that every seed sees its own stream."""
        prepared = ctx.get("noise")
        return prepared[name] if prepared is not None else torch.randn_like(like)

    @property
    def update_period(self) -> int:
        """`update` depends on `step` only through `step % update_period` (TD3: the delayed actor update)."""
        return 1

    def policy(self) -> nn.Module:
        """obs -> action, deterministic; used by evaluation and export."""
        raise NotImplementedError

    def companion_policies(self) -> dict[str, nn.Module]:
        """Policies the trainer evaluates beside `policy()` at every evaluation, by label (CDSA: its base policy)."""
        return {}

    def add_optimizer(self, name: str, params: Any, lr: float, **kwargs: Any) -> torch.optim.Adam:
        """Register an Adam optimiser under `name` (fused kernel: ~20% faster per step on CPU, same update;
        capturable on CUDA, so that the step can be replayed from a CUDA graph)."""
        kwargs.setdefault("capturable", self.device.type == "cuda")
        self.optimizers[name] = torch.optim.Adam(params, lr=lr, fused=True, **kwargs)
        return self.optimizers[name]

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """zero_grad → backward → step for the optimiser registered as `name`."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def apply_grads(self, name: str, grads: dict[str, torch.Tensor]) -> None:
        """Step the optimiser `name` on given gradients (parameter name -> gradient) instead of a loss."""
        params = dict(self.named_parameters())
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        for key, grad in grads.items():
            params[key].grad = grad
        opt.step()

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {
            "modules": super().state_dict(*args, **kwargs),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
        }

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Any:  # type: ignore[override]
        result = super().load_state_dict(state["modules"], strict=strict)
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        return result


class PolicyWithNormalizer(nn.Module):
    """A deployable policy: state normalisation then the actor, so a saved policy normalises by itself."""

    def __init__(self, normalizer: nn.Module, actor: nn.Module) -> None:
        super().__init__()
        self.normalizer = normalizer
        self.actor = actor

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.normalizer(obs))


def register(name: str):
    """Class decorator: `@register("td3_bc")` adds an Algorithm subclass to the registry."""

    def wrap(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_plugins() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            cls = ep.load()
            if ep.name not in _REGISTRY:  # loading may have registered it under its own name already
                if "name" not in vars(cls):  # a subclass of a built-in would otherwise report the parent's name
                    cls.name = ep.name
                _REGISTRY[ep.name] = cls


def available() -> list[str]:
    """Names of the registered algorithms, built-in and plug-in."""
    _load_plugins()
    return sorted(_REGISTRY)


def get(name: str) -> type[Algorithm]:
    """The algorithm class registered as `name` (case, `-`, `_` and `+` ignored: `TD3+BC` is `td3_bc`)."""
    _load_plugins()
    return _REGISTRY[resolve(name, _REGISTRY, "algorithm", ConfigError)]


PROTOCOL_KEYS = ("eval_episodes", "eval_every")
"""Preset keys that set the evaluation protocol of the reference (e.g. 100 episodes on AntMaze), not a
hyperparameter of the algorithm's Config."""


def dataset_keys(dataset: str) -> list[str]:
    """The preset tables a dataset name matches, most general first: `hopper-medium` for `hopper-medium-v2`
    (D4RL) and for `hopper-medium@20000` (a card at another size), then the name itself."""
    base = re.sub(r"-v\d+$", "", dataset.partition("@")[0])
    return [k for k in dict.fromkeys((base, dataset)) if k]


def _preset_tables(name: str, dataset: str, family: str) -> list[dict[str, Any]]:
    path = resource_dir("algos") / f"{name}.toml"
    if not path.exists():
        return []
    try:
        tables = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    keys = ["default", family, *dataset_keys(dataset)]
    return [tables[key] for key in dict.fromkeys(keys) if key and isinstance(tables.get(key), dict)]


def load_preset(name: str, dataset: str = "", family: str = "") -> dict[str, Any]:
    """Hyperparameters from `algos/<name>.toml`: `[default]`, then `[<family>]`, then the dataset's tables
    (`dataset_keys`), each overriding the one before. Protocol keys are left out (`load_protocol`)."""
    preset: dict[str, Any] = {}
    for table in _preset_tables(name, dataset, family):
        preset.update({k: v for k, v in table.items() if k not in PROTOCOL_KEYS})
    return preset


def load_protocol(name: str, dataset: str = "", family: str = "") -> dict[str, int]:
    """The evaluation protocol the preset sets for this dataset (`eval_episodes`, `eval_every`), if any."""
    protocol: dict[str, int] = {}
    for table in _preset_tables(name, dataset, family):
        protocol.update({k: int(v) for k, v in table.items() if k in PROTOCOL_KEYS})
    return protocol


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["alpha=2.5", "hidden=[256,256]"]` -> {"alpha": 2.5, "hidden": [256, 256]}; values are JSON, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got '{pair}'")
        key, raw = pair.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = {"true": True, "false": False}.get(raw.lower(), raw)
    return out


def build_config(cls: type[Algorithm], values: dict[str, Any], where: str = "overrides") -> Any:
    """The algorithm's Config dataclass from its defaults and `values`, type-checked, unknown keys rejected."""
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    hints = typing.get_type_hints(cls.Config)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}: '{key}' is not a hyperparameter of {cls.name}; "
                              f"valid: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], f"{where}: {cls.name}.{key}")
    return cls.Config(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if origin in (tuple, list) and isinstance(value, list | tuple):
        return tuple(value) if origin is tuple else list(value)
    if hint is Any:
        return value
    raise ConfigError(f"{where} expects {getattr(hint, '__name__', hint)}, got {value!r}")


def make(name: str, spec: Spec, config: Any = None, device: str | torch.device = "cpu",
         dataset: Dataset | None = None, seed: int | None = None) -> Algorithm:
    """Build a registered algorithm.

    `config` is a Config instance, or a dict of overrides applied on top of the preset for `dataset`'s family
    (when a dataset is given) and the paper defaults. `seed` seeds torch before the networks are initialised.
    """
    cls = get(name)
    if not isinstance(config, cls.Config):
        values = load_preset(cls.name, dataset.name, dataset.family) if dataset is not None else {}
        values.update(config or {})
        config = build_config(cls, values)
    if seed is not None:
        torch.manual_seed(seed)
    return cls(spec, config, device).to(device)
