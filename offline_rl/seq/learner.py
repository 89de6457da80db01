"""One policy update from a scored rollout batch: the pre-step pass (P10, P4, P5, P6) and the optimiser steps."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from offline_rl.seq.context import LOCAL, LossContext, World, global_counts
from offline_rl.seq.loss import policy_loss
from offline_rl.seq.methods.base import Method
from offline_rl.seq.policy import PolicyOutput, head_weight, score_completions, unwrap
from offline_rl.seq.rollout import RolloutBatch


class Learner:
    """Owns the (possibly DDP-wrapped) policy and its optimiser; knows nothing of tasks, files or logging.

    With one iteration and one mini-batch the rollout-time pass is the training pass (verl's on-policy shortcut:
    old log-probs = log-probs.detach()); otherwise a no-grad pass first records old log-probs, entropies and hidden
    states, and each mini-batch is one optimiser step, so from the second step on the ratios differ from 1.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, method: Method, *,
                 ref_model: nn.Module | None = None, world: World = LOCAL, temperature: float = 1.0,
                 max_grad_norm: float | None = 1.0, num_iterations: int = 1, minibatches: int = 1,
                 max_len: int | None = None, turn_marker_id: int | None = None, state: dict[str, Any] | None = None,
                 stats: Any = None) -> None:
        self.model, self.optimizer, self.method, self.ref_model, self.world = model, optimizer, method, ref_model, world
        self.temperature, self.max_grad_norm = temperature, max_grad_norm
        self.num_iterations, self.minibatches = num_iterations, minibatches
        self.max_len, self.turn_marker_id = max_len, turn_marker_id
        self.state = {} if state is None else state
        self.stats = stats
        self._train_pass: PolicyOutput | None = None

    @property
    def on_policy_shortcut(self) -> bool:
        return self.num_iterations == 1 and self.minibatches == 1

    def forward(self, batch: RolloutBatch, grad: bool, model: nn.Module | None = None,
                hidden: bool = False) -> PolicyOutput:
        g = batch.gen
        model = model or (self.model if grad else unwrap(self.model))
        with torch.set_grad_enabled(grad):
            return score_completions(model, g.prompt_ids, g.prompt_mask, g.completion_ids, g.completion_mask,
                                     self.temperature, with_hidden=hidden, entropy_grad=bool(self.method.entropy_coef),
                                     with_vocab=self.method.needs_vocab_logp and grad)

    def prepare(self, batch: RolloutBatch, step: int = 0, total_steps: int = 1) -> LossContext:
        """The context with segment ids, advantages, sample selection and token weights filled in."""
        out = self.forward(batch, grad=self.on_policy_shortcut, hidden=self.method.needs_hidden)
        self._train_pass = out if self.on_policy_shortcut else None
        old = out.logp.detach()
        ref = None
        if self.ref_model is not None:
            ref = self.forward(batch, grad=False, model=self.ref_model).logp
        g = batch.gen
        mask = g.completion_mask.float()
        ctx = LossContext(
            mask=mask, valid=mask, group_ids=batch.group_ids, rewards=batch.rewards, token_ids=g.completion_ids,
            logp=old, old_logp=old, ref_logp=ref, rollout_logp=g.logprobs, entropy=out.entropy.detach(),
            old_entropy=out.entropy.detach(), hidden=out.hidden, flags=dict(batch.flags),
            head_weight=head_weight(self.model, self.temperature) if self.method.needs_hidden else None,
            prompt_keys=[p.key for p in batch.problems], step=step, total_steps=total_steps,
            turn_marker_id=self.turn_marker_id, world=self.world, state=self.state, stats=self.stats)
        m = self.method
        ctx.segment_ids = m.fn("segmenter")(ctx)
        ctx.advantages = m.fn("advantage")(ctx)
        keep = m.fn("selection")(ctx)
        ctx.mask = ctx.mask * keep[:, None].to(ctx.mask.dtype)
        ctx.token_weights = m.fn("token_weights")(ctx)
        return ctx

    def minibatch_rows(self, n_rows: int) -> list[Tensor]:
        return list(torch.arange(n_rows).chunk(self.minibatches))

    def update(self, batch: RolloutBatch, ctx: LossContext) -> dict[str, Tensor]:
        """num_iterations x minibatches optimiser steps; returns the pre-step metrics and those of the last step."""
        prepared = dict(ctx.metrics)
        metrics: dict[str, Tensor] = {}
        for _ in range(self.num_iterations):
            for rows in self.minibatch_rows(batch.size):
                sub = ctx if self.minibatches == 1 else ctx.rows(rows)
                sub.counts = global_counts(sub.mask, self.world, self.max_len)
                if self._train_pass is not None:
                    out, self._train_pass = self._train_pass, None
                else:
                    out = self.forward(batch if self.minibatches == 1 else batch.rows(rows), grad=True)
                sub = sub.with_(logp=out.logp, entropy=out.entropy, vocab_logp=out.vocab_logp, metrics={})
                loss = self.step(sub)
                metrics = {**{k: v.detach() for k, v in sub.metrics.items()}, "loss": loss.detach()}
        return {**prepared, **metrics}

    def loss(self, ctx: LossContext) -> Tensor:
        return policy_loss(self.method, ctx)

    def step(self, ctx: LossContext) -> Tensor:
        loss = self.loss(ctx)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return loss
