"""The D4RL-style MuJoCo families (hopper, halfcheetah, walker2d) rolled out from the behaviour-policy zoo: short real
runs of the generator, the parts of medium-replay and medium-expert, reference scores, and the errors for envs
without zoo weights. Written against whatever zoo weights ship, so they hold after the zoo is retrained (except
the reference-score check, which asks for `offline-rl datasets measure-refs hopper --write` after a retrain)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest

from offline_rl import zoo
from offline_rl.data import generate as generate_module
from offline_rl.data import generate_dataset, get_card, list_cards, load_dataset
from offline_rl.data.cards import LABEL_D4RL_STYLE, _set_family_keys, load_cards, update_reference_scores
from offline_rl.data.generate import MIX_SEED_STRIDE, collect_episodes
from offline_rl.envs.controllers import expand_behaviour, make_policy, zoo_checkpoint
from offline_rl.errors import DatasetError

ENV = "Hopper-v5"
FAMILIES = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
LEVELS = ("random", "medium", "medium-replay", "medium-expert", "expert")
NUM_ENVS = 4
ROOT = Path(__file__).resolve().parents[1]

needs_hopper_zoo = pytest.mark.skipif(ENV not in zoo.envs(), reason="no Hopper-v5 zoo weights shipped")


def read(path: Path) -> tuple[list, dict]:
    """(episodes, metadata) of a generated Minari dataset."""
    ds = minari.MinariDataset(path / "data")
    return list(ds.iterate_episodes()), ds.storage.metadata


def first_episode_seeds(path: Path, n: int) -> list[int | None]:
    return [m.get("seed") for m in minari.MinariDataset(path / "data").storage.get_episode_metadata(range(n))]


def assert_well_formed(episodes: list) -> None:
    """Minari alignment (N + 1 observations) and exactly one end flag, on the last step."""
    for e in episodes:
        assert len(e.observations) == len(e.actions) + 1 == len(e.rewards) + 1
        flags = e.terminations | e.truncations
        assert flags[-1] and not flags[:-1].any()


def assert_part_policy(episodes: list, seeds: list[int | None], behaviour: dict, part_seed: int) -> None:
    """The part's episodes start from sub-env resets seeded part_seed + i, and their first actions are exactly
    the first batched call of `behaviour`'s policy seeded `part_seed` (so: that checkpoint, sampled actions)."""
    env = gym.make(ENV)
    obs0 = np.stack([env.reset(seed=part_seed + i)[0] for i in range(NUM_ENVS)])
    actions0 = make_policy(behaviour, ENV, part_seed)(obs0)
    starts = [(e, s - part_seed) for e, s in zip(episodes, seeds, strict=True) if s is not None]
    assert starts and all(0 <= i < NUM_ENVS for _, i in starts)
    for e, i in starts:
        np.testing.assert_array_equal(e.observations[0], obs0[i])
        np.testing.assert_array_equal(e.actions[0], actions0[i])


