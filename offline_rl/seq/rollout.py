"""Rollouts: a small generation interface (HF `generate` here, vLLM where installed) and the scored batch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from offline_rl.seq.policy import unwrap
from offline_rl.seq.tasks.base import Problem


@dataclass
class SamplingParams:
    max_new_tokens: int = 8
    min_new_tokens: int = 0
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0


@dataclass
class Generation:
    """Token tensors of B = sum(n_i) completions; prompts left-padded, completions right-padded."""

    prompt_ids: Tensor  # (B, P)
    prompt_mask: Tensor  # (B, P)
    completion_ids: Tensor  # (B, T)
    completion_mask: Tensor  # (B, T): tokens up to and including the first eos
    truncated: Tensor  # (B,) bool: no eos within max_new_tokens
    logprobs: Tensor | None = None  # (B, T): the generator's log-prob of each drawn token (where it reports them)

    def rows(self, index: Tensor) -> Generation:
        return Generation(*(t[index] for t in (self.prompt_ids, self.prompt_mask, self.completion_ids,
                                               self.completion_mask, self.truncated)),
                          None if self.logprobs is None else self.logprobs[index])


class Generator(Protocol):
    """`generate(prompts, n)`: n[i] completions of prompt token list prompts[i], rows grouped by prompt."""

    def generate(self, prompts: list[list[int]], n: list[int], params: SamplingParams) -> Generation: ...

    def sync_weights(self, model: nn.Module) -> None: ...


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    return ids, mask


def completion_mask(completions: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """(mask up to and including the first eos, truncated flag)."""
    is_eos = completions == eos_id
    before_or_at = (is_eos.long().cumsum(-1) - is_eos.long()) == 0
    return before_or_at.long(), ~is_eos.any(-1)


class HFGenerator:
    """Batched sampling with the policy's own `generate` (KV cache); prompts repeated n_i times."""

    def __init__(self, model: nn.Module, pad_id: int, eos_id: int) -> None:
        self.model, self.pad_id, self.eos_id = model, pad_id, eos_id

    def sync_weights(self, model: nn.Module) -> None:
        self.model = model  # same process: the policy itself

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: list[int], params: SamplingParams) -> Generation:
        from transformers import GenerationConfig

        repeated = [p for p, k in zip(prompts, n) for _ in range(k)]
        prompt_ids, prompt_mask = left_pad(repeated, self.pad_id)
        # top_k = 0 is passed as 0 (off): None would let `generate` fall back to its default top-k of 50.
        sampling = {"do_sample": True, "temperature": params.temperature, "top_k": params.top_k,
                    "top_p": params.top_p} if params.temperature > 0 else {"do_sample": False}  # 0: greedy
        config = GenerationConfig(**sampling, max_new_tokens=params.max_new_tokens,
                                  min_new_tokens=params.min_new_tokens, pad_token_id=self.pad_id,
                                  eos_token_id=self.eos_id)
        model = unwrap(self.model)
        device = next(model.parameters()).device
        out = model.generate(input_ids=prompt_ids.to(device), attention_mask=prompt_mask.to(device),
                             generation_config=config)
        completions = out[:, prompt_ids.shape[1]:]
        mask, truncated = completion_mask(completions, self.eos_id)
        completions = torch.where(mask.bool(), completions, torch.full_like(completions, self.pad_id))
        return Generation(prompt_ids.to(device), prompt_mask.to(device), completions, mask, truncated)


@dataclass
class RolloutBatch:
    """A scored batch of completions, grouped by prompt. `flags` holds per-row (B,) tensors (e.g. "sft" for
    demonstration rows a hook added); they reach `LossContext.flags`."""

    gen: Generation
    group_ids: Tensor  # (B,) long
    problems: list[Problem]  # one per row
    texts: list[str]  # decoded completions
    rewards: Tensor  # (B,) or (B, K)
    flags: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.problems)

    def group_rows(self, skip_flag: str | None = None) -> dict[int, list[int]]:
        """Group id -> its row indices, in order of first appearance (rows flagged `skip_flag` left out)."""
        skip = self.flags.get(skip_flag) if skip_flag else None
        groups: dict[int, list[int]] = {}
        for i, g in enumerate(self.group_ids.tolist()):
            if skip is None or not bool(skip[i]):
                groups.setdefault(g, []).append(i)
        return groups

    def rows(self, index: Tensor) -> RolloutBatch:
        idx = index.tolist()
        return replace(self, gen=self.gen.rows(index), group_ids=self.group_ids[index],
                       problems=[self.problems[i] for i in idx], texts=[self.texts[i] for i in idx],
                       rewards=self.rewards[index], flags={k: v[index] for k, v in self.flags.items()})


def _pad_to(x: Tensor, width: int, value: int | float, left: bool) -> Tensor:
    pad = width - x.shape[1]
    if pad <= 0:
        return x
    filler = torch.full((x.shape[0], pad), value, dtype=x.dtype, device=x.device)
    return torch.cat([filler, x] if left else [x, filler], dim=1)


