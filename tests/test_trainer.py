"""The shared trainer: determinism, resume after SIGKILL, divergence handling, result record, evaluation."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import pendulum_dataset

from offline_rl import algos
from offline_rl.algos.base import Algorithm, register
from offline_rl.algos.bc import BC
from offline_rl.evaluation import evaluate
from offline_rl.training import seed_everything, train
from offline_rl.training.checkpoint import load_checkpoint

SMALL = {"actor_hidden": [64, 64], "critic_hidden": [64, 64]}
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def data():
    return pendulum_dataset()


def run(data, out, seed=3, steps=200, **kw):
    seed_everything(seed)
    algo = algos.make("td3_bc", data.spec, dict(SMALL))
    result = train(algo, data, steps, seed=seed, eval_every=100, eval_episodes=2, out_dir=out, ckpt_every=50,
                   log_every=50, progress=False, **kw)
    return algo, result


def params(algo):
    return torch.cat([p.detach().flatten() for p in algo.state_dict()["modules"].values() if p.is_floating_point()])


def test_same_seed_same_result_on_cpu(data, tmp_path):
    a1, r1 = run(data, tmp_path / "a")
    a2, r2 = run(data, tmp_path / "b")
    assert torch.equal(params(a1), params(a2))
    assert r1.curve == r2.curve
    _, r3 = run(data, tmp_path / "c", seed=4)
    assert r3.curve != r1.curve


def test_result_record_fields(data, tmp_path):
    _, result = run(data, tmp_path)
    record = json.loads((tmp_path / "result.json").read_text())
    for key in ("algo", "dataset", "dataset_source", "seed", "steps", "config", "curve", "final_score", "best_score",
                "final_return", "wall_time_s", "updates_per_s", "device", "version", "status"):
        assert key in record
    assert record["status"] == "completed" and record["algo"] == "td3_bc" and record["steps"] == 200
    assert [p[0] for p in record["curve"]] == [100, 200]
    assert record["final_score"] == record["curve"][-1][1]
    assert record["best_score"] == max(p[1] for p in record["curve"])
    assert record["config"]["alpha"] == 2.5 and record["updates_per_s"] > 0
    assert (tmp_path / "checkpoint.pt").exists() and any((tmp_path / "tb").iterdir())


def test_resume_after_sigkill_matches_uninterrupted(data, tmp_path):
    """Kill a real training subprocess with SIGKILL after its first checkpoint, resume, compare with a clean run."""
    steps = 400
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(TESTS / "helpers.py"), str(killed), str(steps)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoint.pt").exists():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted_at = load_checkpoint(killed / "checkpoint.pt")["step"]
    assert 0 < interrupted_at < steps, "the kill must land mid-run"
    subprocess.run(cmd, env=env, check=True, stderr=subprocess.DEVNULL)  # resume=True inside

    clean, _ = run(data, tmp_path / "clean", steps=steps)
    resumed = load_checkpoint(killed / "checkpoint.pt")
    assert resumed["step"] == steps
    expected = clean.state_dict()
    for key, value in expected["modules"].items():
        assert torch.equal(resumed["algo"]["modules"][key], value), key
    clean_curve = json.loads((tmp_path / "clean" / "result.json").read_text())["curve"]
    assert json.loads((killed / "result.json").read_text())["curve"] == clean_curve


@register("test_nan")
class NaNAfter(BC):
    """A BC whose loss turns NaN at step 120 (to exercise divergence handling)."""

    def update(self, batch, step):
        metrics = super().update(batch, step)
        if step >= 120:
            metrics["actor_loss"] = metrics["actor_loss"] * float("nan")
        return metrics


def test_nan_loss_stops_run_as_diverged_and_keeps_last_good_checkpoint(data, tmp_path):
    seed_everything(0)
    algo = algos.make("test_nan", data.spec, {"hidden": [32, 32]})
    result = train(algo, data, 400, seed=0, eval_every=100, eval_episodes=1, out_dir=tmp_path, ckpt_every=50,
                   log_every=50, progress=False)
    assert result.status == "diverged"
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "diverged" and record["step"] == 150
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["step"] == 100
    assert all(torch.isfinite(v).all() for v in ckpt["algo"]["modules"].values() if v.is_floating_point())


def test_evaluate_is_deterministic_and_normalised():
    class Zero(torch.nn.Module):
        def forward(self, obs):
            return torch.zeros(obs.shape[0], 1)

    r1 = evaluate(Zero(), "Pendulum-v1", episodes=3, seed=5, ref_min_score=-1000.0, ref_max_score=0.0)
    r2 = evaluate(Zero(), "Pendulum-v1", episodes=3, seed=5, ref_min_score=-1000.0, ref_max_score=0.0)
    assert r1.returns == r2.returns and len(r1.returns) == 3 and r1.lengths == [200, 200, 200]
    assert r1.normalized_score == pytest.approx(100 * (r1.mean_return + 1000) / 1000)
    assert evaluate(Zero(), "Pendulum-v1", episodes=2, seed=5).normalized_score is None
    assert not math.isnan(r1.std_return)


def test_algorithm_base_is_abstract():
    with pytest.raises(NotImplementedError):
        Algorithm(pendulum_dataset(1).spec, None).update(None, 1)
