"""Checks run on every load. Each failure is a DatasetError naming the file (or dataset) and the key.

Example: `hopper-medium-v2.hdf5: key 'rewards' contains NaN at row 17`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from offline_rl.data.dataset import ACTION_TOLERANCE
from offline_rl.errors import DatasetError

Locate = Callable[[str, int], tuple[str, int]]
"""Maps (key, transition row) to (key as stored in the file, row in that key), for the error message."""


def _identity(key: str, row: int) -> tuple[str, int]:
    return key, row


def require_keys(present: Iterable[str], required: Iterable[str], where: str) -> None:
    """Fail on the first required key that is absent."""
    present = set(present)
    for key in required:
        if key not in present:
            raise DatasetError(f"{where}: key '{key}' is missing (required: {', '.join(required)})")


def check_numeric(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Every array holds numbers or booleans (not byte strings, objects or compound records)."""
    for key, value in arrays.items():
        kind = np.asarray(value).dtype.kind
        if kind not in "biuf":
            raise DatasetError(f"{where}: key '{key}' has dtype {np.asarray(value).dtype}, expected numbers")


def check_matrix(arrays: Mapping[str, np.ndarray], keys: Iterable[str], where: str) -> None:
    """Each of `keys` is a 2-D array (N, dim): one row per step, one flat vector per row."""
    for key in keys:
        shape = np.shape(arrays[key])
        if len(shape) != 2:
            raise DatasetError(f"{where}: key '{key}' has shape {shape}, expected a 2-D array (N, dim)")


def require_rows(n: int, where: str, minimum: int = 1) -> None:
    """At least `minimum` rows (transitions)."""
    if n < minimum:
        raise DatasetError(f"{where}: {n} transitions; a dataset needs at least {minimum}")


def check_lengths(arrays: Mapping[str, np.ndarray], where: str, reference: str = "observations") -> int:
    """All arrays have as many rows as `arrays[reference]`; returns that number."""
    n = len(arrays[reference])
    for key, value in arrays.items():
        if len(value) != n:
            raise DatasetError(f"{where}: key '{key}' has {len(value)} rows, but '{reference}' has {n}")
    return n


def check_finite(arrays: Mapping[str, np.ndarray], where: str, locate: Locate = _identity) -> None:
    """No NaN or inf in any float array."""
    for key, value in arrays.items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        flat = value.reshape(len(value), -1)
        bad = ~np.isfinite(flat).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            what = "NaN" if np.isnan(flat[row]).any() else "inf"
            stored_key, stored_row = locate(key, row)
            raise DatasetError(f"{where}: key '{stored_key}' contains {what} at row {stored_row}")


def check_action_bounds(actions: np.ndarray, low: np.ndarray, high: np.ndarray, where: str,
                        locate: Locate = _identity) -> None:
    """Every action lies in [low, high] up to ACTION_TOLERANCE of the range."""
    actions = actions.reshape(len(actions), -1)
    if actions.shape[1] != len(low):
        raise DatasetError(f"{where}: key 'actions' has dimension {actions.shape[1]}, but the action space has "
                           f"{len(low)}")
    span = np.where(np.isfinite(high - low), high - low, 0.0)
    tol = ACTION_TOLERANCE * np.maximum(span, 1.0)
    outside = (actions < low - tol) | (actions > high + tol)
    if outside.any():
        row, dim = (int(i) for i in np.argwhere(outside)[0])
        stored_key, stored_row = locate("actions", row)
        raise DatasetError(f"{where}: key '{stored_key}' has {actions[row, dim]:.6g} at row {stored_row} "
                           f"(dimension {dim}), outside the action bounds [{low[dim]:.6g}, {high[dim]:.6g}]")


def check_obs_dim(observations: np.ndarray, expected: int, where: str, env_id: str | None) -> None:
    """The observation size equals the env's."""
    dim = int(np.prod(observations.shape[1:]))
    if dim != expected:
        raise DatasetError(f"{where}: key 'observations' has dimension {dim}, but the observation space of "
                           f"{env_id or 'the environment'} has {expected}")


def validate_transitions(arrays: Mapping[str, np.ndarray], where: str, *,
                         action_bounds: tuple[np.ndarray, np.ndarray] | None = None, obs_dim: int | None = None,
                         env_id: str | None = None, locate: Locate = _identity) -> None:
    """Lengths, finiteness, action bounds and observation size of transition arrays (one row per transition)."""
    check_lengths(arrays, where)
    check_finite(arrays, where, locate)
    if action_bounds is not None:
        check_action_bounds(arrays["actions"], *action_bounds, where, locate)
    if obs_dim is not None:
        check_obs_dim(arrays["observations"], obs_dim, where, env_id)
