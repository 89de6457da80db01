"""PRDC (Ran et al., "Policy Regularization with Dataset Constraint for Offline RL", ICML 2023).

TD3+BC whose behaviour-cloning target is the action of the dataset point nearest to (β·s, π(s)):

    (ŝ, â) = k-th nearest neighbour of (β·s) ⊕ π(s) in { (β·s_i) ⊕ a_i }       (s z-scored; search on π(s).detach())
    actor:   L_π = −λ·mean Q₁(s, π(s)) + MSE(π(s), â),   λ = α / mean|Q₁| (detached)

The search set is built once, in `prepare`, from the normalised dataset states times β and the raw actions. The
search runs only on actor steps, where the target is needed (as in `LAMDA-RL/PRDC` `prdc.py`); on the CPU backend
it starts before the critic step, on a second thread (`nn_overlap`), with the same result. AntMaze rewards are
r′ = scale·r + shift at sampling time (the reward, per the reference's fix 5c8aaf8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from offline_rl.algos.base import Phase, PhaseResult, register
from offline_rl.algos.core import TD3BCBase, TD3BCConfig
from offline_rl.algos.nn_search import BACKENDS, NeighborSearch, build_search
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.errors import ConfigError


@dataclass
class PRDCConfig(TD3BCConfig):
    """TD3+BC defaults plus the dataset constraint; β = 2 and k = 1 as the `PRDC` class and the README commands."""

    beta: float = 2.0
    k: int = 1  # the k-th neighbour only (the reference queries `k=[k]`), not an average of k
    nn_backend: str = "auto"  # "kdtree" (scipy, host), "brute" (chunked, on device) or "auto" (kdtree on CPU)
    nn_cache: int = 64  # kdtree: cached state neighbours per point, exact fast path (0: plain cKDTree; 1M pts: 256 MB)
    nn_chunk_size: int = 65536
    nn_candidates: int = 32  # fp32 candidates per key that the brute force re-ranks in fp64
    nn_overlap: bool = True  # kdtree: search on a second thread during the critic step (same result)


@register("prdc")
class PRDC(TD3BCBase):
    Config = PRDCConfig

    search: NeighborSearch | None = None
    pending_search: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None

    def __init__(self, spec: Spec, config: PRDCConfig, device: str | torch.device = "cpu") -> None:
        if config.nn_backend not in BACKENDS:
            raise ConfigError(f"prdc.nn_backend must be one of {', '.join(BACKENDS)}, got '{config.nn_backend}'")
        super().__init__(spec, config, device)

    def prepare(self, dataset: Dataset) -> None:
        super().prepare(dataset)
        c = self.config
        with torch.no_grad():
            states = self.normalizer(dataset.observations.to(self.device))
            points = torch.cat([c.beta * states, dataset.actions.to(self.device)], dim=1)
        self.search = build_search(points, c.nn_backend, c.nn_chunk_size, c.nn_candidates,
                                   state_dim=self.spec.obs_dim, cache=c.nn_cache)

    def search_phases(self, step: int) -> Iterator[Phase]:
        """The key (β·s, π(s)) from the actor before the critic step, then the search: started at once on a
        second thread with `nn_overlap` (it runs while the critic trains: the actor, hence π(s), does not change
        before the actor step), else at the actor step. The search is a host phase: one query for all seeds."""
        yield Phase(self.key_phase, name="search_key")
        yield Phase(self.search_start, host=True, name="search_start")

    def key_phase(self, ctx: dict[str, Any]) -> PhaseResult:
        with torch.no_grad():
            pi = self.actor(ctx["batch"].observations)
        return PhaseResult(updates={"search_key": self.search_key(ctx["batch"].observations, pi)})

    def search_start(self, ctx: dict[str, Any]) -> PhaseResult:
        if self.search is None:
            raise RuntimeError("PRDC needs prepare(dataset) to build its neighbour index before training")
        key = ctx["search_key"]
        flat = key.reshape(-1, key.shape[-1])  # every seed's keys in one query (one seed: unchanged)
        if self.config.nn_overlap and self.search.overlaps:
            pending = self.search.submit(flat, self.config.k)
        else:
            found = self.search.query(flat, self.config.k)
            pending = lambda: found  # noqa: E731 - the same interface as a submitted search
        self.pending_search = lambda: tuple(x.reshape(key.shape[:-1]) for x in pending())
        return PhaseResult()

    def extra_phases(self, step: int) -> Iterator[Phase]:
        if step % self.config.policy_freq == 0:
            yield Phase(self.search_finish, host=True, name="search_finish")

    def search_finish(self, ctx: dict[str, Any]) -> PhaseResult:
        pending, self.pending_search = self.pending_search, None
        distance, index = pending()
        act_dim = self.spec.act_dim
        return PhaseResult(metrics={"nn_distance": distance.float().mean(-1)},
                           updates={"nn_target": self.search.points[index, -act_dim:]})

    def constraint_target(self, states: torch.Tensor, pi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(â, distance): the action of the k-th nearest dataset point to (β·s, π(s)), queried at once."""
        if self.search is None:
            raise RuntimeError("PRDC needs prepare(dataset) to build its neighbour index before training")
        distance, index = self.search.query(self.search_key(states, pi), self.config.k)
        return self.search.points[index, -self.spec.act_dim:], distance

    def search_key(self, states: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
        """(β·s, π(s)), without gradient: the search is not differentiated."""
        return torch.cat([self.config.beta * states, pi.detach()], dim=-1)

    def bc_target(self, ctx: dict[str, Any], pi: torch.Tensor) -> tuple[torch.Tensor, float, dict[str, torch.Tensor]]:
        """The action part of the k-th nearest dataset point to (β·s, π(s)); weight 1."""
        return ctx["nn_target"], 1.0, {}
