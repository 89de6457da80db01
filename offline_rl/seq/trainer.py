"""The training loop: sample prompts -> size groups -> roll out -> score -> hook -> learner update -> log.

    import offline_rl.seq as seq
    result = seq.train(task="copy", method="grpo", model="tiny", steps=200, out_dir="runs/copy")

P1 (sampler) and P2 (budget) run on the global batch, identically on every rank, and each rank rolls out its
share of the prompts. After the update the step's groups (from every rank) go into the statistics store, and the
method's persistent state is broadcast from rank 0, so both are the same everywhere; both are checkpointed.
Finite pools hold out `eval_holdout` of their problems for evaluation (never trained on).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from offline_rl.errors import UserError
from offline_rl.seq.distributed import init_world, wrap_ddp
from offline_rl.seq.learner import Learner
from offline_rl.seq.methods import get_method
from offline_rl.seq.methods.base import REQUIREMENTS, Method
from offline_rl.seq.points.budgets import BudgetContext
from offline_rl.seq.points.hooks import HookContext
from offline_rl.seq.points.samplers import SamplerContext
from offline_rl.seq.policy import (
    TINY_DEFAULTS,
    build_tiny_model,
    load_policy,
    model_info,
    save_policy,
    unwrap,
)
from offline_rl.seq.rollout import (
    Generator,
    HFGenerator,
    RolloutBatch,
    SamplingParams,
    collect,
    concat_batches,
    demonstrations,
)
from offline_rl.seq.stats import GroupRecord, PromptStats
from offline_rl.seq.tasks import Task, make_task
from offline_rl.seq.tasks.base import HINT_TIERS
from offline_rl.seq.tokenizer import CharTokenizer, load_tokenizer
from offline_rl.utils.io import atomic_write, atomic_write_json

EVAL_OFFSET = 10**9  # held-out problem indices of endless tasks
EXEMPLAR_OFFSET = 2 * 10**9  # exemplar-pool indices of endless tasks (Automate-CoT)
CHECKPOINT = "checkpoint.pt"


@dataclass
class SeqConfig:
    task: str = "arithmetic"
    method: str = "grpo"
    model: str = "tiny"  # "tiny", "tiny-gpt2" or a local model directory
    tokenizer: str | None = None  # a local tokenizer directory (default: the model's, or the character tokenizer)
    steps: int = 100
    group_size: int = 8  # G
    prompts_per_step: int = 8  # over all ranks
    max_new_tokens: int = 8
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int = 0  # 0: off (full softmax, the distribution the learner scores)
    top_p: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_iterations: int | None = None  # optimiser passes over each rollout batch (None: the method's default)
    minibatches: int | None = None  # optimiser steps per pass (None: the method's default)
    seed: int = 0
    out_dir: str | None = None
    eval_every: int = 0  # 0: only at the end
    eval_problems: int = 64
    eval_holdout: float = 0.2  # finite pools: this fraction is held out for evaluation (0: evaluate in-sample)
    log_every: int = 10
    device: str = "cpu"
    generator: str = "fast"  # "fast" (KV-cache sampler, same draws as generate), "hf" (generate) or "vllm"
    turn_marker: str | None = None  # token that ends a turn (default: the task's own, e.g. "|" for multistep)
    task_options: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, Any] = field(default_factory=dict)
    tiny: dict[str, Any] = field(default_factory=lambda: dict(TINY_DEFAULTS))
    save_model: bool = True
    checkpoint_every: int = 0  # with out_dir: also save OUT/checkpoint.pt every N steps (always at the end)
    resume: bool = False  # continue from OUT/checkpoint.pt when it exists
    progress: bool | None = None  # None: a bar on a TTY


@dataclass
class SeqResult:
    config: dict[str, Any]
    method: dict[str, Any]
    curve: list[list[float]]  # [step, mean training reward]
    eval_curve: list[list[float]]  # [step, greedy exact-match on held-out problems]
    final_reward: float
    final_eval: float
    wall_time_s: float
    tokens_per_s: float
    step_times: list[float]
    step_tokens: list[int]
    model_dir: str | None
    model: dict[str, Any]
    task: dict[str, Any]
    param_norm: float = 0.0  # L2 norm of the final parameters (equal on every data-parallel rank)
    world_size: int = 1
    status: str = "completed"
    eval_split: str = "held-out"  # "held-out" problems, or "train" when a finite pool is evaluated in-sample
    state: dict[str, Any] = field(default_factory=dict)  # the method's persistent state at the end

    def to_dict(self) -> dict[str, Any]:
        from offline_rl import __version__

        return {**dataclasses.asdict(self), "version": __version__}


def build_policy(cfg: SeqConfig, task: Task) -> tuple[nn.Module, Any]:
    if cfg.model in ("tiny", "tiny-gpt2"):
        tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else CharTokenizer(task.alphabet)
        arch = "gpt2" if cfg.model == "tiny-gpt2" else "llama"
        model = build_tiny_model(tok.vocab_size, arch, cfg.seed, tok.pad_id, tok.bos_id or tok.pad_id, tok.eos_id,
                                 **cfg.tiny)
        return model, tok
    model, tok = load_policy(cfg.model)
    return model, (load_tokenizer(cfg.tokenizer) if cfg.tokenizer else tok)


def make_generator(cfg: SeqConfig, model: nn.Module, tok: Any) -> Generator:
    if cfg.generator == "hf":
        return HFGenerator(model, tok.pad_id, tok.eos_id)
    if cfg.generator == "fast":
        from offline_rl.seq.fast_generator import CachedSampler

        return CachedSampler(model, tok.pad_id, tok.eos_id)
    if cfg.generator == "vllm":
        from offline_rl.seq.vllm_generator import VLLMGenerator

        if cfg.model.startswith("tiny"):
            raise UserError("the vllm generator needs a model directory (--model PATH)")
        return VLLMGenerator(cfg.model, tok.pad_id, tok.eos_id, device=cfg.device)
    raise UserError(f"unknown generator {cfg.generator!r}; use fast, hf or vllm")


def split_pool(task: Task, holdout: float, eval_problems: int) -> tuple[list[int] | None, list[int], str]:
    """(training indices or None for endless, evaluation indices, "held-out" or "train").

    A finite pool is shuffled with a fixed seed (the split does not depend on the training seed) and its last
    max(1, round(holdout * size)) problems are held out; with holdout 0 the evaluation is in-sample.
    """
    if not task.size:
        return None, list(range(EVAL_OFFSET, EVAL_OFFSET + eval_problems)), "held-out"
    order = list(range(task.size))
    random.Random(f"holdout:{task.name}:{task.size}").shuffle(order)
    if holdout <= 0:
        return order, order[:eval_problems], "train"
    n_eval = max(1, round(holdout * task.size))
    if n_eval >= task.size:
        raise UserError(f"eval_holdout {holdout} leaves no training problems in a pool of {task.size}")
    return order[:-n_eval], order[-n_eval:][:eval_problems], "held-out"


@torch.no_grad()
def evaluate(model: nn.Module, tok: Any, task: Task, n_problems: int, max_new_tokens: int,
             generator: str = "fast", indices: list[int] | None = None, holdout: float = 0.2) -> float:
    """Greedy exact-match over held-out problems (`indices`, default: the split of `split_pool`)."""
    gen = make_generator(SeqConfig(generator="hf" if generator == "vllm" else generator), model, tok)
    if indices is None:
        indices = split_pool(task, holdout, n_problems)[1]
    problems = [task.problem(i) for i in indices[:n_problems]]
    batch = collect(gen, tok, task, problems, [1] * len(problems),
                    SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    return float(first_reward(batch).float().mean())


def check_requirements(method: Method, task: Task, turn_marker: str | None) -> None:
    """A method whose task preconditions are not met says so (instead of silently being GRPO)."""
    probe = task.problem(0)
    have = {"turn_marker": turn_marker is not None, "finite_pool": bool(task.size),
            "categories": "category" in probe.meta, "hints": any(probe.meta.get(k) for k in HINT_TIERS),
            "exemplars": True}
    missing = [r for r in method.requirements() if not have.get(r, False)]
    if missing:
        raise UserError(f"method '{method.name}' needs {REQUIREMENTS[missing[0]]}; task '{task.name}' has none")


def train(config: SeqConfig | None = None, **overrides: Any) -> SeqResult:
    """Train a causal LM with a registered method on a verifiable task; returns (and writes) the result."""
    cfg = dataclasses.replace(config or SeqConfig(), **overrides)
    world = init_world(cfg.device)
    if cfg.prompts_per_step < world.size:
        raise UserError(f"prompts_per_step ({cfg.prompts_per_step}) must be at least the world size ({world.size})")
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task, seed=cfg.seed, **cfg.task_options)
    method: Method = get_method(cfg.method).override(cfg.method_overrides)
    marker_text = cfg.turn_marker or task.turn_marker
    check_requirements(method, task, marker_text)
    pool, eval_indices, eval_split = split_pool(task, cfg.eval_holdout, cfg.eval_problems)
    model, tok = build_policy(cfg, task)
    model.to(cfg.device).eval()
    ref_model = copy.deepcopy(model).requires_grad_(False) if method.uses_reference else None
    policy = wrap_ddp(model, world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    marker = tok.token_id(marker_text) if marker_text else None
    state: dict[str, Any] = {}
    stats = PromptStats()
    num_iterations = cfg.num_iterations or method.num_iterations or 1
    minibatches = cfg.minibatches or method.minibatches or 1
    learner = Learner(policy, optimizer, method, ref_model=ref_model, world=world, temperature=cfg.temperature,
                      max_grad_norm=cfg.max_grad_norm, num_iterations=num_iterations, minibatches=minibatches,
                      max_len=cfg.max_new_tokens, turn_marker_id=marker, state=state, stats=stats)
    generator = make_generator(cfg, policy, tok)
    params = SamplingParams(cfg.max_new_tokens, cfg.min_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    run = {"curve": [], "eval_curve": [], "step_times": [], "step_tokens": [], "step": 0}
    if cfg.resume and out_dir is not None and (out_dir / CHECKPOINT).is_file():
        restore(out_dir / CHECKPOINT, model, optimizer, ref_model, state, stats, run, cfg.device)
    logger_ = _logger(cfg, out_dir if world.rank == 0 else None, world.rank == 0)
    status, start = "completed", time.perf_counter()
    try:
        for step in range(run["step"], cfg.steps):
            t0 = time.perf_counter()
            problems, n = plan_rollouts(method, cfg, task, pool, stats, state, world, step)
            torch.manual_seed(hash((cfg.seed, step, world.rank)) % 2**62)
            generator.sync_weights(policy)
            offset = world.rank * 10**6
            batch = collect(generator, tok, task, problems, n, params, group_offset=offset, device=cfg.device)
            batch = method.fn("hook")(hook_context(batch, step, cfg, task, tok, generator, params, stats, state,
                                                   world, offset, pool, policy, problems, n))
            ctx = learner.prepare(batch, step, cfg.steps)
            metrics = learner.update(batch, ctx) if method.trains_policy else dict(ctx.metrics)
            record_step(stats, batch, ctx.advantages, step, world)
            if world.size > 1:
                synced = world.broadcast_object(state)
                if synced is not state:
                    state.clear()
                    state.update(synced)
            reward, tokens = global_reward_and_tokens(batch, world)
            run["curve"].append([step, reward])
            run["step_times"].append(time.perf_counter() - t0)
            run["step_tokens"].append(tokens)
            scalars = {"reward": reward, **{k: float(v) for k, v in metrics.items()},
                       "completion_len": float(batch.gen.completion_mask.sum(-1).float().mean()) if batch.size else 0}
            if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps:
                scalars["eval_exact"] = evaluate(unwrap(policy), tok, task, cfg.eval_problems, cfg.max_new_tokens,
                                                  cfg.generator, indices=eval_indices)
                run["eval_curve"].append([step, scalars["eval_exact"]])
            run["step"] = step + 1
            if "loss" in metrics and not torch.isfinite(torch.as_tensor(metrics["loss"])):
                status = "diverged"
                break
            logger_.log(step, scalars)
            if out_dir is not None and world.rank == 0 and cfg.checkpoint_every and run["step"] % cfg.checkpoint_every == 0:
                save_run_checkpoint(out_dir / CHECKPOINT, model, optimizer, ref_model, state, stats, run)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        logger_.close()
    wall = time.perf_counter() - start
    model_dir = None
    if out_dir is not None and world.rank == 0:
        save_run_checkpoint(out_dir / CHECKPOINT, model, optimizer, ref_model, state, stats, run)
        if cfg.save_model:
            model_dir = str(save_policy(model, tok, out_dir / "model"))
    curve, eval_curve = run["curve"], run["eval_curve"]
    result = SeqResult(
        config=dataclasses.asdict(cfg), method=method.to_dict(), curve=curve, eval_curve=eval_curve,
        final_reward=curve[-1][1] if curve else float("nan"),
        final_eval=eval_curve[-1][1] if eval_curve else float("nan"), wall_time_s=wall,
        tokens_per_s=sum(run["step_tokens"]) / max(sum(run["step_times"]), 1e-9), step_times=run["step_times"],
        step_tokens=run["step_tokens"], model_dir=model_dir, model=model_info(model), task=task.describe(),
        param_norm=float(torch.cat([p.detach().double().flatten() for p in model.parameters()]).norm()),
        world_size=world.size, status=status, eval_split=eval_split, state=jsonable_state(state))
    if out_dir is not None and world.rank == 0:
        atomic_write_json(out_dir / "result.json", result.to_dict())
    return result


def plan_rollouts(method: Method, cfg: SeqConfig, task: Task, pool: list[int] | None, stats: PromptStats,
                  state: dict[str, Any], world: Any, step: int) -> tuple[list[Any], list[int]]:
    """P1 picks the global batch's prompts and P2 sizes their groups (same on every rank); this rank takes its share."""
    rng = random.Random(f"{cfg.seed}:{step}")
    indices = method.fn("sampler")(SamplerContext(step, cfg.prompts_per_step, pool, rng, stats, task, state,
                                                  cfg.steps))
    problems = [task.problem(i) for i in indices]
    n = method.fn("budget")(BudgetContext([p.key for p in problems], cfg.group_size, stats, state, step))
    if len(n) != len(problems) or any(k < 0 for k in n):
        raise UserError(f"budget '{method.budget.name}' returned {len(n)} sizes for {len(problems)} prompts")
    return problems[world.rank::world.size], list(n)[world.rank::world.size]


