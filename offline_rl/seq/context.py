"""The one context object every extension-point function receives, and the data-parallel world it lives in."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor


class World:
    """A single process: the identity for every collective. `DistWorld` is the torch.distributed version."""

    rank: int = 0
    size: int = 1

    def all_sum(self, x: Tensor) -> Tensor:
        return x

    def all_gather_cat(self, x: Tensor) -> Tensor:
        """Concatenate `x` (first dimension may differ per rank) from every rank, in rank order."""
        return x

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order."""
        return [obj]

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank `src`'s `obj` on every rank."""
        return obj

    def rank_offset(self, n: int) -> int:
        """The number of rows held by lower ranks when this rank holds `n` (its offset in `all_gather_cat`)."""
        sizes = self.all_gather_cat(torch.tensor([n]))
        return int(sizes[: self.rank].sum())


LOCAL = World()


@dataclass
class Counts:
    """Global normalisers for aggregation: summed over data-parallel ranks before the update."""

    tokens: float  # valid (mask) tokens in the global batch
    seqs: float  # non-empty sequences in the global batch
    world: int = 1  # number of data-parallel ranks (each rank's loss is averaged over ranks by DDP)
    max_len: int = 1  # the completion-length budget (Dr.GRPO's constant)


def global_counts(mask: Tensor, world: World = LOCAL, max_len: int | None = None) -> Counts:
    """Counts of valid tokens and non-empty sequences over all ranks (one all-reduce)."""
    local = torch.stack([mask.sum(), (mask.sum(-1) > 0).sum().to(mask.dtype)]).double()
    tokens, seqs = world.all_sum(local).tolist()
    return Counts(tokens=max(tokens, 1.0), seqs=max(seqs, 1.0), world=world.size, max_len=max_len or mask.shape[-1])


@dataclass
class LossContext:
    """Tensors of one batch of B completions of length T (row b, token t), shared by every extension point.

    Before the update `logp` is the rollout-time log-prob (no gradient); inside the loss it carries the gradient.
    `old_entropy` and `hidden` come from the rollout-time (pre-step) forward pass. Functions may add detached
    scalars to `metrics`. `state` is the method's persistent state (checkpointed, identical on every rank) and
    `stats` the per-prompt statistics store; both are shared objects, not per-batch tensors.
    """

    mask: Tensor  # (B, T) float: 1 for a valid completion token (after sample selection)
    group_ids: Tensor  # (B,) long: completions of the same prompt share an id
    rewards: Tensor  # (B,) or (B, K) for K reward components
    token_ids: Tensor  # (B, T) completion tokens
    logp: Tensor  # (B, T) current log pi(o_t | .)
    old_logp: Tensor  # (B, T) log pi_old
    ref_logp: Tensor | None = None  # (B, T) log pi_ref (a reference model is loaded when the method needs one)
    rollout_logp: Tensor | None = None  # (B, T) the generator's own log-probs of its draws (vLLM, fast sampler)
    entropy: Tensor | None = None  # (B, T) current token entropy
    old_entropy: Tensor | None = None  # (B, T) rollout-time token entropy
    vocab_logp: Tensor | None = None  # (B, T, V) current log pi(. | .) over the vocabulary (needs_vocab_logp)
    advantages: Tensor | None = None  # (B,) or (B, T)
    segment_ids: Tensor | None = None  # (B, T) long: 0..K-1 within each row (token, turn, macro or sequence)
    token_weights: Tensor | None = None  # (B, T)
    sample_weights: Tensor | None = None  # (B,): per-row weights of the policy-gradient term
    flags: dict[str, Tensor] = field(default_factory=dict)  # per-row (B,) tensors, e.g. "sft" demonstration rows
    valid: Tensor | None = None  # (B, T): the completion mask before sample selection
    hidden: Tensor | None = None  # (B, T, D): the input of the LM head at each completion token
    head_weight: Tensor | None = None  # (V, D): the LM head
    log_ratio: Tensor | None = None  # (B, T): the P7 output, log rho~
    counts: Counts | None = None
    prompt_keys: list[str] | None = None  # (B,) the prompt key of each row
    step: int = 0
    total_steps: int = 1
    turn_marker_id: int | None = None
    world: Any = LOCAL
    state: dict[str, Any] = field(default_factory=dict)
    stats: Any = None  # offline_rl.seq.stats.PromptStats
    metrics: dict[str, Tensor] = field(default_factory=dict)

    @property
    def token_advantages(self) -> Tensor:
        """Advantages broadcast to (B, T)."""
        a = self.advantages
        assert a is not None, "advantages are computed before the loss"
        return a.unsqueeze(-1).expand_as(self.mask) if a.dim() == 1 else a

    @property
    def seq_lengths(self) -> Tensor:
        return self.mask.sum(-1)

    def flag(self, name: str) -> Tensor:
        """The per-row flag `name` as a bool (B,) tensor (all False when absent)."""
        f = self.flags.get(name)
        return torch.zeros(self.mask.shape[0], dtype=torch.bool, device=self.mask.device) if f is None else f.bool()

    def global_mean(self, x: Tensor, weight: Tensor) -> Tensor:
        """sum(x w) / (global sum(w) / world): a mean over the global batch whose DDP average is the global mean."""
        total = float(self.world.all_sum(weight.detach().sum().double().reshape(1))[0])
        return (x * weight).sum() / (max(total, 1e-12) / self.world.size)

    def rows(self, index: Tensor) -> LossContext:
        """The sub-batch of rows `index` (for mini-batches); per-batch fields are shared."""
        n = self.mask.shape[0]
        batched: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor) and f.name != "head_weight" and v.dim() > 0 and v.shape[0] == n:
                batched[f.name] = v[index]
        batched["flags"] = {k: v[index] for k, v in self.flags.items()}
        if self.prompt_keys is not None:
            batched["prompt_keys"] = [self.prompt_keys[i] for i in index.tolist()]
        return replace(self, **batched, metrics={})

    def with_(self, **changes: Any) -> LossContext:
        return replace(self, **changes)
