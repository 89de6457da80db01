"""Gymnasium wrappers of the inventory simulators: one scenario at a time, reward = −cost.

    offline_rl/InventoryLostSales-v0    one store, lost sales, Poisson(5) demand (kwargs lead_time, p, h)
    offline_rl/InventoryBacklogged-v0   one store, backlogged, N(5, 1.6²) demand clipped at 0
    offline_rl/InventorySerial-v0       the four-stage serial system (kwargs lead_time = the store's, p)

Observation: the simulator's state (each location's on hand and orders in transit). Action: the orders, in
[0, max_order]; with Poisson demand they are rounded to integers (`integer_orders`, as HDPO's test does). An episode
lasts 50 periods (gymnasium's time limit, a truncation; `max_episode_steps` changes it). The known optimal average cost is
`env.unwrapped.optimal_cost` (None for the serial system).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from offline_rl.envs.inventory.oracles import backlogged_optimum, lost_sales_optimum
from offline_rl.envs.inventory.simulators import DifferentiableEnv, OneStore, SerialSystem


class InventoryEnv(gym.Env):
    """One scenario of a `DifferentiableEnv`, stepped in float64 numpy through the torch simulator."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, simulator: DifferentiableEnv, max_order: float | None = None,
                 integer_orders: bool | None = None, optimum: Callable[[], float] | None = None) -> None:
        self.sim = simulator
        self.integer_orders = simulator.integer_demand if integer_orders is None else integer_orders
        self._optimum = optimum
        bound = float(max_order if max_order is not None else 4 * simulator.mean * (simulator.state_dim + 1))
        low = -np.inf if isinstance(simulator, OneStore) and not simulator.lost_sales else 0.0
        obs_low = np.full(simulator.state_dim, 0.0, dtype=np.float32)
        obs_low[0] = low
        self.observation_space = gym.spaces.Box(obs_low, np.inf, (simulator.state_dim,), np.float32)
        self.action_space = gym.spaces.Box(0.0, bound, (simulator.n_orders,), np.float32)
        self._generator: torch.Generator | None = None
        self._state = torch.zeros(1, simulator.state_dim, dtype=torch.float64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None or self._generator is None:  # demand paths from a torch generator seeded like np_random
            first = seed if seed is not None else int(self.np_random.integers(2**31))
            self._generator = torch.Generator().manual_seed(first)
        self._state = self.sim.initial_state(1, self._generator).to(torch.float64)
        return self._obs(), {}

    def step(self, action: np.ndarray):
        order = np.clip(np.asarray(action, dtype=np.float64).reshape(1, -1), 0.0, self.action_space.high)
        if self.integer_orders:
            order = np.round(order)
        demand = self.sim.sample_demands(1, 1, self._generator)[:, 0].to(torch.float64)
        self._state, cost = self.sim.step(self._state, torch.from_numpy(order), demand)
        return self._obs(), -float(cost[0]), False, False, {"cost": float(cost[0]), "demand": float(demand[0, 0])}

    @functools.cached_property
    def optimal_cost(self) -> float | None:
        """The problem's known optimal average cost per period (computed on first use), or None."""
        return None if self._optimum is None else float(self._optimum())

    def _obs(self) -> np.ndarray:
        return self._state[0].numpy().astype(np.float32)


def lost_sales_env(lead_time: int = 2, p: float = 9.0, h: float = 1.0) -> InventoryEnv:
    opt = functools.partial(lost_sales_optimum, lead_time, p) if h == 1.0 else None
    return InventoryEnv(OneStore(lead_time, p, h, lost_sales=True, demand="poisson"), optimum=opt)


def backlogged_env(lead_time: int = 2, p: float = 9.0, h: float = 1.0) -> InventoryEnv:
    return InventoryEnv(OneStore(lead_time, p, h, lost_sales=False, demand="normal"),
                        optimum=functools.partial(backlogged_optimum, lead_time, p, h))


def serial_env(lead_time: int = 2, p: float = 9.0) -> InventoryEnv:
    return InventoryEnv(SerialSystem(lead_time, p))
