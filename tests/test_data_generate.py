"""Generator, cards and the quick dataset families (real rollouts, real Minari files)."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest

from offline_rl.data import generate as generate_module
from offline_rl.data import generate_dataset, get_card, list_cards, load_dataset
from offline_rl.data.cards import LABEL_GENERATED, load_cards, measure_reference_scores
from offline_rl.errors import DatasetError

QUICK_CARDS = {f"{family}-{level}" for family in ("pendulum", "idp") for level in ("random", "medium", "expert",
                                                                                    "medium-expert")}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One cache for the module, so each card is generated once."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("home")
        mp.setenv("OFFLINE_RL_HOME", str(path))
        mp.setenv("OFFLINE_RL_OFFLINE", "1")
        yield path


def episodes_of(path: Path) -> list:
    return list(minari.MinariDataset(path / "data").iterate_episodes())


def test_short_run_counts_flags_metadata_and_determinism(tmp_path):
    kwargs = {"level": "random", "steps": 500, "seed": 3, "num_envs": 2}
    path = generate_dataset("Pendulum-v1", out=tmp_path / "a", **kwargs)
    assert path == tmp_path / "a" / "offline-rl/pendulum/random-seed3-steps500-v0"  # the pendulum-random card
    eps = episodes_of(path)
    # Two sub-envs finish 200-step episodes together: 400 < 500 transitions after the first pair, 800 after two.
    assert [len(e.actions) for e in eps] == [200] * 4
    for e in eps:
        assert len(e.observations) == len(e.actions) + 1
        assert not e.terminations.any() and e.truncations[-1] and not e.truncations[:-1].any()
    meta = minari.MinariDataset(path / "data").storage.metadata
    card = get_card("pendulum-random")
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (card.ref_min_score, card.ref_max_score)
    assert meta["offline_rl"]["label"] == LABEL_GENERATED and meta["offline_rl"]["seed"] == 3
    assert meta["env_spec"] and "Pendulum-v1" in meta["env_spec"]
    again = episodes_of(generate_dataset("Pendulum-v1", out=tmp_path / "b", **kwargs))
    for x, y in zip(eps, again, strict=True):
        np.testing.assert_array_equal(x.observations, y.observations)
        np.testing.assert_array_equal(x.actions, y.actions)
    other = episodes_of(generate_dataset("Pendulum-v1", out=tmp_path / "c", **{**kwargs, "seed": 4}))
    assert not np.array_equal(other[0].actions, eps[0].actions)
    data = load_dataset(path)
    assert len(data) == 800 and int(data.timeouts.sum()) == 4 and not data.terminals.any()
    assert data.label == LABEL_GENERATED and data.ref_min_score == card.ref_min_score


def test_episodes_replay_exactly_in_a_fresh_env(tmp_path):
    """Terminal episodes: stored observations (the final one included) match a replay of the stored actions."""
    path = generate_dataset("idp-medium", steps=1500, seed=0, out=tmp_path, num_envs=4)
    assert path.name == "medium-seed0-steps1500-v0"
    eps = episodes_of(path)
    assert sum(len(e.actions) for e in eps) >= 1500
    assert any(e.terminations[-1] for e in eps)
    for e in eps:
        flags = e.terminations | e.truncations
        assert flags[-1] and not flags[:-1].any()
    storage = minari.MinariDataset(path / "data").storage
    seeds = [m.get("seed") for m in storage.get_episode_metadata(range(len(eps)))]
    replayed = [(e, s) for e, s in zip(eps, seeds, strict=True) if s is not None]
    assert sorted(s for _, s in replayed) == [0, 1, 2, 3]  # the first episode of each sub-env
    env = gym.make("InvertedDoublePendulum-v5")
    for e, seed in replayed:
        obs, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(obs, e.observations[0])
        for t, action in enumerate(e.actions):
            obs, reward, terminated, truncated, _ = env.step(action)
            np.testing.assert_array_equal(obs, e.observations[t + 1])
            assert reward == e.rewards[t] and terminated == e.terminations[t]


def test_cards_list_and_fields():
    """Every card is complete; the quick families are "offline-rl generated" with reference scores (the D4RL-style
    MuJoCo families are checked in test_data_mujoco.py)."""
    cards = list_cards()
    assert QUICK_CARDS <= {c["name"] for c in cards}
    for c in cards:
        for key in ("name", "env_id", "level", "description", "label", "steps", "seed", "behaviour"):
            assert c[key] not in (None, ""), (c["name"], key)
        assert c["label"].startswith(LABEL_GENERATED) and "D4RL" not in c["label"].replace("D4RL-style", "")
        assert c["dataset_id"] == f"offline-rl/{c['family']}/{c['level']}-v{c['version']}"
        if c["name"] in QUICK_CARDS:
            assert c["label"] == LABEL_GENERATED and c["ref_min_score"] < c["ref_max_score"]


def test_card_file_errors(tmp_path):
    (tmp_path / "bad.toml").write_text('[family]\nname = "x"\nenv_id = "Pendulum-v1"\n\n[x-medium]\nlevel = "m"\n')
    with pytest.raises(DatasetError, match="bad.toml: card 'x-medium' has no key 'description'"):
        load_cards(tmp_path)


def test_unknown_sources_list_the_cards():
    with pytest.raises(DatasetError, match="unknown dataset 'nope'.*idp-expert.*pendulum-medium"):
        load_dataset("nope")
    with pytest.raises(DatasetError, match="cannot generate 'nope'"):
        generate_dataset("nope")
    with pytest.raises(DatasetError, match="needs a policy, or level='random'"):
        generate_dataset("Pendulum-v1")


def test_quick_cards_load_from_cache_and_medium_is_below_expert(home, monkeypatch):
    medium, expert = (load_dataset(f"pendulum-{level}") for level in ("medium", "expert"))
    card = get_card("pendulum-medium")
    assert medium.label == LABEL_GENERATED and medium.family == "pendulum" and medium.source == "pendulum-medium"
    assert medium.env_id == "Pendulum-v1" and medium.ref_min_score == card.ref_min_score
    assert len(medium) >= card.steps - 300 and medium.n_episodes >= 250
    score_m, score_e = (d.summary()["normalized_return_mean"] for d in (medium, expert))
    assert 30 <= score_m <= 60, score_m
    assert score_e >= 95 and score_m < score_e - 30
    assert (home / "minari" / "offline-rl" / "pendulum" / "medium-v0" / "data").is_dir()

    def fail(*args, **kwargs):
        raise AssertionError("the cached dataset must not be generated again")

    monkeypatch.setattr(generate_module, "generate_dataset", fail)
    assert len(load_dataset("pendulum-medium")) == len(medium)

    # A cache made from another recipe (the card file was edited since) is generated again, in place.
    meta_file = home / "minari" / card.dataset_id / "data" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["offline_rl"]["recipe"][3][0][1] = 123  # another number of steps
    meta_file.write_text(json.dumps(meta))
    calls = []
    monkeypatch.setattr(generate_module, "generate_dataset", lambda *a, **kw: calls.append((a, kw)))
    load_dataset("pendulum-medium")
    assert calls == [(("pendulum-medium",), {"overwrite": True})]


def test_idp_behaviours_medium_is_below_expert(tmp_path):
    """The idp cards' behaviours on a small budget (the full cards take a few seconds each)."""
    medium, expert = (load_dataset(generate_dataset(f"idp-{level}", steps=4000, out=tmp_path))
                      for level in ("medium", "expert"))
    assert medium.env_id == "InvertedDoublePendulum-v5" and medium.terminals.any() and not expert.terminals.any()
    score_m, score_e = (d.summary()["normalized_return_mean"] for d in (medium, expert))
    assert 15 <= score_m <= 85, score_m
    assert score_e >= 99