def concat_batches(batches: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Rows of several batches in order (prompts re-left-padded, completions re-right-padded to a common width)."""
    batches = [b for b in batches if b.size]
    if len(batches) == 1:
        return batches[0]
    P = max(b.gen.prompt_ids.shape[1] for b in batches)
    T = max(b.gen.completion_ids.shape[1] for b in batches)
    with_lp = all(b.gen.logprobs is not None for b in batches)
    gen = Generation(
        torch.cat([_pad_to(b.gen.prompt_ids, P, pad_id, True) for b in batches]),
        torch.cat([_pad_to(b.gen.prompt_mask, P, 0, True) for b in batches]),
        torch.cat([_pad_to(b.gen.completion_ids, T, pad_id, False) for b in batches]),
        torch.cat([_pad_to(b.gen.completion_mask, T, 0, False) for b in batches]),
        torch.cat([b.gen.truncated for b in batches]),
        torch.cat([_pad_to(b.gen.logprobs, T, 0.0, False) for b in batches]) if with_lp else None)
    names = {k for b in batches for k in b.flags}
    flags = {k: torch.cat([b.flags.get(k, torch.zeros(b.size, dtype=torch.bool, device=b.group_ids.device))
                           for b in batches]) for k in names}
    rewards = torch.cat([b.rewards.reshape(b.size, -1) for b in batches])
    return RolloutBatch(gen, torch.cat([b.group_ids for b in batches]), [p for b in batches for p in b.problems],
                        [t for b in batches for t in b.texts], rewards.squeeze(-1) if rewards.shape[1] == 1 else rewards,
                        flags)


def demonstrations(tokenizer: Any, task: Any, problems: list[Problem], group_ids: list[int],
                   device: torch.device | str = "cpu", flag: str = "sft") -> RolloutBatch:
    """Teacher-forced rows: each problem's reference answer (+ eos) as the completion, flagged `flag` = True.

    The rows are scored by the task (a correct reference scores 1) so that statistics stay meaningful.
    """
    prompts = [tokenizer.encode_prompt(p.prompt) for p in problems]
    answers = [tokenizer.encode(p.answer) + [tokenizer.eos_id] for p in problems]
    prompt_ids, prompt_mask = left_pad(prompts, tokenizer.pad_id)
    width = max(len(a) for a in answers)
    comp = torch.full((len(answers), width), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(answers), width), dtype=torch.long)
    for i, a in enumerate(answers):
        comp[i, : len(a)] = torch.tensor(a, dtype=torch.long)
        mask[i, : len(a)] = 1
    gen = Generation(prompt_ids.to(device), prompt_mask.to(device), comp.to(device), mask.to(device),
                     torch.zeros(len(answers), dtype=torch.bool, device=device))
    rewards = torch.tensor([task.reward(p.answer, p) for p in problems], dtype=torch.float32, device=device)
    return RolloutBatch(gen, torch.tensor(group_ids, dtype=torch.long, device=device), list(problems),
                        [p.answer for p in problems], rewards,
                        {flag: torch.ones(len(problems), dtype=torch.bool, device=device)})


def empty_generation(device: torch.device | str = "cpu") -> Generation:
    z = torch.zeros((0, 1), dtype=torch.long, device=device)
    return Generation(z, z.clone(), z.clone(), z.clone(), torch.zeros(0, dtype=torch.bool, device=device))


def collect(generator: Generator, tokenizer: Any, task: Any, problems: list[Problem], n: list[int],
            params: SamplingParams, group_offset: int = 0, prompt_texts: list[str] | None = None,
            device: torch.device | str = "cpu") -> RolloutBatch:
    """Generate n[i] completions of each problem, decode them and score them with the task's checker.

    `prompt_texts` replaces the prompts the model sees (hints, exemplars); scoring still uses `problems`.
    """
    texts_in = prompt_texts if prompt_texts is not None else [p.prompt for p in problems]
    if sum(n) == 0:
        gen = empty_generation(device)
    else:
        gen = generator.generate([tokenizer.encode_prompt(t) for t in texts_in], n, params)
    rows = [p for p, k in zip(problems, n) for _ in range(k)]
    group_ids = torch.tensor([group_offset + i for i, k in enumerate(n) for _ in range(k)], dtype=torch.long)
    ids, mask = gen.completion_ids.tolist(), gen.completion_mask.tolist()
    texts = [tokenizer.decode([t for t, m in zip(r, mr) if m]) for r, mr in zip(ids, mask)]
    rewards = torch.tensor([task.reward(t, p) for t, p in zip(texts, rows)], dtype=torch.float32)
    device = gen.completion_ids.device
    return RolloutBatch(gen, group_ids.to(device), rows, texts, rewards.to(device))
