"""CUDA-graph capture of a whole training step (DESIGN §5): sample → losses → backward → optimiser steps → Polyak.

On a GPU the small MLPs of offline RL are launch-bound: one eager update is a few hundred tiny kernels, each
costing more CPU time to launch than GPU time to run. Replaying the step from a CUDA graph launches them all at
once. The update itself is unchanged: the same code runs once under capture, and the graph replays exactly the
kernels it launched, reading the batch indices from the default CUDA generator each replay.

What capture needs from an algorithm (`Algorithm.graph_safe = True` declares it):
- no host sync in `update` (no `.item()`, no CPU-side search such as PRDC's KD-tree);
- no Python state that changes between steps, other than through `step % update_period` (TD3's delayed actor
  update gives two phases, each with its own graph);
- no LR scheduler stepping inside `update`, and capturable optimisers (`Algorithm.add_optimizer` makes them so on
  CUDA).
Anything else runs eagerly. A capture that fails falls back to eager mode with a warning, so training goes on.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from offline_rl.algos.base import Algorithm
from offline_rl.data.dataset import Batch

WARMUP_CALLS = 3
"""Eager calls on a side stream before capture (cuBLAS handles, optimiser state), as in torch's whole-network
capture recipe and d3rlpy's CudaGraphWrapper."""


class GraphedCall:
    """Call `fn()` eagerly `warmup` times on a side stream, then capture it once and replay the graph ever after.

    Every call does the work exactly once (capture records without running, so the capturing call replays too).
    `fn` must read its inputs from tensors whose storage stays put (static inputs) and its outputs are the
    same tensors after each replay (static outputs): copy them if they must outlive the next call.
    """

    def __init__(self, fn: Callable[[], Any], warmup: int = WARMUP_CALLS, name: str = "step") -> None:
        self.fn, self.warmup, self.name = fn, warmup, name
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: Any = None
        self.failed = False
        self.stream = torch.cuda.Stream()

    def __call__(self) -> Any:
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        if self.failed:
            return self.fn()
        self.calls += 1
        if self.calls <= self.warmup:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                out = self.fn()
            torch.cuda.current_stream().wait_stream(self.stream)
            return out
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                outputs = self.fn()
        except Exception as e:  # noqa: BLE001 - any capture error: keep training, eagerly
            self.failed = True
            warnings.warn(f"CUDA-graph capture of {self.name} failed ({type(e).__name__}: {e}); running eagerly",
                          RuntimeWarning, stacklevel=2)
            torch.cuda.synchronize()
            return self.fn()
        self.graph, self.outputs = graph, outputs
        graph.replay()
        return outputs


def graphs_usable(algo: Algorithm, enabled: bool = True) -> bool:
    """Whether `algo`'s update can be captured on its device (see the module docstring)."""
    return bool(enabled) and algo.device.type == "cuda" and algo.graph_safe and not algo.schedulers


class UpdateStep:
    """`step(n)` runs update n: `algo.update(sample(generator), n)`, replayed from one CUDA graph per phase
    `n % algo.update_period` when `graphs_usable`, else eagerly. `sample` draws a batch on the device; under
    graphs it gets generator None (the default CUDA generator, whose state a graph advances on each replay)."""

    def __init__(self, algo: Algorithm, sample: Callable[[torch.Generator | None], Batch],
                 generator: torch.Generator | None = None, cuda_graphs: bool = True) -> None:
        self.algo = algo
        self.graphed = graphs_usable(algo, cuda_graphs)
        gen = None if self.graphed else generator
        self.sample = lambda: sample(gen)
        self.period = max(1, int(algo.update_period))
        self.phases: dict[int, GraphedCall] = {}
        self.latest: dict[str, torch.Tensor] = {}

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        """The latest value of every metric so far (an update that skips the actor keeps its last metrics)."""
        self.latest.update(self._update(step))
        return self.latest

    def _update(self, step: int) -> dict[str, torch.Tensor]:
        if not self.graphed:
            return self.algo.update(self.sample(), step)
        phase = step % self.period
        if phase not in self.phases:
            # Any step with the same residue stands for the phase: updates read `step` only as `step % k`, k | period.
            rep = phase or self.period
            self.phases[phase] = GraphedCall(lambda: self.algo.update(self.sample(), rep),
                                             name=f"{self.algo.name} update (phase {phase})")
        return self.phases[phase]()

    @property
    def captured(self) -> bool:
        """True once every phase seen so far replays from a graph."""
        return bool(self.phases) and all(c.graph is not None for c in self.phases.values())
