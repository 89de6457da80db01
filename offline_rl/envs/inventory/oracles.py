"""Known optima of the inventory problems: the backlogged closed form and the lost-sales DP (Zipkin 2008, Table 3).

Timing (HDPO's, `MatiasAlvo/Neural_inventory_control`): the order q_t is placed before d_t is seen and arrives at
the start of period t + L, so the protection interval is L + 1 periods.

Backlogged, demand N(μ, σ²): a base-stock policy on the inventory position is optimal, at the newsvendor level over
the protection interval,

    S* = μ(L+1) + σ√(L+1)·Φ⁻¹(p/(p+h)),      C* = (p + h)·σ√(L+1)·φ(Φ⁻¹(p/(p+h))).

Lost sales, demand Poisson(λ): relative value iteration on the state x = (I, q_{t−L+1}, …, q_{t−1}) (on-hand after
arrivals, then the L − 1 outstanding orders, oldest first):

    V(x) ← C(I) + min_{q ≥ 0} E_d V(x′) − (the same at a reference state),   C(I) = h·E(I − d)⁺ + p·E(d − I)⁺
    x′ = ((I − d)⁺ + q_{t−L+1}, q_{t−L+2}, …, q_{t−1}, q)       (L = 1: x′ = (I − d)⁺ + q)

The order minimises an expectation over the demand it has not seen (taking the minimum inside the expectation
shifts the table by one lead time). Demand is not truncated (the tail P(d ≥ I) is exact); on-hand inventory is
capped at `max_inventory` and orders at `max_order`, large enough that the third decimal does not move. The
min and max of T V − V bracket the optimal average cost g; iteration stops when they are `tol` apart.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, poisson

from offline_rl.errors import UserError

LOST_SALES_P = (4.0, 9.0, 19.0, 39.0)
LOST_SALES_L = (1, 2, 3, 4)

ZIPKIN_TABLE: dict[tuple[int, float], float] = {
    (1, 4.0): 4.04, (2, 4.0): 4.40, (3, 4.0): 4.60, (4, 4.0): 4.73,
    (1, 9.0): 5.44, (2, 9.0): 6.09, (3, 9.0): 6.53, (4, 9.0): 6.84,
    (1, 19.0): 6.68, (2, 19.0): 7.66, (3, 19.0): 8.36, (4, 19.0): 8.89,
    (1, 39.0): 7.84, (2, 39.0): 9.11, (3, 39.0): 10.04, (4, 39.0): 10.79,
}
"""Zipkin (2008), "Old and new methods for lost-sales inventory systems", Table 3: optimal average cost by
(L, p), h = 1, Poisson(5) demand, two decimals."""

LOST_SALES_DP_TABLE: dict[tuple[int, float], float] = {
    (1, 4.0): 4.041, (1, 9.0): 5.438, (1, 19.0): 6.676, (1, 39.0): 7.836,
    (2, 4.0): 4.395, (2, 9.0): 6.094, (2, 19.0): 7.664, (2, 39.0): 9.106,
    (3, 4.0): 4.599, (3, 9.0): 6.531, (3, 19.0): 8.363, (3, 39.0): 10.038,
    (4, 4.0): 4.729, (4, 9.0): 6.836, (4, 19.0): 8.887, (4, 39.0): 10.794,
}
"""The same optima to three decimals from an exact relative-value-iteration DP with this timing (the constants
for L = 4, whose DP takes minutes: see `lost_sales_optimum`)."""


def backlogged_base_stock_level(lead_time: int, p: float, h: float = 1.0, mean: float = 5.0, std: float = 1.6) -> float:
    """S* = μ(L+1) + σ√(L+1)·Φ⁻¹(p/(p+h)): the optimal level of the inventory position (on hand + pipeline)."""
    n = lead_time + 1
    return mean * n + std * math.sqrt(n) * float(norm.ppf(p / (p + h)))


def backlogged_optimum(lead_time: int, p: float, h: float = 1.0, std: float = 1.6) -> float:
    """C* = (p + h)·σ√(L+1)·φ(Φ⁻¹(p/(p+h))): the optimal average cost per period (demand N(μ, σ²), unclipped)."""
    z = float(norm.ppf(p / (p + h)))
    return (p + h) * std * math.sqrt(lead_time + 1) * float(norm.pdf(z))


@dataclass(frozen=True)
class DPResult:
    """The lost-sales DP's answer: `cost` (midpoint of the bracket [lower, upper] on g) and what it took."""

    cost: float
    lower: float
    upper: float
    iterations: int
    n_states: int
    seconds: float
    values: np.ndarray
    """The relative values V(x), shape (max_inventory + 1,) + (max_order + 1,)·(L − 1)."""


