"""A lean sampler over the policy's own forward and KV cache: the draws of `generate` without its per-step machinery.

Per step it does what `generate`'s sampling loop does (float32 last logits -> eos masked before min_new_tokens ->
/ temperature -> top-k / top-p -> softmax -> one multinomial draw; pad after eos), so with the same seed it yields
the same tokens as `HFGenerator` (tested on Llama and GPT2). It skips the logits-processor, stopping-criteria and
input-preparation layers, which dominate a small model's decode step on CPU. Decode steps pass a ready 4D additive
mask. For a plain Llama (`LlamaDecodeStep`: no biases, SiLU MLP, default RoPE, SDPA) the decode steps run the
model's own weights and attention function over a preallocated KV cache, without the per-call module stack; the
prompt (prefill) always goes through the model itself.
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


class LlamaDecodeStep:
    """One decode step of a transformers Llama over its own weights, the same operations in the same order as the
    model's forward (RMSNorm in float32, RoPE from the model's rotary module, the model's SDPA attention function,
    the SiLU-gated MLP), on a preallocated KV cache: (layers, B, n_kv, P + T, head_dim)."""

    @staticmethod
    def supports(model: nn.Module) -> bool:
        c = getattr(model, "config", None)
        return (type(model).__name__ == "LlamaForCausalLM" and c is not None and not c.attention_bias
                and not c.mlp_bias and c.hidden_act == "silu" and getattr(c, "pretraining_tp", 1) == 1
                and c._attn_implementation == "sdpa" and c.rope_parameters.get("rope_type") == "default")

    def __init__(self, model: nn.Module, prefill_cache: object, batch: int, prompt_len: int, max_new: int) -> None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        self.model, self.attend = model, sdpa_attention_forward
        layers = model.model.layers
        first = prefill_cache.layers[0].keys  # (B, n_kv, P, hd)
        shape = (batch, first.shape[1], prompt_len + max_new, first.shape[3])
        self.keys = [first.new_zeros(shape) for _ in layers]
        self.values = [first.new_zeros(shape) for _ in layers]
        for i, layer in enumerate(prefill_cache.layers):
            self.keys[i][:, :, :prompt_len] = layer.keys
            self.values[i][:, :, :prompt_len] = layer.values
        self.length = prompt_len

    @staticmethod
    def rms(x: Tensor, norm: nn.Module) -> Tensor:
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * h.to(x.dtype)

    @staticmethod
    def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def __call__(self, tokens: Tensor, position: Tensor, mask: Tensor) -> Tensor:
        """Logits (B, 1, V) of the next token after `tokens` (B, 1) at `position` (B, 1)."""
        import torch.nn.functional as F

        m = self.model.model
        h = F.embedding(tokens, m.embed_tokens.weight)
        cos, sin = m.rotary_emb(h, position)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        L = self.length
        for i, layer in enumerate(m.layers):
            attn = layer.self_attn
            x = self.rms(h, layer.input_layernorm)
            B = x.shape[0]
            q = F.linear(x, attn.q_proj.weight).view(B, 1, -1, attn.head_dim).transpose(1, 2)
            k = F.linear(x, attn.k_proj.weight).view(B, 1, -1, attn.head_dim).transpose(1, 2)
            v = F.linear(x, attn.v_proj.weight).view(B, 1, -1, attn.head_dim).transpose(1, 2)
            q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
            self.keys[i][:, :, L] = k[:, :, 0]
            self.values[i][:, :, L] = v[:, :, 0]
            out, _ = self.attend(attn, q, self.keys[i][:, :, : L + 1], self.values[i][:, :, : L + 1], mask,
                                 dropout=0.0, scaling=attn.scaling)
            h = h + F.linear(out.reshape(B, 1, -1), attn.o_proj.weight)
            x = self.rms(h, layer.post_attention_layernorm)
            mlp = layer.mlp
            h = h + F.linear(F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight),
                             mlp.down_proj.weight)
        self.length = L + 1
        return F.linear(self.rms(h, m.norm), self.model.lm_head.weight)


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
        position = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position, use_cache=True,
                    logits_to_keep=1)
        # decode steps get a ready 4D additive mask (0: attend, min: padding), sliced from one preallocated row
        # per sequence: the model then skips rebuilding the causal mask at every step
        P = prompt_ids.shape[1]
        dtype = next(model.parameters()).dtype
        additive = torch.zeros((len(repeated), 1, 1, P + params.max_new_tokens), dtype=dtype, device=device)
        additive[:, 0, 0, :P].masked_fill_(prompt_mask == 0, torch.finfo(dtype).min)
        lean = LlamaDecodeStep(model, out[self.cache_arg], len(repeated), P, params.max_new_tokens) \
            if LlamaDecodeStep.supports(model) and params.max_new_tokens > 1 else None
        unfinished = torch.ones(len(repeated), dtype=torch.long, device=device)
        tokens: list[Tensor] = []
        logprobs: list[Tensor] = []
        for step in range(params.max_new_tokens):
            nxt, lp = self.next_tokens(out["logits"], step, params)
            nxt = nxt * unfinished + self.pad_id * (1 - unfinished)
            tokens.append(nxt)
            if lp is not None:
                logprobs.append(lp)
            unfinished = unfinished & (nxt != self.eos_id).long()
            if step + 1 == params.max_new_tokens or not unfinished.any():
                break
            position = position[:, -1:] + 1
            mask = additive[..., : P + step + 1]
            if lean is not None:
                out = {"logits": lean(nxt[:, None], position, mask)}
                continue
            cache = out[self.cache_arg]
            out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=position, use_cache=True,
                        logits_to_keep=1, **{self.cache_arg: cache})
        completions = torch.stack(tokens, dim=1)
        mask, truncated = completion_mask(completions, self.eos_id)
        completions = torch.where(mask.bool(), completions, torch.full_like(completions, self.pad_id))
        lp = torch.stack(logprobs, dim=1) * mask if logprobs else None
        return Generation(prompt_ids, prompt_mask, completions, mask, truncated, lp)
