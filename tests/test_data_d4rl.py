"""D4RL hdf5 reader: exact qlearning_dataset parity on real hdf5 files with hand-computed expectations."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from offline_rl.data import d4rl, load_dataset
from offline_rl.errors import DatasetError

# The fixture: 12 rows, 5 episodes, rewards 1..12, obs[i] = (i, 10 i).
#   episode 0: rows 0-2, ends in a terminal (row 2)
#   episode 1: rows 3-5, ends in a timeout (row 5)
#   episode 2: rows 6-7, row 7 has both flags
#   episode 3: row 8, a one-step episode ending in a terminal
#   episode 4: rows 9-11, no flag; row 11 is the last row of the array
N = 12
TERMINALS = [2, 7, 8]
TIMEOUTS = [5, 7]


def raw_arrays(act_dim: int = 1, obs_dim: int = 2) -> dict[str, np.ndarray]:
    i = np.arange(N, dtype=np.float64)
    obs = np.zeros((N, obs_dim))
    obs[:, 0], obs[:, 1] = i, 10 * i
    next_obs = np.roll(obs, -1, axis=0)
    for end in (2, 5, 7, 8, 11):  # the true next observation after an episode's last step
        next_obs[end] = (end + 0.5, -1.0) + (0.0,) * (obs_dim - 2)
    terminals = np.zeros(N, dtype=bool)
    terminals[TERMINALS] = True
    timeouts = np.zeros(N, dtype=bool)
    timeouts[TIMEOUTS] = True
    return {
        "observations": obs.astype(np.float32),
        "next_observations": next_obs.astype(np.float32),
        "actions": np.tile(((i % 5) / 10)[:, None], (1, act_dim)).astype(np.float32),
        "rewards": (i + 1).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def write_hdf5(path: Path, arrays: dict[str, np.ndarray], drop: tuple[str, ...] = ()) -> Path:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            if key not in drop:
                f.create_dataset(key, data=value)
        f.create_dataset("infos/qpos", data=np.zeros((len(arrays["observations"]), 3)))  # ignored extra key
        f.create_dataset("metadata/algorithm", data="SAC")
    return path


def reference_qlearning(arrays: dict[str, np.ndarray], max_episode_steps: int = 1000) -> dict[str, np.ndarray]:
    """d4rl.qlearning_dataset(terminate_on_end=False), transcribed row by row from its documented behaviour."""
    out: dict[str, list] = {"observations": [], "next_observations": [], "actions": [], "rewards": [],
                            "terminals": []}
    use_timeouts = "timeouts" in arrays
    episode_step = 0
    for i in range(len(arrays["rewards"]) - 1):
        final = bool(arrays["timeouts"][i]) if use_timeouts else episode_step == max_episode_steps - 1
        if final:
            episode_step = 0
            continue
        if arrays["terminals"][i]:
            episode_step = 0
        out["observations"].append(arrays["observations"][i])
        out["next_observations"].append(arrays["observations"][i + 1])
        out["actions"].append(arrays["actions"][i])
        out["rewards"].append(arrays["rewards"][i])
        out["terminals"].append(bool(arrays["terminals"][i]))
        episode_step += 1
    return {k: np.array(v) for k, v in out.items()}


@pytest.fixture
def toy(tmp_path) -> Path:
    return write_hdf5(tmp_path / "toy.hdf5", raw_arrays())


def np_(t) -> np.ndarray:
    return t.cpu().numpy()


def test_parity_mode_hand_computed(toy):
    data = load_dataset(toy)
    kept = [0, 1, 2, 3, 4, 6, 8, 9, 10]  # timeout rows 5 and 7 (both flags) and the array's last row are skipped
    assert len(data) == 9
    np.testing.assert_array_equal(np_(data.observations)[:, 0], kept)
    np.testing.assert_array_equal(np_(data.next_observations)[:, 0], [k + 1 for k in kept])  # always obs[i + 1]
    assert np_(data.next_observations)[2, 0] == 3  # at the terminal: the next episode's first obs, as in d4rl
    np.testing.assert_array_equal(np_(data.terminals), [r in (2, 8) for r in kept])
    assert not np_(data.timeouts).any()
    np.testing.assert_array_equal(np_(data.rewards), [k + 1 for k in kept])
    np.testing.assert_array_equal(np_(data.episode_ids), [0, 0, 0, 1, 1, 2, 3, 4, 4])
    np.testing.assert_array_equal(data.episode_returns, [6, 15, 15, 9, 33])  # raw rows, split on both flags
    # Per-episode reward sums: raw sum minus the dropped timeout rows (and the array's last row).
    sums = np.bincount(np_(data.episode_ids), weights=np_(data.rewards), minlength=5)
    np.testing.assert_array_equal(sums, [6, 15 - 6, 15 - 8, 9, 33 - 12])
    assert data.label == "D4RL" and data.env_id is None and data.ref_min_score is None
    assert data.spec.obs_dim == 2 and data.spec.act_dim == 1


def test_parity_matches_reference_on_fixture_and_random_files(tmp_path, toy):
    rng = np.random.default_rng(0)
    cases = [raw_arrays()]
    for _ in range(5):
        a = raw_arrays()
        n = 200
        a = {k: np.resize(v, (n, *v.shape[1:])) for k, v in a.items()}
        a["observations"] = rng.normal(size=(n, 2)).astype(np.float32)
        a["terminals"] = rng.random(n) < 0.05
        a["timeouts"] = rng.random(n) < 0.05
        cases.append(a)
    for k, arrays in enumerate(cases):
        for with_timeouts in (True, False):
            drop = () if with_timeouts else ("timeouts",)
            path = write_hdf5(tmp_path / f"case{k}{with_timeouts}.hdf5", arrays, drop)
            data = d4rl.read_d4rl(path, max_episode_steps=7)
            ref = reference_qlearning({kk: v for kk, v in arrays.items() if kk not in drop}, max_episode_steps=7)
            for key in ("observations", "next_observations", "actions", "rewards", "terminals"):
                np.testing.assert_array_equal(np_(getattr(data, key)), ref[key], err_msg=f"{key} case {k}")


def test_keep_timeouts_mode(toy):
    data = load_dataset(toy, keep_timeouts=True)
    assert len(data) == N  # every row, the last included: its true next observation is in the file
    np.testing.assert_array_equal(np_(data.terminals).nonzero()[0], [2, 7, 8])  # row 7: terminal wins
    np.testing.assert_array_equal(np_(data.timeouts).nonzero()[0], [5])
    next_x = np_(data.next_observations)[:, 0]
    np.testing.assert_array_equal(next_x[[2, 5, 7, 8, 11]], [2.5, 5.5, 7.5, 8.5, 11.5])
    np.testing.assert_array_equal(next_x[[0, 3, 9]], [1, 4, 10])
    sums = np.bincount(np_(data.episode_ids), weights=np_(data.rewards))
    np.testing.assert_array_equal(sums, data.episode_returns)  # nothing dropped


def test_use_next_observations_keeps_parity_drops(toy):
    data = load_dataset(toy, use_next_observations=True)
    kept = [0, 1, 2, 3, 4, 6, 8, 9, 10, 11]  # the last row now has a next observation
    np.testing.assert_array_equal(np_(data.observations)[:, 0], kept)
    np.testing.assert_array_equal(np_(data.next_observations)[:, 0], [1, 2, 2.5, 4, 5, 7, 8.5, 10, 11, 11.5])


def test_file_without_next_observations(tmp_path):
    path = write_hdf5(tmp_path / "nonext.hdf5", raw_arrays(), drop=("next_observations",))
    assert len(load_dataset(path)) == 9
    assert len(load_dataset(path, use_next_observations=True)) == 9  # falls back to obs[i + 1]
    with pytest.raises(DatasetError, match="keep_timeouts needs the true next observation.*'next_observations'"):
        load_dataset(path, keep_timeouts=True)


def test_file_without_timeouts_uses_d4rl_step_counter(tmp_path):
    path = write_hdf5(tmp_path / "old.hdf5", raw_arrays(), drop=("timeouts",))
    # max_episode_steps = 3: d4rl's counter makes rows 2, 5 and 10 final (it restarts at 1 after a terminal).
    np.testing.assert_array_equal(d4rl.final_steps(raw_arrays()["terminals"], None, 3).nonzero()[0], [2, 5, 10])
    data = d4rl.read_d4rl(path, max_episode_steps=3)
    np.testing.assert_array_equal(np_(data.observations)[:, 0], [0, 1, 3, 4, 6, 7, 8, 9])
    np.testing.assert_array_equal(np_(data.terminals), [0, 0, 0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(data.episode_returns, [6, 15, 15, 9, 21, 12])
    assert len(load_dataset(path)) == N - 1  # default limit 1000: nothing is final, only the last row is lost


def test_column_shaped_rewards_and_terminals_are_squeezed(tmp_path):
    arrays = raw_arrays()
    for key in ("rewards", "terminals", "timeouts"):
        arrays[key] = arrays[key][:, None]
    data = load_dataset(write_hdf5(tmp_path / "col.hdf5", arrays))
    assert data.rewards.shape == (9,) and data.terminals.shape == (9,)
    np.testing.assert_array_equal(np_(data.terminals).nonzero()[0], [2, 6])


def hopper_arrays(n: int = 30) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[14] = True
    return {"observations": rng.normal(size=(n, 11)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32),
            "terminals": np.zeros(n, dtype=bool), "timeouts": timeouts}


def test_hopper_file_gets_reference_scores_and_env(tmp_path):
    data = load_dataset(write_hdf5(tmp_path / "hopper_medium-v2.hdf5", hopper_arrays()))
    assert data.name == "hopper-medium-v2" and data.family == "hopper" and data.label == "D4RL"
    assert data.env_id == "Hopper-v5"
    assert (data.ref_min_score, data.ref_max_score) == (-20.272305, 3234.3)
    assert data.spec.action_low == (-1.0,) * 3 and data.spec.action_high == (1.0,) * 3  # from the env
    assert len(data) == 28


@pytest.mark.parametrize(("edit", "message"), [
    (lambda a: a.pop("rewards"), "hopper-medium-v2.hdf5: key 'rewards' is missing"),
    (lambda a: a.update(actions=a["actions"][:-1]), "hopper-medium-v2.hdf5: key 'actions' has 29 rows, but "
                                                      "'observations' has 30"),
    (lambda a: a["rewards"].__setitem__(17, np.nan), "hopper-medium-v2.hdf5: key 'rewards' contains NaN at row 17"),
    (lambda a: a["observations"].__setitem__((4, 2), np.inf), "key 'observations' contains inf at row 4"),
    (lambda a: a["actions"].__setitem__((3, 1), 1.5), "key 'actions' has 1.5 at row 3 \\(dimension 1\\), outside the "
                                                     "action bounds \\[-1, 1\\]"),
    (lambda a: a.update(observations=a["observations"][:, :10]), "key 'observations' has dimension 10, but the "
                                                                   "observation space of Hopper-v5 has 11"),
])
def test_validation_errors_name_file_and_key(tmp_path, edit, message):
    arrays = hopper_arrays()
    edit(arrays)
    with pytest.raises(DatasetError, match=message):
        load_dataset(write_hdf5(tmp_path / "hopper-medium-v2.hdf5", arrays))


def test_action_within_tolerance_is_accepted(tmp_path):
    arrays = hopper_arrays()
    arrays["actions"][0, 0] = 1.0005
    assert len(load_dataset(write_hdf5(tmp_path / "hopper-medium-v2.hdf5", arrays))) == 28


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "broken.hdf5"
    path.write_text("not hdf5")
    with pytest.raises(DatasetError, match="broken.hdf5: cannot read as an HDF5 file"):
        load_dataset(path)


def test_d4rl_missing_file_names_the_folder_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    monkeypatch.setenv("OFFLINE_RL_OFFLINE", "1")
    with pytest.raises(DatasetError) as err:
        load_dataset("d4rl:hopper-medium-v2")
    assert str(tmp_path / "d4rl" / "hopper_medium-v2.hdf5") in str(err.value)
    assert d4rl.DATASET_URLS["hopper-medium-v2"] in str(err.value)
    with pytest.raises(DatasetError, match="no download URL is known for 'maze2d-umaze-v1'"):
        load_dataset("d4rl:maze2d-umaze-v1")


def test_d4rl_name_found_locally_and_downloaded(tmp_path, monkeypatch):
    folder = tmp_path / "d4rl"
    monkeypatch.setenv("D4RL_DATASET_DIR", str(folder))
    folder.mkdir()
    write_hdf5(folder / "walker2d-medium-v2.hdf5", hopper_arrays() | {
        "observations": np.zeros((30, 17), np.float32), "actions": np.zeros((30, 6), np.float32)})
    data = load_dataset("d4rl:walker2d-medium-v2")
    assert data.source == "d4rl:walker2d-medium-v2" and data.env_id == "Walker2d-v5"
    # A download (file:// URL, no network) lands atomically under the URL's file name.
    remote = write_hdf5(tmp_path / "remote.hdf5", hopper_arrays())
    monkeypatch.setitem(d4rl.DATASET_URLS, "hopper-medium-v2", remote.as_uri())
    monkeypatch.setenv("OFFLINE_RL_OFFLINE", "0")
    data = load_dataset("d4rl:hopper-medium-v2")
    assert len(data) == 28 and (folder / "remote.hdf5").is_file()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_family_lookup():
    assert d4rl.family_of("antmaze-umaze-diverse-v2") == "antmaze"
    assert d4rl.family_of("ant-medium-expert-v2") == "ant"
    assert d4rl.family_of("maze2d-umaze-v1") == "maze2d-umaze"
    assert d4rl.family_of("maze2d-umaze-dense-v1") is None  # dense mazes have other reference scores
    assert d4rl.family_of("halfcheetah-medium-replay-v0") == "halfcheetah"
    assert d4rl.canonical_name("/x/halfcheetah_medium_replay-v2.hdf5") == "halfcheetah-medium-replay-v2"
    assert d4rl.DATASET_URLS["hopper-medium-v2"] == (
        "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/hopper_medium-v2.hdf5")
    assert len(d4rl.DATASET_URLS) == 20


def _plain(tmp_path: Path, edit=None, name: str = "custom.hdf5") -> Path:
    """A D4RL-format file whose name implies no env (so the action check uses D4RL's [-1, 1])."""
    arrays = raw_arrays(act_dim=2, obs_dim=3)
    if edit is not None:
        edit(arrays)
    return write_hdf5(tmp_path / name, arrays)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda a: [a.__setitem__(k, v[:0]) for k, v in list(a.items())],
     "custom.hdf5: 0 transitions; a dataset needs at least 1"),
    (lambda a: a.update(observations=a["observations"][:, :, None], next_observations=a["next_observations"][:, :, None]),
     r"custom.hdf5: key 'observations' has shape \(12, 3, 1\), expected a 2-D array \(N, dim\)"),
    (lambda a: a.update(actions=a["actions"][:, 0]), r"key 'actions' has shape \(12,\), expected a 2-D array"),
    (lambda a: a["actions"].__setitem__((4, 1), 1e9),
     r"custom.hdf5: key 'actions' has 1e\+09 at row 4 \(dimension 1\), outside the action bounds \[-1, 1\]"),
    (lambda a: a.update(rewards=np.array([b"1.0"] * N)), "custom.hdf5: key 'rewards' has dtype |S3, expected numbers"),
    (lambda a: a.update(terminals=np.array(["x"] * N, dtype=object).astype("S1")), "key 'terminals' has dtype"),
    (lambda a: a.update(rewards=np.float32(1.0)), "custom.hdf5: key 'rewards' is a scalar"),
])
def test_bad_files_are_refused_with_one_line(tmp_path, edit, message):
    path = _plain(tmp_path, edit)
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(path)
    assert "\n" not in str(err.value)


