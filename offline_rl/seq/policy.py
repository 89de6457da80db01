"""The policy: any Hugging Face causal LM. Build a tiny one from a config, load or save one, and score tokens.

transformers is imported lazily (the `[llm]` extra).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from offline_rl.errors import UserError
from offline_rl.seq.tokenizer import CharTokenizer, HFTokenizer, load_tokenizer

TINY_DEFAULTS = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_positions": 128}


def build_tiny_model(vocab_size: int, arch: str = "llama", seed: int = 0, pad_id: int = 0, bos_id: int = 1,
                     eos_id: int = 2, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     max_positions: int = 128) -> nn.Module:
    """A random-weight Llama- or GPT2-style causal LM, built from a config in-process (no hub)."""
    import transformers

    special = {"pad_token_id": pad_id, "bos_token_id": bos_id, "eos_token_id": eos_id}
    if arch == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=max(1, num_heads // 2),
            max_position_embeddings=max_positions, tie_word_embeddings=False, **special)
    elif arch == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=vocab_size, n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_positions,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special)
    else:
        raise UserError(f"unknown tiny architecture {arch!r}; use llama or gpt2")
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = pad_id
    return model.eval()


def load_policy(path: str | Path) -> tuple[nn.Module, CharTokenizer | HFTokenizer]:
    """A saved model directory (any AutoModelForCausalLM) and its tokenizer."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UserError(f"no model at {path} (expected a Hugging Face model directory with config.json)")
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    return model.eval(), load_tokenizer(path)


def save_policy(model: nn.Module, tokenizer: CharTokenizer | HFTokenizer, path: str | Path) -> Path:
    """`save_pretrained` (safetensors) plus the tokenizer, without transformers' progress bar."""
    from transformers.utils import logging as hf_logging

    path = Path(path)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        unwrap(model).save_pretrained(str(path))
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    tokenizer.save(path)
    return path


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


@dataclass
class PolicyOutput:
    logp: Tensor  # (B, T) log pi(o_t | prompt, o_<t)
    entropy: Tensor  # (B, T) entropy of pi(. | prompt, o_<t) (a gradient only if asked)
    hidden: Tensor | None = None  # (B, T, D) input of the LM head (no gradient)
    vocab_logp: Tensor | None = None  # (B, T, V) log pi(. | prompt, o_<t) over the vocabulary (when asked)


@contextmanager
def capture_head_input(model: nn.Module, enabled: bool):
    """Record the input of the LM head (the last hidden state as the head sees it) during a forward pass."""
    store: dict[str, Tensor] = {}
    if not enabled:
        yield store
        return
    head = unwrap(model).get_output_embeddings()
    handle = head.register_forward_hook(lambda mod, args, out: store.__setitem__("hidden", args[0].detach()))
    try:
        yield store
    finally:
        handle.remove()


def score_completions(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                      completion_mask: Tensor, temperature: float = 1.0, with_hidden: bool = False,
                      entropy_grad: bool = False, with_vocab: bool = False) -> PolicyOutput:
    """Per-token log-probs and entropies of the completions in one forward pass (no loop over tokens).

    Prompts are left-padded, completions right-padded; position ids follow the attention mask as in `generate`.
    Only the completion positions' logits are computed (`logits_to_keep`).
    """
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention = torch.cat([prompt_mask, completion_mask], dim=1).long()
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    T = completion_ids.shape[1]
    with capture_head_input(model, with_hidden) as store:
        out = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                    logits_to_keep=T + 1, use_cache=False)
    logits = out.logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1) - logz
    with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
        entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    hidden = store["hidden"][:, -T - 1:-1] if with_hidden else None
    vocab = logits - logz.unsqueeze(-1) if with_vocab else None
    return PolicyOutput(logp, entropy, hidden, vocab)


def head_weight(model: nn.Module, temperature: float = 1.0) -> Tensor:
    """The LM head's weight (V, D), scaled by 1/temperature so that logits = hidden @ W^T."""
    return unwrap(model).get_output_embeddings().weight.detach() / temperature


def model_info(model: nn.Module) -> dict[str, Any]:
    m = unwrap(model)
    return {"class": type(m).__name__, "parameters": sum(p.numel() for p in m.parameters())}