@pytest.mark.parametrize(("family", "episodes"), [("pendulum", None), ("idp", 10)])
def test_reference_scores_in_cards_are_reproducible(family, episodes):
    """Pendulum: the card's full protocol (50 episodes). idp: its first 10 episodes (returns vary little)."""
    card = get_card(f"{family}-medium")
    random_mean, expert_mean = measure_reference_scores(card, episodes)
    scale = card.ref_max_score - card.ref_min_score
    assert abs(random_mean - card.ref_min_score) < 0.01 * scale
    assert abs(expert_mean - card.ref_max_score) < 0.01 * scale


def test_a_card_can_set_a_controllers_own_options():
    """`energy_gain` reaches the swing-up controller: a negative gain brakes instead of pumping, so the pendulum
    hangs (return near the random level) while the default gain swings it up; unknown options are refused."""
    import numpy as np

    from offline_rl.envs.controllers import PendulumSwingUp, describe_behaviour, make_policy
    from offline_rl.envs.rollout import run_episodes

    brake = make_policy({"policy": "pendulum-swingup", "energy_gain": -10.0}, "Pendulum-v1", seed=0)
    assert isinstance(brake, PendulumSwingUp) and brake.energy_gain == -10.0
    obs = np.array([[1.0, 0.0, 1.5], [-1.0, 0.0, 2.0]], dtype=np.float32)  # at the bottom: pump vs brake
    pump = make_policy({"policy": "pendulum-swingup"}, "Pendulum-v1", seed=0)
    np.testing.assert_array_equal(brake(obs)[1], -pump(obs)[1])
    braked = np.mean(run_episodes("Pendulum-v1", brake, 4, 1000)[0])
    swung = np.mean(run_episodes("Pendulum-v1", pump, 4, 1000)[0])
    assert swung > -300 and braked < -700
    assert describe_behaviour({"policy": "pendulum-swingup", "energy_gain": -10.0}) == \
        "pendulum-swingup (energy_gain -10.0)"
    with pytest.raises(DatasetError, match="unknown keys \\['gain'\\]"):
        make_policy({"policy": "pendulum-swingup", "gain": 1.0}, "Pendulum-v1", seed=0)
