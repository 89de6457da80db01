"""P10 action segmentation: `segmenter(ctx) -> segment_ids (B, T)`, ids 0..K-1 non-decreasing along each row.

The segment ids set the importance-sampling granularity (P7): one segment per token is token-level PPO/GRPO, one
per sequence is GSPO, one per turn is ST-PPO, one per macro action is MA-RLHF.
"""

from __future__ import annotations

import torch
from torch import Tensor

from offline_rl.seq.context import LossContext
from offline_rl.seq.registry import SEGMENTERS


def starts_to_ids(starts: Tensor) -> Tensor:
    """Segment ids from a bool tensor marking the first token of each segment (token 0 always starts one)."""
    starts = starts.clone()
    starts[:, 0] = True
    return starts.long().cumsum(-1) - 1


def last_token_alone(ids: Tensor, mask: Tensor) -> Tensor:
    """The same segments, except that each row's last valid token is a segment of its own (MA-RLHF's rule)."""
    starts = torch.ones_like(ids, dtype=torch.bool)
    starts[:, 1:] = ids[:, 1:] != ids[:, :-1]
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    starts.scatter_(1, last[:, None], True)
    after = torch.arange(ids.shape[1], device=ids.device)[None, :] > last[:, None]
    return starts_to_ids(starts & ~after)


@SEGMENTERS.register("token")
def token(ctx: LossContext) -> Tensor:
    B, T = ctx.mask.shape
    return torch.arange(T, device=ctx.mask.device).expand(B, T).clone()


@SEGMENTERS.register("sequence")
def sequence(ctx: LossContext) -> Tensor:
    return torch.zeros_like(ctx.mask, dtype=torch.long)


@SEGMENTERS.register("turns")
def turns(ctx: LossContext, marker_id: int | None = None) -> Tensor:
    """A new turn starts after each turn-marker token (ST-PPO turns, EMPG steps); no marker: one turn."""
    marker = ctx.turn_marker_id if marker_id is None else marker_id
    if marker is None:
        return sequence(ctx)
    is_marker = (ctx.token_ids == marker).long()
    return is_marker.cumsum(-1) - is_marker


@SEGMENTERS.register("fixed")
def fixed_ngram(ctx: LossContext, n: int = 5, last_alone: bool = True) -> Tensor:
    """MA-RLHF `fixed`: consecutive n-grams of completion tokens (n = 1 is token level); the last token alone."""
    ids = token(ctx) // n
    return last_token_alone(ids, ctx.mask) if last_alone else ids


@SEGMENTERS.register("randomized")
def randomized_ngram(ctx: LossContext, repeat_times: int = 1, lengths: tuple[int, ...] = (1, 2, 3, 5, 10),
                     seed: int = 0, last_alone: bool = True) -> Tensor:
    """MA-RLHF `randomized`: n-gram lengths from `lengths` x repeat_times, shuffled per row; the rest is one macro,
    and the last token one of its own.

    As in the official `randomized_ngram_selection`; the shuffle is seeded by (seed, step).
    """
    B, T = ctx.mask.shape
    pool = torch.tensor(lengths, dtype=torch.long).repeat_interleave(repeat_times)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + ctx.step)
    perm = torch.argsort(torch.rand(B, len(pool), generator=gen), dim=1)
    ends = pool[perm].cumsum(-1).to(ctx.mask.device)  # (B, n_macros): end position (exclusive) of each macro
    pos = torch.arange(T, device=ctx.mask.device).expand(B, T).contiguous()
    ids = torch.searchsorted(ends, pos, right=True)
    return last_token_alone(ids, ctx.mask) if last_alone else ids


@SEGMENTERS.register("ppl")
def perplexity(ctx: LossContext, last_alone: bool = True) -> Tensor:
    """MA-RLHF `ppl`: token i starts a macro where the next token's perplexity rises, ppl[i+1] > ppl[i]; the last
    token alone.

    Perplexity is exp(-log pi_ref), or exp(-log pi_old) when there is no reference model. Index convention as in
    the official `ppl_selection`.
    """
    logp = ctx.ref_logp if ctx.ref_logp is not None else ctx.old_logp
    ppl = torch.exp(-logp.detach())
    starts = torch.zeros_like(ctx.mask, dtype=torch.bool)
    both_valid = (ctx.mask[:, 1:] > 0) & (ctx.mask[:, :-1] > 0)
    starts[:, :-1] = (ppl[:, 1:] > ppl[:, :-1]) & both_valid
    ids = starts_to_ids(starts)
    return last_token_alone(ids, ctx.mask) if last_alone else ids
