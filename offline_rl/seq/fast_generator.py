"""A lean sampler over the policy's own forward and KV cache: the draws of `generate` without its per-step machinery.

Per step it does what `generate`'s sampling loop does (float32 last logits -> eos masked before min_new_tokens ->
/ temperature -> top-k / top-p -> softmax -> one multinomial draw; pad after eos), so with the same seed it yields
the same tokens as `HFGenerator` (tested on Llama and GPT2). It skips the logits-processor, stopping-criteria and
input-preparation layers, which dominate a small model's decode step on CPU.
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from offline_rl.seq.policy import unwrap
from offline_rl.seq.rollout import Generation, SamplingParams, completion_mask, left_pad


def filter_logits(scores: Tensor, top_k: int, top_p: float) -> Tensor:
    """Top-k then nucleus (top-p) filtering, as transformers' warpers (min 1 token kept)."""
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, sorted_idx, remove), -float("inf"))
    return scores


class CachedSampler:
    """`Generator` over `model(input_ids, attention_mask, position_ids, cache)` with a KV cache."""

    def __init__(self, model: nn.Module, pad_id: int, eos_id: int) -> None:
        self.model, self.pad_id, self.eos_id = model, pad_id, eos_id
        params = inspect.signature(unwrap(model).forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"  # transformers 5 / 4

    def sync_weights(self, model: nn.Module) -> None:
        self.model = model

    def next_tokens(self, logits: Tensor, step: int, params: SamplingParams) -> tuple[Tensor, Tensor | None]:
        """(the drawn tokens, their log-probs under the distribution they were drawn from; None when greedy)."""
        scores = logits[:, -1].to(dtype=torch.float32, copy=True)
        if step < params.min_new_tokens:
            scores[:, self.eos_id] = -float("inf")
        if params.temperature == 0:
            return scores.argmax(-1), None
        if params.temperature != 1.0:
            scores = scores / params.temperature
        scores = filter_logits(scores, params.top_k, params.top_p)
        probs = torch.softmax(scores, dim=-1)
        tokens = torch.multinomial(probs, num_samples=1)
        return tokens.squeeze(1), probs.gather(1, tokens).log().squeeze(1)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: list[int], params: SamplingParams) -> Generation:
        model = unwrap(self.model)
        device = next(model.parameters()).device
        repeated = [p for p, k in zip(prompts, n) for _ in range(k)]
        prompt_ids, prompt_mask = (t.to(device) for t in left_pad(repeated, self.pad_id))
        attention = prompt_mask
        position = (attention.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=prompt_ids, attention_mask=attention, position_ids=position, use_cache=True,
                    logits_to_keep=1)
        unfinished = torch.ones(len(repeated), dtype=torch.long, device=device)
        tokens: list[Tensor] = []
        logprobs: list[Tensor] = []
        for step in range(params.max_new_tokens):
            nxt, lp = self.next_tokens(out.logits, step, params)
            nxt = nxt * unfinished + self.pad_id * (1 - unfinished)
            tokens.append(nxt)
            if lp is not None:
                logprobs.append(lp)
            unfinished = unfinished & (nxt != self.eos_id).long()
            if step + 1 == params.max_new_tokens or not unfinished.any():
                break
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            position = position[:, -1:] + 1
            cache = out[self.cache_arg]
            out = model(input_ids=nxt[:, None], attention_mask=attention, position_ids=position, use_cache=True,
                        logits_to_keep=1, **{self.cache_arg: cache})
        completions = torch.stack(tokens, dim=1)
        mask, truncated = completion_mask(completions, self.eos_id)
        completions = torch.where(mask.bool(), completions, torch.full_like(completions, self.pad_id))
        lp = torch.stack(logprobs, dim=1) * mask if logprobs else None
        return Generation(prompt_ids, prompt_mask, completions, mask, truncated, lp)
