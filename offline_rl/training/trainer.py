"""The shared training loop: sample → update → (log, evaluate, checkpoint), for any registered algorithm.

The trainer names no algorithm. Metrics stay on the device and are read only at sync points (log, evaluation,
checkpoint). Checkpoints are atomic and hold everything needed for a bit-identical resume on CPU: the algorithm
with its optimisers, all RNG states, the step and the curve so far.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from offline_rl import __version__
from offline_rl.algos.base import Algorithm
from offline_rl.data.dataset import Dataset
from offline_rl.errors import UserError
from offline_rl.evaluation import evaluate
from offline_rl.training.checkpoint import load_checkpoint, save_checkpoint
from offline_rl.training.graphs import UpdateStep
from offline_rl.training.progress import ProgressReporter
from offline_rl.training.run_folder import (
    CHECKPOINT,
    RESULT,
    RUN,
    fingerprint,
    locked,
    plan,
    read_record,
    run_fields,
)
from offline_rl.training.seeding import get_rng_state, set_rng_state
from offline_rl.utils.io import atomic_write_json

EVAL_SEED_OFFSET = 100  # evaluation episodes use seed + 100 (PRDC's convention), separate from training RNG
MAX_SEED = 2**32 - 1  # numpy's seed range


@dataclass
class RunResult:
    """One run's record, written as `result.json`. `final_score` is the last evaluation, `best_score` the best.

    `status` is "running" until the loop ends, then "completed", "diverged" (a non-finite metric), "interrupted"
    (Ctrl-C), "time_limit" (online runs) or "failed" (an exception, named in `error`). `fingerprint` identifies
    the run's whole configuration (`offline_rl.training.run_folder`).
    """

    algo: str
    dataset: str
    dataset_source: str
    dataset_label: str
    behavior_score: float | None
    seed: int
    steps: int
    eval_every: int
    eval_episodes: int
    config: dict[str, Any]
    curve: list[list[float | None]] = field(default_factory=list)
    final_score: float | None = None
    best_score: float | None = None
    final_return: float | None = None
    best_return: float | None = None
    wall_time_s: float = 0.0
    updates_per_s: float = 0.0
    device: str = "cpu"
    version: str = __version__
    status: str = "running"
    error: str | None = None
    fingerprint: str | None = None
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    companion_curves: dict[str, list[list[float | None]]] = field(default_factory=dict)
    """[[step, normalized_score, return]...] per label of `Algorithm.companion_policies` (CDSA: "base")."""
    score_labels: dict[str, str] = field(default_factory=lambda: {
        "final_score": "last: the final evaluation's normalised score",
        "best_score": "best: the maximum normalised score over all evaluations"})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> RunResult:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})


def check_budget(steps: int, seed: int, eval_every: int, eval_episodes: int) -> None:
    """The run's numbers are in range (UserError naming the option otherwise)."""
    for name, value, low in (("steps", steps, 1), ("seed", seed, 0), ("eval-every", eval_every, 0),
                             ("eval-episodes", eval_episodes, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"--{name} must be an integer ≥ {low}, got {value!r}")
    if seed > MAX_SEED:
        raise UserError(f"--seed must be at most {MAX_SEED}, got {seed}")


def check_evaluable(dataset: Dataset, eval_every: int, eval_episodes: int) -> None:
    """A run that evaluates (eval_every and eval_episodes both non-zero) needs the dataset's env."""
    if eval_every and eval_episodes and dataset.env_id is None:
        raise UserError(f"{dataset.source or dataset.name}: the dataset names no env to evaluate on; give one "
                        "(--env ENV_ID for a D4RL-format file) or train without evaluation (--eval-episodes 0)")


def train(algo: Algorithm, dataset: Dataset, steps: int, seed: int = 0, eval_every: int = 5000,
          eval_episodes: int = 10, out_dir: str | Path | None = None, resume: bool = False,
          ckpt_every: int | None = None, log_every: int = 1000, progress: bool | None = None,
          batch_size: int | None = None, cuda_graphs: bool = True, overwrite: bool = False,
          seeds: list[int] | None = None) -> RunResult | list[RunResult]:
    """Train `algo` on `dataset` for `steps` gradient updates and return the run record.

    With `seeds`, train that many fresh instances of `algo`'s class and config (each initialised as
    `seed_everything(seed)` would) at once in this process, into `out_dir/seed<S>/`, and return their records
    (`offline_rl.training.seeds`); `algo` itself is then only the template.

    Evaluation runs every `eval_every` updates and at the end, `eval_episodes` episodes each (0: never). With
    `out_dir`, the run holds the folder's lock while it runs and writes `run.json` (what the run is, with its
    fingerprint), TensorBoard logs, atomic checkpoints every `ckpt_every` steps (default: each evaluation) and
    `result.json`. A folder that already holds a run is refused unless it is this very run and `resume=True`
    (continued from `checkpoint.pt`, or returned as it is when finished) or `overwrite=True` (replaced). On CUDA,
    updates of a `graph_safe` algorithm replay from CUDA graphs unless `cuda_graphs=False`.
    """
    if seeds is not None:
        from offline_rl.training.seeds import train_seeds

        return train_seeds(lambda: type(algo)(algo.spec, algo.config, algo.device).to(algo.device), dataset, steps,
                           list(seeds), eval_every, eval_episodes, out_dir, resume, overwrite, ckpt_every, log_every,
                           progress)
    check_budget(steps, seed, eval_every, eval_episodes)
    check_evaluable(dataset, eval_every, eval_episodes)
    if out_dir is None:
        return _train(algo, dataset, steps, seed, eval_every, eval_episodes, None, False, ckpt_every, log_every,
                      progress, batch_size, cuda_graphs, None)
    out = Path(out_dir)
    with locked(out):
        action, run_fingerprint = open_run(out, algo, dataset, steps, seed, eval_every, eval_episodes, resume,
                                           overwrite)
        if action == "done":
            return RunResult.from_dict(read_record(out / RESULT))
        return _train(algo, dataset, steps, seed, eval_every, eval_episodes, out, action == "resume", ckpt_every,
                      log_every, progress, batch_size, cuda_graphs, run_fingerprint)


def open_run(out: Path, algo: Algorithm, dataset: Dataset, steps: int, seed: int, eval_every: int,
             eval_episodes: int, resume: bool, overwrite: bool) -> tuple[str, str]:
    """Check the (locked) run folder against this run (`run_folder.plan`) and, unless it is done, write its
    `run.json`. Returns (what to do: "fresh", "resume" or "done", the run's fingerprint)."""
    fields = run_fields(algo.name, _config_dict(algo.config), dataset.source, dataset.content_hash(), steps,
                        eval_every, eval_episodes, seed + EVAL_SEED_OFFSET, seed)
    action = plan(out, fields, resume, overwrite)
    if action != "done":
        atomic_write_json(out / RUN, {
            "algo": algo.name, "config": _config_dict(algo.config), "spec": algo.spec.to_dict(),
            "dataset_source": dataset.source, "env_id": dataset.env_id, "ref_min_score": dataset.ref_min_score,
            "ref_max_score": dataset.ref_max_score, "seed": seed, "steps": steps, "eval_every": eval_every,
            "eval_episodes": eval_episodes, "eval_seed": seed + EVAL_SEED_OFFSET, "fingerprint": fingerprint(fields),
            "fingerprint_fields": fields})
    return action, fingerprint(fields)


def _train(algo: Algorithm, dataset: Dataset, steps: int, seed: int, eval_every: int, eval_episodes: int,
           out: Path | None, resume: bool, ckpt_every: int | None, log_every: int, progress: bool | None,
           batch_size: int | None, cuda_graphs: bool, run_fingerprint: str | None) -> RunResult:
    dataset = dataset.to(algo.device)
    batch_size = batch_size or getattr(algo.config, "batch_size", 256)
    eval_every = eval_every if eval_episodes else 0
    ckpt_every = ckpt_every or eval_every or steps
    summary = dataset.summary()
    result = RunResult(algo=algo.name, dataset=dataset.name or dataset.source, dataset_source=dataset.source,
                       dataset_label=dataset.label, behavior_score=summary["normalized_return_mean"], seed=seed,
                       steps=steps, eval_every=eval_every, eval_episodes=eval_episodes,
                       config=_config_dict(algo.config), device=str(algo.device), fingerprint=run_fingerprint)

    algo.configure_schedule(steps)
    algo.prepare(dataset)
    generator = torch.Generator(device=dataset.device).manual_seed(seed)
    start, elapsed, train_time = 0, 0.0, 0.0
    if resume and out is not None and (out / CHECKPOINT).exists():
        state = restore_checkpoint(out / CHECKPOINT, algo, generator, result)
        start, elapsed, train_time = state["step"], state["elapsed"], state["train_time"]

    update = UpdateStep(algo, lambda gen: dataset.sample(batch_size, gen), generator, cuda_graphs)
    logger = _TensorBoard(out, purge_step=start + 1 if start else None)
    reporter = ProgressReporter(steps, start, enabled=progress)
    t0 = time.perf_counter() - elapsed
    metrics: dict[str, torch.Tensor] = {}
    timing = [train_time]
    with recording(result, out, t0, reporter, logger, lambda: timing[0]):
        t_train = time.perf_counter()
        for step in range(start + 1, steps + 1):
            metrics = update(step)
            is_eval = bool(eval_every) and (step % eval_every == 0 or step == steps)
            is_ckpt = step % ckpt_every == 0 or step == steps
            if step % log_every and not is_eval and not is_ckpt:
                continue
            timing[0] += time.perf_counter() - t_train
            if not sync_point(result, algo, metrics, step, step, timing[0], dataset.env_id, is_eval, is_ckpt,
                              eval_episodes, seed, dataset.ref_min_score, dataset.ref_max_score, logger, reporter,
                              out, generator, t0):
                break
            t_train = time.perf_counter()
    return result


@contextmanager
def recording(result: RunResult, out: Path | None, t0: float, reporter: ProgressReporter, logger: _TensorBoard,
              train_time: Callable[[], float]) -> Iterator[None]:
    """Run a training loop's body and always leave a true record: "completed" only when the loop ran to its end
    (a status set inside, such as "diverged", is kept), "interrupted" on Ctrl-C, "failed" with the error on any
    other exception (which propagates). `result.json` is written last, whatever happened."""
    try:
        yield
        if result.status == "running":
            result.status = "completed"
    except KeyboardInterrupt:
        result.status = "interrupted"
        raise
    except BaseException as e:
        result.status, result.error = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        reporter.close()
        logger.close()
        result.wall_time_s = time.perf_counter() - t0
        _summarise(result, train_time(), result.step)
        if out is not None:
            try:
                atomic_write_json(out / RESULT, result.to_dict())
            except OSError as e:  # a full disk must not hide the run's own error
                print(f"could not write {out / RESULT}: {e}", file=sys.stderr)
                if result.status != "failed":
                    raise


def restore_checkpoint(path: Path, algo: Algorithm, generator: torch.Generator, result: RunResult) -> dict[str, Any]:
    """Load a checkpoint written by `sync_point` back into `algo`, the RNGs, the sampler and `result.curve`;
    returns the whole state (step, elapsed, train_time and any loop-specific entries). A truncated or foreign
    checkpoint is a UserError naming the file."""
    state = load_checkpoint(path, algo.device)
    try:
        algo.load_state_dict(state["algo"])
        set_rng_state(state["rng"])
        generator.set_state(state["sampler_rng"])
        result.curve = state["curve"]
        result.companion_curves = state.get("companion_curves", {})
        for key in ("step", "elapsed", "train_time"):
            state[key]  # noqa: B018 - present in every checkpoint of this run
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{path}: not a checkpoint of this run ({type(e).__name__}: {str(e).splitlines()[0]}); "
                        "delete it or pass --overwrite to start again") from e
    return state


