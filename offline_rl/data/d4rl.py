"""D4RL hdf5 files, read with h5py alone (no d4rl, no mujoco-py).

Default semantics are exactly `d4rl.qlearning_dataset(env, terminate_on_end=False)`: rows i < N − 1 in order,
next_obs = observations[i + 1] (a `next_observations` key is ignored, as d4rl does), done = terminals[i], and
every row that is the final step of an episode is skipped. A row is final when `timeouts[i]` is set; files
without `timeouts` use d4rl's step counter (final when it equals max_episode_steps − 1; it restarts at 0 after a
skipped row and at 1 after a terminal, a d4rl quirk kept for parity). A row with both flags is final, so it is
skipped too, as in d4rl.

Options (never the default):
* `use_next_observations=True`: next_obs from the file's `next_observations` key when present; the last row then
  has a true next observation and is kept (if not final).
* `keep_timeouts=True`: keep the final rows, marked in `timeouts` (terminal wins: a row with both flags gets
  done = 1 and timeout = 0), and bootstrap through them. This needs the true next observation, so it implies
  `use_next_observations` and fails on files without `next_observations`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from offline_rl.data.build import Transitions, spec_from, to_dataset
from offline_rl.data.dataset import Dataset
from offline_rl.data.validate import (
    check_action_bounds,
    check_finite,
    check_lengths,
    check_matrix,
    check_numeric,
    check_obs_dim,
    require_keys,
    require_rows,
)
from offline_rl.errors import DatasetError
from offline_rl.utils.io import atomic_write

log = logging.getLogger(__name__)

LABEL = "D4RL"
REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
DEFAULT_MAX_EPISODE_STEPS = 1000
DOWNLOAD_TIMEOUT_S = 10.0

_V2_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{env}_{level}-v2.hdf5"
DATASET_URLS: dict[str, str] = {
    f"{env}-{level}-v2": _V2_URL.format(env=env, level=level.replace("-", "_"))
    for env in ("hopper", "halfcheetah", "walker2d", "ant")
    for level in ("random", "medium", "medium-replay", "medium-expert", "expert")
}
"""Download URLs of the gym-mujoco v2 files, by D4RL name (e.g. `hopper-medium-v2`)."""

REF_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
    "antmaze": (0.0, 1.0),
    "pen": (96.262799, 3076.8331017826877),
    "hammer": (-274.856578, 12794.134825156867),
    "relocate": (-6.425911, 4233.877797728884),
    "door": (-56.512833, 2880.5693087298737),
    "kitchen": (0.0, 4.0),
    "maze2d-umaze": (23.85, 161.86),
    "maze2d-medium": (13.13, 277.39),
    "maze2d-large": (6.7, 273.99),
}
"""D4RL REF_MIN_SCORE / REF_MAX_SCORE (`d4rl/infos.py`) by family; all levels and versions of a family share them.
The maze2d entries are the sparse-reward `maze2d-<size>-v1` datasets only."""

_EXACT_FAMILIES = {"maze2d-umaze", "maze2d-medium", "maze2d-large"}

ENV_IDS: dict[str, str] = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
"""Gymnasium env used to evaluate policies trained on a D4RL family.

