"""Minari datasets -> transitions, converted episode by episode.

An episode with T actions stores T + 1 observations and gives exactly T transitions: transition t is
(obs[t], act[t], rew[t], obs[t + 1]). The invariant is checked in every episode (not only the first), and
concatenation happens only after each episode is split, so no episode can shift the next one. `terminals` are the
episode's `terminations` (the bootstrap mask) and `timeouts` its `truncations` (True on the last step of a
truncated episode). Nothing is dropped: Minari stores the true next observation after a truncation, so the last
transition of a truncated episode is complete (D4RL's rule of dropping timeout rows applies to D4RL files only).
Empty (0-step) episodes contribute no transitions but count as episodes.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from offline_rl.data.build import Transitions, spec_from, to_dataset
from offline_rl.data.d4rl import downloads_disabled
from offline_rl.data.dataset import Dataset
from offline_rl.data.validate import check_action_bounds, check_finite, check_numeric, require_rows
from offline_rl.envs import box_bounds
from offline_rl.errors import DatasetError
from offline_rl.paths import home

LABEL = "Minari"
METADATA_KEY = "offline_rl"
"""Our extra metadata in generated datasets: card name, family, level, label, behaviour, steps, seed."""


def cache_root() -> Path:
    """Where the toolkit writes Minari datasets: `$OFFLINE_RL_HOME/minari`."""
    return home() / "minari"


def named_datasets_root() -> Path:
    """Where datasets made by the toolkit under a user's name live (`offline-rl augment pgd --out NAME`):
    `$OFFLINE_RL_HOME/datasets/<NAME>`, each a Minari dataset folder; `load_dataset(NAME)` finds them."""
    return home() / "datasets"


def named_dataset_dir(name: str) -> Path | None:
    """The folder of the named dataset `name`, or None when there is none."""
    path = named_datasets_root() / name
    return path if "/" not in name and (path / "data" / "metadata.json").is_file() else None


REMOTE_HOST = ("huggingface.co", 443)
"""Where Minari's remote datasets live (`farama-minari/*` on the Hugging Face hub)."""
_READ_ERRORS = (ValueError, KeyError, AssertionError, OSError, TypeError, RuntimeError)


def _repair(folder: Path | None) -> str:
    return f"; delete {folder} and it will be generated again" if folder is not None else ""


def _open(data_path: Path, where: str, repair_hint: Path | None = None):
    from minari import MinariDataset

    try:
        return MinariDataset(data_path)
    except _READ_ERRORS as e:
        raise DatasetError(f"{where}: not a readable Minari dataset ({e}){_repair(repair_hint)}") from e


def remote_reachable(timeout: float = 3.0) -> bool:
    """Whether Minari's remote (the Hugging Face hub) answers a TCP connection within `timeout` seconds."""
    import socket

    try:
        socket.create_connection(REMOTE_HOST, timeout=timeout).close()
    except OSError:
        return False
    return True


