"""Knapsack RL: rollout-budget allocation (Li, Chen, Yang et al., arXiv 2509.25849; code liziniu/KnapsackRL
`verl/trainer/ppo/exploration_utils.py`, `sampling_budget_by_knapsack` and `solve_by_dp`).

Each prompt i is an item with a success-rate estimate p_i: the mean of its last 16 rollout rewards, valid once it
has 8 (the code's reward buffer and min_buffer_length). With a total budget B = (prompts) x n:
    unknown prompt (fewer than 8 rollouts): n;  p = 0: negative_n;  p = 1: positive_n;  0 < p < 1: min_n + k_i
    Value(N, p) = (1 - p^N - (1 - p)^N) p (1 - p)^2          P[non-zero GRPO gradient] x the information gain
    the k_i maximise sum_i Value(k_i + min_n, p_i) subject to sum k_i = the remaining budget, 1 <= k_i <=
    max_n - min_n (or k_i = 0 at value 0), by a grouped-knapsack dynamic program over the budget
    fallback: when the prompts' estimated needs sum_i min(max_n, log(1 - alpha) / log(max(p, 1 - p))) fall short
    of the remaining budget, the excess goes to the p = 0 prompts (else the unknown / p = 1 ones), split evenly
    budget the DP cannot place (every k_i at its maximum) is spread evenly over the 0 < p < 1 prompts
so sum_i N_i = B exactly. Run configuration: n = 8, min_n = 2, negative_n = positive_n = 2, max_n = 128,
alpha = 0.9, token-mean aggregation, clip 0.2 / 0.28.
"""

from __future__ import annotations

import math

import torch

from offline_rl.seq.methods import register_method
from offline_rl.seq.methods.base import Choice, Method
from offline_rl.seq.points.budgets import BudgetContext
from offline_rl.seq.registry import BUDGETS


def value(n: int, p: float) -> float:
    """Value(N, p) = (1 - p^N - (1 - p)^N) p (1 - p)^2."""
    return (1 - p ** n - (1 - p) ** n) * p * (1 - p) ** 2


def solve_by_dp(rates: list[float], budget: int, min_n: int, max_extra: int) -> list[int]:
    """Extra rollouts k_i per item maximising sum_i Value(k_i + min_n, p_i) (k_i = 0 is worth 0), sum k_i <= budget.

    As the official DP: dp[i][w] over items and exactly-used budget w, first maximum wins (k = 0 first, then k
    increasing); the largest reachable w is backtracked and what is left is spread evenly over the items.
    """
    n_items = len(rates)
    extra = [0] * n_items
    if budget <= 0 or n_items == 0:
        return extra
    W = budget
    neg = -math.inf
    dp = torch.full((W + 1,), neg, dtype=torch.float64)
    dp[0] = 0.0
    choices = []
    ks = torch.arange(1, max_extra + 1)
    for p in rates:
        gains = torch.tensor([0.0 if p in (0.0, 1.0) else value(int(k) + min_n, p) for k in ks], dtype=torch.float64)
        w = torch.arange(W + 1)
        prev_idx = w[:, None] - ks[None, :]  # (W+1, K): dp[w - k]
        cand_k = torch.where(prev_idx >= 0, dp[prev_idx.clamp(min=0)] + gains[None, :], torch.full_like(gains, neg))
        cand = torch.cat([dp[:, None], cand_k], dim=1)  # column 0: no extra rollouts
        best = torch.argmax(cand, dim=1)  # the first maximum
        dp = cand.gather(1, best[:, None]).squeeze(1)
        choices.append(best)
    reachable = torch.nonzero(dp > neg).squeeze(1)
    w = int(reachable.max()) if reachable.numel() else 0
    used = w
    for i in range(n_items - 1, -1, -1):
        k = int(choices[i][w])
        extra[i] = k
        w -= k
    remaining = budget - used
    for j in range(n_items):
        extra[j] += remaining // n_items + (1 if j < remaining % n_items else 0)
    return extra


def allocate(rates: list[float | None], n: int, min_n: int = 2, max_n: int = 128, negative_n: int = 2,
             positive_n: int = 2, alpha: float = 0.9, allow_fallback: bool = True,
             total_budget: int | None = None) -> list[int]:
    """Rollouts per prompt (`rates[i]` None: not enough history). Sums to `total_budget` (default len * n)."""
    size = len(rates)
    total = size * n if total_budget is None else total_budget
    budget, costs, effective = [0] * size, [0.0] * size, []
    for i, p in enumerate(rates):
        if p is None:
            budget[i] = n
        elif 0 < p < 1:
            costs[i] = math.log(1 - alpha) / math.log(max(p, 1 - p))
            budget[i] = min_n
            effective.append(i)
        elif p == 0:
            budget[i], costs[i] = negative_n, math.inf
        else:
            budget[i] = positive_n
    left = total - sum(budget)
    zero = [i for i, p in enumerate(rates) if p == 0]
    if left > 0 and not effective:
        if zero:
            for j, i in enumerate(zero):
                budget[i] += left // len(zero) + (1 if j < left % len(zero) else 0)
        else:
            budget = [n] * size
        return budget
    estimated = sum(int(min(max_n, costs[i])) for i in effective)
    candidates = zero or [i for i in range(size) if i not in effective]
    if estimated < left and allow_fallback and candidates:
        abundant = left - estimated
        for j, i in enumerate(candidates):
            budget[i] += abundant // len(candidates) + (1 if j < abundant % len(candidates) else 0)
        left -= abundant
    extra = solve_by_dp([rates[i] for i in effective], left, min_n, max_n - min_n)
    for i, k in zip(effective, extra):
        budget[i] += k
    return budget


@BUDGETS.register("knapsack")
def knapsack_budget(ctx: BudgetContext, min_n: int = 2, max_n: int = 128, negative_n: int = 2, positive_n: int = 2,
                    alpha: float = 0.9, min_count: int = 8) -> list[int]:
    """Allocate prompts x G rollouts by the knapsack (see the module doc)."""
    rates = [ctx.stats.success_rate(k) if ctx.stats.count(k) >= min_count else None for k in ctx.prompt_keys]
    return allocate(rates, ctx.group_size, min_n, max_n, negative_n, positive_n, alpha)


@register_method("knapsack_rl")
def knapsack_rl() -> Method:
    return Method("knapsack_rl", description="rollout budgets by a knapsack over prompts' success rates",
                  budget=Choice("knapsack"), surrogate=Choice("clip", {"eps_low": 0.2, "eps_high": 0.28}),
                  aggregation=Choice("token-mean"))
