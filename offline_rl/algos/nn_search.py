"""Exact k-th nearest-neighbour search over a fixed point set (PRDC's dataset constraint).

`query(keys, k)` returns, for each key, the Euclidean distance to and the index of its k-th nearest point. k counts
from 1 and means "the k-th neighbour only", like scipy's `tree.query(x, k=[k])` in the PRDC reference. Both backends
rank by the exact fp64 distance between the same float32 points and keys, so they return the same index:

* `KDTreeSearch`: scipy's cKDTree on the host, the reference backend, with an optional exact fast path for keys at
  dataset states (PRDC's). Each query copies the keys to the host.
* `BruteForceSearch`: chunked ‖x − y‖² = ‖x‖² − 2x·y + ‖y‖² on the points' device, keeping the best `candidates`
  per key, then an exact fp64 re-rank of those candidates, because fp32 cancellation can swap near-ties. No host
  sync. Among exactly equal distances it picks the lowest index; cKDTree's choice there is unspecified.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from scipy.spatial import cKDTree

BACKENDS = ("auto", "kdtree", "brute")


class NeighborSearch:
    """Exact k-th nearest neighbour of each key among `points` [N, D] (float32)."""

    points: torch.Tensor

    def query(self, keys: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance [B] float32, index [B] int64) of each key's k-th nearest point, on the points' device."""
        raise NotImplementedError

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= len(self.points):
            raise ValueError(f"k must be in [1, {len(self.points)}], got {k}")


