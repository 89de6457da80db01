"""Many seeds of one configuration trained at once in one process, as one batched ensemble.

Every parameter, buffer and optimiser state of the algorithm gets a leading seed dimension (`SeedBatch`); each
phase of an update (`Algorithm.phases`) runs for all seeds in one call under `torch.vmap`, and its optimiser
steps on the sum of the seeds' losses, which gives every seed exactly its own gradient (the seeds share no
parameter). Every seed draws its batches from its own sampling generator and its noise from its own stream, seeded
as the same seed trained alone, so a seed's run matches its single-seed run up to floating-point rounding.

Each seed has its own run folder `OUT/seed<S>/`, written exactly as a single-seed run writes it (run.json with the
same fingerprint, result.json, and a single-seed checkpoint.pt holding that seed's own RNG streams): a seed folder
can be evaluated, exported or resumed on its own, and a batch resumes from its seeds' checkpoints. A seed that
diverges is recorded `diverged` and leaves the batch; the others continue. Algorithms that define `update` instead
of `phases` train their seeds one after the other.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree
from torch import nn
from torch.func import vmap

from offline_rl.algos.base import Algorithm, Phase
from offline_rl.data.dataset import Batch, Dataset
from offline_rl.training.checkpoint import load_checkpoint
from offline_rl.training.run_folder import CHECKPOINT, RESULT, locked, read_record
from offline_rl.training.seeding import get_rng_state, seed_everything
from offline_rl.training.trainer import (
    RunResult,
    _config_dict,
    _TensorBoard,
    check_budget,
    check_evaluable,
    open_run,
    recording,
    sync_point,
    train,
)
from offline_rl.utils.progress import ProgressReporter


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    *path, leaf = name.split(".")
    for part in path:
        module = getattr(module, part)
    return module, leaf


class SeedBatch:
    """S instances of one algorithm (same class and config, different initial weights) as one: `carrier` is the
    first instance with every parameter and buffer replaced by the stack of the S instances' tensors, and its
    optimisers rebuilt over the stacks (Adam is elementwise, so one Adam on a stack is S Adams)."""

    def __init__(self, algos: list[Algorithm], total_steps: int) -> None:
        if not all(a.seed_batchable for a in algos):
            raise ValueError(f"{algos[0].name} does not define phases(); train its seeds one by one")
        self.n = len(algos)
        carrier = algos[0]
        names = {id(p): k for k, p in carrier.named_parameters()}
        groups = {key: [([names[id(p)] for p in g["params"]], {k: v for k, v in g.items() if k != "params"})
                        for g in opt.param_groups] for key, opt in carrier.optimizers.items()}
        defaults = {key: dict(opt.defaults) for key, opt in carrier.optimizers.items()}
        kinds = {key: type(opt) for key, opt in carrier.optimizers.items()}
        for name, p in list(carrier.named_parameters()):
            owner, leaf = _owner(carrier, name)
            stacked = torch.stack([dict(a.named_parameters())[name].detach() for a in algos])
            setattr(owner, leaf, nn.Parameter(stacked, requires_grad=p.requires_grad))
        for name, _ in list(carrier.named_buffers()):
            owner, leaf = _owner(carrier, name)
            owner.register_buffer(leaf, torch.stack([dict(a.named_buffers())[name] for a in algos]))
        params = dict(carrier.named_parameters())
        states = [{key: opt.state_dict() for key, opt in a.optimizers.items()} for a in algos]
        schedules = {key: sched.state_dict() for key, sched in carrier.schedulers.items()}
        carrier.optimizers = {key: kinds[key]([{"params": [params[n] for n in group], **opts}
                                               for group, opts in groups[key]], **defaults[key])
                              for key in groups}
        for key, opt in carrier.optimizers.items():  # the seeds' optimiser states, stacked (resume, restack)
            opt.load_state_dict(_stack_optimizer_states([st[key] for st in states]))
        carrier.configure_schedule(total_steps)
        for key, sched in carrier.schedulers.items():
            if key in schedules:
                sched.load_state_dict(schedules[key])
        self.carrier = carrier
        self.randomness = getattr(carrier, "vmap_randomness", "error")
        self.params = dict(carrier.named_parameters())
        self.tensors = dict([*carrier.named_parameters(), *carrier.named_buffers()])
        # Every slot that holds one of these tensors (a tensor tied into two modules has two): a phase runs with
        # one seed's slices put straight into the slots, as functional_call does but without its per-call walk
        # of the module tree (the walk, not the maths, is most of an update's time with small networks).
        key_of = {id(t): k for k, t in self.tensors.items()}
        self.slots = [(store, leaf, key_of[id(t)]) for module in carrier.modules()
                      for store in (module._parameters, module._buffers)
                      for leaf, t in store.items() if t is not None and id(t) in key_of]

    def _vmapped(self, phase: Phase, ctx: dict[str, Any]) -> dict[str, Any]:
        def one_seed(state: dict[str, torch.Tensor], seed_ctx: dict[str, Any]) -> dict[str, Any]:
            held = [store[leaf] for store, leaf, _ in self.slots]
            for store, leaf, key in self.slots:
                store[leaf] = state[key]
            try:
                result = phase.fn(seed_ctx)
            finally:
                for (store, leaf, _), tensor in zip(self.slots, held, strict=True):
                    store[leaf] = tensor
            return {k: v for k, v in result._asdict().items() if v is not None}

        return vmap(one_seed, randomness=self.randomness)(self.tensors, ctx)

    def update(self, batch: Batch, noise: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """One update of every seed: `batch` and `noise` have a leading seed dimension; so have the metrics."""
        algo = self.carrier
        ctx: dict[str, Any] = {"batch": batch, "noise": noise}
        metrics: dict[str, torch.Tensor] = {}
        params = self.params
        for phase in algo.phases(step):
            if phase.host:
                out = {k: v for k, v in phase.fn(ctx)._asdict().items() if v is not None}
            else:
                out = self._vmapped(phase, ctx)
            # What a phase leaves for later phases carries no gradient (a phase's loss is its own): detached, so that
            # the graph of one phase's flat parameters is not walked again by a later backward.
            ctx.update(torch.utils._pytree.tree_map(_detach, out.get("updates", {})))
            if phase.optimizer is not None:
                opt = algo.optimizers[phase.optimizer]
                opt.zero_grad(set_to_none=True)
                if "grads" in out:
                    for key, grad in out["grads"].items():
                        params[key].grad = grad.detach().contiguous()  # fused Adam needs contiguous grads
                else:
                    out["loss"].sum().backward()  # Σ_s L_s: each seed's parameters get ∇L_s exactly
                opt.step()
            if phase.after is not None:
                phase.after()
            metrics.update(out.get("metrics", {}))
        return metrics

    def update_seeds(self, samples: list[Batch], noise: list[torch.Generator], step: int) -> dict[str, torch.Tensor]:
        """One update of every seed from its own batch and noise stream (`update` on their stacks)."""
        stacked = Batch(*(torch.stack(parts) for parts in zip(*samples, strict=True)))
        shapes = self.carrier.noise_shapes(len(samples[0].rewards), step)
        draws = [{k: torch.randn(shape, generator=g, device=g.device) for k, shape in shapes.items()} for g in noise]
        return self.update(stacked, {k: torch.stack([d[k] for d in draws]) for k in shapes}, step)

    def seed_state(self, i: int) -> dict[str, Any]:
        """Seed i's part of the batch, as the state_dict of a single instance."""
        state = self.carrier.state_dict()

        def take(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                return x[i].clone() if x.dim() > 0 else x.clone()
            if isinstance(x, dict):
                return {k: (v if k == "param_groups" else take(v)) for k, v in x.items()}
            return x

        return {"modules": {k: v[i].clone() for k, v in state["modules"].items()},
                "optimizers": {k: take(v) for k, v in state["optimizers"].items()},
                "schedulers": copy.deepcopy(state["schedulers"])}


def _detach(x: Any) -> Any:
    return x.detach() if isinstance(x, torch.Tensor) else x


def _stack_optimizer_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One optimiser state_dict from the same optimiser's state in S instances: per-parameter tensors stacked
    along a new seed dimension, scalars (Adam's step) taken from the first (the seeds share the step count)."""
    stacked = {}
    for index, entry in states[0]["state"].items():
        stacked[index] = {k: torch.stack([st["state"][index][k] for st in states]) if v.dim() > 0 else v
                          for k, v in entry.items()}
    return {"state": stacked, "param_groups": copy.deepcopy(states[0]["param_groups"])}


class SeedLoop:
    """The same seeds updated one after the other, each a plain single-seed instance, each drawing its noise from its
    own stream (torch's generator is set to the seed's stream for its update): bit-equal to single-seed runs, and
    the faster way on a CPU once the networks are wide (the batched matmuls of vmap lose to plain ones)."""

    def __init__(self, algos: list[Algorithm]) -> None:
        self.algos = algos

    def update_seeds(self, samples: list[Batch], noise: list[torch.Generator], step: int) -> dict[str, torch.Tensor]:
        outs = []
        for algo, batch, g in zip(self.algos, samples, noise, strict=True):
            get, put = (torch.get_rng_state, torch.set_rng_state) if g.device.type == "cpu" else \
                (torch.cuda.get_rng_state, torch.cuda.set_rng_state)
            saved = get()
            put(g.get_state())
            outs.append(algo.update(batch, step))
            g.set_state(get())
            put(saved)
        return {k: torch.stack([o[k].detach().reshape(()) for o in outs]) for k in outs[0]}


VECTORISE_CPU_PARAMS = 32_768
"""On a CPU, seeds train vectorised (`SeedBatch`) when each has at most this many trainable parameters, else one
after the other (`SeedLoop`): `benchmarks/seed_speed.py`, 5 seeds, one thread, gave vectorised/sequential 1.25x
(TD3+BC) and 1.49x (IQL) at 64-64 networks, 0.97x / 1.05x at 128-128 and 0.79x / 0.95x at 256-256. On CUDA they
always train vectorised."""


def choose_mode(algo: Algorithm, mode: str = "auto") -> str:
    """"vmap" or "loop" for `algo`'s seeds; "auto" picks by device and size (VECTORISE_CPU_PARAMS)."""
    if mode not in ("auto", "vmap", "loop"):
        from offline_rl.errors import ConfigError

        raise ConfigError(f"seed mode must be auto, vmap or loop, got '{mode}'")
    if mode != "auto":
        return mode
    if algo.device.type != "cpu":
        return "vmap"
    trainable = sum(p.numel() for p in algo.parameters() if p.requires_grad)
    return "vmap" if trainable <= VECTORISE_CPU_PARAMS else "loop"


class _SeedRun:
    """What one seed of a batch carries: its folder, record, streams and a single-seed instance (`shell`) that
    holds its state at sync points (for evaluation and its checkpoint)."""

    def __init__(self, seed: int, out: Path | None, shell: Algorithm, result: RunResult, sampler: torch.Generator,
                 noise: torch.Generator) -> None:
        self.seed, self.out, self.shell, self.result = seed, out, shell, result
        self.sampler, self.noise = sampler, noise
        self.logger = _TensorBoard(out, purge_step=None)
        self.alive = True

    def rng_state(self) -> dict[str, Any]:
        """The RNG states a single-seed run of this seed would store: this seed's noise stream as torch's."""
        state = get_rng_state()
        if self.noise.device.type == "cpu":
            state["torch"] = self.noise.get_state()
        else:
            state["cuda"] = [self.noise.get_state()]
        return state


def fresh_instances(make: Callable[[], Algorithm], seeds: list[int]) -> tuple[list[Algorithm], list[torch.Tensor]]:
    """One instance per seed, each built right after `seed_everything(seed)` as a single-seed run builds it, with
    the state of torch's generator that such a run would draw its noise from next."""
    algos, states = [], []
    for seed in seeds:
        seed_everything(seed)
        algos.append(make())
        states.append(torch.get_rng_state())
    return algos, states


def train_seeds(make: Callable[[], Algorithm], dataset: Dataset, steps: int, seeds: list[int],
                eval_every: int = 5000, eval_episodes: int = 10, out_dir: str | Path | None = None,
                resume: bool = False, overwrite: bool = False, ckpt_every: int | None = None,
                log_every: int = 1000, progress: bool | None = None, mode: str = "auto") -> list[RunResult]:
    """Train `make()` (a fresh instance of the algorithm) once per seed, all seeds at once; returns the records
    in the order of `seeds`. With `out_dir`, seed S writes `out_dir/seed<S>/` as `train` would (the same
    fingerprint, so a seed folder can be resumed or evaluated alone; finished seeds are kept with `resume`).
    `mode`: "vmap" (`SeedBatch`), "loop" (`SeedLoop`) or "auto" (`choose_mode`); the results do not depend on it
    beyond float rounding."""
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and at least one, got {seeds}")
    for seed in seeds:
        check_budget(steps, seed, eval_every, eval_episodes)
    check_evaluable(dataset, eval_every, eval_episodes)
    out = Path(out_dir) if out_dir is not None else None
    probe = make()
    if not probe.seed_batchable:
        return [train(_seeded(make, seed), dataset, steps, seed, eval_every, eval_episodes,
                      None if out is None else out / f"seed{seed}", resume, ckpt_every, log_every, progress,
                      overwrite=overwrite) for seed in seeds]
    with contextlib.ExitStack() as stack:
        plans: dict[int, tuple[str, str | None]] = {}
        for seed in seeds:
            if out is None:
                plans[seed] = ("fresh", None)
                continue
            stack.enter_context(locked(out / f"seed{seed}"))
            plans[seed] = open_run(out / f"seed{seed}", probe, dataset, steps, seed, eval_every, eval_episodes,
                                   resume, overwrite)
        results = {s: RunResult.from_dict(read_record(out / f"seed{s}" / RESULT))
                   for s, (action, _) in plans.items() if action == "done"}
        todo = [s for s in seeds if s not in results]
        if todo:
            results.update(_train_batch(make, dataset, steps, todo, plans, eval_every, eval_episodes, out,
                                        ckpt_every, log_every, progress, mode))
    return [results[s] for s in seeds]


def _seeded(make: Callable[[], Algorithm], seed: int) -> Algorithm:
    seed_everything(seed)
    return make()


def _train_batch(make: Callable[[], Algorithm], dataset: Dataset, steps: int, seeds: list[int],
                 plans: dict[int, tuple[str, str | None]], eval_every: int, eval_episodes: int, out: Path | None,
                 ckpt_every: int | None, log_every: int, progress: bool | None, mode: str) -> dict[int, RunResult]:
    algos, noise_states = fresh_instances(make, seeds)
    first = algos[0]
    mode = choose_mode(first, mode)
    device = first.device
    dataset = dataset.to(device)
    batch_size = getattr(first.config, "batch_size", 256)
    eval_every = eval_every if eval_episodes else 0
    ckpt_every = ckpt_every or eval_every or steps
    summary = dataset.summary()
    runs: list[_SeedRun] = []
    for seed, algo, noise_state in zip(seeds, algos, noise_states, strict=True):
        algo.configure_schedule(steps)
        noise = torch.Generator(device=device)
        if device.type == "cpu":
            noise.set_state(noise_state)
        else:
            noise.manual_seed(seed)  # a single-seed run's CUDA generator right after seed_everything(seed)
        result = RunResult(algo=first.name, dataset=dataset.name or dataset.source, dataset_source=dataset.source,
                           dataset_label=dataset.label, behavior_score=summary["normalized_return_mean"], seed=seed,
                           steps=steps, eval_every=eval_every, eval_episodes=eval_episodes,
                           config=_config_dict(first.config), device=str(device), fingerprint=plans[seed][1])
        # vmap: a single-seed holder of the seed's state at sync points; loop: the instance itself
        shell = algo if mode == "loop" else make()
        shell.configure_schedule(steps)
        runs.append(_SeedRun(seed, None if out is None else out / f"seed{seed}", shell, result,
                             torch.Generator(device=device).manual_seed(seed), noise))
    if mode == "loop":
        for algo in algos:
            algo.prepare(dataset)
    else:
        first.prepare(dataset)  # statistics, reward scale, search index: the same for every seed
        for algo in algos[1:]:
            for name, buf in first.named_buffers():
                dict(algo.named_buffers())[name].copy_(buf)
    start, elapsed, train_time = 0, 0.0, 0.0
    if any(plans[r.seed][0] == "resume" for r in runs):
        start, elapsed, train_time = _restore(runs, algos, plans)
    batch: SeedBatch | SeedLoop = SeedLoop(algos) if mode == "loop" else SeedBatch(algos, steps)
    reporter = ProgressReporter(steps, start, enabled=progress, label=f"train {len(seeds)} seeds ({mode})")
    quiet = ProgressReporter(steps, start, enabled=False)
    t0 = time.perf_counter() - elapsed
    timing = [train_time]
    recorders = contextlib.ExitStack()
    for run in runs:
        recorders.enter_context(recording(run.result, run.out, t0, quiet, run.logger, lambda: timing[0]))
    with recorders:
        t_train = time.perf_counter()
        for step in range(start + 1, steps + 1):
            live = [r for r in runs if r.alive]
            metrics = batch.update_seeds([dataset.sample(batch_size, r.sampler) for r in live],
                                         [r.noise for r in live], step)
            is_eval = bool(eval_every) and (step % eval_every == 0 or step == steps)
            is_ckpt = step % ckpt_every == 0 or step == steps
            if step % log_every and not is_eval and not is_ckpt:
                continue
            timing[0] += time.perf_counter() - t_train
            diverged = False
            for i, run in enumerate(live):
                if isinstance(batch, SeedBatch):
                    run.shell.load_state_dict(batch.seed_state(i))
                ok = sync_point(run.result, run.shell, {k: v[i] for k, v in metrics.items()}, step, step, timing[0],
                                dataset.env_id, is_eval, is_ckpt, eval_episodes, run.seed, dataset.ref_min_score,
                                dataset.ref_max_score, run.logger, quiet, run.out, run.sampler, t0,
                                rng_state=run.rng_state)
                if not ok:
                    run.alive, diverged = False, True
            head = next((r.result for r in runs if r.alive), runs[0].result)
            reporter.update(step, head.updates_per_s, head.final_score, head.final_return, {})
            if not any(r.alive for r in runs):
                break
            if diverged:  # go on with the seeds still alive, at their current state
                alive = [r for r in runs if r.alive]
                batch = SeedLoop([r.shell for r in alive]) if isinstance(batch, SeedLoop) else \
                    _restack(make, alive, steps, dataset)
            t_train = time.perf_counter()
    reporter.close()
    return {r.seed: r.result for r in runs}


def _restore(runs: list[_SeedRun], algos: list[Algorithm], plans: dict[int, tuple[str, str | None]]
             ) -> tuple[int, float, float]:
    """Load each resumed seed's checkpoint into its instance and streams; every seed of a batch resumes from the
    same step (seeds at another step are refused: resume them on their own)."""
    steps = {}
    for run, algo in zip(runs, algos, strict=True):
        if plans[run.seed][0] != "resume":
            steps[run.seed] = (0, 0.0, 0.0)
            continue
        state = load_checkpoint(run.out / CHECKPOINT, algo.device)
        algo.load_state_dict(state["algo"])
        run.sampler.set_state(state["sampler_rng"])
        noise_state = state["rng"]["torch"] if run.noise.device.type == "cpu" else state["rng"]["cuda"][0]
        run.noise.set_state(noise_state)
        run.result.curve = state["curve"]
        steps[run.seed] = (state["step"], state["elapsed"], state["train_time"])
    if len({s[0] for s in steps.values()}) > 1:
        from offline_rl.errors import UserError

        raise UserError(f"the seeds' checkpoints are at different steps ({ {k: v[0] for k, v in steps.items()} }); "
                        "resume them one at a time (offline-rl train --seed S --resume)")
    return max(steps.values())


def _restack(make: Callable[[], Algorithm], live: list[_SeedRun], steps: int, dataset: Dataset) -> SeedBatch:
    """A new batch of the seeds still alive, from their single-seed states (their shells, just synced)."""
    algos = []
    for run in live:
        algo = make()
        algo.configure_schedule(steps)
        algo.load_state_dict(run.shell.state_dict())
        algos.append(algo)
    algos[0].prepare(dataset)
    return SeedBatch(algos, steps)
