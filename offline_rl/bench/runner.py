"""Run every (algorithm, dataset, seed) of a suite: one after another, in local worker processes, or on Ray.

Before anything trains, every run of the suite is resolved (algorithm, dataset, preset and overrides, device,
evaluation protocol) and compared with its folder; any problem refuses the whole suite with the list of problems.
Each run writes `<out_dir>/<algo>/<dataset>/seed<k>/result.json`. A run whose folder holds a finished run
(completed or diverged) with the same fingerprint (the whole resolved configuration, dataset content included) is
skipped, so re-running a suite after a crash only does the missing runs; those are started with `resume=True` and
continue from their checkpoint. A folder holding a run with another fingerprint is an error, unless `overwrite`.
A failing run is logged (its traceback goes to `error.log` in its run folder), recorded as `failed`, retried by
the next run of the suite, and the other runs go on.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import pickle
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from offline_rl.bench.suite import RunSpec, Suite
from offline_rl.errors import ConfigError, UserError
from offline_rl.utils.io import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
ERROR_FILE = "error.log"
RUNNERS = ("local", "ray")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

RunFn = Callable[..., Any]
KwargsFor = Callable[[RunSpec], dict[str, Any]]
# What one run gives back: {"result": dict | None, "error": str | None, "traceback": str | None}.
Payload = dict[str, Any]


def default_run_fn(**kwargs: Any) -> dict:
    """The real single run, `offline_rl.training.run_experiment`, imported lazily (it pulls in torch)."""
    from offline_rl.training import run_experiment

    return run_experiment(**kwargs)


def check_suite(suite: Suite, out_dir: Path, overwrite: bool = False) -> tuple[list[tuple[RunSpec, str]], int]:
    """Resolve every run and compare it with its folder: ([(run to do, its folder: "empty", "unfinished" or
    "conflict" (replaced, with `overwrite`))], how many are finished already and skipped).

    Every problem is collected first (an unknown algorithm or dataset, a bad override key or type, a device this
    machine lacks, a folder holding another run unless `overwrite`), then the suite is refused with all of them
    (ConfigError), before any run starts."""
    from offline_rl.data import load_dataset
    from offline_rl.training.experiment import resolve_run

    problems: dict[str, list[str]] = {}  # message -> the runs it concerns
    datasets: dict[str, Any] = {}
    for name in suite.datasets:
        try:
            datasets[name] = load_dataset(name)
        except UserError as e:
            problems.setdefault(f"dataset '{name}': {e}", [])
    todo, finished = [], 0
    for spec in suite.runs():
        if spec.dataset not in datasets:
            continue
        try:
            fields = resolve_run(spec.algo, datasets[spec.dataset], spec.seed, spec.steps, spec.eval_every,
                                 spec.eval_episodes, spec.device, spec.overrides).fields()
        except UserError as e:
            problems.setdefault(str(e), []).append(spec.name)
            continue
        state = folder_state(spec.run_dir(out_dir), fields)
        if state == "finished":
            finished += 1
        elif not state.startswith("conflict"):
            todo.append((spec, state))
        elif overwrite:
            todo.append((spec, "conflict"))
        else:
            problems.setdefault(state.partition(": ")[2], []).append(spec.name)
    if problems:
        listed = "\n  ".join(msg + (f" [{', '.join(runs)}]" if runs else "") for msg, runs in problems.items())
        raise ConfigError(f"suite '{suite.name}' ({suite.path or 'in memory'}) cannot run; nothing was started. "
                          f"{len(problems)} problem(s):\n  {listed}")
    return todo, finished


def folder_state(run_dir: Path, fields: dict[str, Any]) -> str:
    """"empty", "finished" (a completed or diverged run with these fields), "unfinished" (the same run, to resume
    or retry) or "conflict: <why>" (another run, or files of unknown provenance)."""
    from offline_rl.training.run_folder import (
        FINISHED,
        RESULT,
        RUN,
        differing_fields,
        fingerprint,
        read_record,
    )

    try:
        record = read_record(run_dir / RUN)
        result = read_record(run_dir / RESULT)
    except UserError as e:
        return f"conflict: {e}"
    if record is None:
        return "empty" if result is None else "conflict: a result.json without run.json (use --overwrite)"
    if record.get("fingerprint") != fingerprint(fields):
        diff = differing_fields(record.get("fingerprint_fields", {}), fields)
        return (f"conflict: {run_dir} holds a different run ({'; '.join(diff) or 'no fingerprint'}); "
                "pass --overwrite to replace it")
    if result is not None and result.get("status") in FINISHED and result.get("fingerprint") == record["fingerprint"]:
        return "finished"
    return "unfinished"


def run_suite(suite: Suite, out_dir: str | os.PathLike, runner: str = "local", workers: int = 1,
              run_fn: RunFn | None = None, progress: bool = True, address: str | None = None,
              overwrite: bool = False) -> list[dict]:
    """Run the suite's runs that are not completed yet; return the failures (an empty list: all went well).

    A failure is `{"run", "algo", "dataset", "seed", "run_dir", "error"}` with `error` "ExceptionType: message";
    the traceback is in `<run_dir>/error.log`. A run that ends "diverged" or "interrupted" is not a failure.

    `runner="local"` runs in this process (`workers=1`) or in `workers` spawned processes with one compute
    thread each; `runner="ray"` keeps up to `workers` tasks in flight on `ray.init(address=address)` (a local
    Ray instance when None). `run_fn` takes `run_experiment`'s keyword arguments and writes
    `out_dir/result.json`; with local `workers > 1` it must be picklable (a module-level function).
    Progress lines go to stderr when `progress`, else to the debug log.
    """
    if runner not in RUNNERS:
        raise UserError(f"unknown runner '{runner}' (choose from: {', '.join(RUNNERS)})")
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    run_fn = run_fn or default_run_fn
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: is a file, not a folder")
    specs = suite.runs()
    report = _reporter(progress)
    report(f"suite '{suite.name}': checking {len(specs)} runs")
    todo, finished = check_suite(suite, out_dir, overwrite)
    pending = [spec for spec, _ in todo]
    replace = {spec.name for spec, state in todo if state == "conflict"}
    unfinished = {spec.name for spec, state in todo if state == "unfinished"}
    report(f"suite '{suite.name}': {len(specs)} runs, {finished} already completed (skipped), "
           f"{len(pending)} to run -> {out_dir}" + (f" ({len(replace)} replacing other runs)" if replace else ""))
    atomic_write_json(out_dir / "suite.json", suite.to_dict())

    counts: Counter[str] = Counter(skipped=finished)
    failures = []
    done = 0
    for cell, payload in _execute_all(cells(pending), out_dir, run_fn, runner, workers, progress, address, report,
                                      replace, unfinished):
        for spec in cell:
            done += 1
            prefix = f"[{done}/{len(pending)}] {spec.name}"
            seed_payload = {**payload, "result": payload["results"].get(spec.seed)}
            failure = _record(spec, out_dir, seed_payload)
            if failure is None:
                counts[seed_payload["result"].get("status", "unknown")] += 1
                report(f"{prefix}: {_describe(seed_payload['result'])}")
            else:
                counts["failed"] += 1
                failures.append(failure)
                log.error("%s failed: %s (traceback in %s)", prefix, failure["error"],
                          Path(failure["run_dir"]) / ERROR_FILE)
    report(f"suite '{suite.name}' done: " + ", ".join(f"{n} {key}" for key, n in counts.items() if n))
    return failures


def cells(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """The runs grouped by (algorithm, dataset, budget, overrides): the seeds of one configuration, which train
    together in one process (`offline_rl.training.seeds`). Suite order is kept."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        key = repr((spec.algo, spec.dataset, spec.steps, spec.eval_every, spec.eval_episodes, spec.device,
                    sorted(spec.overrides.items())))
        groups.setdefault(key, []).append(spec)
    return list(groups.values())


