"""Helpers for the sequence-backend tests: hand-made contexts, the learner's pre-step stages, and an in-process
data-parallel world (threads) whose collectives behave like torch.distributed's."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import torch

from offline_rl.seq.context import LossContext, World, global_counts
from offline_rl.seq.loss import policy_loss
from offline_rl.seq.methods.base import Method


def random_ctx(B: int = 6, T: int = 5, G: int = 3, seed: int = 0, spread: float = 0.3, V: int = 7) -> LossContext:
    """B completions in groups of G, prefix masks of random length >= 1, log-probs with a gradient."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    old = -torch.rand(B, T, generator=g) * 2 - 0.1
    logp = (old + spread * torch.randn(B, T, generator=g)).requires_grad_(True)
    rewards = torch.randint(0, 2, (B,), generator=g).float()
    ctx = LossContext(mask=mask, valid=mask.clone(), group_ids=torch.arange(B) // G, rewards=rewards,
                      token_ids=torch.randint(3, V, (B, T), generator=g), logp=logp, old_logp=old,
                      entropy=torch.rand(B, T, generator=g) * 2, old_entropy=torch.rand(B, T, generator=g) * 2,
                      prompt_keys=[f"p{i // G}" for i in range(B)])
    ctx.counts = global_counts(mask)
    return ctx


def prepare(method: Method, ctx: LossContext) -> LossContext:
    """The learner's pre-step stages (P10, P4, P5, P6) on a copy of ctx, with the counts of the kept rows."""
    ctx = dataclasses.replace(ctx, metrics={}, flags=dict(ctx.flags))
    ctx.segment_ids = method.fn("segmenter")(ctx)
    ctx.advantages = method.fn("advantage")(ctx)
    ctx.mask = ctx.mask * method.fn("selection")(ctx)[:, None].to(ctx.mask.dtype)
    ctx.token_weights = method.fn("token_weights")(ctx)
    ctx.counts = global_counts(ctx.mask, ctx.world, ctx.counts.max_len if ctx.counts else None)
    return ctx


def prepared_loss(method: Method, ctx: LossContext) -> torch.Tensor:
    return policy_loss(method, prepare(method, ctx))


def loss_and_grad(method: Method, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
    loss = prepared_loss(method, ctx)
    return loss.detach(), torch.autograd.grad(loss, ctx.logp)[0]


class _Group:
    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size)
        self.slots: list[Any] = [None] * size


class ThreadWorld(World):
    """One of `size` ranks running in threads of this process; collectives exchange through shared slots."""

    def __init__(self, group: _Group, rank: int) -> None:
        self.group, self.rank, self.size = group, rank, group.size

    def _exchange(self, obj: Any) -> list[Any]:
        self.group.slots[self.rank] = obj
        self.group.barrier.wait()
        out = list(self.group.slots)
        self.group.barrier.wait()
        return out

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack(self._exchange(x.clone())).sum(0)

    def all_gather_cat(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._exchange(x.clone()))

    def all_gather_object(self, obj: Any) -> list[Any]:
        return self._exchange(obj)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return self._exchange(obj)[src]


def run_ranks(fn: Callable[[World, int], Any], size: int = 2) -> list[Any]:
    """fn(world, rank) on `size` thread ranks; their results in rank order (an exception in any is re-raised)."""
    group = _Group(size)
    results: list[Any] = [None] * size
    errors: list[BaseException] = []

    def target(rank: int) -> None:
        try:
            results[rank] = fn(ThreadWorld(group, rank), rank)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            group.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