def split_parts(episodes: list, meta: dict) -> list[list]:
    """The episodes of each part, in order, from the per-part episode counts in the metadata."""
    counts = [p["episodes"] for p in meta["offline_rl"]["parts"]]
    bounds = np.cumsum([0, *counts])
    assert bounds[-1] == len(episodes)
    return [episodes[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def test_mujoco_cards_are_listed_with_honest_labels():
    cards = {c["name"]: c for c in list_cards()}
    for family, env_id in FAMILIES.items():
        for level in LEVELS:
            card = cards[f"{family}-{level}"]
            assert card["env_id"] == env_id and card["level"] == level and card["steps"] == 1_000_000
            assert card["label"] == LABEL_D4RL_STYLE and "D4RL-style" in card["label"]
            if card["ref_min_score"] is not None:
                assert card["ref_min_score"] < card["ref_max_score"]
    assert cards["hopper-medium"]["behaviour"] == {"policy": "zoo", "level": "medium"}
    assert cards["hopper-medium-replay"]["behaviour"] == {"policy": "zoo", "checkpoints": "up-to-medium"}
    assert cards["hopper-medium-expert"]["behaviour"] == {"mix": ["hopper-medium", "hopper-expert"]}


@needs_hopper_zoo
def test_hopper_medium_short_run_counts_flags_refs_and_determinism(tmp_path):
    kwargs = {"steps": 2000, "seed": 0, "num_envs": NUM_ENVS}
    path = generate_dataset("hopper-medium", out=tmp_path / "a", **kwargs)
    assert path == tmp_path / "a" / "offline-rl/hopper/medium-seed0-steps2000-v0"
    episodes, meta = read(path)
    total = sum(len(e.actions) for e in episodes)
    assert 2000 <= total < 2000 + NUM_ENVS * 1000 and meta["total_steps"] == total
    assert_well_formed(episodes)
    assert any(e.terminations[-1] for e in episodes)  # the medium hopper falls
    card = get_card("hopper-medium")
    assert card.ref_min_score is not None and card.ref_max_score is not None
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (card.ref_min_score, card.ref_max_score)
    ours = meta["offline_rl"]
    assert ours["label"] == LABEL_D4RL_STYLE and ours["env_id"] == ENV and ours["steps"] == 2000
    medium = zoo.manifest()[ENV]["levels"]["medium"]
    [part] = ours["parts"]
    assert part["zoo_checkpoint"]["index"] == medium and part["transitions"] == total
    assert part["zoo_checkpoint"]["step"] == zoo.checkpoints(ENV)[medium]["step"]
    assert_part_policy(episodes, first_episode_seeds(path, len(episodes)), card.behaviour, 0)

    again, _ = read(generate_dataset("hopper-medium", out=tmp_path / "b", **kwargs))
    assert len(again) == len(episodes)
    for x, y in zip(episodes, again, strict=True):
        for key in ("observations", "actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(getattr(x, key), getattr(y, key))
    other, _ = read(generate_dataset("hopper-medium", out=tmp_path / "c", **{**kwargs, "seed": 1}))
    assert not np.array_equal(other[0].observations, episodes[0].observations)
    assert not np.array_equal(other[0].actions[:5], episodes[0].actions[:5])

    data = load_dataset(path)
    assert data.label == LABEL_D4RL_STYLE and data.ref_max_score == card.ref_max_score
    assert data.summary()["normalized_return_mean"] is not None


@needs_hopper_zoo
def test_medium_replay_rolls_out_the_ordered_checkpoints_in_equal_shares(tmp_path):
    medium = zoo.manifest()[ENV]["levels"]["medium"]
    share = 300
    path = generate_dataset("hopper-medium-replay", steps=share * medium, seed=5, out=tmp_path,
                            num_envs=NUM_ENVS)
    episodes, meta = read(path)
    assert_well_formed(episodes)
    parts = meta["offline_rl"]["parts"]
    # SAC's uniform warm-up, then the checkpoints after it and before medium, in training order
    assert [p["behaviour"] for p in parts] == [{"policy": "random"}] + [
        {"policy": "zoo", "checkpoint": k} for k in range(1, medium)]
    assert [p["zoo_checkpoint"]["step"] for p in parts[1:]] == [r["step"] for r in zoo.checkpoints(ENV)[1:medium]]
    assert [p["steps"] for p in parts] == [share] * medium
    assert [p["seed"] for p in parts] == [5 + k * MIX_SEED_STRIDE for k in range(medium)]
    seeds = first_episode_seeds(path, len(episodes))
    bounds = np.cumsum([0, *(p["episodes"] for p in parts)])
    for k, (part, eps) in enumerate(zip(parts, split_parts(episodes, meta), strict=True)):
        assert share <= part["transitions"] == sum(len(e.actions) for e in eps)
        assert_part_policy(eps, seeds[bounds[k]:bounds[k + 1]], part["behaviour"], part["seed"])


@needs_hopper_zoo
def test_medium_expert_is_half_medium_then_half_expert(tmp_path):
    path = generate_dataset("hopper-medium-expert", steps=2000, seed=0, out=tmp_path / "me", num_envs=NUM_ENVS)
    episodes, meta = read(path)
    parts = meta["offline_rl"]["parts"]
    assert [p["behaviour"] for p in parts] == [get_card(f"hopper-{lvl}").behaviour for lvl in ("medium", "expert")]
    assert [(p["steps"], p["seed"]) for p in parts] == [(1000, 0), (1000, MIX_SEED_STRIDE)]
    medium_eps, expert_eps = split_parts(episodes, meta)
    # The medium half is exactly hopper-medium with half the steps, as D4RL concatenates medium and expert.
    alone, _ = read(generate_dataset("hopper-medium", steps=1000, seed=0, out=tmp_path / "m", num_envs=NUM_ENVS))
    assert len(alone) == len(medium_eps)
    for x, y in zip(alone, medium_eps, strict=True):
        np.testing.assert_array_equal(x.actions, y.actions)
    seeds = first_episode_seeds(path, len(episodes))
    assert_part_policy(expert_eps, seeds[len(medium_eps):], parts[1]["behaviour"], MIX_SEED_STRIDE)


@needs_hopper_zoo
def test_time_limit_truncations_keep_the_true_final_observation():
    policy = make_policy({"policy": "zoo", "level": "medium"}, ENV, 0)
    episodes = collect_episodes(ENV, policy, 300, 3, num_envs=2, max_episode_steps=25)
    truncated = [e for e in episodes if e["truncations"][-1]]
    assert truncated and all(len(e["actions"]) == 25 and not e["terminations"].any() for e in truncated)
    first = next(e for e in episodes if e["seed"] == 3)
    env = gym.make(ENV, max_episode_steps=25)
    obs, _ = env.reset(seed=3)
    for action, stored in zip(first["actions"], first["observations"][1:], strict=True):
        obs, *_ = env.step(action)
        np.testing.assert_array_equal(obs, stored)  # the last one too: not the auto-reset observation


@needs_hopper_zoo
def test_zoo_weights_are_part_of_the_cache_recipe():
    """A cached zoo dataset is generated again once the zoo's weights change (e.g. after a retrain)."""
    plan = generate_module._plan("hopper-medium-expert", None, None, None, None)
    digests = [zoo_checkpoint(get_card(f"hopper-{lvl}").behaviour, ENV)["sha256"] for lvl in ("medium", "expert")]
    assert generate_module._recipe(plan, NUM_ENVS, generate_module._zoo_checkpoints(plan))[-1] == digests
    random_plan = generate_module._plan("hopper-random", None, None, None, None)
    random_recipe = generate_module._recipe(random_plan, NUM_ENVS, generate_module._zoo_checkpoints(random_plan))
    assert len(random_recipe) == 4  # same recipe shape as the quick families


def test_zoo_behaviour_errors(monkeypatch):
    with pytest.raises(DatasetError, match="Hopper-v5 has no level 'nope'|the zoo has no level 'nope'"):
        make_policy({"policy": "zoo", "level": "nope"}, ENV, 0)
    with pytest.raises(DatasetError, match="no level 'nope'"):
        expand_behaviour({"policy": "zoo", "checkpoints": "up-to-nope"}, ENV)
    with pytest.raises(DatasetError, match="'checkpoints' must be \"up-to-<level>\""):
        expand_behaviour({"policy": "zoo", "checkpoints": "all"}, ENV)
    with pytest.raises(DatasetError, match="exactly one of 'level'"):
        make_policy({"policy": "zoo"}, ENV, 0)
    with pytest.raises(DatasetError, match="unknown keys \\['checkpoints'\\].*expand_behaviour"):
        make_policy({"policy": "zoo", "checkpoints": "up-to-medium"}, ENV, 0)
    monkeypatch.setattr(zoo, "MANIFEST", Path("/nonexistent/manifest.toml"))  # as if no weights were shipped
    for name in ("hopper-medium", "hopper-medium-replay", "hopper-medium-expert"):
        with pytest.raises(DatasetError, match="no behaviour-policy zoo weights are shipped for Hopper-v5"):
            generate_dataset(name, steps=100)


def test_envs_without_zoo_weights_fail_clearly_but_random_works(tmp_path):
    missing = [f for f, env_id in FAMILIES.items() if env_id not in zoo.envs()]
    for family in missing:
        for level in ("medium", "medium-replay", "medium-expert", "expert"):
            with pytest.raises(DatasetError, match=f"no behaviour-policy zoo weights are shipped for {FAMILIES[family]}"):
                generate_dataset(f"{family}-{level}", steps=100, out=tmp_path)
    path = generate_dataset("walker2d-random", steps=200, out=tmp_path, num_envs=2)  # needs no zoo
    episodes, meta = read(path)
    assert_well_formed(episodes)
    assert meta["offline_rl"]["label"] == LABEL_D4RL_STYLE and meta["offline_rl"]["parts"][0]["transitions"] >= 200


def run_cli(*args: str, no_zoo: bool = False, cards: Path | None = None) -> subprocess.CompletedProcess:
    """`offline-rl *args` in a subprocess, optionally as if no zoo weights were shipped or with another card folder."""
    code = ["import sys, pathlib"]
    if no_zoo:
        code.append("import offline_rl.zoo as z; z.MANIFEST = pathlib.Path('/nonexistent/manifest.toml')")
    if cards is not None:
        code.append(f"import offline_rl.data.cards as c; c.resource_dir = lambda kind: pathlib.Path({str(cards)!r})")
    code.append("from offline_rl.cli import main; main(sys.argv[1:])")
    return subprocess.run([sys.executable, "-c", "; ".join(code), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def assert_exit_2(proc: subprocess.CompletedProcess, needle: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert needle in lines[0], lines[0]


def test_cli_lists_cards_and_exits_2_on_missing_zoo_weights_or_unknown_level(tmp_path):
    listed = run_cli("datasets", "list")
    assert listed.returncode == 0 and "walker2d-medium-replay" in listed.stdout and LABEL_D4RL_STYLE in listed.stdout
    out = ["--steps", "100", "--out", str(tmp_path / "out")]
    assert_exit_2(run_cli("datasets", "generate", "hopper-medium", *out, no_zoo=True),
                  "no behaviour-policy zoo weights are shipped for Hopper-v5")
    (tmp_path / "bad.toml").write_text(
        '[family]\nname = "bad"\nenv_id = "Hopper-v5"\nlabel = "x"\n\n[bad-medium]\nlevel = "medium"\n'
        'description = "d"\nsteps = 100\nseed = 0\nbehaviour = { policy = "zoo", level = "nope" }\n')
    needle = "no level 'nope'" if ENV in zoo.envs() else "no behaviour-policy zoo weights"
    assert_exit_2(run_cli("datasets", "generate", "bad-medium", *out, cards=tmp_path), needle)


@needs_hopper_zoo
def test_hopper_reference_scores_are_current_and_written_into_the_card(tmp_path):
    """Re-measures the shipped card's protocol (20 episodes each; fails after a zoo retrain until
    `offline-rl datasets measure-refs hopper --write` is rerun) through the writer, on a copy of the card file."""
    card = get_card("hopper-medium")
    copy = tmp_path / "hopper.toml"
    copy.write_text(Path(card.file).read_text())
    result = update_reference_scores("hopper", write=True, directory=tmp_path)
    scale = card.ref_max_score - card.ref_min_score
    assert abs(result["ref_min_score"] - card.ref_min_score) < 0.01 * scale
    assert abs(result["ref_max_score"] - card.ref_max_score) < 0.01 * scale
    # The provenance names the expert checkpoint (shipped with the repo); the library versions before it differ
    # between machines (a torch build label, say), so only the measured numbers and the checkpoint are compared.
    expert = result["ref_measured"].partition("; expert: ")[2]
    assert expert and expert == card.ref_measured.partition("; expert: ")[2] and "sha256" in expert
    written = load_cards(tmp_path)["hopper-medium"]
    assert (written.ref_min_score, written.ref_max_score) == (result["ref_min_score"], result["ref_max_score"])
    assert written.behaviour == card.behaviour and written.description == card.description


def test_writing_reference_scores_into_a_card_without_them():
    text = (ROOT / "datasets" / "walker2d.toml").read_text()
    values = {"ref_min_score": -1.5, "ref_max_score": 4321.25, "ref_episodes": 20, "ref_measured": 'x "y"'}
    updated = _set_family_keys(text, values)
    before, after = tomllib.loads(text), tomllib.loads(updated)
    assert {k: after["family"][k] for k in values} == values
    assert {k: v for k, v in after.items() if k != "family"} == {k: v for k, v in before.items() if k != "family"}
    assert updated.count("ref_measured") == text.count("ref_measured")  # replaced in place, not added twice
