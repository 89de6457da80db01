"""Benchmark suites: a TOML file naming algorithms × datasets × seeds and the training budget of each run.

    name = "quick"
    description = "..."
    algos = ["bc", "td3_bc", "iql"]
    datasets = ["pendulum-medium"]
    seeds = [0, 1, 2]
    steps = 10000
    eval_every = 2000             # optional: the preset's protocol for each dataset, else 5000
    eval_episodes = 10            # optional: the preset's protocol for each dataset (AntMaze: 100), else 10
    device = "cpu"                # optional

    [overrides.td3_bc]            # optional hyperparameter overrides, one table per algorithm
    alpha = 2.5
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from offline_rl.errors import ConfigError
from offline_rl.names import find
from offline_rl.paths import resource_dir

# key -> (expected type, required). Lists are checked element by element in `_check_list`.
_FIELDS: dict[str, tuple[type, bool]] = {
    "name": (str, False),
    "description": (str, False),
    "algos": (list, True),
    "datasets": (list, True),
    "seeds": (list, True),
    "steps": (int, True),
    "eval_every": (int, False),
    "eval_episodes": (int, False),
    "device": (str, False),
    "overrides": (dict, False),
}
_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "a table"}
_PLURAL_NAMES = {str: "non-empty strings", int: "integers"}


def slugify(text: str) -> str:
    """A path-safe folder name: anything but letters, digits, '.', '_' and '-' becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).strip(".") or "_"


@dataclass(frozen=True)
class RunSpec:
    """One training run of a suite: an (algorithm, dataset, seed) triple plus the suite's budget."""

    algo: str
    dataset: str
    seed: int
    steps: int
    eval_every: int | None
    eval_episodes: int | None
    device: str = "cpu"
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The stable run directory name, relative to the suite's output folder: `<algo>/<dataset>/seed<k>`."""
        return f"{self.algo}/{slugify(self.dataset)}/seed{self.seed}"

    def run_dir(self, root: str | os.PathLike) -> Path:
        return Path(root) / self.name

    def kwargs(self, root: str | os.PathLike) -> dict[str, Any]:
        """Keyword arguments for `offline_rl.training.run_experiment` (without `resume` and `progress`)."""
        return {
            "algo": self.algo,
            "dataset": self.dataset,
            "seed": self.seed,
            "steps": self.steps,
            "eval_every": self.eval_every,
            "eval_episodes": self.eval_episodes,
            "out_dir": self.run_dir(root),
            "device": self.device,
            "overrides": dict(self.overrides) or None,
        }


@dataclass(frozen=True)
class Suite:
    """A parsed, validated suite file."""

    name: str
    algos: tuple[str, ...]
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    eval_every: int | None = None
    eval_episodes: int | None = None
    description: str = ""
    device: str = "cpu"
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    def runs(self) -> list[RunSpec]:
        """Every run of the suite, algorithm-major then dataset then seed (a stable order)."""
        return [
            RunSpec(algo, dataset, seed, self.steps, self.eval_every, self.eval_episodes, self.device,
                    dict(self.overrides.get(algo, {})))
            for algo in self.algos for dataset in self.datasets for seed in self.seeds
        ]

    def to_dict(self) -> dict[str, Any]:
        """The suite as plain data (written next to the results, for provenance)."""
        return {
            "name": self.name, "description": self.description, "algos": list(self.algos),
            "datasets": list(self.datasets), "seeds": list(self.seeds), "steps": self.steps,
            "eval_every": self.eval_every, "eval_episodes": self.eval_episodes, "device": self.device,
            "overrides": self.overrides, "path": str(self.path) if self.path else None,
        }