Cell = list[RunSpec]


def _execute_all(specs: list[Cell], out_dir: Path, run_fn: RunFn, runner: str, workers: int, progress: bool,
                 address: str | None, report: Callable[[str], None],
                 replace: set[str], unfinished: set[str]) -> Iterator[tuple[Cell, Payload]]:
    """Yield `(spec, payload)` for each run as it finishes, with the chosen runner. Only a sequential run
    shows its own progress bar; parallel runs would draw over each other."""
    if not specs:
        return iter(())

    def kwargs_for(cell: Cell) -> dict[str, Any]:
        first = cell[0]
        return {**first.kwargs(out_dir), "out_dir": first.run_dir(out_dir).parent,
                "seeds": [spec.seed for spec in cell], "resume": any(spec.name in unfinished for spec in cell),
                "progress": progress and workers == 1,
                "overwrite": any(spec.name in replace for spec in cell)}

    if runner == "ray":
        return _run_ray(specs, kwargs_for, run_fn, workers, address)
    if workers == 1:
        return _run_sequential(specs, kwargs_for, run_fn, report)
    return _run_pool(specs, kwargs_for, run_fn, workers)


def _run_sequential(specs: list[Cell], kwargs_for: KwargsFor, run_fn: RunFn,
                    report: Callable[[str], None]) -> Iterator[tuple[Cell, Payload]]:
    for cell in specs:
        report(f"running {cell[0].algo}/{cell[0].dataset}, seeds {', '.join(str(s.seed) for s in cell)}")
        yield cell, _execute(run_fn, kwargs_for(cell))


