"""Exact k-th nearest-neighbour search over a fixed point set (PRDC's dataset constraint).

`query(keys, k)` returns, for each key, the Euclidean distance to and the index of its k-th nearest point. k counts
from 1 and means "the k-th neighbour only", like scipy's `tree.query(x, k=[k])` in the PRDC reference. Both backends
rank by the exact fp64 distance between the same float32 points and keys, so they return the same index:

* `KDTreeSearch`: scipy's cKDTree on the host, the reference backend, with an optional exact fast path for keys at
  dataset states (PRDC's). Each query copies the keys to the host.
* `BruteForceSearch`: chunked ‖x − y‖² = ‖x‖² − 2x·y + ‖y‖² on the points' device, keeping the best `candidates`
  per key, then an exact fp64 re-rank of those candidates, because fp32 cancellation can swap near-ties. No host
  sync. Among exactly equal distances it picks the lowest index; the cKDTree's (and its cache's) choice there is
  unspecified. Exactly tied points are in practice duplicates of one (s, a), whose action, PRDC's target, is the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy.spatial import cKDTree

BACKENDS = ("auto", "kdtree", "brute")


class NeighborSearch:
    """Exact k-th nearest neighbour of each key among `points` [N, D] (float32)."""

    points: torch.Tensor
    overlaps = False  # whether `submit` runs the query concurrently with the caller

    def query(self, keys: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance [B] float32, index [B] int64) of each key's k-th nearest point, on the points' device."""
        raise NotImplementedError

    def submit(self, keys: torch.Tensor, k: int = 1) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        """Start `query(keys, k)`; the returned function waits for its result. Here it runs at once."""
        result = self.query(keys, k)
        return lambda: result

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= len(self.points):
            raise ValueError(f"k must be in [1, {len(self.points)}], got {k}")