def list_suites() -> list[str]:
    """Names of the shipped suites (the `*.toml` files in the benchmarks resource folder)."""
    return sorted(p.stem for p in resource_dir("benchmarks").glob("*.toml"))


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """Load a suite from a TOML path, or by name from the shipped suites (`quick` -> `benchmarks/quick.toml`)."""
    path = _resolve(name_or_path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read suite file: {e.strerror}") from e
    return parse_suite(data, path)


def parse_suite(data: dict[str, Any], path: Path) -> Suite:
    """Validate the TOML table of a suite file; every error names the file and the key."""
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (allowed: {', '.join(_FIELDS)})")
    for key, (typ, required) in _FIELDS.items():
        if key not in data:
            if required:
                raise ConfigError(f"{path}: missing required key '{key}'")
            continue
        if not isinstance(data[key], typ) or (typ is int and isinstance(data[key], bool)):
            raise ConfigError(f"{path}: key '{key}' must be {_TYPE_NAMES[typ]}, got {data[key]!r}")
    for key, low in (("steps", 1), ("eval_every", 0), ("eval_episodes", 0)):
        if key in data and data[key] < low:
            raise ConfigError(f"{path}: key '{key}' must be an integer ≥ {low}, got {data[key]}")
    algos = tuple(_canonical_algo(a) for a in _check_list(data, "algos", str, path))
    datasets = _check_list(data, "datasets", str, path)
    seeds = _check_list(data, "seeds", int, path)
    if len({slugify(d) for d in datasets}) != len(datasets):
        raise ConfigError(f"{path}: key 'datasets' has names that map to the same run folder: {list(datasets)}")
    if any(s < 0 for s in seeds):
        raise ConfigError(f"{path}: key 'seeds' must hold non-negative integers, got {list(seeds)}")
    return Suite(
        name=data.get("name", path.stem),
        description=data.get("description", ""),
        algos=algos,
        datasets=datasets,
        seeds=seeds,
        steps=data["steps"],
        eval_every=data.get("eval_every"),
        eval_episodes=data.get("eval_episodes"),
        device=data.get("device", "cpu"),
        overrides=_check_overrides({_canonical_algo(k): v for k, v in data.get("overrides", {}).items()}, algos, path),
        path=path,
    )


def _canonical_algo(name: str) -> str:
    """The registered spelling of an algorithm name (`TD3+BC` -> `td3_bc`); an unknown name stays as typed (the
    runner's check reports it with the closest names)."""
    from offline_rl.algos import available

    return find(name, available()) or name


def _resolve(name_or_path: str | os.PathLike) -> Path:
    """A path as given when it looks like one (exists, ends in .toml or has a folder); else a shipped suite."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists() or path.suffix == ".toml" or os.sep in text or "/" in text:
        return path
    shipped = resource_dir("benchmarks") / f"{text}.toml"
    if not shipped.is_file():
        known = ", ".join(list_suites()) or "none"
        raise ConfigError(f"unknown suite '{text}' (shipped suites: {known}; or give a path to a .toml file)")
    return shipped


def _check_list(data: dict[str, Any], key: str, typ: type, path: Path) -> tuple:
    """A non-empty list of `typ` without duplicates, as a tuple."""
    values = data[key]
    if not values:
        raise ConfigError(f"{path}: key '{key}' must not be empty")
    for v in values:
        if not isinstance(v, typ) or isinstance(v, bool) or (typ is str and not v.strip()):
            raise ConfigError(f"{path}: key '{key}' must be a list of {_PLURAL_NAMES[typ]}, got {v!r}")
    duplicates = sorted({str(v) for v in values if values.count(v) > 1})
    if duplicates:
        raise ConfigError(f"{path}: key '{key}' lists {', '.join(duplicates)} more than once")
    return tuple(values)


def _check_overrides(overrides: dict[str, Any], algos: tuple[str, ...], path: Path) -> dict[str, dict[str, Any]]:
    """`[overrides.<algo>]` tables, each for an algorithm the suite runs (anything else is a typo)."""
    for algo, table in overrides.items():
        if algo not in algos:
            raise ConfigError(f"{path}: key 'overrides.{algo}' names an algorithm not in 'algos' "
                              f"({', '.join(algos)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: key 'overrides.{algo}' must be a table of hyperparameters, got {table!r}")
    return {algo: dict(table) for algo, table in overrides.items()}