def hook_context(batch: RolloutBatch, step: int, cfg: SeqConfig, task: Task, tok: Any, generator: Generator,
                 params: SamplingParams, stats: PromptStats, state: dict[str, Any], world: Any, offset: int,
                 pool: list[int] | None, policy: nn.Module, problems: list[Any], n: list[int]) -> HookContext:
    """The P3 context: functions that generate (and score), build demonstrations and concatenate batches."""
    next_group = [offset + len(problems)]

    def fresh_ids(k: int) -> int:
        first = next_group[0]
        next_group[0] += k
        return first

    def generate(problems: list[Any], n: list[int], prompt_texts: list[str] | None = None,
                 greedy: bool = False) -> RolloutBatch:
        use = dataclasses.replace(params, temperature=0.0) if greedy else params
        return collect(generator, tok, task, problems, n, use, group_offset=fresh_ids(len(problems)),
                       prompt_texts=prompt_texts, device=cfg.device)

    def demos(problems: list[Any], group_ids: list[int] | None = None) -> RolloutBatch:
        if group_ids is None:
            first = fresh_ids(len(problems))
            group_ids = list(range(first, first + len(problems)))
        return demonstrations(tok, task, problems, group_ids, cfg.device)

    def exemplars(k: int) -> list[Any]:
        if pool is None:
            return [task.problem(EXEMPLAR_OFFSET + i) for i in range(k)]
        return [task.problem(i) for i in pool[:k]]

    return HookContext(batch, step, problems, n, cfg.group_size, generate=generate, score=lambda b: rescore(task, b), demonstrations=demos,
                       concat=lambda bs: concat_batches(bs, tok.pad_id), exemplars=exemplars,
                       score_answers=lambda prompts, answers: answer_logprobs(policy, tok, prompts, answers,
                                                                              cfg.temperature),
                       task=task, stats=stats, state=state, world=world, total_steps=cfg.steps)