def sync_point(result: RunResult, algo: Algorithm, metrics: dict[str, torch.Tensor], step: int, n_updates: int,
               train_time: float, env_id: str | None, is_eval: bool, is_ckpt: bool, eval_episodes: int, seed: int,
               ref_min_score: float | None, ref_max_score: float | None, logger: _TensorBoard,
               reporter: ProgressReporter, out: Path | None, generator: torch.Generator, t0: float,
               extra: dict[str, float] | None = None,
               extra_state: Callable[[], dict[str, Any]] | None = None,
               rng_state: Callable[[], dict[str, Any]] = get_rng_state) -> bool:
    """What both training loops do at a sync point: read the metrics (the only host sync), stop on a non-finite
    value (status `diverged`, the last good checkpoint kept), log, evaluate, report and checkpoint.

    `extra_state()` adds the loop's own state to a checkpoint (the online loop's replay buffer); `rng_state()`
    gives the RNG states it stores (default: the process's; a seed trained with others: its own streams).
    Returns False when the run diverged.
    """
    values = {k: float(v) for k, v in metrics.items()} | (extra or {})
    result.metrics, result.step = values, step
    if not all(math.isfinite(v) for v in values.values()):
        result.status = "diverged"
        reporter.log(f"diverged at step {step}: non-finite {values}; keeping the last good checkpoint")
        return False
    logger.scalars("train", values, step)
    if is_eval:
        ev = evaluate(algo.policy(), env_id, eval_episodes, seed + EVAL_SEED_OFFSET, ref_min_score, ref_max_score)
        result.curve.append([step, ev.normalized_score, ev.mean_return])
        logger.scalars("eval", {"return": ev.mean_return, "normalized_score": ev.normalized_score}, step)
        for label, companion in algo.companion_policies().items():
            ev = evaluate(companion, env_id, eval_episodes, seed + EVAL_SEED_OFFSET, ref_min_score, ref_max_score)
            result.companion_curves.setdefault(label, []).append([step, ev.normalized_score, ev.mean_return])
            logger.scalars(f"eval_{label}", {"return": ev.mean_return, "normalized_score": ev.normalized_score}, step)
    _summarise(result, train_time, n_updates)
    reporter.update(step, result.updates_per_s, result.final_score, result.final_return, values)
    if is_ckpt and out is not None:
        save_checkpoint(out / CHECKPOINT, {
            "algo": algo.state_dict(), "rng": rng_state(), "sampler_rng": generator.get_state(), "step": step,
            "elapsed": time.perf_counter() - t0, "train_time": train_time, "curve": result.curve,
            "companion_curves": result.companion_curves,
            **(extra_state() if extra_state is not None else {})})
    return True


def _summarise(result: RunResult, train_time: float, step: int) -> None:
    """Fill the last/best scores and the update rate from the curve so far."""
    if result.curve:
        last = result.curve[-1]
        result.final_score, result.final_return = last[1], last[2]
        result.best_return = max(p[2] for p in result.curve)
        scores = [p[1] for p in result.curve if p[1] is not None]
        result.best_score = max(scores) if scores else None
    if train_time > 0:
        result.updates_per_s = step / train_time  # cumulative over resumes; evaluation time excluded


def _config_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})


class _TensorBoard:
    """TensorBoard scalars under `out_dir/tb`; a no-op without an output folder."""

    def __init__(self, out: Path | None, purge_step: int | None) -> None:
        self.writer = None
        if out is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tb"), purge_step=purge_step)

    def scalars(self, prefix: str, values: dict[str, float | None], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                if v is not None:
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
