"""HDPO: Hindsight Differentiable Policy Optimization (Alvo, Russo, Kanoria, "Neural inventory control in networks
via hindsight differentiable policy optimization", arXiv 2306.11246; code `MatiasAlvo/Neural_inventory_control`).

Demand traces ξ are sampled once (the hindsight data: `n_scenarios` initial states and T-period demand paths). The
policy π_θ is deterministic and the simulator s_{t+1} = f(s_t, π_θ(s_t), ξ_t) is differentiable almost everywhere,
so the cost of a minibatch B of scenarios is differentiated pathwise, back through all T periods:

    Ĵ_B(θ) = 1/(|B|·T·n_stores) · Σ_{ξ ∈ B} Σ_{t<T} c(s_t, π_θ(s_t), ξ_t)        θ ← Adam(θ, ∇_θ Ĵ_B(θ))

No score function, no critic. Training averages all T periods (the reference `do_one_epoch`); the first
`ignore_periods` are left out only of the reported cost. Each epoch visits the fixed scenarios once in a fresh
random order, `batch_size` at a time. The test rolls the policy out on fresh scenarios for `test_periods`,
reports the mean cost per period after `test_ignore_periods`, and rounds orders to integers when demand is Poisson
(the reference `main_run.py` switches on discrete allocation for Poisson demand).

HDPO is not an offline algorithm: its "batch" is a set of demand scenarios (`Scenarios`), not a `Batch` of
transitions, so it trains with `train_hdpo`, never on a dataset. Defaults are the reference one-store settings
(`config_files/settings/one_store_lost.yml`, `policies_and_hyperparams/vanilla_one_store.yml`); the test size is
the CPU-sized 4096 × 3000 periods (first 1000 dropped) instead of 32768 × 5000 (first 3000 dropped).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from offline_rl.algos.base import Algorithm, build_config, register
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.envs.inventory.oracles import (
    backlogged_base_stock_level,
    backlogged_optimum,
    lost_sales_optimum,
)
from offline_rl.envs.inventory.simulators import DifferentiableEnv, OneStore, SerialSystem, rollout
from offline_rl.errors import ConfigError
from offline_rl.names import resolve
from offline_rl.nets.order_heads import make_order_head

PROBLEMS = ("one_store_lost", "one_store_backlogged", "serial")
_NOT_OFFLINE = ("it trains through a differentiable inventory simulator on demand scenarios, not on a dataset; "
                "use offline_rl.algos.hdpo.train_hdpo (or `offline-rl reproduce hdpo`)")


@dataclass
class HDPOConfig:
    """The reference one-store lost-sales settings (sources in `algos/hdpo.toml`)."""

    problem: str = "one_store_lost"     # one_store_lost | one_store_backlogged | serial
    lead_time: int = 2                  # the store's lead time L
    p: float = 9.0                      # shortage cost
    h: float = 1.0                      # the store's holding cost
    head: str = "vanilla"               # vanilla | base_stock | capped_base_stock | echelon_stock | vanilla_serial
    hidden: tuple[int, ...] = (32, 32, 32)
    lr: float = 3e-3
    n_scenarios: int = 32768            # fixed training scenarios (the hindsight data)
    batch_size: int = 1024
    periods: int = 50                   # training horizon T
    ignore_periods: int = 30            # left out of the reported training cost only
    test_scenarios: int = 4096
    test_periods: int = 3000
    test_ignore_periods: int = 1000
    round_test_orders: bool | None = None  # None: round when the demand is integer (Poisson)


class Scenarios(NamedTuple):
    """HDPO's minibatch: initial states [n, state_dim] and demand traces [n, T, n_stores]."""

    initial: torch.Tensor
    demands: torch.Tensor