def test_a_file_with_only_timeout_rows_is_empty_after_qlearning(tmp_path):
    def only_timeouts(a):
        a["terminals"][:] = False
        a["timeouts"][:] = True

    with pytest.raises(DatasetError, match=r"after dropping the timeout rows.*0 transitions"):
        load_dataset(_plain(tmp_path, only_timeouts))


def test_action_bounds_of_a_file_without_env(tmp_path):
    def wide(a):
        a["actions"][4, 1] = 1.7

    path = _plain(tmp_path, wide)
    with pytest.raises(DatasetError, match=r"outside the action bounds \[-1, 1\]"):
        load_dataset(path)
    data = load_dataset(path, action_bounds=(-2.0, 2.0))
    assert data.spec.action_low == (-2.0, -2.0) and data.spec.action_high == (2.0, 2.0) and data.env_id is None
    per_dim = load_dataset(path, action_bounds=([-1.0, -2.0], [1.0, 2.0]))
    assert per_dim.spec.action_high == (1.0, 2.0)
    with pytest.raises(DatasetError, match="low < high"):
        load_dataset(path, action_bounds=(1.0, -1.0))


def test_env_option_checks_the_file_and_becomes_the_evaluation_env(tmp_path):
    arrays = raw_arrays(act_dim=1, obs_dim=3)
    arrays["actions"][2, 0] = 1.8  # inside Pendulum-v1's [-2, 2], outside D4RL's [-1, 1]
    path = write_hdf5(tmp_path / "pendulum-custom.hdf5", arrays)
    data = load_dataset(path, env="Pendulum-v1")
    assert data.env_id == "Pendulum-v1" and data.spec.action_low == (-2.0,)
    with pytest.raises(DatasetError, match="observation space of InvertedPendulum-v5 has 4"):
        load_dataset(path, env="InvertedPendulum-v5")
    with pytest.raises(DatasetError, match="cannot make env 'NoSuchEnv-v0'"):
        load_dataset(path, env="NoSuchEnv-v0")
    with pytest.raises(DatasetError, match="a hopper dataset .* but env Pendulum-v1 was given"):
        load_dataset(write_hdf5(tmp_path / "hopper-medium-v2.hdf5", hopper_arrays()), env="Pendulum-v1")


