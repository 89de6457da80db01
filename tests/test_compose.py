"""`offline-rl compose` (GPC at test time) on real AWM runs, and the `reproduce gpc` entry."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import cli

from offline_rl import compose_policies
from offline_rl.reproduce import run_entry
from offline_rl.training import load_run, run_experiment

TINY_AWM = {"hidden": [16, 16], "flow_hidden": [16, 16], "flow_steps": 4}


def test_compose_evaluates_parents_and_composition(tmp_path):
    runs = [tmp_path / f"awm{k}" for k in range(2)]
    for k, run in enumerate(runs):
        run_experiment("awm", "pendulum-medium", k, 10, 10, 1, run, progress=False, overrides=TINY_AWM)
    parents = [load_run(run)[0].policy() for run in runs]
    obs = torch.randn(64, 3)
    with torch.no_grad():  # weight 1 on a parent is that parent; in between, the velocities mix
        assert torch.equal(compose_policies(parents, [1.0, 0.0])(obs), parents[0](obs))
        assert torch.equal(compose_policies(parents, [0.0, 1.0])(obs), parents[1](obs))
        x, t = torch.randn(64, 1), torch.rand(64)
        mixed = compose_policies(parents, [0.3, 0.7]).velocity(x, t, obs)
        assert torch.allclose(mixed, 0.3 * parents[0].velocity(x, t, obs) + 0.7 * parents[1].velocity(x, t, obs))

    proc = cli("compose", *map(str, runs), "--search", "--grid-step", "0.5", "--episodes", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [p["algo"] for p in report["parents"]] == ["awm", "awm"] and report["search_seed"] == 1000
    table = {tuple(r["weights"]): r["mean_return"] for r in report["search"]}
    assert list(table) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    assert tuple(report["composition"]["weights"]) == max(table, key=table.get)
    assert report["composition"]["normalized_score"] is not None

    run_experiment("td3_bc", "pendulum-medium", 0, 10, 10, 1, tmp_path / "td3", progress=False,
                   overrides={"actor_hidden": [16, 16], "critic_hidden": [16, 16]})
    proc = cli("compose", str(runs[0]), str(tmp_path / "td3"), "--episodes", "1")
    assert proc.returncode == 2 and "not a flow or diffusion policy" in proc.stderr


def test_reproduce_gpc_passes_every_row():
    report = run_entry("gpc", quick=True)
    assert len(report["rows"]) == 14 and all(r["passed"] for r in report["rows"]), report


@pytest.mark.slow
def test_reproduce_awm_passes_every_row():
    report = run_entry("awm", quick=True)
    assert len(report["rows"]) == 3 and all(r["passed"] for r in report["rows"]), report