The v2 data were collected on the mujoco-py `-v3` envs; gymnasium's `-v5` envs have the same observation and
action layouts for these three but a different MuJoCo build and contact model, so returns are close, not
identical. `ant` has no entry: D4RL's 111-dim Ant observations (with 84 contact forces) do not match Ant-v5's
105 dims."""


def d4rl_dir() -> Path:
    """`$D4RL_DATASET_DIR`, default `~/.d4rl/datasets` (where d4rl itself keeps the files)."""
    return Path(os.environ.get("D4RL_DATASET_DIR", Path.home() / ".d4rl" / "datasets")).expanduser()


def downloads_disabled() -> bool:
    """True when `$OFFLINE_RL_OFFLINE` is set to 1/true/yes: never touch the network."""
    return os.environ.get("OFFLINE_RL_OFFLINE", "").strip().lower() in ("1", "true", "yes")


def canonical_name(name_or_path: str | os.PathLike) -> str:
    """`hopper_medium_replay-v2.hdf5` or `hopper-medium-replay-v2` -> `hopper-medium-replay-v2`."""
    stem = Path(name_or_path).name
    stem = re.sub(r"\.(hdf5|h5)$", "", stem)
    return stem.replace("_", "-")


def family_of(name: str) -> str | None:
    """The REF_SCORES family of a D4RL name (`hopper-medium-v2` -> `hopper`), or None."""
    stem = re.sub(r"-v\d+$", "", name)
    if stem in _EXACT_FAMILIES:
        return stem
    head = stem.split("-")[0]
    return head if head in REF_SCORES and head not in _EXACT_FAMILIES else None


def final_steps(terminals: np.ndarray, timeouts: np.ndarray | None,
                max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS) -> np.ndarray:
    """Which rows `qlearning_dataset(terminate_on_end=False)` treats as final (and skips).

    With a `timeouts` key: exactly the timeout rows. Without: d4rl's per-episode step counter.
    """
    if timeouts is not None:
        return timeouts.astype(bool)
    final = np.zeros(len(terminals), dtype=bool)
    step = 0
    for i, terminal in enumerate(terminals.astype(bool).tolist()):
        if step == max_episode_steps - 1:
            final[i] = True
            step = 0
        elif terminal:
            step = 1  # d4rl resets to 0 and then increments for the kept terminal row
        else:
            step += 1
    return final


def qlearning_transitions(observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray,
                          terminals: np.ndarray, timeouts: np.ndarray | None,
                          next_observations: np.ndarray | None = None, keep_timeouts: bool = False,
                          max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS) -> Transitions:
    """Raw D4RL arrays -> transitions (see the module docstring). `next_observations=None`: use obs[i + 1]."""
    n = len(observations)
    terminals = terminals.astype(bool)
    final = final_steps(terminals, timeouts, max_episode_steps)
    if next_observations is None:
        if keep_timeouts:
            raise ValueError("keep_timeouts needs the true next observations")
        rows, nxt = np.arange(max(n - 1, 0)), observations[1:]
    else:
        rows, nxt = np.arange(n), next_observations
    keep = rows if keep_timeouts else rows[~final[rows]]
    ends = terminals | final
    raw_episode = np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64) if n else np.zeros(0, np.int64)
    n_episodes = int(raw_episode[-1]) + 1 if n else 0
    returns = np.bincount(raw_episode, weights=rewards.astype(np.float64), minlength=n_episodes)
    return Transitions(
        observations=observations[keep].astype(np.float32),
        actions=actions[keep].astype(np.float32),
        rewards=rewards[keep].astype(np.float32),
        next_observations=nxt[keep].astype(np.float32),
        terminals=terminals[keep],
        timeouts=(final & ~terminals)[keep],
        episode_ids=raw_episode[keep],
        episode_returns=returns,
    )


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    where = path.name
    try:
        with h5py.File(path, "r") as f:
            keys: list[str] = []
            f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
            require_keys(keys, REQUIRED_KEYS, where)
            wanted = (*REQUIRED_KEYS, "timeouts", "next_observations")
            arrays = {k: f[k][()] for k in wanted if k in keys}
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise DatasetError(f"{where}: cannot read as an HDF5 file ({e}); is it truncated?") from e
    for key, value in arrays.items():
        if np.ndim(value) == 0:
            raise DatasetError(f"{where}: key '{key}' is a scalar, expected one row per step")
    check_numeric(arrays, where)
    n = len(arrays["observations"])
    require_rows(n, where)
    for key in ("rewards", "terminals", "timeouts"):
        if key in arrays:
            value = arrays[key]
            if value.ndim == 2 and value.shape[1] == 1:
                arrays[key] = value[:, 0]
            elif value.ndim != 1:
                raise DatasetError(f"{where}: key '{key}' has shape {value.shape}, expected ({n},) or ({n}, 1)")
    check_matrix(arrays, [k for k in ("observations", "actions", "next_observations") if k in arrays], where)
    check_lengths(arrays, where)
    return arrays


D4RL_ACTION_BOUNDS = (-1.0, 1.0)
"""The action space of every D4RL env (MuJoCo locomotion, AntMaze, Adroit, Kitchen, Maze2D)."""


def _bounds(bounds: tuple[Any, Any], act_dim: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    low, high = (np.broadcast_to(np.asarray(b, dtype=np.float64), (act_dim,)).copy() for b in bounds)
    if not (low < high).all():
        raise DatasetError(f"{where}: action bounds must have low < high in every dimension, got {bounds}")
    return low, high


def read_d4rl(path: str | os.PathLike, keep_timeouts: bool = False, use_next_observations: bool = False,
              max_episode_steps: int = DEFAULT_MAX_EPISODE_STEPS, device: str = "cpu", source: str | None = None,
              env_id: str | None = None, action_bounds: tuple[Any, Any] | None = None) -> Dataset:
    """A validated `Dataset` from a D4RL hdf5 file (reference scores and env id from its name when known).

    Actions are checked against the env's action space: the env the file's name implies, else `env_id`, else
    `action_bounds`, else D4RL's [-1, 1]. With `env_id`, the observation size is checked against it too and it
    becomes the evaluation env.
    """
    path = Path(path)
    where = path.name
    arrays = _read_arrays(path)
    check_finite(arrays, where)
    name = canonical_name(path)
    family = family_of(name)
    known = ENV_IDS.get(family or "")
    if env_id is not None and known is not None and env_id != known:
        raise DatasetError(f"{where}: the file is a {family} dataset (evaluated on {known}), but env {env_id} was "
                           "given")
    env_id = known or env_id
    act_dim = int(arrays["actions"].shape[1])
    if env_id is not None:
        from offline_rl.envs import box_bounds, env_spaces

        try:
            obs_space, act_space = env_spaces(env_id)
        except Exception as e:  # gymnasium raises several error types for an unknown or unmakeable id
            raise DatasetError(f"{where}: cannot make env '{env_id}' to check the data against ({e})") from e
        bounds = box_bounds(act_space)
        if bounds is None:
            raise DatasetError(f"{where}: env {env_id} has a {act_space} action space; only Box is supported")
        check_obs_dim(arrays["observations"], int(np.prod(obs_space.shape)), where, env_id)
    else:
        bounds = _bounds(action_bounds or D4RL_ACTION_BOUNDS, act_dim, where)
    check_action_bounds(arrays["actions"], *bounds, where)
    has_next = "next_observations" in arrays
    if keep_timeouts and not has_next:
        raise DatasetError(f"{where}: keep_timeouts needs the true next observation after each timeout, but key "
                           "'next_observations' is missing; load it without keep_timeouts")
    if use_next_observations and not has_next:
        log.warning("%s: no 'next_observations' key; using observations[i + 1]", where)
    t = qlearning_transitions(arrays["observations"], arrays["actions"], arrays["rewards"], arrays["terminals"],
                              arrays.get("timeouts"),
                              arrays.get("next_observations") if (use_next_observations or keep_timeouts) else None,
                              keep_timeouts=keep_timeouts, max_episode_steps=max_episode_steps)
    require_rows(len(t.observations), f"{where} (after dropping the timeout rows, as d4rl.qlearning_dataset does)")
    refs = REF_SCORES.get(family or "", (None, None))
    spec = spec_from(int(arrays["observations"].shape[1]), arrays["actions"], bounds, where)
    return to_dataset(t, spec, device, env_id=env_id, ref_min_score=refs[0], ref_max_score=refs[1],
                      source=source or str(path), name=name, family=family or "", label=LABEL)


def download(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Fetch `url` into `dest` atomically (a partial download never appears under the final name)."""
    log.warning("downloading %s to %s", url, dest)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        atomic_write(dest, lambda f: shutil.copyfileobj(response, f, 1 << 20), mode="wb")
    if not h5py.is_hdf5(dest):
        dest.unlink()
        raise OSError(f"{url} did not return an HDF5 file")