def test_a_dataset_built_from_arrays_is_validated(tmp_path):
    import torch

    from offline_rl.data import Dataset

    a = raw_arrays(act_dim=2, obs_dim=3)
    data = Dataset.from_arrays(a["observations"], a["actions"], a["rewards"], a["next_observations"],
                               a["terminals"], a["timeouts"], action_bounds=(-1, 1))
    assert len(data) == N and data.n_episodes == 5  # ends at rows 2, 5, 7, 8 and the open tail
    np.testing.assert_array_equal(data.episode_returns, [6, 15, 15, 9, 33])
    np.testing.assert_array_equal(data.episode_ids.numpy(), [0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 4, 4])
    bad = dict(a, actions=a["actions"] * 0 + 3.0)
    with pytest.raises(DatasetError, match=r"'actions' has 3 at row 0 \(dimension 0\), outside the action bounds"):
        Dataset.from_arrays(bad["observations"], bad["actions"], bad["rewards"], bad["next_observations"],
                            bad["terminals"], action_bounds=(-1, 1))
    with pytest.raises(DatasetError, match="give env_id or action_bounds"):
        Dataset.from_arrays(a["observations"], a["actions"], a["rewards"], a["next_observations"], a["terminals"])
    with pytest.raises(DatasetError, match="'rewards' has dtype"):
        Dataset.from_arrays(a["observations"], a["actions"], np.array([b"x"] * N), a["next_observations"],
                            a["terminals"], action_bounds=(-1, 1))
    # The constructor itself validates: a NaN, a wrong width, an empty dataset.
    fields = dict(observations=data.observations, actions=data.actions, rewards=data.rewards,
                  next_observations=data.next_observations, terminals=data.terminals, timeouts=data.timeouts,
                  episode_ids=data.episode_ids, env_id=None, spec=data.spec)
    nan_rewards = data.rewards.clone()
    nan_rewards[5] = float("nan")
    with pytest.raises(DatasetError, match="'rewards' contains NaN or inf at row 5"):
        Dataset(**{**fields, "rewards": nan_rewards})
    with pytest.raises(DatasetError, match=r"'observations' has shape \(12, 2\), expected \(12, 3\)"):
        Dataset(**{**fields, "observations": data.observations[:, :2]})
    with pytest.raises(DatasetError, match="no transitions"):
        Dataset(**{k: (v[:0] if isinstance(v, torch.Tensor) else v) for k, v in fields.items()})
    with pytest.raises(DatasetError, match="'terminals' and 'timeouts' must be bool"):
        Dataset(**{**fields, "terminals": data.terminals.float()})


