"""The behaviour-policy zoo: every shipped checkpoint loads without SAC and its rollout return falls in the
manifest's measured range; the loader's API; level selection and the manifest writer on synthetic snapshots."""

from __future__ import annotations

import argparse
import tomllib

import numpy as np
import pytest
import torch

from offline_rl import zoo
from offline_rl.envs.rollout import run_episodes
from offline_rl.errors import UserError
from offline_rl.nets import TanhGaussianActor
from offline_rl.training.online import snapshot_path
from offline_rl.zoo import train as zoo_train

SHIPPED = [(env, row) for env in zoo.envs() for row in zoo.checkpoints(env)]


def _margin(row: dict, prefix: str) -> tuple[float, float]:
    """The measured [min, max] over the manifest's episodes, widened by 3 std + 5% of |mean| + 10 (one rollout on
    another seed may fall outside the 20 measured ones; MuJoCo on another platform may round differently)."""
    mean, std = row[f"{prefix}return_mean"], row[f"{prefix}return_std"]
    pad = 3 * std + 0.05 * abs(mean) + 10
    return row[f"{prefix}return_min"] - pad, row[f"{prefix}return_max"] + pad


@pytest.mark.skipif(not SHIPPED, reason="no zoo weights produced yet (run python -m offline_rl.zoo.train)")
@pytest.mark.parametrize("env_id,row", SHIPPED, ids=[f"{e}-{r['index']}-{r['step']}" for e, r in SHIPPED])
def test_shipped_checkpoint_rollout_within_manifest_range(env_id, row):
    """One rollout of the sampled-action policy (the one levels are chosen on) on a seed outside the measured
    ones, and for the named levels also one deterministic rollout."""
    policy = zoo.load_policy(env_id, row["index"], deterministic=False, generator=torch.Generator().manual_seed(7))
    assert isinstance(policy, torch.nn.Module)
    returns, _ = run_episodes(env_id, policy, 1, seed=123)
    lo, hi = _margin(row, "")
    assert lo <= returns[0] <= hi, (returns[0], lo, hi)
    if row["level"]:
        returns, _ = run_episodes(env_id, zoo.load_policy(env_id, row["level"]), 1, seed=124)
        lo, hi = _margin(row, "deterministic_")
        assert lo <= returns[0] <= hi, (returns[0], lo, hi)


@pytest.mark.skipif(not SHIPPED, reason="no zoo weights produced yet")
def test_manifest_is_consistent():
    for env_id, entry in zoo.manifest().items():
        rows = zoo.checkpoints(env_id)
        assert [r["index"] for r in rows] == list(range(len(rows)))
        assert rows[0]["step"] == 0 and rows[-1]["step"] == entry["trained_steps"] <= entry["steps"]
        assert entry["levels"] == {"random": 0, "medium": entry["levels"]["medium"], "expert": len(rows) - 1}
        assert entry["command"].startswith("python -m offline_rl.zoo.train --env " + env_id)
        for r in rows:
            path = zoo.WEIGHTS_DIR / r["file"]
            assert path.exists() and path.stat().st_size < 1_000_000
            state = torch.load(path, weights_only=True)
            assert all(v.dtype == torch.float32 for v in state.values())
            assert not any(k.startswith(("critic", "log_alpha")) for k in state)  # the actor only
        medium, expert = rows[entry["levels"]["medium"]], rows[-1]
        if entry["medium_in_range"]:
            assert expert["return_mean"] / 3 - 1e-6 <= medium["return_mean"] <= expert["return_mean"] / 2 + 1e-6


