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
    scalars to `metrics`.
    """

    mask: Tensor  # (B, T) float: 1 for a valid completion token (after sample selection)
    group_ids: Tensor  # (B,) long: completions of the same prompt share an id
    rewards: Tensor  # (B,) or (B, K) for K reward components
    token_ids: Tensor  # (B, T) completion tokens
    logp: Tensor  # (B, T) current log pi(o_t | .)
    old_logp: Tensor  # (B, T) log pi_old
    ref_logp: Tensor | None = None  # (B, T) log pi_ref
    entropy: Tensor | None = None  # (B, T) current token entropy
    old_entropy: Tensor | None = None  # (B, T) rollout-time token entropy
    advantages: Tensor | None = None  # (B,) or (B, T)
    segment_ids: Tensor | None = None  # (B, T) long: 0..K-1 within each row (token, turn, macro or sequence)
    token_weights: Tensor | None = None  # (B, T)
    hidden: Tensor | None = None  # (B, T, D): the input of the LM head at each completion token
    head_weight: Tensor | None = None  # (V, D): the LM head
    log_ratio: Tensor | None = None  # (B, T): the P7 output, log rho~
    counts: Counts | None = None
    step: int = 0
    total_steps: int = 1
    turn_marker_id: int | None = None
    world: World = LOCAL
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

    def rows(self, index: Tensor) -> LossContext:
        """The sub-batch of rows `index` (for mini-batches); per-batch fields are shared."""
        batched = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, Tensor) and f.name != "head_weight" and v.dim() > 0 and v.shape[0] == self.mask.shape[0]:
                batched[f.name] = v[index]
        return replace(self, **batched, metrics={})

    def with_(self, **changes: Any) -> LossContext:
        return replace(self, **changes)