def resolve(name: str) -> Path:
    """The local file of D4RL dataset `name`, downloading it when it is missing and a URL is known."""
    folder = d4rl_dir()
    url = DATASET_URLS.get(name)
    candidates = [folder / f"{name}.hdf5"] + ([folder / Path(url).name] if url else [])
    for path in candidates:
        if path.is_file():
            return path
    target = candidates[-1]
    if url is None:
        raise DatasetError(f"d4rl:{name}: no file {candidates[0]}, and no download URL is known for '{name}' "
                           f"(known: {', '.join(sorted(DATASET_URLS))}). Put the file at {candidates[0]} "
                           "(set D4RL_DATASET_DIR to use another folder)")
    if downloads_disabled():
        raise DatasetError(f"d4rl:{name}: not found in {folder} and downloads are disabled (OFFLINE_RL_OFFLINE). "
                           f"Download {url} and put it at {target}")
    try:
        download(url, target)
    except (OSError, ValueError) as e:  # URLError and timeouts are OSErrors
        raise DatasetError(f"d4rl:{name}: not found in {folder}, and downloading {url} failed ({e}). "
                           f"Download it by hand and put it at {target}") from e
    return target


def load_d4rl(name: str, **kwargs) -> Dataset:
    """`d4rl:<name>`: the file from `$D4RL_DATASET_DIR`, downloaded on first use when possible."""
    return read_d4rl(resolve(name), source=f"d4rl:{name}", **kwargs)