def _fake_run(tmp_path, returns: dict[int, float]) -> tuple[argparse.Namespace, dict]:
    """Snapshots of random actors at the given steps, with made-up measurements."""
    args = zoo_train.parse_args(["--env", "Hopper-v5", "--steps", str(max(returns)), "--snapshot-every", "5",
                                 "--ship-every", "10", "--run-dir", str(tmp_path / "run")])
    measured = {}
    for step, ret in returns.items():
        actor = TanhGaussianActor(11, 3, (-1.0,) * 3, (1.0,) * 3, (16, 16))
        path = snapshot_path(tmp_path / "run", step)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(actor.state_dict(), path)
        measured[step] = {f"{p}{k}": v for p in ("", "deterministic_") for k, v in
                          (("return_mean", ret), ("return_std", 1.0), ("return_min", ret - 1), ("return_max", ret + 1),
                           ("length_mean", 100.0))}
    return args, measured


def test_level_selection_manifest_and_loader(tmp_path, monkeypatch):
    returns = {0: 10.0, 5: 50.0, 10: 200.0, 15: 380.0, 20: 700.0, 25: 900.0, 30: 1000.0}
    args, measured = _fake_run(tmp_path, returns)
    entry = zoo_train._select(args, measured, {"train_wall_time_s": 1.0, "command": "python -m ... --env X"})
    # expert = 1000 → medium range [333, 500], target 416.7 → step 15 (380); shipped: 0, 10 (ship-every), 15, 30
    assert [r["step"] for r in entry["checkpoints"]] == [0, 10, 15, 30]
    assert entry["levels"] == {"random": 0, "medium": 2, "expert": 3} and entry["medium_in_range"]

    monkeypatch.setattr(zoo_train, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(zoo_train, "MANIFEST", tmp_path / "manifest.toml")
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", tmp_path / "weights")
    monkeypatch.setattr(zoo, "MANIFEST", tmp_path / "manifest.toml")
    zoo_train._ship("Hopper-v5", tmp_path / "run", entry)
    parsed = tomllib.loads((tmp_path / "manifest.toml").read_text())
    assert parsed["Hopper-v5"]["levels"] == entry["levels"]
    assert parsed["Hopper-v5"]["checkpoints"][2]["return_mean"] == 380.0
    assert sorted(p.name for p in (tmp_path / "weights" / "Hopper-v5").iterdir()) == [
        "step_00000000.pt", "step_00000010.pt", "step_00000015.pt", "step_00000030.pt"]

    medium = zoo.load_policy("Hopper-v5", "medium")
    same = zoo.load_policy("Hopper-v5", 2)
    obs = np.random.default_rng(0).normal(size=(5, 11)).astype(np.float32)
    out = medium(obs)
    assert isinstance(out, np.ndarray) and out.shape == (5, 3) and np.all(np.abs(out) <= 1)
    np.testing.assert_array_equal(out, same(obs))
    np.testing.assert_allclose(medium(obs[0]), out[0], rtol=1e-5, atol=1e-7)  # a single observation
    ref = TanhGaussianActor(11, 3, (-1.0,) * 3, (1.0,) * 3, (16, 16))
    ref.load_state_dict(torch.load(snapshot_path(tmp_path / "run", 15)))
    torch.testing.assert_close(medium(torch.as_tensor(obs)), ref(torch.as_tensor(obs)))
    assert zoo.load_policy("Hopper-v5", -1).info["step"] == 30
    sampled = zoo.load_policy("Hopper-v5", "expert", deterministic=False, generator=torch.Generator().manual_seed(0))
    assert not np.allclose(sampled(obs), sampled(obs))
    with pytest.raises(UserError, match="no level 'hard'"):
        zoo.load_policy("Hopper-v5", "hard")
    with pytest.raises(UserError, match="out of range"):
        zoo.load_policy("Hopper-v5", 4)
    with pytest.raises(UserError, match="no zoo policies for 'Nope-v0'"):
        zoo.load_policy("Nope-v0", "expert")


def test_medium_falls_back_to_nearest_when_none_in_range(tmp_path):
    args, measured = _fake_run(tmp_path, {0: 10.0, 5: 100.0, 10: 900.0, 15: 1000.0})
    entry = zoo_train._select(args, measured, {"command": "cmd"})
    assert not entry["medium_in_range"]
    assert entry["checkpoints"][entry["levels"]["medium"]]["step"] == 5  # |100 − 416.7| < |900 − 416.7|