@torch.no_grad()
def answer_logprobs(model: nn.Module, tok: Any, prompts: list[str], answers: list[str],
                    temperature: float = 1.0) -> torch.Tensor:
    """log pi(answer + eos | prompt) summed over the answer's tokens, per pair (a black-box LM's score)."""
    from offline_rl.seq.policy import score_completions
    from offline_rl.seq.rollout import left_pad

    model = unwrap(model)
    device = next(model.parameters()).device
    p_ids, p_mask = left_pad([tok.encode_prompt(p) for p in prompts], tok.pad_id)
    seqs = [tok.encode(a) + [tok.eos_id] for a in answers]
    width = max(len(s) for s in seqs)
    c_ids = torch.full((len(seqs), width), tok.pad_id, dtype=torch.long)
    c_mask = torch.zeros_like(c_ids)
    for i, s in enumerate(seqs):
        c_ids[i, : len(s)], c_mask[i, : len(s)] = torch.tensor(s), 1
    out = score_completions(model, p_ids.to(device), p_mask.to(device), c_ids.to(device), c_mask.to(device),
                            temperature)
    return (out.logp * c_mask.to(device)).sum(-1).cpu()


def record_step(stats: PromptStats, batch: RolloutBatch, advantages: torch.Tensor | None, step: int,
                world: Any) -> None:
    """Add this step's groups from every rank to the statistics store (demonstration rows excluded)."""
    rewards = first_reward(batch).tolist()
    abs_adv = [0.0] * batch.size
    if advantages is not None and batch.size:
        mask = batch.gen.completion_mask.float()
        a = advantages.detach().abs()
        per_row = a if a.dim() == 1 else (a * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        abs_adv = per_row.float().tolist()
    groups = batch.group_rows(skip_flag="sft")
    records = [GroupRecord(batch.problems[rows[0]].key, [rewards[i] for i in rows],
                           sum(abs_adv[i] for i in rows) / len(rows), batch.problems[rows[0]].meta.get("category"),
                           step, [batch.texts[i] for i in rows]) for rows in groups.values()]
    everything = world.all_gather_object(records) if world.size > 1 else [records]
    stats.record([r for part in everything for r in part])


def first_reward(batch: Any) -> torch.Tensor:
    """The (first component of the) reward of each completion, (B,)."""
    return batch.rewards.reshape(batch.size, -1)[:, 0]


def global_reward_and_tokens(batch: Any, world: Any) -> tuple[float, int]:
    """Mean reward of the policy's rollouts (demonstration rows excluded; NaN when there are none) and the
    completion-token count, over all ranks."""
    device = batch.rewards.device
    sft = batch.flags.get("sft")
    rollout = torch.ones(batch.size, dtype=torch.double, device=device) if sft is None else (~sft.bool()).double()
    local = torch.stack([(first_reward(batch).double() * rollout).sum(), rollout.sum(),
                         batch.gen.completion_mask.sum().double()])
    total = world.all_sum(local)
    return float(total[0] / total[1]) if total[1] > 0 else float("nan"), int(total[2])


def rescore(task: Task, batch: Any) -> torch.Tensor:
    """The task's rewards of a (rewritten) batch's decoded completions."""
    return torch.tensor([task.reward(t, p) for t, p in zip(batch.texts, batch.problems)], dtype=torch.float32)


def save_run_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ref_model: nn.Module | None,
                        state: dict[str, Any], stats: PromptStats, run: dict[str, Any]) -> None:
    """Everything a resumed run needs: weights, optimiser, reference, method state, statistics, curves, step."""
    payload = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(), "state": state,
               "stats": stats.state_dict(), "run": run,
               "ref_model": ref_model.state_dict() if ref_model is not None else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(payload, f), mode="wb")


def restore(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ref_model: nn.Module | None,
            state: dict[str, Any], stats: PromptStats, run: dict[str, Any], device: str) -> None:
    payload = torch.load(path, map_location=device, weights_only=False)
    unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if ref_model is not None and payload["ref_model"] is not None:
        ref_model.load_state_dict(payload["ref_model"])
    state.update(payload["state"])
    stats.load_state_dict(payload["stats"])
    run.update(payload["run"])


def jsonable_state(state: dict[str, Any]) -> dict[str, Any]:
    """The method state for result.json: tensors as lists, numbers as they are."""
    def conv(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.tolist()
        if isinstance(v, dict):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        return v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
    return conv(state)


def _logger(cfg: SeqConfig, out_dir: Path | None, enabled: bool) -> Any:
    from offline_rl.seq.logger import RunLogger

    return RunLogger(out_dir, cfg.steps, cfg.log_every, enabled, cfg.progress)