def open_by_id(dataset_id: str):
    """A Minari dataset by id: the toolkit's cache, then Minari's own folder, then Minari's download."""
    import minari
    from minari.storage.datasets_root_dir import get_dataset_path

    where = f"minari:{dataset_id}"
    local = cache_root() / dataset_id / "data"
    if local.is_dir():
        return _open(local, where)
    theirs = Path(get_dataset_path(dataset_id)) / "data"
    if theirs.is_dir():
        try:
            return minari.load_dataset(dataset_id)
        except (ValueError, KeyError, AssertionError, OSError) as e:
            raise DatasetError(f"{where}: not a readable Minari dataset ({e})") from e
    looked = f"not found in {cache_root()} or {theirs.parent.parent}"
    if downloads_disabled():
        raise DatasetError(f"{where}: {looked}, and downloads are disabled (OFFLINE_RL_OFFLINE)")
    if not remote_reachable():
        raise DatasetError(f"{where}: {looked}, and Minari's remote ({REMOTE_HOST[0]}) cannot be reached (no "
                           f"network?); download it elsewhere with `minari download {dataset_id}` and copy it into "
                           f"{theirs.parent.parent}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return minari.load_dataset(dataset_id, download=True)
    except Exception as e:  # network, hub and version errors all mean: could not get it
        raise DatasetError(f"{where}: {looked}, and Minari's download failed: {str(e).splitlines()[0]}") from e


def open_dir(path: str | os.PathLike, repair_hint: Path | None = None):
    """A Minari dataset from its folder (the one holding `data/`, or `data/` itself). `repair_hint`: a cached
    folder that the error message tells the user to delete."""
    path = Path(path)
    data = path / "data" if (path / "data" / "metadata.json").is_file() else path
    if not (data / "metadata.json").is_file():
        raise DatasetError(f"{path}: not a Minari dataset folder (no data/metadata.json){_repair(repair_hint)}")
    return _open(data, str(path), repair_hint)


def _rows(x: Any, dim: int) -> np.ndarray:
    """(n, d) view of per-step data; empty data becomes (0, dim)."""
    x = np.asarray(x)
    return x.reshape(len(x), -1) if len(x) else np.zeros((0, dim), dtype=x.dtype)


def _flatten(obs: Any, space: gym.Space, where: str) -> np.ndarray:
    if isinstance(space, gym.spaces.Box):
        return _rows(obs, gym.spaces.flatdim(space))
    if isinstance(space, gym.spaces.Dict):  # goal-conditioned: concatenate in the space's key order
        return np.concatenate([_flatten(obs[k], s, where) for k, s in space.spaces.items()], axis=1)
    raise DatasetError(f"{where}: observation space {space} is not supported (Box, or a Dict of Boxes)")


def episodes_to_transitions(episodes, obs_space: gym.Space, act_space: gym.Space, where: str) -> Transitions:
    """Convert Minari episode dicts, checking each episode, and validate all rows."""
    obs_dim, act_dim = gym.spaces.flatdim(obs_space), gym.spaces.flatdim(act_space)
    action_bounds = box_bounds(act_space)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next", "act", "rew", "term", "trunc")}
    ids: list[int] = []
    for ep in episodes:
        k = int(ep["id"])
        obs = _flatten(ep["observations"], obs_space, where)
        act = _rows(ep["actions"], act_dim)
        steps = len(act)
        if len(obs) != steps + 1:
            raise DatasetError(f"{where}: episode {k} has {len(obs)} observations and {steps} actions; a Minari "
                               "episode stores one more observation than actions")
        if obs.shape[1] != obs_dim:
            raise DatasetError(f"{where}: key 'episode_{k}/observations' has dimension {obs.shape[1]}, but the "
                               f"dataset's observation space has {obs_dim}")
        for key in ("rewards", "terminations", "truncations"):
            if len(ep[key]) != steps:
                raise DatasetError(f"{where}: key 'episode_{k}/{key}' has {len(ep[key])} rows, but "
                                   f"'episode_{k}/actions' has {steps}")
        ids.append(k)
        parts["obs"].append(obs[:-1])
        parts["next"].append(obs[1:])
        parts["act"].append(act)
        check_numeric({f"episode_{k}/observations": obs, f"episode_{k}/actions": act,
                       f"episode_{k}/rewards": np.asarray(ep["rewards"])}, where)
        parts["rew"].append(np.asarray(ep["rewards"], dtype=np.float64).reshape(-1))
        parts["term"].append(np.asarray(ep["terminations"], dtype=bool).reshape(-1))
        parts["trunc"].append(np.asarray(ep["truncations"], dtype=bool).reshape(-1))
    if not ids:
        raise DatasetError(f"{where}: the dataset has no episodes")
    lengths = np.array([len(a) for a in parts["act"]], dtype=np.int64)
    obs, nxt, act, rew, term, trunc = (np.concatenate(parts[k]) for k in ("obs", "next", "act", "rew", "term", "trunc"))
    episode = np.repeat(np.arange(len(ids), dtype=np.int64), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])

    def locate(key: str, row: int) -> tuple[str, int]:  # transition row -> (episode_<id>/<key>, step in it)
        pos = int(episode[row])
        step = row - int(starts[pos])
        if key == "next_observations":
            return f"episode_{ids[pos]}/observations", step + 1
        return f"episode_{ids[pos]}/{key}", step

    require_rows(len(rew), where)
    check_finite({"observations": obs, "next_observations": nxt, "actions": act, "rewards": rew}, where, locate)
    if action_bounds is not None:
        check_action_bounds(act, *action_bounds, where, locate)
    return Transitions(obs.astype(np.float32), act.astype(np.float32), rew.astype(np.float32),
                       nxt.astype(np.float32), term, trunc, episode,
                       np.bincount(episode, weights=rew, minlength=len(ids)))


def read_minari(ds, where: str, device: str = "cpu", source: str | None = None, **overrides: Any) -> Dataset:
    """A validated `Dataset` from an open `minari.MinariDataset`."""
    bounds = box_bounds(ds.action_space)
    if bounds is None:
        raise DatasetError(f"{where}: action space {ds.action_space} is not supported (Box only)")
    try:
        episodes = list(ds.storage.get_episodes(ds.episode_indices))
    except _READ_ERRORS as e:
        data_file = Path(ds.storage.data_path)
        raise DatasetError(f"{where}: cannot read the episodes in {data_file} ({e}); the file may be truncated: "
                           f"delete {data_file.parent.parent} (it is generated again if it is a card's)") from e
    t = episodes_to_transitions(episodes, ds.observation_space, ds.action_space, where)
    meta = ds.storage.metadata
    ours = meta.get(METADATA_KEY) or {}
    env_spec = getattr(ds, "_eval_env_spec", None) or ds.env_spec
    env_kwargs = {k: v for k, v in (env_spec.kwargs if env_spec else {}).items() if k != "render_mode"}
    namespace = ds.spec.namespace or ""  # "mujoco/hopper" -> family "hopper", as the D4RL names and presets use
    fields = dict(
        env_id=env_spec.id if env_spec else None,
        env_kwargs=env_kwargs,
        ref_min_score=meta.get("ref_min_score"),
        ref_max_score=meta.get("ref_max_score"),
        source=source or where,
        name=ours.get("card", ds.id),
        family=ours.get("family", namespace.rsplit("/", 1)[-1].lower()),
        label=ours.get("label", LABEL),
    )
    fields.update(overrides)
    spec = spec_from(gym.spaces.flatdim(ds.observation_space), t.actions, bounds, where)
    return to_dataset(t, spec, device, **fields)


def load_minari(dataset_id: str, **kwargs: Any) -> Dataset:
    """`minari:<dataset_id>`."""
    return read_minari(open_by_id(dataset_id), f"minari:{dataset_id}", source=f"minari:{dataset_id}", **kwargs)


def load_minari_dir(path: str | os.PathLike, **kwargs: Any) -> Dataset:
    """A local Minari dataset folder."""
    return read_minari(open_dir(path), str(path), source=str(path), **kwargs)