class KDTreeSearch(NeighborSearch):
    """scipy's cKDTree (PRDC's `KDTree`, same C++ core), queried with `workers` threads (-1: all, as the reference).

    The tree holds an fp64 copy of the points in its own leaf order (`order[p]` is the point at position p; a first
    tree over the original order gives it), so a query reads neighbouring memory, and it uses sliding-midpoint splits
    (`balanced_tree=False`): both made fallback queries on hopper-medium faster in profiling.

    With `state_dim` and `cache` > 0, an exact fast path for keys whose first `state_dim` coordinates equal some
    point's (PRDC's keys (β·s, π(s)) at dataset states s): for every point j, its `cache` nearest points in that
    subspace are precomputed, nearest first. If r_j(c) is the distance to the c-th of them, every point outside the
    first c is at least r_j(c) away in the subspace alone, so when the k-th nearest of those c candidates is closer
    than r_j(c) it is the exact answer. The check runs on growing prefixes c ∈ `tiers` (cache/4, then cache): most
    keys pass on the short one. Keys that pass none, or match no point's state, go to the tree. The precomputation is
    one cache-nearest query per point (27–54 s for N = 1e6 and cache = 64 on 2 cores); a query then costs a hash
    lookup and a few thousand 14-d distances. `submit` runs a query on a second thread.
    """

    overlaps = True

    def __init__(self, points: torch.Tensor, leafsize: int = 16, workers: int = -1, state_dim: int | None = None,
                 cache: int = 0) -> None:
        self.points = points
        self.workers = workers
        self.executor: ThreadPoolExecutor | None = None  # for `submit`, started on first use
        host = points.detach().cpu().numpy()
        self.order = torch.from_numpy(cKDTree(host, leafsize=leafsize, balanced_tree=False).indices.astype(np.int64))
        self.tree = cKDTree(host[self.order.numpy()], leafsize=leafsize, balanced_tree=False)  # fp64 copy, leaf order
        self.data = torch.from_numpy(self.tree.data)  # that fp64 copy, shared
        self.neighbours: torch.Tensor | None = None
        self.last_fallback = 0  # keys of the last query that the cached fast path passed on to the tree
        if state_dim and cache:
            self.states = torch.from_numpy(host[self.order.numpy(), :state_dim])  # fp32, leaf order
            cache = min(cache, len(points))
            self.tiers = tuple(sorted({max(1, cache // 4), cache}))
            self.neighbours, self.radii = _subspace_neighbours(self.states.numpy(), cache, self.tiers, leafsize)
            self.hash_weights = torch.randint(1, 2**62, (state_dim,), generator=torch.Generator().manual_seed(0)) | 1
            self.sorted_hash, self.hash_order = self._hash(self.states).sort()

    def _hash(self, states: torch.Tensor) -> torch.Tensor:
        """A 64-bit hash of the float32 bit patterns (exact-match lookup; collisions are checked, not trusted)."""
        return (states.view(torch.int32).long() * self.hash_weights).sum(1)

    def submit(self, keys: torch.Tensor, k: int = 1) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
        """The query on a second host thread: the tree and torch's kernels release the GIL, so it runs while the
        caller computes something else (PRDC: the critic step)."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix="nn-search")
        return self.executor.submit(self.query, keys.detach().cpu(), k).result

    def query(self, keys: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_k(k)
        keys = keys.detach().to("cpu", self.points.dtype)  # host sync
        if self.neighbours is None or k > self.tiers[0]:
            dist, idx = self._tree_query(keys, k, self.workers)
            return dist.float().to(self.points.device), idx.to(self.points.device)
        states = keys[:, :self.states.shape[1]].contiguous()
        h = self._hash(states)
        pos = torch.searchsorted(self.sorted_hash, h).clamp(max=len(self.sorted_hash) - 1)
        j = self.hash_order[pos]  # the position of the key's state, if it is a dataset state
        matched = (self.sorted_hash[pos] == h) & (self.states[j] == states).all(1)
        keys64 = keys.double()
        # The first prefix runs on every key: for a key at no dataset state it still gives an upper bound for the tree.
        dist, idx = self._kth_of(keys64, self.neighbours[j, :self.tiers[0]], k)
        pending = (~(matched & (dist < self.radii[j, 0]))).nonzero().squeeze(1)
        for tier, size in enumerate(self.tiers[1:], 1):
            longer = pending[matched[pending]]
            if not len(longer):
                break
            d, i = self._kth_of(keys64[longer], self.neighbours[j[longer], :size], k)
            dist[longer], idx[longer] = d, i  # still an upper bound where the certificate fails
            pending = torch.cat([pending[~matched[pending]], longer[d >= self.radii[j[longer], tier]]])
        self.last_fallback = len(pending)
        if len(pending):  # the few keys without a certificate go to the tree, pruned by their candidates' distance
            bound = float(dist[pending].max()) * (1 + 1e-9) + 1e-12  # k known points lie within it: ≥ every answer
            workers = 1 if len(pending) < 64 else self.workers  # threads pay off only for larger queries
            dist[pending], idx[pending] = self._tree_query(keys[pending], k, workers, bound)
        return dist.float().to(self.points.device), idx.to(self.points.device)

    def _kth_of(self, keys: torch.Tensor, positions: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k-th nearest of each key's candidates (given by leaf-order position): fp64 distance and point index."""
        positions = positions.long()
        candidates = self.data.index_select(0, positions.view(-1)).view(*positions.shape, -1)
        d2, kth = (keys.unsqueeze(1) - candidates).pow(2).sum(-1).kthvalue(k, dim=1)
        return d2.sqrt(), self.order[positions.gather(1, kth.unsqueeze(1)).squeeze(1)]

    def _tree_query(self, keys: torch.Tensor, k: int, workers: int,
                    bound: float = np.inf) -> tuple[torch.Tensor, torch.Tensor]:
        dist, pos = self.tree.query(keys.numpy(), k=[k], workers=workers, distance_upper_bound=bound)
        if np.isinf(dist).any():  # nothing within the bound (cannot happen with a valid bound): search unbounded
            dist, pos = self.tree.query(keys.numpy(), k=[k], workers=workers)
        return torch.from_numpy(dist[:, 0]), self.order[torch.from_numpy(pos[:, 0].astype(np.int64))]


def _subspace_neighbours(states: np.ndarray, cache: int, tiers: tuple[int, ...],
                         leafsize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each state's `cache` nearest states, nearest first [N, cache], and the distance to its t-th, for t in
    `tiers`, shrunk by a 1e-9 margin against fp64 rounding [N, len(tiers)]."""
    tree = cKDTree(states, leafsize=leafsize, balanced_tree=False)
    neighbours = np.empty((len(states), cache), np.int64 if len(states) >= 2**31 else np.int32)
    radii = np.empty((len(states), len(tiers)))
    for rows in np.array_split(tree.indices, -(-len(states) // 65536)):  # leaf order: neighbouring queries share cache
        dist, neighbours[rows] = tree.query(states[rows], k=list(range(1, cache + 1)), workers=-1)
        radii[rows] = dist[:, [t - 1 for t in tiers]] * (1 - 1e-9)
    return torch.from_numpy(neighbours), torch.from_numpy(radii)


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
