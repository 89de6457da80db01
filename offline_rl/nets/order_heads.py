"""Order heads for the inventory problems (HDPO, `MatiasAlvo/Neural_inventory_control` `neural_networks.py`).

A head maps an inventory state [n, state_dim] (each location's row: on hand, then the orders in transit) to
non-negative orders [n, n_orders]:

    vanilla            softplus(MLP(state) + 1)                        (VanillaOneStore: ELU MLP, +1 then softplus)
    base_stock         (S − inventory position)⁺                       (one learned level S)
    capped_base_stock  min((S − inventory position)⁺, cap)             (S and the cap learned)
    echelon_stock      min((S_k − echelon inventory position_k)⁺, on hand upstream)   (serial system)
    vanilla_serial     sigmoid(MLP(state))·(on hand upstream; the supplier's bound for the first location)

The inventory position is the row's sum; location k's echelon inventory position is the sum of the positions of k
and every location downstream. The echelon levels are built from the store up, S_store = u_store and
S_k = S_{k+1} + u_k with u = softplus(w + 10) (the reference code's partial sums, which keep the levels ordered).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from offline_rl.errors import ConfigError
from offline_rl.nets.mlp import mlp


class VanillaOrderHead(nn.Module):
    """softplus(MLP(state) + 1): HDPO's one-store network (hidden [32, 32, 32], ELU)."""

    def __init__(self, state_dim: int, n_orders: int = 1, hidden: Sequence[int] = (32, 32, 32)) -> None:
        super().__init__()
        self.net = mlp(state_dim, n_orders, hidden, activation=nn.ELU)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return F.softplus(self.net(state) + 1.0)


class BaseStockHead(nn.Module):
    """(S − inventory position)⁺ with one learned level S (a constant policy of the state's sum)."""

    def __init__(self, initial_level: float) -> None:
        super().__init__()
        self.level = nn.Parameter(torch.tensor(float(initial_level)))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return (self.level - state.sum(1, keepdim=True)).clamp(min=0.0)


class CappedBaseStockHead(nn.Module):
    """min((S − inventory position)⁺, cap), S and the cap learned."""

    def __init__(self, initial_level: float, initial_cap: float) -> None:
        super().__init__()
        self.level = nn.Parameter(torch.tensor(float(initial_level)))
        self.cap = nn.Parameter(torch.tensor(float(initial_cap)))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        order = (self.level - state.sum(1, keepdim=True)).clamp(min=0.0)
        return torch.minimum(order, self.cap.clamp(min=0.0).expand_as(order))


def _upstream_on_hand(state: torch.Tensor, widths: Sequence[int], supplier_cap: float) -> torch.Tensor:
    """[n, n_locations]: the on-hand inventory each location orders from (the first: `supplier_cap`)."""
    rows = torch.split(state, list(widths), dim=1)
    first = torch.full_like(rows[0][:, :1], supplier_cap)
    return torch.cat([first, *(r[:, :1].clamp(min=0.0) for r in rows[:-1])], dim=1)


class EchelonStockHead(nn.Module):
    """Echelon base-stock orders for a serial system (rows upstream → downstream, `widths` = their lengths)."""

    def __init__(self, widths: Sequence[int], offset: float = 10.0) -> None:
        super().__init__()
        self.widths, self.offset = tuple(widths), offset
        self.raw = nn.Parameter(torch.zeros(len(self.widths)))

    def levels(self) -> torch.Tensor:
        """S_k, upstream → downstream: cumulative sums of softplus(w + offset) from the store up."""
        return torch.cumsum(F.softplus(self.raw + self.offset).flip(0), 0).flip(0)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        positions = torch.stack([r.sum(1) for r in torch.split(state, list(self.widths), dim=1)], dim=1)
        echelon_positions = torch.cumsum(positions.flip(1), 1).flip(1)  # position of k and everything downstream
        wanted = (self.levels() - echelon_positions).clamp(min=0.0)
        return torch.minimum(wanted, _upstream_on_hand(state, self.widths, float("inf")))


class VanillaSerialHead(nn.Module):
    """sigmoid(MLP(state)) times the upstream on-hand inventory (the supplier's bound for the first location)."""

    def __init__(self, widths: Sequence[int], supplier_cap: float, hidden: Sequence[int] = (32, 32, 32)) -> None:
        super().__init__()
        self.widths, self.supplier_cap = tuple(widths), float(supplier_cap)
        self.net = mlp(sum(self.widths), len(self.widths), hidden, activation=nn.ELU)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(state)) * _upstream_on_hand(state, self.widths, self.supplier_cap)


HEADS = ("vanilla", "base_stock", "capped_base_stock", "echelon_stock", "vanilla_serial")


def make_order_head(name: str, state_dim: int, n_orders: int, hidden: Sequence[int], initial_level: float,
                    widths: Sequence[int] | None = None, supplier_cap: float = float("inf")) -> nn.Module:
    """The head called `name` (one of HEADS) for a problem's state size, order count and layout."""
    if name == "vanilla":
        return VanillaOrderHead(state_dim, n_orders, hidden)
    if name in ("base_stock", "capped_base_stock") and n_orders != 1:
        raise ConfigError(f"head '{name}' is a one-store head; this problem places {n_orders} orders")
    if name == "base_stock":
        return BaseStockHead(initial_level)
    if name == "capped_base_stock":
        return CappedBaseStockHead(initial_level, initial_level)
    if name in ("echelon_stock", "vanilla_serial"):
        if widths is None or len(widths) != n_orders:
            raise ConfigError(f"head '{name}' needs a serial problem (one row per location)")
        return EchelonStockHead(widths) if name == "echelon_stock" else VanillaSerialHead(widths, supplier_cap, hidden)
    raise ConfigError(f"order head '{name}' is unknown; known: {', '.join(HEADS)}")
