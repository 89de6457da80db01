"""Batched, differentiable inventory simulators (HDPO's benchmark problems), in torch.

A simulator maps (state, orders, demand) to (next state, cost) with max(·, 0), min and shifts only, so the cost of
a whole rollout is differentiable almost everywhere in the orders (HDPO's pathwise gradient). Everything is
batched over scenarios: a state is [n, state_dim], orders [n, n_orders], a demand [n, n_stores].

A location's inventory is a row (on hand, then the orders in transit, the next to arrive first), as in
`MatiasAlvo/Neural_inventory_control` `environment.py`: each period the on-hand inventory meets its outflow, the
next arrival joins it, the pipeline shifts by one and the new order enters the pipeline's last slot. An order placed
in period t is on hand at the start of period t + L (with L = 1 it joins the on-hand inventory of t + 1 directly).
The row has L entries (the on-hand inventory and L − 1 orders in transit), the DP's state; the reference code pads
it to max(L, 4) entries whose extra slots only carry the random initial inventory in during the first periods.

Costs per period (HDPO's "reward", a cost): a store pays h·(I − d)⁺ + p·(d − I)⁺ with I the on-hand inventory at
the start of the period; an upstream location pays h_k·(I_k − shipped)⁺. With lost sales the unmet demand leaves,
(I − d)⁺ stays; with backlogging the store's inventory goes negative.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from offline_rl.errors import UserError

DEMAND_MEAN = 5.0


class DifferentiableEnv(Protocol):
    """What HDPO needs from a problem: scenarios (initial states and demand traces) and a differentiable step."""

    state_dim: int
    n_orders: int
    n_stores: int
    integer_demand: bool

    def initial_state(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def sample_demands(self, n: int, periods: int, generator: torch.Generator | None = None) -> torch.Tensor: ...

    def step(self, state: torch.Tensor, orders: torch.Tensor,
             demand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def receive(inventory: torch.Tensor, on_hand_after: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """One location's next row: (left on hand + next arrival, rest of the pipeline shifted, the new order).

    `inventory` [n, L], `on_hand_after` [n] (what is left after this period's outflow), `order` [n].
    """
    row = torch.cat([on_hand_after[:, None], inventory[:, 1:], order[:, None]], dim=1)  # [n, L + 1]
    return torch.cat([row[:, :1] + row[:, 1:2], row[:, 2:]], dim=1)


def sample_demand(kind: str, n: int, periods: int, n_stores: int, mean: float, std: float,
                  generator: torch.Generator | None, device: torch.device | str = "cpu") -> torch.Tensor:
    """[n, periods, n_stores] demands: Poisson(mean), or N(mean, std²) clipped at 0 (the reference code's `clip`)."""
    shape = (n, periods, n_stores)
    if kind == "poisson":
        return torch.poisson(torch.full(shape, mean, device=device), generator=generator)
    if kind == "normal":
        return (mean + std * torch.randn(shape, generator=generator, device=device)).clamp(min=0.0)
    raise UserError(f"demand distribution '{kind}' is unknown; known: poisson, normal")


@dataclass
class OneStore:
    """One store, lead time L, holding cost h, shortage cost p; `lost_sales` (Poisson(5) demand in the benchmark)
    or backlogged (N(5, 1.6²) clipped at 0). State: (on hand, orders in transit) [n, L]; one order per period.

    The initial state has each of its L entries U[0, 1]·mean demand (the reference code's `range_mult` [0, 1]).
    """

    lead_time: int
    p: float
    h: float = 1.0
    lost_sales: bool = True
    demand: str = "poisson"
    mean: float = DEMAND_MEAN
    std: float = 1.6
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.lead_time < 1:
            raise UserError(f"lead time must be ≥ 1, got {self.lead_time}")
        self.state_dim, self.n_orders, self.n_stores = self.lead_time, 1, 1
        self.integer_demand = self.demand == "poisson"

    def initial_state(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean * torch.rand(n, self.state_dim, generator=generator, device=self.device)

    def sample_demands(self, n: int, periods: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_demand(self.demand, n, periods, 1, self.mean, self.std, generator, self.device)

    def step(self, state: torch.Tensor, orders: torch.Tensor,
             demand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(next state, cost [n]) for orders [n, 1] and demand [n, 1]."""
        d = demand[:, 0]
        after = state[:, 0] - d
        cost = self.h * after.clamp(min=0.0) + self.p * (-after).clamp(min=0.0)
        if self.lost_sales:
            after = after.clamp(min=0.0)
        return receive(state, after, orders[:, 0]), cost


@dataclass
class SerialSystem:
    """A serial supply chain, upstream to downstream: `echelons` (holding costs, lead times), a warehouse, one
    backlogged store with N(5, 2²) demand clipped at 0 (the spec's four-stage system: echelons h = 0.1, 0.2 with
    L = 2, 4; warehouse h = 0.5, L = 3; store h = 1, L_store, shortage cost p).

    State: the locations' rows concatenated upstream → downstream (widths = their lead times). Orders [n, 4]: one
    per location, same order; location k ships its order from the on-hand inventory of location k − 1 (the first
    from an unlimited supplier), so an order is capped at the upstream on-hand inventory (orders of a feasible
    policy pass through unchanged).
    """

    store_lead_time: int
    p: float
    store_h: float = 1.0
    warehouse_h: float = 0.5
    warehouse_lead_time: int = 3
    echelon_h: tuple[float, ...] = (0.1, 0.2)
    echelon_lead_times: tuple[int, ...] = (2, 4)
    mean: float = DEMAND_MEAN
    std: float = 2.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.lead_times = (*self.echelon_lead_times, self.warehouse_lead_time, self.store_lead_time)
        self.holding = (*self.echelon_h, self.warehouse_h, self.store_h)
        if min(self.lead_times) < 1 or len(self.echelon_h) != len(self.echelon_lead_times):
            raise UserError(f"serial system: lead times must be ≥ 1 and one per echelon, got {self.lead_times}")
        self.widths = self.lead_times
        self.state_dim, self.n_orders, self.n_stores = sum(self.widths), len(self.widths), 1
        self.integer_demand = False
        self.supplier_cap = 4 * self.mean  # the reference code's order bound for the most upstream location

    def rows(self, state: torch.Tensor) -> list[torch.Tensor]:
        """The locations' rows, upstream → downstream."""
        return list(torch.split(state, self.widths, dim=1))

    def initial_state(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean * torch.rand(n, self.state_dim, generator=generator, device=self.device)

    def sample_demands(self, n: int, periods: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample_demand("normal", n, periods, 1, self.mean, self.std, generator, self.device)

    def step(self, state: torch.Tensor, orders: torch.Tensor,
             demand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows(state)
        on_hand = [r[:, 0] for r in rows]
        upstream = [torch.full_like(on_hand[0], float("inf")), *(x.clamp(min=0.0) for x in on_hand[:-1])]
        shipped = [torch.minimum(orders[:, k], upstream[k]) for k in range(self.n_orders)]
        store = len(rows) - 1
        after_store = on_hand[store] - demand[:, 0]
        cost = self.store_h * after_store.clamp(min=0.0) + self.p * (-after_store).clamp(min=0.0)
        new_rows = []
        for k, row in enumerate(rows):
            if k == store:
                after = after_store
            else:
                after = on_hand[k] - shipped[k + 1]
                cost = cost + self.holding[k] * after.clamp(min=0.0)
            new_rows.append(receive(row, after, shipped[k]))
        return torch.cat(new_rows, dim=1), cost


def rollout(env: DifferentiableEnv, policy, initial: torch.Tensor, demands: torch.Tensor,
            round_orders: bool = False) -> torch.Tensor:
    """Per-period costs [n, T] of `policy` (state [n, d] → orders [n, n_orders]) over the demand traces
    [n, T, n_stores], from `initial`; with `round_orders` the orders are rounded to integers (HDPO's test with
    Poisson demand). Differentiable in the policy's parameters when `round_orders` is False."""
    state, costs = initial, []
    for t in range(demands.shape[1]):
        orders = policy(state)
        if round_orders:
            orders = orders.round()
        state, cost = env.step(state, orders, demands[:, t])
        costs.append(cost)
    return torch.stack(costs, dim=1)