def _on_hand_after_demand(max_inventory: int, mean: float) -> np.ndarray:
    """M[I, j] = P((I − d)⁺ = j) for d ~ Poisson(mean): P(d = I − j) for j ≥ 1, P(d ≥ I) for j = 0."""
    n = max_inventory + 1
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    m = np.where((j >= 1) & (j <= i), poisson.pmf(i - j, mean), 0.0)
    m[:, 0] = poisson.sf(np.arange(n) - 1, mean)
    return m


def _expected_cost(max_inventory: int, mean: float, p: float, h: float) -> np.ndarray:
    """C(I) = h·E(I − d)⁺ + p·E(d − I)⁺, with E(d − I)⁺ = E d − I + E(I − d)⁺ (exact, no truncation)."""
    inv = np.arange(max_inventory + 1, dtype=np.float64)
    left = _on_hand_after_demand(max_inventory, mean) @ inv  # E(I − d)⁺
    return h * left + p * (mean - inv + left)


def lost_sales_dp(lead_time: int, p: float, h: float = 1.0, mean: float = 5.0, max_inventory: int | None = None,
                  max_order: int | None = None, tol: float = 1e-7, max_iter: int = 20_000) -> DPResult:
    """Optimal average cost of the one-store lost-sales system by relative value iteration (module docstring).

    Default bounds: on hand ≤ ⌈mean·(L + 1) + 4√(mean·(L + 1))⌉ + 5 and orders ≤ 3·mean + 10 (checked against
    larger bounds to the fourth decimal for L ≤ 3, p ≤ 39). L ≥ 4 has (max_order + 1)³ pipeline states per on-hand
    level: minutes on a CPU.
    """
    if lead_time < 1:
        raise UserError(f"lead time must be ≥ 1, got {lead_time}")
    n_mean = mean * (lead_time + 1)
    max_inventory = max_inventory or int(math.ceil(n_mean + 4 * math.sqrt(n_mean))) + 5
    max_order = max_order or int(3 * mean) + 10
    n_i, n_q = max_inventory + 1, max_order + 1
    start = time.perf_counter()
    m = _on_hand_after_demand(max_inventory, mean)
    cost = _expected_cost(max_inventory, mean, p, h)
    # next on hand = min(j + arriving, max_inventory), for each arriving quantity (an order or q_{t−L+1})
    arrive_idx = np.minimum(np.arange(n_i)[None, :] + np.arange(n_q)[:, None], max_inventory)  # [arriving, j]
    pipeline = (n_q,) * (lead_time - 1)
    v = np.zeros((n_i, *pipeline))
    lower = upper = float("nan")
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        tv = _bellman(v, m, cost, arrive_idx, lead_time)
        diff = tv - v
        lower, upper = float(diff.min()), float(diff.max())
        v = tv - tv.flat[0]  # reference state: empty system
        if upper - lower < tol:
            break
    return DPResult((lower + upper) / 2, lower, upper, iterations, v.size, time.perf_counter() - start, v)


def _bellman(v: np.ndarray, m: np.ndarray, cost: np.ndarray, arrive_idx: np.ndarray, lead_time: int) -> np.ndarray:
    """(T V)(x) = C(I) + min_q Σ_j M[I, j]·V(x′(j, q))."""
    n_i = v.shape[0]
    if lead_time == 1:  # x′ = j + q: G[I, q] = Σ_j M[I, j] V[j + q]
        g = m @ v[arrive_idx].T
        return cost + g.min(1)
    flat = v.reshape(n_i, -1)  # columns: (q_{t−L+2}, …, q_{t−1}, q) of the next state
    n_q = arrive_idx.shape[0]
    out = np.empty((n_i, n_q, flat.shape[1] // n_q))
    for q1 in range(n_q):  # the order arriving now, q_{t−L+1}, lands on top of what the demand left
        g = m @ flat[arrive_idx[q1]]
        out[:, q1] = g.reshape(n_i, -1, n_q).min(2)
    return cost.reshape((n_i,) + (1,) * (lead_time - 1)) + out.reshape(v.shape)


def lost_sales_optimum(lead_time: int, p: float, compute_up_to: int = 3) -> float:
    """The optimal average cost for Poisson(5), h = 1: the DP for L ≤ `compute_up_to`, the DP table's constant
    (three decimals) above it."""
    if lead_time <= compute_up_to:
        return lost_sales_dp(lead_time, p).cost
    key = (lead_time, float(p))
    if key not in LOST_SALES_DP_TABLE:
        raise UserError(f"no tabulated lost-sales optimum for L={lead_time}, p={p:g}; table: L ∈ {LOST_SALES_L}, "
                        f"p ∈ {LOST_SALES_P}")
    return LOST_SALES_DP_TABLE[key]
