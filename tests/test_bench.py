"""Suites, the runner and the leaderboard. No real training: result.json files are written by hand or by a fake
run function."""

from __future__ import annotations

import base64
import csv
import dataclasses
import io
import json
import logging
import os
import re
import sys
import types
from pathlib import Path

import pytest

from offline_rl.bench import aggregate, collect, load_suite, plot_curves, run_suite, write_leaderboard
from offline_rl.bench.leaderboard import to_csv, to_html, to_markdown
from offline_rl.bench.suite import Suite
from offline_rl.errors import ConfigError, UserError
from offline_rl.utils.io import atomic_write_json, read_json

LABEL = "offline-rl generated"


def make_record(algo: str, dataset: str, seed: int, scores: list[float | None], status: str = "completed",
                steps: int = 100, behavior: float | None = 40.0, label: str = LABEL, ups: float = 1000.0) -> dict:
    """A result.json record whose evaluations give `scores` (None: a dataset without reference scores)."""
    curve = [[steps * (i + 1) // len(scores), s, (s if s is not None else i) * 10.0 - 100.0]
             for i, s in enumerate(scores)]
    numeric = [s for s in scores if s is not None]
    return {
        "algo": algo, "dataset": dataset, "dataset_source": f"card:{dataset}", "dataset_label": label,
        "behavior_score": behavior, "seed": seed, "steps": steps, "config": {"eval_episodes": 10}, "curve": curve,
        "final_score": scores[-1], "best_score": max(numeric) if numeric else None, "final_return": curve[-1][2],
        "wall_time_s": 1.0, "updates_per_s": ups, "device": "cpu", "version": "0.1.0", "status": status,
    }


BOOM = "td3_bc"
"""The algorithm whose runs fail in `fake_run`."""


def fake_run(algo: str, dataset: str, seed: int, steps: int, eval_every: int | None, eval_episodes: int | None,
             out_dir: Path, device: str = "cpu", overrides: dict | None = None, resume: bool = False,
             progress: bool | None = None, overwrite: bool = False, seeds: list[int] | None = None) -> list[dict]:
    """A picklable stand-in for run_experiment that resolves each seed's run as it does but trains nothing:
    td3_bc fails, the others write run.json (with the run's fingerprint) and a completed result per seed."""
    from offline_rl.training.experiment import resolve_run

    records = []
    for s in seeds or [seed]:
        run = resolve_run(algo, dataset, s, steps, eval_every, eval_episodes, device, overrides)
        folder = Path(out_dir) / f"seed{s}" if seeds else Path(out_dir)
        atomic_write_json(folder / "run.json", {"fingerprint": run.fingerprint, "fingerprint_fields": run.fields()})
        if algo == BOOM:
            raise RuntimeError(f"boom on seed {s}")
        record = make_record(algo, dataset, s, [10.0 * s, 20.0 * s], steps=steps)
        record.update(threads=os.environ.get("OMP_NUM_THREADS"), fingerprint=run.fingerprint, overwrite=overwrite)
        atomic_write_json(folder / "result.json", record)
        records.append(record)
    return records


class CountingRun:
    """fake_run that remembers its calls."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **kwargs) -> dict:
        self.calls.append(kwargs)
        return fake_run(**kwargs)


def tiny_suite(algos=("bc", "iql"), seeds=(0, 1), **kw) -> Suite:
    return Suite(name="tiny", algos=tuple(algos), datasets=("pendulum-medium",), seeds=tuple(seeds), steps=100,
                 eval_every=50, eval_episodes=2, **kw)


def write_suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my_suite.toml"
    path.write_text(text)
    return path


GOOD = """
name = "mine"
description = "a test suite"
algos = ["bc", "td3_bc"]
datasets = ["pendulum-medium", "d4rl:hopper-medium-v2"]
seeds = [0, 1]
steps = 100
eval_every = 50
eval_episodes = 2
[overrides.td3_bc]
alpha = 2.5
"""


# ------------------------------------------------------------------------------------------------- suites


def test_shipped_quick_suite_loads_by_name():
    suite = load_suite("quick")
    assert suite.name == "quick" and suite.path.name == "quick.toml"
    assert set(suite.algos) == {"bc", "td3_bc", "iql", "prdc", "a2pr", "odice"} and suite.seeds == (0, 1, 2)
    assert {"pendulum-medium", "idp-medium"} <= set(suite.datasets)
    assert len(suite.runs()) == 6 * len(suite.datasets) * 3
    assert set(load_suite("quick-full").datasets) > set(suite.datasets)


def test_suite_from_path_expands_runs(tmp_path):
    suite = load_suite(write_suite(tmp_path, GOOD))
    runs = suite.runs()
    assert [r.name for r in runs[:4]] == ["bc/pendulum-medium/seed0", "bc/pendulum-medium/seed1",
                                          "bc/d4rl_hopper-medium-v2/seed0", "bc/d4rl_hopper-medium-v2/seed1"]
    assert len(runs) == 8 and len({r.name for r in runs}) == 8
    td3 = [r for r in runs if r.algo == "td3_bc"]
    assert all(r.overrides == {"alpha": 2.5} for r in td3)
    assert all(r.overrides == {} for r in runs if r.algo == "bc")
    kwargs = td3[0].kwargs(tmp_path / "out")
    assert kwargs == {"algo": "td3_bc", "dataset": "pendulum-medium", "seed": 0, "steps": 100, "eval_every": 50,
                      "eval_episodes": 2, "out_dir": tmp_path / "out" / "td3_bc/pendulum-medium/seed0",
                      "device": "cpu", "overrides": {"alpha": 2.5}}


@pytest.mark.parametrize("edit, key", [
    (lambda t: "stepz = 3\n" + t, "stepz"),
    (lambda t: t.replace("steps = 100", "steps = \"100\""), "steps"),
    (lambda t: t.replace("steps = 100", "steps = true"), "steps"),
    (lambda t: t.replace("eval_every = 50", "eval_every = -1"), "eval_every"),
    (lambda t: t.replace("seeds = [0, 1]", "seeds = [\"0\"]"), "seeds"),
    (lambda t: t.replace("seeds = [0, 1]", "seeds = [0, 0]"), "seeds"),
    (lambda t: t.replace("seeds = [0, 1]", ""), "seeds"),
    (lambda t: t.replace("algos = [\"bc\", \"td3_bc\"]", "algos = []"), "algos"),
    (lambda t: t.replace("[overrides.td3_bc]", "[overrides.cql]"), "overrides.cql"),
    (lambda t: t.replace("[overrides.td3_bc]\nalpha = 2.5", "overrides = {td3_bc = 3}"), "overrides.td3_bc"),
])
def test_bad_suite_names_file_and_key(tmp_path, edit, key):
    path = write_suite(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError, match=re.escape(str(path))) as err:
        load_suite(path)
    assert f"'{key}'" in str(err.value)


def test_suite_not_toml_or_unknown_name(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_suite(write_suite(tmp_path, "algos = [\n"))
    with pytest.raises(ConfigError, match="unknown suite 'nope'.*quick"):
        load_suite("nope")
    with pytest.raises(ConfigError, match="cannot read"):
        load_suite(tmp_path / "missing.toml")


# ------------------------------------------------------------------------------------------------- runner


def test_completed_runs_are_skipped_and_unfinished_resumed(tmp_path, capsys):
    run = CountingRun()
    assert run_suite(tiny_suite(), tmp_path, run_fn=run) == []
    # One call per cell (algorithm, dataset): its seeds train together in one process.
    assert [(c["algo"], c["seeds"]) for c in run.calls] == [("bc", [0, 1]), ("iql", [0, 1])]
    assert all(c["resume"] is False for c in run.calls)  # fresh folders: nothing to resume
    assert read_json(tmp_path / "iql/pendulum-medium/seed1/result.json")["seed"] == 1
    assert (tmp_path / "suite.json").exists()
    assert "done: 4 completed" in capsys.readouterr().err

    run.calls.clear()
    assert run_suite(tiny_suite(), tmp_path, run_fn=run) == [] and run.calls == []
    assert "4 already completed (skipped)" in capsys.readouterr().err

    path = tmp_path / "bc/pendulum-medium/seed1/result.json"
    atomic_write_json(path, {**read_json(path), "status": "interrupted"})
    run_suite(tiny_suite(), tmp_path, run_fn=run, progress=False)
    assert [(c["algo"], c["seeds"], c["resume"]) for c in run.calls] == [("bc", [1], True)]


@pytest.mark.parametrize("change", [{"steps": 200}, {"steps": 50}, {"eval_episodes": 3}, {"eval_every": 25},
                                    {"overrides": {"bc": {"lr": 1e-4}}}])
def test_a_folder_holding_another_configuration_refuses_the_suite(tmp_path, change):
    """The skip compares the whole resolved configuration: another budget, protocol or override is another run,
    and the suite stops before training anything unless told to overwrite."""
    run = CountingRun()
    run_suite(tiny_suite(seeds=(0,)), tmp_path, run_fn=run, progress=False)
    other = dataclasses.replace(tiny_suite(seeds=(0,)), **change)
    with pytest.raises(ConfigError, match="(?s)nothing was started.*holds a different run") as err:
        run_suite(other, tmp_path, run_fn=run, progress=False)
    field = next(iter(change)) if "overrides" not in change else "config.lr"
    assert field in str(err.value) and len(run.calls) == 2
    assert read_json(tmp_path / "suite.json")["steps"] == 100  # the record of what ran is not rewritten
    run_suite(other, tmp_path, run_fn=run, progress=False, overwrite=True)
    changed = 1 if "overrides" in change else 2  # the override is bc's only: iql's run is the same and skipped
    assert len(run.calls) == 2 + changed and all(c["overwrite"] for c in run.calls[2:])
    assert run_suite(other, tmp_path, run_fn=run, progress=False) == [] and len(run.calls) == 2 + changed


def test_a_suite_is_checked_whole_before_any_run(tmp_path):
    suite = Suite(name="bad", algos=("bc", "td3bcc", "iql"), datasets=("pendulum-medium", "pendulum-meduim"),
                  seeds=(0,), steps=100, eval_every=50, eval_episodes=2,
                  overrides={"bc": {"actor_lrr": 1.0}, "iql": {"beta": "high"}})
    run = CountingRun()
    with pytest.raises(ConfigError) as err:
        run_suite(suite, tmp_path, run_fn=run, progress=False)
    text = str(err.value)
    assert "4 problem(s)" in text and run.calls == [] and not (tmp_path / "bc").exists()
    for needle in ("pendulum-meduim", "did you mean 'pendulum-medium'", "'actor_lrr' is not a hyperparameter of bc",
                   "unknown algorithm 'td3bcc'; did you mean 'td3_bc'", "iql.beta expects float, got 'high'"):
        assert needle in text
    cuda = dataclasses.replace(tiny_suite(), device="cuda:7")
    with pytest.raises(ConfigError, match="cuda:7"):
        run_suite(cuda, tmp_path, run_fn=run, progress=False)
    assert run.calls == []


def test_failed_run_does_not_stop_the_others(tmp_path, caplog):
    failures = run_suite(tiny_suite(algos=(BOOM, "bc")), tmp_path, run_fn=fake_run, progress=False)
    # The cell's seeds train together, so the exception stops both: each is a failure with the cell's error.
    assert [(f["run"], f["error"]) for f in failures] == [
        ("td3_bc/pendulum-medium/seed0", "RuntimeError: boom on seed 0"),
        ("td3_bc/pendulum-medium/seed1", "RuntimeError: boom on seed 0")]
    assert "boom on seed 0" in (tmp_path / "td3_bc/pendulum-medium/seed1/error.log").read_text()
    assert not (tmp_path / "td3_bc/pendulum-medium/seed1/result.json").exists()
    assert [read_json(tmp_path / f"bc/pendulum-medium/seed{s}/result.json")["status"] for s in (0, 1)] == [
        "completed", "completed"]
    assert "td3_bc/pendulum-medium/seed0 failed: RuntimeError: boom on seed 0" in caplog.text


def _clear_thread_vars(monkeypatch) -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)  # also undoes what the runner sets in this process


def test_two_worker_processes(tmp_path, monkeypatch):
    _clear_thread_vars(monkeypatch)
    failures = run_suite(tiny_suite(algos=("bc", BOOM)), tmp_path, workers=2, run_fn=fake_run, progress=False)
    assert sorted(f["run"] for f in failures) == ["td3_bc/pendulum-medium/seed0", "td3_bc/pendulum-medium/seed1"]
    results = [read_json(tmp_path / f"bc/pendulum-medium/seed{s}/result.json") for s in (0, 1)]
    assert [r["threads"] for r in results] == ["1", "1"]  # one compute thread per worker


def test_bad_runner_arguments(tmp_path):
    with pytest.raises(UserError, match="unknown runner"):
        run_suite(tiny_suite(), tmp_path, runner="slurm", run_fn=fake_run)
    with pytest.raises(UserError, match="workers"):
        run_suite(tiny_suite(), tmp_path, workers=0, run_fn=fake_run)
    with pytest.raises(UserError, match="picklable"):
        run_suite(tiny_suite(), tmp_path, workers=2, run_fn=lambda **kw: fake_run(**kw), progress=False)


def test_ray_runner_without_ray_is_a_clean_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(UserError, match=re.escape("offline-rl[ray]")):
        run_suite(tiny_suite(), tmp_path, runner="ray", run_fn=fake_run, progress=False)


class FakeRay(types.ModuleType):
    """Just enough of Ray's API to drive the ray runner in this process. A task runs when it is submitted and
    writes into `remote_root` (another machine's disk), so the driver must bring the result files home."""

    class Ref:
        def __init__(self, value) -> None:
            self.value = value

    def __init__(self, remote_root: Path) -> None:
        super().__init__("ray")
        self.remote_root, self.initialized, self.address = remote_root, False, "unset"
        self.in_flight, self.max_in_flight, self.options_seen = 0, 0, []

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, address=None) -> None:
        self.initialized, self.address = True, address

    def shutdown(self) -> None:
        self.initialized = False

    def remote(self, fn):
        ray = self

        class Task:
            def options(self, **kw):
                ray.options_seen.append(kw)
                return self

            def remote(self, run_fn, kwargs):
                ray.in_flight += 1
                ray.max_in_flight = max(ray.max_in_flight, ray.in_flight)
                out_dir = ray.remote_root / f"{kwargs['algo']}-{kwargs['seed']}"
                return FakeRay.Ref(fn(run_fn, {**kwargs, "out_dir": out_dir}))

        return Task()

    def wait(self, refs, num_returns=1):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        self.in_flight -= 1
        return ref.value

    def cancel(self, ref) -> None:
        pass


def test_ray_runner_with_a_fake_ray(tmp_path, monkeypatch):
    _clear_thread_vars(monkeypatch)
    ray = FakeRay(tmp_path / "remote")
    monkeypatch.setitem(sys.modules, "ray", ray)
    failures = run_suite(tiny_suite(algos=("bc", BOOM), seeds=(0, 1, 2)), tmp_path / "out", runner="ray",
                         workers=2, run_fn=fake_run, progress=False, address="ray://head:10001")
    assert len(failures) == 3 and ray.address == "ray://head:10001" and not ray.initialized
    assert ray.max_in_flight == 2 and ray.options_seen[0] == {"num_cpus": 1, "num_gpus": 0}
    assert [read_json(tmp_path / f"out/bc/pendulum-medium/seed{s}/result.json")["seed"] for s in (0, 1, 2)] == [
        0, 1, 2]


# -------------------------------------------------------------------------------------------- leaderboard


def write_results(root: Path) -> None:
    """bc: 3 seeds (last 60/65/70, best 70/72/74); iql: 1 seed and an interrupted run; td3_bc: a diverged run;
    a dataset without reference scores."""
    records = [
        make_record("bc", "pendulum-medium", 0, [70.0, 60.0], ups=900.0),
        make_record("bc", "pendulum-medium", 1, [72.0, 65.0], ups=1100.0),
        make_record("bc", "pendulum-medium", 2, [50.0, 74.0, 70.0], ups=1000.0),
        make_record("iql", "pendulum-medium", 0, [40.0, 80.0]),
        make_record("iql", "pendulum-medium", 1, [10.0], status="interrupted"),
        make_record("td3_bc", "pendulum-expert", 0, [90.0]),
        make_record("td3_bc", "pendulum-expert", 1, [60.0, 30.0], status="diverged"),
        make_record("bc", "my-data", 0, [None, None], behavior=None, label="user dataset"),
    ]
    for r in records:
        atomic_write_json(root / r["algo"] / r["dataset"] / f"seed{r['seed']}" / "result.json", r)


def test_aggregate_last_and_best_mean_and_sample_std(tmp_path):
    write_results(tmp_path)
    rows = {(r["dataset"], r["algo"]): r for r in aggregate(collect(tmp_path))}
    bc = rows[("pendulum-medium", "bc")]
    assert bc["n_seeds"] == 3 and bc["metric"] == "score" and bc["steps"] == 100 and bc["eval_episodes"] == 10
    assert bc["last_mean"] == pytest.approx(65.0) and bc["last_std"] == pytest.approx(5.0)  # ddof=1
    assert bc["best_mean"] == pytest.approx(72.0) and bc["best_std"] == pytest.approx(2.0)
    assert bc["behavior_score"] == 40.0 and bc["updates_per_s"] == pytest.approx(1000.0)
    iql = rows[("pendulum-medium", "iql")]  # the interrupted seed is left out
    assert (iql["n_seeds"], iql["last_mean"], iql["last_std"], iql["best_mean"]) == (1, 80.0, 0.0, 80.0)
    td3 = rows[("pendulum-expert", "td3_bc")]  # a diverged run counts, with its score
    assert (td3["n_seeds"], td3["n_diverged"], td3["last_mean"], td3["best_mean"]) == (2, 1, 60.0, 75.0)
    assert td3["last_std"] == pytest.approx(42.4264, abs=1e-4)
    mine = rows[("my-data", "bc")]  # no reference scores: ranked by return
    assert (mine["metric"], mine["last_mean"], mine["best_mean"], mine["label"]) == ("return", -90.0, -90.0,
                                                                                      "user dataset")


def test_markdown_csv_and_html(tmp_path):
    write_results(tmp_path)
    records = collect(tmp_path)
    rows = aggregate(records)

    md = to_markdown(rows)
    assert "0–100" in md and "sample standard deviation (ddof=1" in md and "D4RL" not in md
    assert f"## Reference scores: {LABEL}" in md and "## Reference scores: user dataset" in md
    assert "| dataset | behaviour | bc | iql | td3_bc | seeds |" in md
    assert ("| pendulum-medium | 40.0 | last 65.0 ± 5.0 (best 72.0 ± 2.0) "
            "| **last 80.0 ± 0.0 (best 80.0 ± 0.0) [n=1]** | — | 3 |") in md
    assert "| pendulum-expert | 40.0 | — | — | **last 60.0 ± 42.4 (best 75.0 ± 21.2) [1 diverged]** | 2 |" in md
    assert "my-data (return)" in md and "Steps per run: 100; evaluation episodes: 10." in md

    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    bc = next(r for r in parsed if r["algo"] == "bc" and r["dataset"] == "pendulum-medium")
    assert (bc["last_mean"], bc["last_std"], bc["best_mean"], bc["n_seeds"], bc["label"]) == (
        "65.0", "5.0", "72.0", "3", LABEL)

    page = to_html(rows, records)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "last 65.0 ± 5.0 (best 72.0 ± 2.0)" in page and "<b>last 80.0" in page


def test_plot_curves_and_write_leaderboard(tmp_path):
    write_results(tmp_path / "res")
    paths = plot_curves(collect(tmp_path / "res"), tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["my-data.png", "pendulum-expert.png", "pendulum-medium.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    text = write_leaderboard(tmp_path / "res", "csv", tmp_path / "board.csv")
    assert (tmp_path / "board.csv").read_text() == text and text.startswith("label,dataset,algo")
    with pytest.raises(UserError, match="unknown leaderboard format"):
        write_leaderboard(tmp_path / "res", "pdf")
    assert "Suite " not in write_leaderboard(tmp_path / "res", "md")  # no suite.json: no suite line


def test_leaderboard_heading_says_what_the_suite_ran(tmp_path):
    """A benchmark's results folder holds suite.json: its name and description (cheaper settings included) head the
    Markdown and HTML leaderboards, before the explanation."""
    write_results(tmp_path)
    (tmp_path / "suite.json").write_text(json.dumps({"name": "quick", "description": "3 seeds, 64-64 networks"}))
    md = write_leaderboard(tmp_path, "md")
    assert md.split("\n")[2] == "Suite quick: 3 seeds, 64-64 networks."
    assert "<p>Suite quick: 3 seeds, 64-64 networks.</p>" in write_leaderboard(tmp_path, "html")
    assert write_leaderboard(tmp_path, "csv") == to_csv(aggregate(collect(tmp_path)))


def test_corrupt_results_are_skipped_with_a_warning(tmp_path, caplog):
    write_results(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/result.json").write_text("{not json")
    (tmp_path / "bad/sub").mkdir()
    (tmp_path / "bad/sub/result.json").write_text("[1, 2]")
    with caplog.at_level(logging.WARNING):
        records = collect(tmp_path)
    assert len(records) == 8
    assert "bad/result.json: cannot read it as JSON" in caplog.text and "not a result record" in caplog.text


def test_missing_or_empty_results_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        collect(tmp_path / "nope")
    with pytest.raises(UserError, match="no result.json"):
        write_leaderboard(tmp_path)


def test_run_kwargs_match_run_experiment():
    """The runner's keyword arguments bind to the real `run_experiment` (no training happens)."""
    import inspect

    from offline_rl.training import run_experiment

    spec = tiny_suite().runs()[0]
    inspect.signature(run_experiment).bind(**spec.kwargs("out"), resume=True, progress=False)