def _run_pool(specs: list[Cell], kwargs_for: KwargsFor, run_fn: RunFn,
              workers: int) -> Iterator[tuple[Cell, Payload]]:
    """Runs in `workers` spawned processes (spawn: safe with torch and CUDA), one compute thread each."""
    try:
        pickle.dumps(run_fn)
    except Exception as e:
        raise UserError(f"run_fn must be picklable (a module-level function) with workers > 1: {e}") from e
    spawn = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(specs)), mp_context=spawn, initializer=_limit_threads)
    try:
        futures = {pool.submit(_execute, run_fn, kwargs_for(spec)): spec for spec in specs}
        for future in as_completed(futures):
            try:
                payload = future.result()
            except Exception as e:  # the worker process died (BrokenProcessPool): its run is lost, not the suite
                payload = _failure(e)
            yield futures[future], payload
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(specs: list[Cell], kwargs_for: KwargsFor, run_fn: RunFn, workers: int,
             address: str | None) -> Iterator[tuple[Cell, Payload]]:
    """One Ray task per run (1 CPU; 1 GPU when the suite's device is CUDA), at most `workers` in flight.
    The result record comes back with the task, so runs on other machines end up in `out_dir` here too."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address)
    todo = iter(specs)
    in_flight: dict[Any, Cell] = {}

    def submit(cell: Cell) -> None:
        gpus = 1 if cell[0].device.startswith("cuda") else 0
        in_flight[task.options(num_cpus=1, num_gpus=gpus).remote(run_fn, kwargs_for(cell))] = cell

    try:
        task = ray.remote(_execute_single_thread)
        for spec in itertools.islice(todo, workers):
            submit(spec)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            spec = in_flight.pop(ready[0])
            try:
                payload = ray.get(ready[0])
            except Exception as e:  # the worker or its node died: only this run is lost
                payload = _failure(e)
            next_spec = next(todo, None)
            if next_spec is not None:
                submit(next_spec)
            yield spec, payload
    finally:
        for ref in in_flight:
            ray.cancel(ref)
        if started_here:
            ray.shutdown()


def import_ray() -> Any:
    """`import ray`, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise UserError("the ray runner needs Ray: pip install 'offline-rl[ray]'") from e
    return ray


def _limit_threads() -> None:
    """One compute thread per worker (unless the user set the variables), so N workers share N cores."""
    for var in _THREAD_VARS:
        os.environ.setdefault(var, "1")
    torch = sys.modules.get("torch")  # the variables act on a later import; a torch already loaded is told
    if torch is not None:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _execute(run_fn: RunFn, kwargs: dict[str, Any]) -> Payload:
    """Do one cell (its seeds at once) and return each seed's finished result record (None: the seed failed, or
    wrote none); an exception becomes the failure of the seeds it stopped, so the other cells go on."""
    try:
        returned = run_fn(**kwargs)
        payload: Payload = {"error": None, "traceback": None}
    except Exception as e:
        returned, payload = None, _failure(e)
    records = {r.get("seed"): r for r in (returned if isinstance(returned, list) else [returned])
               if isinstance(r, dict) and "status" in r}
    payload["results"] = {}
    for seed in kwargs["seeds"]:
        result = _read_result(Path(kwargs["out_dir"]) / f"seed{seed}" / RESULT_FILE) or records.get(seed)
        finished = result is not None and result.get("status") not in ("failed", "running")
        payload["results"][seed] = result if finished else None
    if payload["error"] is None and None in payload["results"].values():
        payload["error"] = f"the run ended without writing {RESULT_FILE}"
    return payload


def _execute_single_thread(run_fn: RunFn, kwargs: dict[str, Any]) -> Payload:
    """`_execute` in a Ray worker process."""
    _limit_threads()
    return _execute(run_fn, kwargs)


def _failure(e: BaseException) -> Payload:
    return {"results": {}, "error": f"{type(e).__name__}: {e}",
            "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__))}


def _record(spec: RunSpec, out_dir: Path, payload: Payload) -> dict | None:
    """Bring the run folder up to date with a finished run, and return its failure record (None: no failure).

    On success the result file is written here if missing (a Ray worker on another machine wrote it there)
    and a stale `error.log` is removed; on failure the traceback goes to `error.log`.
    """
    run_dir = spec.run_dir(out_dir)
    if payload["result"] is None:
        atomic_write_text(run_dir / ERROR_FILE, payload["traceback"] or payload["error"] + "\n")
        return {"run": spec.name, "algo": spec.algo, "dataset": spec.dataset, "seed": spec.seed,
                "run_dir": str(run_dir), "error": payload["error"]}
    if not (run_dir / RESULT_FILE).exists():
        atomic_write_json(run_dir / RESULT_FILE, payload["result"])
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    return None


def _read_result(path: Path) -> dict | None:
    """The result record at `path`, or None when it is missing or unreadable."""
    try:
        result = read_json(path)
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def _describe(result: dict) -> str:
    """E.g. "completed, last score 65.3"."""
    score, ret = result.get("final_score"), result.get("final_return")
    value = f"last score {score:.1f}" if isinstance(score, int | float) else f"last return {ret}"
    return f"{result.get('status')}, {value}"


def _reporter(progress: bool) -> Callable[[str], None]:
    """Progress lines on stderr when `progress`, else debug log records."""
    if progress:
        return lambda msg: print(msg, file=sys.stderr, flush=True)
    return log.debug
