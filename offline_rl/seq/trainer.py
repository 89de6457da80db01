"""The training loop: sample prompts -> roll out groups -> score -> hook -> learner update -> log.

    import offline_rl.seq as seq
    result = seq.train(task="copy", method="grpo", model="tiny", steps=200, out_dir="runs/copy")
"""

from __future__ import annotations

import copy
import dataclasses
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
from offline_rl.seq.methods.base import Method
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
from offline_rl.seq.rollout import Generator, HFGenerator, SamplingParams, collect
from offline_rl.seq.stats import PromptStats
from offline_rl.seq.tasks import Task, make_task
from offline_rl.seq.tokenizer import CharTokenizer, load_tokenizer
from offline_rl.utils.io import atomic_write_json

EVAL_OFFSET = 10**9  # held-out problem indices of endless tasks


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
    top_k: int = 0
    top_p: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_iterations: int = 1  # optimiser passes over each rollout batch (mu)
    minibatches: int = 1  # optimiser steps per pass
    seed: int = 0
    out_dir: str | None = None
    eval_every: int = 0  # 0: only at the end
    eval_problems: int = 64
    log_every: int = 10
    device: str = "cpu"
    generator: str = "fast"  # "fast" (KV-cache sampler, same draws as generate), "hf" (generate) or "vllm"
    turn_marker: str | None = None  # token that ends a turn (ST-PPO turns, EMPG steps)
    task_options: dict[str, Any] = field(default_factory=dict)
    method_overrides: dict[str, Any] = field(default_factory=dict)
    tiny: dict[str, Any] = field(default_factory=lambda: dict(TINY_DEFAULTS))
    save_model: bool = True
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
        return VLLMGenerator(cfg.model, tok.pad_id, tok.eos_id)
    raise UserError(f"unknown generator {cfg.generator!r}; use fast, hf or vllm")


