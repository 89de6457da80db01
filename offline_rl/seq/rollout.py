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
        sampling = {"do_sample": True, "temperature": params.temperature, "top_k": params.top_k or None,
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
    """A scored batch of completions, grouped by prompt."""

    gen: Generation
    group_ids: Tensor  # (B,) long
    problems: list[Problem]  # one per row
    texts: list[str]  # decoded completions
    rewards: Tensor  # (B,) or (B, K)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.problems)

    def rows(self, index: Tensor) -> RolloutBatch:
        idx = index.tolist()
        g = self.gen
        gen = replace(g, prompt_ids=g.prompt_ids[index], prompt_mask=g.prompt_mask[index],
                      completion_ids=g.completion_ids[index], completion_mask=g.completion_mask[index],
                      truncated=g.truncated[index])
        return replace(self, gen=gen, group_ids=self.group_ids[index], problems=[self.problems[i] for i in idx],
                       texts=[self.texts[i] for i in idx], rewards=self.rewards[index])


def collect(generator: Generator, tokenizer: Any, task: Any, problems: list[Problem], n: list[int],
            params: SamplingParams, group_offset: int = 0) -> RolloutBatch:
    """Generate n[i] completions of each problem, decode them and score them with the task's checker."""
    gen = generator.generate([tokenizer.encode_prompt(p.prompt) for p in problems], n, params)
    rows = [p for p, k in zip(problems, n) for _ in range(k)]
    group_ids = torch.tensor([group_offset + i for i, k in enumerate(n) for _ in range(k)], dtype=torch.long)
    ids, mask = gen.completion_ids.tolist(), gen.completion_mask.tolist()
    texts = [tokenizer.decode([t for t, m in zip(r, mr) if m]) for r, mr in zip(ids, mask)]
    rewards = torch.tensor([task.reward(t, p) for t, p in zip(texts, rows)], dtype=torch.float32)
    return RolloutBatch(gen, group_ids.to(gen.completion_ids.device), rows, texts, rewards.to(gen.completion_ids.device))
