"""P2 budgets: fixed, oversample, none, and Knapsack RL's allocation (DP against brute force, the special cases
and the fallback by hand)."""

from __future__ import annotations

import itertools
import math

import pytest

from offline_rl.seq.methods.knapsack import allocate, solve_by_dp, value
from offline_rl.seq.points.budgets import BudgetContext
from offline_rl.seq.registry import BUDGETS
from offline_rl.seq.stats import GroupRecord, PromptStats


def ctx(keys, G=8, stats=None):
    return BudgetContext(list(keys), G, stats or PromptStats())


def test_fixed_oversample_none() -> None:
    assert BUDGETS.get("fixed")(ctx("abc", G=3)) == [3, 3, 3]
    assert BUDGETS.get("oversample")(ctx("ab", G=3)) == [6, 6]  # default factor 2
    assert BUDGETS.get("oversample")(ctx("a", G=3), factor=1.5) == [5]  # ceil(4.5)
    assert BUDGETS.get("none")(ctx("ab")) == [0, 0]


def test_value_formula() -> None:
    assert value(4, 0.5) == pytest.approx((1 - 2 * 0.5 ** 4) * 0.5 * 0.25)
    assert value(10, 0.0) == 0 and value(10, 1.0) == 0


def brute_force(rates, budget, min_n, max_extra):
    best = -math.inf
    for ks in itertools.product(range(max_extra + 1), repeat=len(rates)):
        if sum(ks) == budget:
            best = max(best, sum(value(k + min_n, p) if k else 0.0 for k, p in zip(ks, rates)))
    return best


@pytest.mark.parametrize("rates,budget", [([0.5, 0.9, 0.2], 7), ([0.3, 0.6], 5), ([0.1, 0.5, 0.7, 0.95], 6),
                                          ([0.4], 3)])
def test_dp_optimum_equals_brute_force(rates, budget) -> None:
    extra = solve_by_dp(rates, budget, min_n=2, max_extra=4)
    assert sum(extra) == budget
    got = sum(value(k + 2, p) if k else 0.0 for k, p in zip(extra, rates))
    assert got == pytest.approx(brute_force(rates, budget, 2, 4), rel=1e-12)


def test_dp_spreads_what_it_cannot_place() -> None:
    assert solve_by_dp([0.5, 0.5], 11, min_n=2, max_extra=3) == [3 + 3, 3 + 2]  # 6 placed, 5 spread


def test_allocation_special_cases_and_fallback_by_hand() -> None:
    # unknown: n; p = 0: negative_n (+ the fallback); p = 1: positive_n; p = 0.5: min_n + DP
    # left = 32 - (8 + 2 + 2 + 2) = 18; the p = 0.5 prompt needs log(0.1)/log(0.5) = 3.3 -> 3, so 15 go to p = 0
    assert allocate([None, 0.0, 1.0, 0.5], n=8) == [8, 17, 2, 5]
    assert allocate([0.0, 0.0, 1.0], n=4) == [5, 5, 2]  # no effective prompt: the rest to p = 0, evenly
    assert allocate([1.0, 1.0], n=4) == [4, 4]  # nothing to learn from: uniform


@pytest.mark.parametrize("rates", [[0.5, 0.95, 0.3, 0.7], [0.2] * 6, [0.5, 0.95]])
def test_allocation_properties(rates) -> None:
    budget = allocate(rates, n=8, max_n=32, allow_fallback=False)
    assert sum(budget) == 8 * len(rates) and min(budget) >= 2
    if len(set(rates)) == 1:
        assert max(budget) - min(budget) <= 1  # identical rates: (near) uniform
    if 0.5 in rates and 0.95 in rates:
        assert budget[rates.index(0.5)] >= budget[rates.index(0.95)]


def test_knapsack_budget_reads_the_stats_store() -> None:
    stats = PromptStats()
    stats.record([GroupRecord("hard", [0.0] * 8), GroupRecord("half", [1.0, 0.0] * 4), GroupRecord("new", [1.0] * 4)])
    got = BUDGETS.get("knapsack")(ctx(["hard", "half", "new", "unseen"], G=8, stats=stats))
    # "new" has 4 < 8 rollouts and "unseen" none: both unknown (8 each); as by hand above, 32 - 20 = 12 left,
    # the p = 0.5 prompt needs 3, so 9 go to the p = 0 prompt
    assert got == [2 + 9, 2 + 3, 8, 8]