def make_problem(config: HDPOConfig, device: str | torch.device = "cpu") -> DifferentiableEnv:
    """The simulator a config names."""
    problem = resolve(config.problem, PROBLEMS, "inventory problem", ConfigError)
    if problem == "one_store_lost":
        return OneStore(config.lead_time, config.p, config.h, lost_sales=True, demand="poisson", device=str(device))
    if problem == "one_store_backlogged":
        return OneStore(config.lead_time, config.p, config.h, lost_sales=False, demand="normal", device=str(device))
    return SerialSystem(config.lead_time, config.p, store_h=config.h, device=str(device))


def problem_spec(config: HDPOConfig) -> Spec:
    """The Spec of a config's problem: the state width and one order per location, orders in [0, 1000]."""
    env = make_problem(config)
    return Spec(env.state_dim, env.n_orders, (0.0,) * env.n_orders, (1000.0,) * env.n_orders)


def optimum(config: HDPOConfig) -> float | None:
    """The known optimal average cost: the lost-sales DP (L ≤ 3; table constants for L = 4), the backlogged closed
    form, None for the serial system (its published optimum is unverified)."""
    problem = resolve(config.problem, PROBLEMS, "inventory problem", ConfigError)
    if problem == "one_store_lost":
        if config.h != 1.0:
            return None
        return lost_sales_optimum(config.lead_time, config.p)
    if problem == "one_store_backlogged":
        return backlogged_optimum(config.lead_time, config.p, config.h)
    return None


