"""Minari reader: per-episode N + 1 alignment on real Minari datasets written in tmp_path."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from offline_rl.data import load_dataset
from offline_rl.errors import DatasetError

# (steps, terminated at the end, truncated at the end); obs[t] = (100 k + t, k, t), reward = 10 k + t + 1.
EPISODES = [(3, True, False), (4, False, True), (1, True, True), (2, False, True), (2, False, False)]


def episode(k: int, steps: int, term: bool, trunc: bool) -> dict:
    t = np.arange(steps + 1, dtype=np.float64)
    flags = np.zeros(steps, dtype=bool)
    return {
        "observations": np.stack([100 * k + t, np.full_like(t, k), t], axis=1).astype(np.float32),
        "actions": ((np.arange(steps) % 4) * 0.5 - 1.0)[:, None].astype(np.float32),
        "rewards": 10.0 * k + np.arange(steps) + 1.0,
        "terminations": np.where(np.arange(steps) == steps - 1, term, flags),
        "truncations": np.where(np.arange(steps) == steps - 1, trunc, flags),
    }


def write_minari(root: Path, monkeypatch, dataset_id: str = "test/toy-v0", edit=None,
                 empty_episode: bool = True) -> Path:
    """A real Minari (hdf5) dataset on Pendulum-v1, plus an appended 0-step episode (Minari's writer cannot)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    eps = [episode(k, *spec) for k, spec in enumerate(EPISODES)]
    if edit is not None:
        edit(eps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = minari.create_dataset_from_buffers(dataset_id, [EpisodeBuffer(id=k, **e) for k, e in enumerate(eps)],
                                                env="Pendulum-v1", ref_min_score=-1000.0, ref_max_score=-100.0)
    if empty_episode:
        with h5py.File(Path(ds.storage.data_path) / "main_data.hdf5", "a") as f:
            g = f.create_group(f"episode_{len(eps)}")
            g.attrs["id"], g.attrs["total_steps"] = len(eps), 0
            g.create_dataset("observations", data=np.array([[500.0, 5, 0]], np.float32))
            g.create_dataset("actions", data=np.zeros((0, 1), np.float32))
            for key, dtype in (("rewards", np.float64), ("terminations", bool), ("truncations", bool)):
                g.create_dataset(key, data=np.zeros(0, dtype))
        ds.storage.update_metadata({"total_episodes": len(eps) + 1})
    return root / dataset_id


@pytest.fixture
def toy(tmp_path, monkeypatch) -> Path:
    return write_minari(tmp_path / "minari", monkeypatch)


def np_(t) -> np.ndarray:
    return t.cpu().numpy()


def test_every_step_of_every_episode_is_a_transition(toy):
    data = load_dataset(toy)
    obs, nxt = np_(data.observations), np_(data.next_observations)
    # T transitions per episode of T steps, truncated episodes included (Minari stores the true next observation);
    # episode 5 has no steps.
    np.testing.assert_array_equal(obs[:, 0], [0, 1, 2, 100, 101, 102, 103, 200, 300, 301, 400, 401])
    np.testing.assert_array_equal(nxt[:, 0], obs[:, 0] + 1)  # obs[t + 1] of the same episode, in all 5 episodes
    np.testing.assert_array_equal(nxt[:, 1], obs[:, 1])
    np.testing.assert_array_equal(np_(data.episode_ids), [0, 0, 0, 1, 1, 1, 1, 2, 3, 3, 4, 4])
    # terminals = terminations, timeouts = truncations (episode 2's single step has both flags)
    np.testing.assert_array_equal(obs[np_(data.terminals), 0], [2, 200])
    np.testing.assert_array_equal(obs[np_(data.timeouts), 0], [103, 200, 301])
    np.testing.assert_array_equal(np_(data.rewards), [1, 2, 3, 11, 12, 13, 14, 21, 31, 32, 41, 42])
    np.testing.assert_array_equal(data.episode_returns, [6, 50, 21, 63, 83, 0])
    np.testing.assert_array_equal(np.bincount(np_(data.episode_ids), weights=np_(data.rewards), minlength=6),
                                  data.episode_returns)
    assert data.n_episodes == 6
    assert data.env_id == "Pendulum-v1" and data.label == "Minari" and data.name == "test/toy-v0"
    assert data.family == "test"
    assert (data.ref_min_score, data.ref_max_score) == (-1000.0, -100.0)
    assert data.spec.action_low == (-2.0,) and data.spec.action_high == (2.0,) and data.spec.obs_dim == 3
    assert len(load_dataset(toy, keep_timeouts=True)) == 12  # a D4RL-only option: Minari keeps every step anyway


def test_twelve_uneven_episodes_half_truncated_lose_nothing(tmp_path, monkeypatch):
    """Minari's own writer, 12 episodes of uneven length: 6 truncated, 4 terminated, 2 ended by both flags."""
    rng = np.random.default_rng(0)
    lengths = [7, 1, 13, 4, 9, 2, 11, 5, 3, 8, 6, 10]
    ends = ["trunc", "term", "trunc", "both", "trunc", "term", "trunc", "term", "trunc", "both", "trunc", "term"]
    eps = []
    for steps, end in zip(lengths, ends, strict=True):
        flags = np.zeros(steps, dtype=bool)
        term, trunc = flags.copy(), flags.copy()
        term[-1], trunc[-1] = end in ("term", "both"), end in ("trunc", "both")
        eps.append({"observations": rng.normal(size=(steps + 1, 3)).astype(np.float32),
                    "actions": rng.uniform(-2, 2, size=(steps, 1)).astype(np.float32),
                    "rewards": rng.normal(size=steps), "terminations": term, "truncations": trunc})
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("test/uneven-v0", [EpisodeBuffer(id=k, **e) for k, e in enumerate(eps)],
                                           env="Pendulum-v1")
    data = load_dataset(tmp_path / "test/uneven-v0")
    assert len(data) == sum(lengths) == 79
    ids = np_(data.episode_ids)
    for k, ep in enumerate(eps):
        rows = np.flatnonzero(ids == k)
        assert len(rows) == lengths[k]
        np.testing.assert_array_equal(np_(data.observations)[rows], ep["observations"][:-1])
        np.testing.assert_array_equal(np_(data.next_observations)[rows], ep["observations"][1:])
        np.testing.assert_array_equal(np_(data.actions)[rows], ep["actions"])
        np.testing.assert_allclose(np_(data.rewards)[rows], ep["rewards"], rtol=1e-6)
        np.testing.assert_array_equal(np_(data.terminals)[rows], ep["terminations"])
        np.testing.assert_array_equal(np_(data.timeouts)[rows], ep["truncations"])
    assert int(np_(data.timeouts).sum()) == 8 and int(np_(data.terminals).sum()) == 6


def test_minari_id_is_found_in_minaris_folder(toy, monkeypatch):
    monkeypatch.setenv("OFFLINE_RL_OFFLINE", "1")
    data = load_dataset("minari:test/toy-v0")
    assert len(data) == 12 and data.source == "minari:test/toy-v0"
    with pytest.raises(DatasetError, match="minari:test/absent-v0: not found.*downloads are disabled"):
        load_dataset("minari:test/absent-v0")


def _misalign(eps):
    eps[2]["observations"] = eps[2]["observations"][:-1]  # episode 2: as many observations as actions


@pytest.mark.parametrize(("edit", "message"), [
    (_misalign, "episode 2 has 1 observations and 1 actions"),
    (lambda eps: eps[1]["rewards"].__setitem__(2, np.nan), "key 'episode_1/rewards' contains NaN at row 2"),
    (lambda eps: eps[3]["observations"].__setitem__((2, 0), np.inf),
     "key 'episode_3/observations' contains inf at row 2"),
    (lambda eps: eps[4]["actions"].__setitem__((1, 0), 3.0),
     "key 'episode_4/actions' has 3 at row 1 \\(dimension 0\\), outside the action bounds \\[-2, 2\\]"),
])
def test_validation_errors_name_dataset_episode_and_key(tmp_path, monkeypatch, edit, message):
    path = write_minari(tmp_path / "minari", monkeypatch, edit=edit, empty_episode=False)
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(path)
    assert str(path) in str(err.value)


def test_not_a_minari_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a Minari dataset folder"):
        load_dataset(tmp_path / "empty")