class KDTreeSearch(NeighborSearch):
    """scipy's cKDTree (PRDC's `KDTree`, same C++ core), queried with `workers` threads (-1: all, as the reference).

    With `state_dim` and `cache` > 0, an exact fast path for keys whose first `state_dim` coordinates equal some
    point's (PRDC's keys (β·s, π(s)) at dataset states s): for every point j, its `cache` nearest points in that
    subspace are precomputed, with r_j the distance to the farthest of them. Every other point is at least r_j away
    in the subspace alone, so when the k-th nearest cached candidate is closer than r_j it is the exact answer.
    Keys that fail this test, or match no point's state, go to the tree. The precomputation is one cache-nearest
    query per point (tens of seconds at N = 1e6); each query then costs a hash lookup and B·cache distances.
    """

    def __init__(self, points: torch.Tensor, leafsize: int = 16, workers: int = -1, state_dim: int | None = None,
                 cache: int = 0) -> None:
        self.points = points
        self.workers = workers
        self.tree = cKDTree(points.detach().cpu().numpy(), leafsize=leafsize)  # fp64 copy of the fp32 points
        self.data = torch.from_numpy(self.tree.data)  # that fp64 copy, shared
        self.neighbours: torch.Tensor | None = None
        self.last_fallback = 0  # keys of the last query that the cached fast path passed on to the tree
        if state_dim and cache:
            self.states = points.detach()[:, :state_dim].cpu().contiguous()
            radius, neighbours = cKDTree(self.states.numpy(), leafsize=leafsize).query(
                self.states.numpy(), k=min(cache, len(points)), workers=-1)
            self.neighbours = torch.from_numpy(neighbours.astype(np.int64 if len(points) >= 2**31 else np.int32))
            self.radius = torch.from_numpy(radius[:, -1] * (1 - 1e-9))  # margin against fp64 rounding
            self.hash_weights = torch.randint(1, 2**62, (state_dim,), generator=torch.Generator().manual_seed(0)) | 1
            self.sorted_hash, self.hash_order = self._hash(self.states).sort()

    def _hash(self, states: torch.Tensor) -> torch.Tensor:
        """A 64-bit hash of the float32 bit patterns (exact-match lookup; collisions are checked, not trusted)."""
        return (states.view(torch.int32).long() * self.hash_weights).sum(1)

    def query(self, keys: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_k(k)
        keys = keys.detach().to("cpu", self.points.dtype)  # host sync
        if self.neighbours is None or k > self.neighbours.shape[1]:
            dist, idx = self._tree_query(keys, k, self.workers)
            return dist.float().to(self.points.device), idx.to(self.points.device)
        states = keys[:, :self.states.shape[1]].contiguous()
        h = self._hash(states)
        pos = torch.searchsorted(self.sorted_hash, h).clamp(max=len(self.sorted_hash) - 1)
        j = self.hash_order[pos]
        matched = (self.sorted_hash[pos] == h) & (self.states[j] == states).all(1)
        cand = self.neighbours[j].long().sort(1).values  # ascending index, so the stable sort breaks ties low
        d2, order = (keys.double().unsqueeze(1) - self.data[cand]).pow(2).sum(-1).sort(dim=1, stable=True)
        dist, idx = d2[:, k - 1].sqrt(), cand.gather(1, order[:, k - 1:k]).squeeze(1)
        missed = (~(matched & (dist < self.radius[j]))).nonzero().squeeze(1)
        self.last_fallback = len(missed)
        if len(missed):  # the few keys without a certificate go to the tree, pruned by their candidates' distance
            bound = float(dist[missed].max()) * (1 + 1e-9) + 1e-12  # k cached points lie within it: ≥ every answer
            workers = 1 if len(missed) < 64 else self.workers  # threads pay off only for larger queries
            dist[missed], idx[missed] = self._tree_query(keys[missed], k, workers, bound)
        return dist.float().to(self.points.device), idx.to(self.points.device)

    def _tree_query(self, keys: torch.Tensor, k: int, workers: int,
                    bound: float = np.inf) -> tuple[torch.Tensor, torch.Tensor]:
        dist, idx = self.tree.query(keys.numpy(), k=[k], workers=workers, distance_upper_bound=bound)
        if np.isinf(dist).any():  # nothing within the bound (cannot happen with a valid bound): search unbounded
            dist, idx = self.tree.query(keys.numpy(), k=[k], workers=workers)
        return torch.from_numpy(dist[:, 0]), torch.from_numpy(idx[:, 0].astype(np.int64))


class BruteForceSearch(NeighborSearch):
    """Chunked brute force on the device: fp32 candidates, exact fp64 re-rank.

    The fp32 stage keeps the `candidates` smallest approximate distances per key. The answer is exact whenever fewer
    than `candidates − k` other points lie within the fp32 rounding bound of the k-th distance; `last_certified`
    (bool [B], on the device) records whether that held for each key of the last query.
    """

    def __init__(self, points: torch.Tensor, chunk_size: int = 65536, candidates: int = 32) -> None:
        self.points = points
        self.chunk_size = chunk_size
        self.candidates = candidates
        self.center = points.mean(0)
        self.centered = points - self.center  # better conditioned for the ‖x‖² − 2x·y + ‖y‖² expansion
        self.sq_norms = self.centered.pow(2).sum(1)
        self.radius = self.sq_norms.max().sqrt() + 2 * self.center.norm()  # centring rounds at the raw scale
        # fp32 error bound of the expansion, with a safety factor of 2: |err| ≤ γ·(‖x‖ + ‖y‖)², γ = 2(D + 4)·2⁻²⁴
        self.gamma = 2.0 * (points.shape[1] + 4) * 2.0**-24
        self.last_certified = torch.ones(0, dtype=torch.bool, device=points.device)

    def query(self, keys: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_k(k)
        keys = keys.detach().to(self.points.dtype)
        m = min(max(self.candidates, k + 1), len(self.points))
        x = keys - self.center
        x_sq = x.pow(2).sum(1, keepdim=True)
        best_d, best_i = [], []
        with _ieee_fp32_matmul():
            for start in range(0, len(self.points), self.chunk_size):
                y, y_sq = self.centered[start:start + self.chunk_size], self.sq_norms[start:start + self.chunk_size]
                approx = torch.addmm(x_sq + y_sq, x, y.T, alpha=-2.0)  # [B, chunk] ≈ ‖x − y‖²
                d, i = approx.topk(min(m, len(y)), dim=1, largest=False)
                best_d.append(d)
                best_i.append(i + start)
        approx, pos = torch.cat(best_d, 1).topk(m, dim=1, largest=False)
        cand = torch.cat(best_i, 1).gather(1, pos)
        # Exact re-rank in fp64, ties broken by the lower index: sort by index, then a stable sort by distance.
        cand, _ = cand.sort(dim=1)
        exact = (keys.double().unsqueeze(1) - self.points[cand].double()).pow(2).sum(-1)
        exact, order = exact.sort(dim=1, stable=True)
        idx = cand.gather(1, order[:, k - 1:k]).squeeze(1)
        bound = self.gamma * (x_sq.squeeze(1).sqrt() + self.radius).pow(2)
        self.last_certified = (approx[:, -1] - approx[:, k - 1] > 2 * bound) | (m == len(self.points))
        return exact[:, k - 1].sqrt().float(), idx


@contextlib.contextmanager
def _ieee_fp32_matmul() -> Iterator[None]:
    """Full-precision fp32 matmul on CUDA even if the caller enabled TF32 (10-bit mantissa would break the bound)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def build_search(points: torch.Tensor, backend: str = "auto", chunk_size: int = 65536, candidates: int = 32,
                 state_dim: int | None = None, cache: int = 0) -> NeighborSearch:
    """A search index over `points`. `auto`: the cKDTree on CPU, the brute force on an accelerator."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown nearest-neighbour backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "kdtree" if points.device.type == "cpu" else "brute"
    if backend == "kdtree":
        return KDTreeSearch(points, state_dim=state_dim, cache=cache)
    return BruteForceSearch(points, chunk_size, candidates)
