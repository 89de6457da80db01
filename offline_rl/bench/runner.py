"""Run every (algorithm, dataset, seed) of a suite: one after another, in local worker processes, or on Ray.

Each run writes `<out_dir>/<algo>/<dataset>/seed<k>/result.json`. A run whose result file already says
"completed" (for the suite's step budget) is skipped, so re-running a suite after a crash only does the missing
runs; the others are started with `resume=True` and continue from their checkpoint. A failing run is logged
(with its traceback in `error.log` next to where its result would be) and the other runs go on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from offline_rl.bench.suite import RunSpec, Suite
from offline_rl.errors import UserError
from offline_rl.utils.io import atomic_write_json, atomic_write_text, read_json

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
ERROR_FILE = "error.log"
RUNNERS = ("local", "ray")
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

RunFn = Callable[..., Any]
# What `_execute` returns for one run: {"result": dict | None, "error": str | None, "traceback": str | None}.
Payload = dict[str, Any]


def default_run_fn(**kwargs: Any) -> dict:
    """The real single run, `offline_rl.training.run_experiment`, imported lazily (it pulls in torch)."""
    from offline_rl.training import run_experiment

    return run_experiment(**kwargs)


def run_suite(suite: Suite, out_dir: str | os.PathLike, runner: str = "local", workers: int = 1,
              run_fn: RunFn | None = None, progress: bool = True, address: str | None = None) -> list[dict]:
    """Run the suite's runs that are not completed yet, and return one outcome per run, in suite order.

    An outcome is `{"run", "algo", "dataset", "seed", "run_dir", "status", "skipped", "error", "result"}` where
    `status` is the result's status ("completed", "diverged", "interrupted") or "failed" (then `error` holds
    "ExceptionType: message" and `result` is None), and `skipped` is True for runs completed before this call.
    The failures are `[o for o in outcomes if o["status"] == "failed"]`.

    `runner="local"` runs in this process (`workers=1`) or in `workers` spawned processes with one compute thread
    each; `runner="ray"` sends one task per run to `ray.init(address=address)` (a local Ray instance when None).
    `run_fn` takes `run_experiment`'s keyword arguments and must write `out_dir/result.json`; with `workers > 1`
    it must be picklable (a module-level function).
    """
    if runner not in RUNNERS:
        raise UserError(f"unknown runner '{runner}' (choose from: {', '.join(RUNNERS)})")
    if workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}")
    run_fn = run_fn or default_run_fn
    out_dir = Path(out_dir).resolve()
    specs = suite.runs()
    outcomes: dict[str, dict] = {}
    pending: list[RunSpec] = []
    for spec in specs:
        done = _completed_result(spec, out_dir)
        if done is None:
            pending.append(spec)
        else:
            outcomes[spec.name] = _outcome(spec, out_dir, done, skipped=True)
    report = _reporter(progress)
    report(f"suite '{suite.name}': {len(specs)} runs, {len(specs) - len(pending)} already completed (skipped), "
           f"{len(pending)} to run -> {out_dir}")
    atomic_write_json(out_dir / "suite.json", suite.to_dict())

    for i, (spec, payload) in enumerate(_execute_all(pending, out_dir, run_fn, runner, workers, progress,
                                                     address, report), start=1):
        outcome = outcomes[spec.name] = _record(spec, out_dir, payload)
        prefix = f"[{i}/{len(pending)}] {spec.name}"
        if outcome["status"] == "failed":
            log.error("%s failed: %s (traceback in %s)", prefix, outcome["error"],
                      spec.run_dir(out_dir) / ERROR_FILE)
        else:
            report(f"{prefix}: {_describe(outcome['result'])}")

    results = [outcomes[spec.name] for spec in specs]
    report(f"suite '{suite.name}' done: {_summary(results)}")
    return results


def _execute_all(specs: list[RunSpec], out_dir: Path, run_fn: RunFn, runner: str, workers: int, progress: bool,
                 address: str | None, report: Callable[[str], None]) -> Iterator[tuple[RunSpec, Payload]]:
    """Yield `(spec, payload)` for each run as it finishes, with the chosen runner."""
    if not specs:
        return iter(())
    if runner == "ray":
        return _run_ray(specs, lambda s: _kwargs(s, out_dir, progress=False), run_fn, address)
    if workers == 1:
        return _run_sequential(specs, lambda s: _kwargs(s, out_dir, progress=progress), run_fn, report)
    return _run_pool(specs, lambda s: _kwargs(s, out_dir, progress=False), run_fn, workers)


def _kwargs(spec: RunSpec, out_dir: Path, progress: bool) -> dict[str, Any]:
    return {**spec.kwargs(out_dir), "resume": True, "progress": progress}


def _run_sequential(specs: Iterable[RunSpec], kwargs_for: Callable[[RunSpec], dict], run_fn: RunFn,
                    report: Callable[[str], None]) -> Iterator[tuple[RunSpec, Payload]]:
    for spec in specs:
        report(f"running {spec.name}")
        yield spec, _execute(run_fn, kwargs_for(spec))


def _run_pool(specs: list[RunSpec], kwargs_for: Callable[[RunSpec], dict], run_fn: RunFn,
              workers: int) -> Iterator[tuple[RunSpec, Payload]]:
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
            except Exception as e:  # the worker process died (BrokenProcessPool): this run is lost, not the suite
                payload = _failure(e)
            yield futures[future], payload
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(specs: list[RunSpec], kwargs_for: Callable[[RunSpec], dict], run_fn: RunFn,
             address: str | None) -> Iterator[tuple[RunSpec, Payload]]:
    """One Ray task per run (1 CPU; 1 GPU when the suite's device is CUDA). Results come back to this machine."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address)
    try:
        task = ray.remote(_execute_single_thread)
        refs = {
            task.options(num_cpus=1, num_gpus=1 if spec.device.startswith("cuda") else 0).remote(
                run_fn, kwargs_for(spec)): spec
            for spec in specs
        }
        waiting = list(refs)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            try:
                payload = ray.get(ready[0])
            except Exception as e:  # the worker or its node died: only this run is lost
                payload = _failure(e)
            yield refs[ready[0]], payload
    finally:
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
    torch = sys.modules.get("torch")  # the variables only act on a later import; a loaded torch is told directly
    if torch is not None:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _execute(run_fn: RunFn, kwargs: dict[str, Any]) -> Payload:
    """Do one run and return its result; an exception becomes a failure payload so the other runs go on."""
    try:
        returned = run_fn(**kwargs)
    except Exception as e:
        return _failure(e)
    result = _read_result(Path(kwargs["out_dir"]) / RESULT_FILE)
    if result is None:
        result = returned if isinstance(returned, dict) and "status" in returned else None
    if result is None:
        return {"result": None, "error": f"the run ended without writing {RESULT_FILE}", "traceback": None}
    return {"result": result, "error": None, "traceback": None}


def _execute_single_thread(run_fn: RunFn, kwargs: dict[str, Any]) -> Payload:
    """`_execute` for a Ray worker process."""
    _limit_threads()
    return _execute(run_fn, kwargs)


def _failure(e: BaseException) -> Payload:
    return {"result": None, "error": f"{type(e).__name__}: {e}",
            "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__))}


def _record(spec: RunSpec, out_dir: Path, payload: Payload) -> dict:
    """Turn a payload into an outcome, keeping the run folder in step: the result file (a Ray worker on another
    machine wrote it there, not here) and `error.log` (written on failure, removed on success)."""
    run_dir = spec.run_dir(out_dir)
    result = payload["result"]
    if result is None:
        atomic_write_text(run_dir / ERROR_FILE, payload["traceback"] or payload["error"] + "\n")
        return {**_outcome(spec, out_dir, None, skipped=False), "status": "failed", "error": payload["error"]}
    if not (run_dir / RESULT_FILE).exists():
        atomic_write_json(run_dir / RESULT_FILE, result)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    return _outcome(spec, out_dir, result, skipped=False)


def _outcome(spec: RunSpec, out_dir: Path, result: dict | None, skipped: bool) -> dict:
    return {"run": spec.name, "algo": spec.algo, "dataset": spec.dataset, "seed": spec.seed,
            "run_dir": str(spec.run_dir(out_dir)), "status": result.get("status") if result else None,
            "skipped": skipped, "error": None, "result": result}


def _read_result(path: Path) -> dict | None:
    """The result record at `path`, or None when it is missing or unreadable."""
    try:
        result = read_json(path)
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) else None


def _completed_result(spec: RunSpec, out_dir: Path) -> dict | None:
    """The run's result when it is completed for the suite's step budget; otherwise None (run it)."""
    result = _read_result(spec.run_dir(out_dir) / RESULT_FILE)
    if result is None or result.get("status") != "completed":
        return None
    if result.get("steps") != spec.steps:
        log.warning("%s: completed with steps=%s but the suite asks for %s; running it again",
                    spec.name, result.get("steps"), spec.steps)
        return None
    return result


def _describe(result: dict) -> str:
    """E.g. "completed, last score 65.3"."""
    score, ret = result.get("final_score"), result.get("final_return")
    value = f"last score {score:.1f}" if isinstance(score, int | float) else f"last return {ret}"
    return f"{result.get('status')}, {value}"


def _summary(outcomes: list[dict]) -> str:
    """E.g. "4 completed, 1 failed, 7 skipped"."""
    counts: dict[str, int] = {}
    for o in outcomes:
        key = "skipped" if o["skipped"] else o["status"]
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{n} {key}" for key, n in counts.items())


def _reporter(progress: bool) -> Callable[[str], None]:
    """Progress lines on stderr when `progress`, else debug log records."""
    if progress:
        return lambda msg: print(msg, file=sys.stderr, flush=True)
    return log.debug
