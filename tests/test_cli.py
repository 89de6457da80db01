"""The `offline-rl` CLI end to end, in real subprocesses: exit codes, JSON output, a plug-in algorithm."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "offline_rl.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=600)


PROGRESS = ("generating ", "[generate ")
"""Lines a command prints while it works (a dataset generated on first use), before any error."""


def assert_user_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip() and not ln.startswith(PROGRESS)]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_help_documents_every_command():
    out = cli("--help").stdout
    for command in ("datasets", "algos", "train", "evaluate", "benchmark", "leaderboard", "seq"):
        assert command in out
    train_help = cli("train", "--help").stdout
    for option in ("--algo", "--dataset", "--steps", "--seed", "--device", "--eval-every", "--eval-episodes",
                   "--out", "--resume", "--set"):
        assert option in train_help


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    assert_user_error(cli("train", "--algo", "nope", "--dataset", "pendulum-medium", "--out", str(tmp_path)),
                      "unknown algorithm 'nope'")
    assert_user_error(cli("train", "--algo", "bc", "--dataset", "no-such-dataset", "--out", str(tmp_path)),
                      "no-such-dataset")
    assert_user_error(cli("train", "--algo", "bc", "--dataset", "pendulum-medium", "--steps", "-5"), "--steps")
    assert_user_error(cli("train", "--algo", "td3_bc", "--dataset", "pendulum-medium", "--steps", "10",
                          "--set", "alhpa=3", "--out", str(tmp_path)), "alhpa")
    assert_user_error(cli("leaderboard", str(tmp_path / "missing")), "missing")
    assert_user_error(cli("evaluate", str(tmp_path)), "not a run folder")
    assert_user_error(cli("benchmark", str(tmp_path / "nosuite.toml")), "nosuite")
    bad = tmp_path / "bad.hdf5"
    bad.write_text("not hdf5")
    assert_user_error(cli("datasets", "info", str(bad)), "bad.hdf5")


def test_datasets_info_json_goes_to_stdout_alone():
    proc = cli("datasets", "info", "pendulum-medium", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    for key in ("source", "env_id", "n_transitions", "n_episodes", "obs_dim", "act_dim", "return_mean",
                "return_std", "ref_min_score", "ref_max_score", "normalized_return_mean"):
        assert key in info
    assert info["env_id"] == "Pendulum-v1" and info["obs_dim"] == 3


PLUGIN = '''
"""A third-party algorithm living outside offline_rl: BC with a different name and a mean-absolute-error loss."""
from dataclasses import dataclass

from offline_rl.algos.bc import BC, BCConfig


@dataclass
class L1Config(BCConfig):
    scale: float = 1.0


class L1BC(BC):
    Config = L1Config

    def update(self, batch, step):
        pi = self.actor(self.normalizer(batch.observations))
        loss = self.config.scale * (pi - batch.actions).abs().mean()
        self.optimize("actor", loss)
        return {"l1_loss": loss.detach()}
'''


def test_plugin_algorithm_trains_from_the_cli(tmp_path):
    """A package outside offline_rl registers through the `offline_rl.algos` entry-point group."""
    from helpers import install_plugin

    env = install_plugin(tmp_path, "l1bc_plugin", PLUGIN, "l1_bc", "L1BC")

    assert "l1_bc" in cli("algos", "list", env=env).stdout.split()
    out = tmp_path / "run"
    proc = cli("train", "--algo", "l1_bc", "--dataset", "pendulum-medium", "--steps", "300", "--eval-every", "300",
               "--eval-episodes", "2", "--out", str(out), "--set", "scale=2", "--device", "cpu", env=env)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "result.json").read_text())
    assert record["algo"] == "l1_bc" and record["status"] == "completed" and record["config"]["scale"] == 2.0
    proc = cli("evaluate", str(out), "--episodes", "2", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["returns"]) == 2


def test_leaderboard_formats_from_a_real_run(tmp_path):
    run = tmp_path / "results" / "bc" / "pendulum-medium" / "seed0"
    proc = cli("train", "--algo", "bc", "--dataset", "pendulum-medium", "--steps", "200", "--eval-every", "100",
               "--eval-episodes", "2", "--out", str(run), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    for fmt in ("md", "csv", "html"):
        out = tmp_path / f"board.{fmt}"
        proc = cli("leaderboard", str(tmp_path / "results"), "--format", fmt, "--out", str(out))
        assert proc.returncode == 0, proc.stderr
        text = out.read_text()
        assert "bc" in text and "pendulum-medium" in text
    assert "data:image/png;base64," in (tmp_path / "board.html").read_text()
    proc = cli("leaderboard", str(tmp_path / "results"))
    assert proc.returncode == 0 and "pendulum-medium" in proc.stdout