@register("hdpo")
class HDPO(Algorithm):
    loop = "simulator"
    Config = HDPOConfig

    def __init__(self, spec: Spec, config: HDPOConfig, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        c = config
        self.env = make_problem(c, self.device)
        if spec.obs_dim != self.env.state_dim or spec.act_dim != self.env.n_orders:
            raise ConfigError(f"hdpo: problem '{c.problem}' (L={c.lead_time}) has state size {self.env.state_dim} "
                              f"and {self.env.n_orders} order(s), the spec {spec.obs_dim} and {spec.act_dim}: "
                              f"{_NOT_OFFLINE} (a spec comes from offline_rl.algos.hdpo.problem_spec)")
        backlogged = resolve(c.problem, PROBLEMS, "inventory problem", ConfigError) == "one_store_backlogged"
        level = (backlogged_base_stock_level(c.lead_time, c.p, c.h) if backlogged  # the heads' initial level
                 else self.env.mean * (c.lead_time + 1))
        self.head = make_order_head(c.head, self.env.state_dim, self.env.n_orders, c.hidden, level,
                                    getattr(self.env, "widths", None), getattr(self.env, "supplier_cap", math.inf))
        self.add_optimizer("policy", self.head.parameters(), c.lr)

    def prepare(self, dataset: Dataset) -> None:
        raise ConfigError(f"hdpo: {_NOT_OFFLINE}")

    def loss(self, batch: Scenarios) -> tuple[torch.Tensor, torch.Tensor]:
        """(Ĵ_B: the mean cost per period and store over all T periods, the per-period costs [n, T])."""
        costs = rollout(self.env, self.head, batch.initial, batch.demands)
        return costs.mean() / self.env.n_stores, costs

    def update(self, batch: Scenarios, step: int) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """One Adam step on the pathwise gradient of the minibatch's mean cost."""
        loss, costs = self.loss(batch)
        self.optimize("policy", loss)
        reported = costs[:, self.config.ignore_periods:].mean() / self.env.n_stores
        return {"train_cost": loss.detach(), "train_cost_reported": reported.detach()}

    def policy(self) -> nn.Module:
        """state [n, state_dim] → orders [n, n_orders] (unrounded)."""
        return self.head


def sample_scenarios(env: DifferentiableEnv, n: int, periods: int, generator: torch.Generator) -> Scenarios:
    """n initial states and demand paths of `periods` periods."""
    return Scenarios(env.initial_state(n, generator), env.sample_demands(n, periods, generator))


@torch.no_grad()
def test_cost(env: DifferentiableEnv, policy: nn.Module, n: int, periods: int, ignore_periods: int, seed: int,
              round_orders: bool) -> tuple[float, float]:
    """(mean cost per period and store after `ignore_periods`, its standard error over the n scenarios)."""
    generator = torch.Generator(device=env.device).manual_seed(seed)
    scenarios = sample_scenarios(env, n, periods, generator)
    per_scenario = rollout(env, policy, scenarios.initial, scenarios.demands, round_orders)[:, ignore_periods:]
    per_scenario = per_scenario.mean(1) / env.n_stores
    return float(per_scenario.mean()), float(per_scenario.std() / math.sqrt(n))


@dataclass
class HDPORun:
    """What `train_hdpo` returns: the trained algorithm, the curve of (step, reported training cost), the test
    cost with its standard error, the known optimum, the gap in % and the wall time."""

    algo: HDPO
    curve: list[tuple[int, float]] = field(default_factory=list)
    test_cost: float = math.nan
    test_stderr: float = math.nan
    optimum: float | None = None
    gap_percent: float | None = None
    steps: int = 0
    train_seconds: float = 0.0
    test_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        c = self.algo.config
        return {"problem": c.problem, "lead_time": c.lead_time, "p": c.p, "head": c.head, "steps": self.steps,
                "test_cost": self.test_cost, "test_stderr": self.test_stderr, "optimum": self.optimum,
                "gap_percent": self.gap_percent, "train_seconds": self.train_seconds,
                "test_seconds": self.test_seconds}


def train_hdpo(config: HDPOConfig | dict[str, Any] | None = None, steps: int = 1500, seed: int = 0,
               device: str | torch.device = "cpu", log_every: int = 100, test_seed: int = 1_000_003,
               time_limit_s: float | None = None) -> HDPORun:
    """Train HDPO for `steps` gradient steps (or until `time_limit_s`), then test it against the known optimum.

    `config` is an HDPOConfig or a dict of overrides of its defaults. The training scenarios come from `seed`, the
    test scenarios from `test_seed` (fresh paths, never seen in training).
    """
    if not isinstance(config, HDPOConfig):
        config = build_config(HDPO, dict(config or {}))
    if steps <= 0 or config.batch_size > config.n_scenarios:
        raise ConfigError(f"hdpo: steps must be > 0 and batch_size ≤ n_scenarios, got steps={steps}, "
                          f"batch_size={config.batch_size}, n_scenarios={config.n_scenarios}")
    torch.manual_seed(seed)
    algo = HDPO(problem_spec(config), config, device).to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    data = sample_scenarios(algo.env, config.n_scenarios, config.periods, generator)
    run = HDPORun(algo, optimum=optimum(config))
    start = time.perf_counter()
    order = torch.randperm(config.n_scenarios, generator=generator, device=device)
    cursor = 0
    for step in range(1, steps + 1):
        if cursor + config.batch_size > config.n_scenarios:  # a new epoch: a fresh order of the scenarios
            order, cursor = torch.randperm(config.n_scenarios, generator=generator, device=device), 0
        idx = order[cursor:cursor + config.batch_size]
        cursor += config.batch_size
        metrics = algo.update(Scenarios(data.initial[idx], data.demands[idx]), step)
        run.steps = step
        if step % log_every == 0 or step == steps:
            run.curve.append((step, float(metrics["train_cost_reported"])))
        if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
            break
    run.train_seconds = time.perf_counter() - start
    rounding = algo.env.integer_demand if config.round_test_orders is None else config.round_test_orders
    start = time.perf_counter()
    run.test_cost, run.test_stderr = test_cost(algo.env, algo.head, config.test_scenarios, config.test_periods,
                                               config.test_ignore_periods, test_seed, rounding)
    run.test_seconds = time.perf_counter() - start
    if run.optimum is not None:
        run.gap_percent = 100.0 * (run.test_cost - run.optimum) / run.optimum
    return run