@torch.no_grad()
def evaluate(model: nn.Module, tok: Any, task: Task, n_problems: int, max_new_tokens: int,
             generator: str = "fast") -> float:
    """Greedy exact-match over held-out problems (the first n of a finite pool)."""
    gen = make_generator(SeqConfig(generator="hf" if generator == "vllm" else generator), model, tok)
    if task.size:
        indices = list(range(min(n_problems, task.size)))
    else:
        indices = list(range(EVAL_OFFSET, EVAL_OFFSET + n_problems))
    problems = [task.problem(i) for i in indices]
    batch = collect(gen, tok, task, problems, [1] * len(problems),
                    SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0))
    return float(first_reward(batch).float().mean())


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
    model, tok = build_policy(cfg, task)
    model.to(cfg.device).eval()
    needs_ref = bool(method.kl_coef) or method.segmenter.name == "ppl"
    ref_model = copy.deepcopy(model).requires_grad_(False) if needs_ref else None
    policy = wrap_ddp(model, world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    marker = tok.token_id(cfg.turn_marker) if cfg.turn_marker else None
    learner = Learner(policy, optimizer, method, ref_model=ref_model, world=world, temperature=cfg.temperature,
                      max_grad_norm=cfg.max_grad_norm, num_iterations=cfg.num_iterations,
                      minibatches=cfg.minibatches, max_len=cfg.max_new_tokens, turn_marker_id=marker)
    generator = make_generator(cfg, policy, tok)
    params = SamplingParams(cfg.max_new_tokens, cfg.min_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p)
    stats = PromptStats()
    out_dir = Path(cfg.out_dir) if cfg.out_dir and world.rank == 0 else None
    logger_ = _logger(cfg, out_dir, world.rank == 0)
    curve, eval_curve, step_times, step_tokens = [], [], [], []
    status, start = "completed", time.perf_counter()
    try:
        for step in range(cfg.steps):
            t0 = time.perf_counter()
            problems, n = plan_rollouts(method, cfg, task, stats, world, step)
            torch.manual_seed(hash((cfg.seed, step, world.rank)) % 2**62)
            generator.sync_weights(policy)
            batch = collect(generator, tok, task, problems, n, params, group_offset=world.rank * 10**6)
            batch = method.fn("hook")(HookContext(batch, step, generate=generator.generate,
                                                  score=lambda b: rescore(task, b)))
            metrics = learner.update(batch, learner.prepare(batch, step, cfg.steps))
            stats.update([p.key for p in batch.problems], first_reward(batch).tolist())
            reward, tokens = global_reward_and_tokens(batch, world)
            curve.append([step, reward])
            step_times.append(time.perf_counter() - t0)
            step_tokens.append(tokens)
            scalars = {"reward": reward, **{k: float(v) for k, v in metrics.items()},
                       "completion_len": float(batch.gen.completion_mask.sum(-1).float().mean())}
            if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == cfg.steps:
                scalars["eval_exact"] = evaluate(unwrap(policy), tok, task, cfg.eval_problems, cfg.max_new_tokens,
                                                  cfg.generator)
                eval_curve.append([step, scalars["eval_exact"]])
            if not torch.isfinite(metrics["loss"]):
                status = "diverged"
                break
            logger_.log(step, scalars)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        logger_.close()
    wall = time.perf_counter() - start
    model_dir = None
    if out_dir is not None and cfg.save_model:
        model_dir = str(save_policy(model, tok, out_dir / "model"))
    result = SeqResult(
        config=dataclasses.asdict(cfg), method=method.to_dict(), curve=curve, eval_curve=eval_curve,
        final_reward=curve[-1][1] if curve else float("nan"),
        final_eval=eval_curve[-1][1] if eval_curve else float("nan"), wall_time_s=wall,
        tokens_per_s=sum(step_tokens) / max(sum(step_times), 1e-9), step_times=step_times, step_tokens=step_tokens,
        model_dir=model_dir, model=model_info(model), task=task.describe(),
        param_norm=float(torch.cat([p.detach().double().flatten() for p in model.parameters()]).norm()),
        world_size=world.size, status=status)
    if out_dir is not None:
        atomic_write_json(out_dir / "result.json", result.to_dict())
    return result


def plan_rollouts(method: Method, cfg: SeqConfig, task: Task, stats: PromptStats, world: Any,
                  step: int) -> tuple[list[Any], list[int]]:
    """P1 picks the global batch's prompts (same on every rank), this rank takes its share, P2 sizes the groups."""
    rng = random.Random(f"{cfg.seed}:{step}")
    indices = method.fn("sampler")(SamplerContext(step, cfg.prompts_per_step, task.size, rng, stats))
    problems = [task.problem(i) for i in indices[world.rank::world.size]]
    return problems, method.fn("budget")(BudgetContext([p.key for p in problems], cfg.group_size, stats))


def first_reward(batch: Any) -> torch.Tensor:
    """The (first component of the) reward of each completion, (B,)."""
    return batch.rewards.reshape(batch.size, -1)[:, 0]


def global_reward_and_tokens(batch: Any, world: Any) -> tuple[float, int]:
    """Mean reward and completion-token count over all ranks."""
    local = torch.stack([first_reward(batch).sum().double(), torch.tensor(float(batch.size), dtype=torch.double),
                         batch.gen.completion_mask.sum().double()])
    total = world.all_sum(local)
    return float(total[0] / total[1]), int(total[2])


def rescore(task: Task, batch: Any) -> torch.Tensor:
    """The task's rewards of a (rewritten) batch's decoded completions."""
    return torch.tensor([task.reward(t, p) for t, p in zip(batch.texts, batch.problems)], dtype=torch.float32)


def _logger(cfg: SeqConfig, out_dir: Path | None, enabled: bool) -> Any:
    from offline_rl.seq.logger import RunLogger

    return RunLogger(out_dir, cfg.steps, cfg.log_every, enabled, cfg.progress)