def test_reward_scaling_range_is_the_references_chunked_range(toy):
    """The qlearning rows of the fixture keep rows 0 1 2 3 4 6 8 9 10 (rewards 1 2 3 4 5 7 9 10 11; terminals at
    rewards 3 and 9). Chunks of 1000 rows cut at terminals: [1 2 3] = 6, [4 5 7 9] = 25, the open [10 11] is dropped:
    (6, 25). Chunks of 3: [1 2 3] = 6, [4 5 7] = 16, [9] = 9, [10 11] dropped: (6, 16). The raw episodes give
    (6, 33), which the toolkit used to take."""
    from offline_rl import make_algo

    data = load_dataset(toy)
    np.testing.assert_array_equal(data.rewards.numpy(), [1, 2, 3, 4, 5, 7, 9, 10, 11])
    assert data.chunked_return_range(1000) == (6.0, 25.0)
    assert data.chunked_return_range(3) == (6.0, 16.0)
    assert data.chunked_return_range(2) == (3.0, 21.0)  # [1 2] [3] [4 5] [7 9] [10 11]: 3 3 9 16 21
    assert data.return_range() == (6.0, 33.0)  # the raw episodes, for information
    iql = make_algo("iql", data.spec, {"normalize_reward": True}, dataset=data)
    iql.prepare(data)
    assert float(iql.reward_multiplier) == pytest.approx(1000.0 / 19.0)
    odice = make_algo("odice", data.spec, {"reward_norm": "return_range", "max_episode_steps": 3,
                                           "policy_hidden": [8]}, dataset=data)
    odice.prepare(data)
    assert float(odice.reward_multiplier) == pytest.approx(3.0 / 10.0)
    untouched = make_algo("iql", data.spec, {}, dataset=data)  # CORL's default: no reward scaling
    untouched.prepare(data)
    assert float(untouched.reward_multiplier) == 1.0


def test_reward_scaling_range_matches_a_row_by_row_transcription(tmp_path):
    from helpers import reference_return_range

    rng = np.random.default_rng(3)
    for n, m in ((5000, 1000), (3001, 7), (777, 50)):
        rewards = rng.normal(size=n).astype(np.float32)
        terminals = rng.random(n) < 0.004
        a = {"observations": rng.normal(size=(n, 2)).astype(np.float32), "actions": np.zeros((n, 1), np.float32),
             "rewards": rewards, "terminals": terminals, "timeouts": np.zeros(n, bool)}
        data = load_dataset(write_hdf5(tmp_path / f"x{n}.hdf5", a))
        ours = data.chunked_return_range(m)
        ref = reference_return_range(data.rewards.numpy(), data.terminals.numpy(), m)
        np.testing.assert_allclose(ours, ref, rtol=1e-9)
