"""Automate-CoT: exemplar selection by a variance-reduced policy gradient over a black-box LM (Shum, Diao, Zhang,
EMNLP Findings 2023; code SHUMKASHUN/Automate-CoT `src/example_selection.py`).

The LM is frozen (a black box that returns completions and answer log-probs); what is learnt is the prompt.
    K slots; slot k holds a categorical p_k over its own sub-pool of S exemplars (question + answer)
    each step: I prompt combinations S_1..S_I ~ prod_k p_k; the prompt is the chosen exemplars, each prepended in
        slot order (as the code), then the question
    L(S) = mean over this step's questions of -log p(answer | S, q) * FACTOR when the greedy answer is right,
           else -log(0.05) * FACTOR (the code's penalty); FACTOR = 1e7
    g = 1/(I - 1) sum_i (L(S_i) - mean L) d_i,  d_i = +1/p on each slot's selected entry, -1/p on the others
    clip ||g|| at 3, Adam (lr 1e-3), then project each p_k: p_k <- clamp(p_k - v, 1e-4, 1) with v found by
        bisection on [0, max p_k] so that the clamped row sums to 1 (within 1e-3, at most 30 steps; a row that
        sums below 1 even at v = 0 is searched below 0 too, so it stays on the simplex: our extension)
    the final prompt takes each slot's argmax.
With the code's +/- 1/p derivative the estimator's mean is 2 (grad E[L] - E[L]), twice the score-function
gradient shifted by a constant per slot (a shift the simplex projection ignores).
Defaults (the code): K = 8 slots, I = 10 samples, lr 1e-3, clip 3; S = 12 candidates per slot (a pool of 100
split in 8). The code draws every slot's index from the first S pool entries; we give slot k the entries
k S .. (k + 1) S - 1 (the sub-pools of the paper's description). The trainer reports the reward of G sampled
completions per question under the current argmax prompt; the LM's weights never change.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.hooks import HookContext
from offline_rl.seq.registry import HOOKS

FACTOR = 1e7
WRONG = -math.log(0.05) * FACTOR


def vr_pge(probs: Tensor, picks: Tensor, losses: Tensor) -> Tensor:
    """The code's estimator: 1/(I-1) sum_i (L_i - mean L) d_i. probs (K, S), picks (I, K) long, losses (I,)."""
    inv = 1.0 / probs
    selected = torch.nn.functional.one_hot(picks, probs.shape[1]).bool()  # (I, K, S)
    d = torch.where(selected, inv, -inv)
    centred = (losses - losses.mean()).to(probs.dtype)
    return (centred[:, None, None] * d).sum(0) / (picks.shape[0] - 1)


def clip_norm(grad: Tensor, max_norm: float) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ on one tensor: scale by max_norm / (norm + 1e-6) when the norm is larger."""
    norm = float(grad.norm())
    return grad * (max_norm / (norm + 1e-6)) if norm > max_norm else grad


def adam_step(p: Tensor, grad: Tensor, st: dict[str, Any], lr: float, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8) -> Tensor:
    """torch.optim.Adam's update (no weight decay) on a plain tensor; st holds m, v, t (updated in place)."""
    st["t"] = st.get("t", 0) + 1
    m = st.get("m", torch.zeros_like(p)) * betas[0] + (1 - betas[0]) * grad
    v = st.get("v", torch.zeros_like(p)) * betas[1] + (1 - betas[1]) * grad * grad
    st["m"], st["v"] = m, v
    m_hat = m / (1 - betas[0] ** st["t"])
    denom = (v / (1 - betas[1] ** st["t"])).sqrt() + eps
    return p - lr * m_hat / denom


def project_row(row: Tensor, low: float = 1e-4, tol: float = 1e-3, max_iter: int = 30) -> Tensor:
    """clamp(row - v, low, 1) with v by bisection until the sum is 1 within tol (the code's, on [0, max row]).

    When even v = 0 leaves the sum below 1 the code's bracket has no root; we then search [min row - 1, max row]
    so that the row still ends on the simplex (our extension).
    """
    def excess(v: float) -> float:
        return float((row - v).clamp(low, 1).sum()) - 1

    a, b = (0.0 if excess(0.0) >= 0 else float(row.min()) - 1.0), float(row.max())
    v = 0.0
    for _ in range(max_iter):
        v = (a + b) / 2
        e = excess(v)
        if abs(e) < tol:
            break
        if e < 0:
            b = v
        else:
            a = v
    return (row - v).clamp(low, 1)


def exemplar_prompt(exemplars: list[Any], question: str) -> str:
    """Each slot's exemplar prepended in turn (slot 0 first, so the last slot ends up first), then the question."""
    text = question
    for ex in exemplars:
        text = f"{ex.prompt}{ex.answer};{text}"
    return text


def prompt_losses(ctx: HookContext, pool: list[Any], picks: Tensor, slots: int, size: int) -> Tensor:
    """L(S_i) for each row of picks: the code's loss over this step's questions, from the frozen LM."""
    losses = []
    for pick in picks.tolist():
        chosen = [pool[k * size + j] for k, j in enumerate(pick)]
        texts = [exemplar_prompt(chosen, q.prompt) for q in ctx.problems]
        greedy = ctx.generate(ctx.problems, [1] * len(ctx.problems), prompt_texts=texts, greedy=True)
        right = greedy.rewards.reshape(greedy.size, -1)[:, 0] > 0
        logp = ctx.score_answers(texts, [q.answer for q in ctx.problems])
        losses.append(torch.where(right, -logp * FACTOR, torch.full_like(logp, WRONG)).mean())
    return torch.stack(losses).double()


@HOOKS.register("automate_cot")
def automate_cot(ctx: HookContext, slots: int = 8, candidates: int = 12, samples: int = 10, lr: float = 1e-3,
                 max_norm: float = 3.0) -> Any:
    """One VR-PGE step on the exemplar policy; returns the questions' rollouts under the argmax prompt."""
    pool = ctx.exemplars(slots * candidates)
    st = ctx.state.setdefault("automate_cot", {"probs": torch.full((slots, candidates), 1.0 / candidates,
                                                                   dtype=torch.double), "adam": {}})
    probs = st["probs"]
    gen = torch.Generator().manual_seed(ctx.step)
    picks = torch.stack([torch.multinomial(probs, 1, generator=gen).squeeze(1) for _ in range(samples)])
    losses = prompt_losses(ctx, pool, picks, slots, candidates)
    grad = clip_norm(vr_pge(probs, picks, losses), max_norm)
    stepped = adam_step(probs, grad, st["adam"], lr)
    st["probs"] = torch.stack([project_row(r) for r in stepped])
    st["loss"] = float(losses.mean())
    best = [pool[k * candidates + int(j)] for k, j in enumerate(st["probs"].argmax(-1))]
    texts = [exemplar_prompt(best, q.prompt) for q in ctx.problems]
    return ctx.generate(ctx.problems, [ctx.group_size] * len(ctx.problems), prompt_texts=texts)


@register_method("automate_cot")
def automate_cot_method() -> Method:
    return Method("automate_cot", description="exemplar selection by VR-PGE over a frozen (black-box) LM",
                  hook=Choice("automate_cot"), budget=Choice("none"), trains_policy=False)
