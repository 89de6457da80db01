"""Run integrity: true records, fingerprints, checked resumes, folder locks, file modes, and one error boundary
that turns every everyday mistake into exit code 2 and one line. Real CLI subprocesses, real training."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers import install_plugin
from test_cli import PROGRESS, ROOT, assert_user_error, cli

from offline_rl import algos
from offline_rl.bench import load_suite, run_suite
from offline_rl.data import load_dataset
from offline_rl.errors import ConfigError
from offline_rl.training import train as train_api
from offline_rl.utils.io import atomic_write_json, atomic_write_text, read_json

TINY = ["--dataset", "pendulum-medium", "--steps", "60", "--eval-every", "30", "--eval-episodes", "1",
        "--device", "cpu"]

CRASHER = '''
"""A plug-in whose update fails at a given step, as a real run can (out of memory, a full disk, a bug)."""
from dataclasses import dataclass

from offline_rl.algos.bc import BC, BCConfig


@dataclass
class CrashConfig(BCConfig):
    crash_at: int = 40
    error: str = "RuntimeError"


class CrashBC(BC):
    Config = CrashConfig

    def update(self, batch, step):
        if step == self.config.crash_at:
            raise {"RuntimeError": RuntimeError, "ZeroDivisionError": ZeroDivisionError}[self.config.error](
                f"simulated failure at step {step}")
        return super().update(batch, step)
'''


@pytest.fixture
def crasher_env(tmp_path):
    """PYTHONPATH with a plug-in algorithm `crash_bc` registered through the entry-point group."""
    return install_plugin(tmp_path, "crash_plugin", CRASHER, "crash_bc", "CrashBC")


def train(out: Path, *extra: str, algo: str = "bc", env: dict | None = None) -> subprocess.CompletedProcess:
    return cli("train", "--algo", algo, *TINY, "--out", str(out), *extra, env=env)


def main_in_process(*args: str) -> subprocess.CompletedProcess:
    """The CLI's `main` in this process (the same code path as the console script, without a new interpreter);
    its exit code and its stdout/stderr, as `cli` gives them."""
    import contextlib
    import io

    from offline_rl.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


# ---------------------------------------------------------------------------------------------- true records


def test_a_crash_is_recorded_as_failed_and_retried_by_the_benchmark(tmp_path, crasher_env):
    out = tmp_path / "run"
    proc = train(out, "--set", "crash_at=40", algo="crash_bc", env=crasher_env)
    assert proc.returncode == 1 and "internal error: RuntimeError: simulated failure at step 40" in proc.stderr
    record = read_json(out / "result.json")
    assert record["status"] == "failed" and record["error"] == "RuntimeError: simulated failure at step 40"
    assert record["step"] == 30 and [p[0] for p in record["curve"]] == [30]  # the last sync point before it

    suite = tmp_path / "suite.toml"
    suite.write_text('algos = ["crash_bc"]\ndatasets = ["pendulum-medium"]\nseeds = [0]\nsteps = 60\n'
                     'eval_every = 30\neval_episodes = 1\n[overrides.crash_bc]\ncrash_at = 40\n')
    results = tmp_path / "results"
    first = cli("benchmark", str(suite), "--out", str(results), env=crasher_env)
    assert first.returncode == 1 and "1 run(s) failed" in first.stderr
    run_dir = results / "crash_bc/pendulum-medium/seed0"
    assert read_json(run_dir / "result.json")["status"] == "failed"
    again = cli("benchmark", str(suite), "--out", str(results), env=crasher_env)
    assert "0 already completed (skipped), 1 to run" in again.stderr and again.returncode == 1  # retried, not skipped


def test_an_internal_error_says_how_to_report_it(tmp_path, crasher_env):
    proc = train(tmp_path / "run", "--set", "crash_at=5", "--set", "error=ZeroDivisionError", algo="crash_bc",
                 env=crasher_env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "internal error: ZeroDivisionError" in proc.stderr and "This is a bug in offline-rl" in proc.stderr
    report = proc.stderr.strip().rsplit(" ", 1)[-1]
    assert "ZeroDivisionError: simulated failure at step 5" in Path(report).read_text()


def test_resume_checks_the_folder_against_the_command(tmp_path):
    out = tmp_path / "run"
    assert train(out).returncode == 0
    done = read_json(out / "result.json")
    assert done["status"] == "completed" and len(done["fingerprint"]) == 64
    assert_user_error(train(out), "already holds this run (status completed)", "--resume")

    def again(*args: str, algo: str = "bc", tiny: list[str] = TINY) -> subprocess.CompletedProcess:
        return main_in_process("train", "--algo", algo, *tiny, "--out", str(out), *args)

    assert_user_error(again("--resume", "--set", "lr=0.002"), "holds a different run", "config.lr: 0.0003 -> 0.002")
    assert_user_error(again("--resume", algo="td3_bc"), "algo: bc -> td3_bc")
    assert_user_error(again("--resume", tiny=[a if a != "60" else "30" for a in TINY]), "steps: 60 -> 30")
    assert_user_error(again("--resume", "--eval-episodes", "2"), "eval_episodes: 1 -> 2")
    assert_user_error(again("--resume", tiny=[a if a != "pendulum-medium" else "pendulum-expert" for a in TINY]),
                      "dataset_source: pendulum-medium -> pendulum-expert")
    kept = again("--resume")  # the same finished run: kept as it is
    assert kept.returncode == 0 and read_json(out / "result.json") == done
    assert again("--overwrite", "--set", "lr=0.002").returncode == 0
    assert read_json(out / "result.json")["config"]["lr"] == 0.002
    fresh = main_in_process("train", "--algo", "bc", *TINY, "--out", str(tmp_path / "new"), "--resume")
    assert fresh.returncode == 0 and "no checkpoint to resume; starting fresh" in fresh.stderr


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path):
    """Kill a run after its first checkpoint; `--resume` finishes it with the same curve as a run never stopped."""
    args = ["train", "--algo", "td3_bc", "--dataset", "pendulum-medium", "--steps", "400", "--eval-every", "100",
            "--eval-episodes", "1", "--device", "cpu"]
    whole = cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "offline_rl.cli", *args, "--out", str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "result.json").exists() or read_json(out / "result.json")["status"] != "completed"
    resumed = cli(*args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_json(tmp_path / "whole/result.json"), read_json(out / "result.json")
    assert a["curve"] == b["curve"] and a["fingerprint"] == b["fingerprint"] and b["status"] == "completed"


# --------------------------------------------------------------------------------------------------- locks


def test_a_second_writer_is_refused_while_the_first_runs_and_the_lock_dies_with_it(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "offline_rl.cli", "train", "--algo", "bc", "--dataset", "pendulum-medium",
            "--steps", "1000000", "--eval-every", "1000000", "--eval-episodes", "1", "--device", "cpu",
            "--out", str(out)]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "run.json").exists() and time.time() < deadline:
            time.sleep(0.05)
        second = train(out, "--overwrite")
        assert_user_error(second, "the run folder is in use by pid", str(first.pid))
        assert read_json(out / "run.json")["steps"] == 1000000  # the first writer's record is untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert train(out, "--overwrite").returncode == 0  # the OS released the lock with the process


# ------------------------------------------------------------------------------------------------ file modes


def test_written_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_json(tmp_path / "b.json", {"x": 1})
        assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644
        assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o644
        os.umask(0o027)
        atomic_write_text(tmp_path / "c.txt", "x")
        assert stat.S_IMODE(os.stat(tmp_path / "c.txt").st_mode) == 0o640
    finally:
        os.umask(old)
    out = tmp_path / "run"
    assert train(out).returncode == 0
    for name in ("result.json", "run.json", "checkpoint.pt"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o666 & ~old, name


# --------------------------------------------------------------------------------- one error boundary: exit 2


def _truncate(path: Path, keep: int = 200) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_everyday_mistakes_exit_2_with_one_line(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["train", "--algo", "bc", *TINY[:-2], "--device", "tpu"], "--device 'tpu'"),
        (["train", "--algo", "bc", *TINY, "--seed", "-1"], "--seed must be ≥ 0"),
        (["train", "--algo", "bc", *TINY, "--seed", str(2**32)], "--seed must be at most"),
        (["train", "--algo", "bc", *TINY, "--eval-episodes", "-1"], "--eval-episodes"),
        (["train", "--algo", "bc", *TINY, "--out", str(a_file)], "is a file, not a folder"),
        (["train", "--algo", "bc", *TINY, "--out", str(a_file / "run")], "cannot create the run folder"),
        (["train", "--algo", "bc", *TINY, "--out", "/sys/offline-rl-run"], "cannot create the run folder"),
        (["datasets", "generate", "pendulum-medium", "--steps", "100", "--out", str(a_file)], "is a file"),
        (["leaderboard", str(tmp_path), "--out", str(tmp_path)], "is a folder"),
        (["datasets", "info", "pendulum-medium@12x"], "not a count"),
        (["evaluate", str(tmp_path / "nothing")], "not a run folder"),
        (["benchmark", "quikc"], "unknown suite 'quikc'"),
        (["reproduce", "nope"], "unknown reproduce entry"),
    ]
    if not torch.cuda.is_available():
        cases.append((["train", "--algo", "bc", *TINY[:-2], "--device", "cuda"], "CUDA is not available"))
    for args, needle in cases:
        assert_user_error(main_in_process(*args), needle)
    assert_user_error(cli(*cases[0][0]), cases[0][1])  # and once through the console script


def test_broken_run_folders_exit_2(tmp_path):
    out = tmp_path / "run"
    assert train(out).returncode == 0
    ckpt = out / "checkpoint.pt"
    good = ckpt.read_bytes()
    _truncate(ckpt)
    assert_user_error(cli("evaluate", str(out)), "checkpoint.pt: not a readable checkpoint")
    torch.save({"algo": {"modules": {"w": torch.zeros(3)}, "optimizers": {}, "schedulers": {}}}, ckpt)
    assert_user_error(main_in_process("evaluate", str(out)), "checkpoint.pt: does not match")
    torch.save([1, 2, 3], ckpt)
    assert_user_error(main_in_process("evaluate", str(out)), "not an offline-rl checkpoint")
    ckpt.write_bytes(good)
    result = read_json(out / "result.json")
    atomic_write_json(out / "result.json", {**result, "status": "interrupted"})
    _truncate(ckpt)
    assert_user_error(main_in_process("train", "--algo", "bc", *TINY, "--out", str(out), "--resume"),
                      "checkpoint.pt: not a readable checkpoint", "--overwrite")
    (out / "run.json").write_text('{"algo": "bc", "conf')
    assert_user_error(main_in_process("evaluate", str(out)), "run.json: unreadable")
    assert_user_error(main_in_process("train", "--algo", "bc", *TINY, "--out", str(out), "--resume"),
                      "run.json: unreadable")


def _d4rl_file(path: Path, rows: int, rewards=None) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("observations", data=np.zeros((rows, 3), np.float32))
        f.create_dataset("actions", data=np.zeros((rows, 1), np.float32))
        f.create_dataset("rewards", data=np.zeros(rows, np.float32) if rewards is None else rewards)
        f.create_dataset("terminals", data=np.zeros(rows, bool))
    return path


def test_bad_data_files_exit_2(tmp_path, monkeypatch):
    cases = [
        (_d4rl_file(tmp_path / "zero.hdf5", 0), "zero.hdf5: 0 transitions"),
        (_d4rl_file(tmp_path / "one.hdf5", 1), "one.hdf5 (after dropping the timeout rows"),
        (_d4rl_file(tmp_path / "bytes.hdf5", 5, np.array([b"1.5"] * 5)), "key 'rewards' has dtype |S3"),
    ]
    for path, needle in cases:
        assert_user_error(main_in_process("datasets", "info", str(path)), needle)
        assert_user_error(main_in_process("train", "--algo", "bc", "--dataset", str(path), "--out",
                                          str(tmp_path / "r")), needle)
    assert_user_error(cli("datasets", "info", str(cases[0][0])), cases[0][1])
    ok = _d4rl_file(tmp_path / "ok.hdf5", 20)
    assert_user_error(main_in_process("train", "--algo", "bc", "--dataset", str(ok), "--steps", "5", "--out",
                                      str(tmp_path / "r")), "names no env to evaluate on", "--env")
    # no evaluation asked for: a dataset without an env trains (CLI --eval-episodes 0; API eval_every=0, which
    # the loop reads as "never", or eval_episodes=0)
    out = tmp_path / "no-eval"
    assert main_in_process("train", "--algo", "bc", "--dataset", str(ok), "--steps", "5", "--eval-episodes", "0",
                           "--out", str(out)).returncode == 0
    record = json.loads((out / "result.json").read_text())
    assert (record["status"], record["step"], record["curve"]) == ("completed", 5, [])
    data = load_dataset(str(ok))
    for kwargs in ({"eval_every": 0}, {"eval_episodes": 0}):
        result = train_api(algos.make("bc", data.spec), data, steps=5, progress=False, **kwargs)
        assert (result.status, result.step, result.curve) == ("completed", 5, [])
    seeds = train_api(algos.make("bc", data.spec), data, steps=5, eval_every=0, seeds=[0, 1], progress=False)
    assert [(r.status, r.step, r.curve) for r in seeds] == [("completed", 5, [])] * 2


def test_truncated_minari_data_names_the_file_to_delete(tmp_path):
    home = tmp_path / "home"
    env = {"OFFLINE_RL_HOME": str(home)}
    assert cli("datasets", "info", "pendulum-random@400", env=env).returncode == 0
    folder = home / "minari/offline-rl/pendulum/random-seed0-steps400-v0"
    main = folder / "data/main_data.hdf5"
    _truncate(main, 3000)
    proc = cli("datasets", "info", "pendulum-random@400", env=env)
    assert_user_error(proc, str(folder), "delete")
    (folder / "data/metadata.json").write_text("{not json")
    assert_user_error(cli("datasets", "info", "pendulum-random@400", env=env), "metadata", "delete")


# ------------------------------------------------------------------------------------- say what is happening


def test_generation_says_what_it_makes_and_the_name_to_train_on(tmp_path):
    home = tmp_path / "home"
    env = {"OFFLINE_RL_HOME": str(home)}
    proc = cli("datasets", "generate", "pendulum-medium", "--steps", "600", "--seed", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    folder = home / "minari/offline-rl/pendulum/medium-seed2-steps600-v0"
    assert proc.stdout.strip() == str(folder)
    assert "generating pendulum-medium@600,seed=2: 600 transitions on Pendulum-v1 (about" in proc.stderr
    assert f"MB) into {folder}" in proc.stderr
    assert "train on it with: --dataset pendulum-medium@600,seed=2" in proc.stderr
    info = cli("datasets", "info", "pendulum-medium@600,seed=2", "--json", env=env)
    assert info.returncode == 0 and json.loads(info.stdout)["n_transitions"] == 1600  # 8 sub-envs x 200 steps
    assert not any(ln.startswith(PROGRESS) for ln in info.stderr.splitlines())  # found, not generated again


def test_evaluate_uses_the_training_protocol_and_says_so(tmp_path):
    out = tmp_path / "run"
    assert cli("train", "--algo", "bc", *TINY[:-4], "--eval-every", "60", "--eval-episodes", "2", "--seed", "3",
               "--out", str(out)).returncode == 0
    proc = cli("evaluate", str(out), "--json")
    assert proc.returncode == 0 and "2 episodes, seed 103" in proc.stderr
    evaluated = json.loads(proc.stdout)
    assert evaluated["seed"] == 103 and len(evaluated["returns"]) == 2
    assert evaluated["mean_return"] == pytest.approx(read_json(out / "result.json")["final_return"], rel=1e-9)


def test_unknown_minari_id_fails_fast_without_network(tmp_path, monkeypatch):
    from offline_rl.data import load_dataset, minari_io
    from offline_rl.errors import DatasetError

    monkeypatch.delenv("OFFLINE_RL_OFFLINE", raising=False)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.setattr(minari_io, "REMOTE_HOST", ("127.0.0.1", 9))  # nothing listens: as with no network
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="minari:nope/absent-v0: not found in .* cannot be reached") as err:
        load_dataset("minari:nope/absent-v0")
    assert time.perf_counter() - start < 5 and "\n" not in str(err.value)


def test_version():
    from offline_rl import __version__

    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"offline-rl {__version__}"


# ------------------------------------------------------------------------------------------------ setup


@pytest.mark.parametrize(("gpu", "override", "build", "command"), [
    (False, None, "cpu", "torch==2.13.0+cpu --index-url https://download.pytorch.org/whl/cpu"),
    (True, None, "cuda", "torch==2.13.0"),
    (True, "cpu", "cpu", "torch==2.13.0+cpu --index-url https://download.pytorch.org/whl/cpu"),
    (False, "cuda", "cuda", "torch==2.13.0"),
])
def test_setup_chooses_the_torch_build_by_the_machine(tmp_path, gpu, override, build, command):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if gpu:  # an nvidia-smi that lists one GPU, as on a CUDA machine
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
        smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    if override:
        env["OFFLINE_RL_TORCH"] = override
    else:
        env["OFFLINE_RL_TORCH"] = "auto"
    proc = subprocess.run(["bash", str(ROOT / "scripts/setup.sh"), "--print-torch"], capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"build: {build}", f"pip install {command}"]
    bad = subprocess.run(["bash", str(ROOT / "scripts/setup.sh"), "--print-torch"], capture_output=True, text=True,
                         env={**env, "OFFLINE_RL_TORCH": "rocm"})
    assert bad.returncode == 2 and "OFFLINE_RL_TORCH must be" in bad.stderr


def test_suite_problems_refuse_the_benchmark_before_training(tmp_path):
    suite = tmp_path / "bad.toml"
    suite.write_text('algos = ["bc", "iqll"]\ndatasets = ["pendulum-medium", "no-such-data"]\nseeds = [0]\n'
                     'steps = 10\neval_every = 10\neval_episodes = 1\ndevice = "tpu"\n[overrides.bc]\nlrr = 1\n')
    proc = cli("benchmark", str(suite), "--out", str(tmp_path / "results"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for needle in ("nothing was started", "no-such-data", "unknown algorithm 'iqll'; did you mean 'iql'", "tpu"):
        assert needle in proc.stderr
    assert not (tmp_path / "results" / "bc").exists()
    with pytest.raises(ConfigError):
        run_suite(load_suite(suite), tmp_path / "r2", progress=False)
