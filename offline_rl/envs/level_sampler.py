"""`LevelSampler`: prioritised level replay (PLR, Jiang et al. 2021) with pluggable level scores, for procedurally
generated environments; GROOVE (Jackson et al. 2023) is PLR scored by algorithmic regret.

The sampler keeps a buffer of levels with their latest scores. `sample()` returns a level for a new agent: with
probability `p_replay`, once at least `min_replay` levels have a score, a level replayed from the buffer by
priority; otherwise a fresh level from `generate`, which takes the slot of the lowest-scoring level not in use
when the buffer is full. `update(level_id, score)` records a finished agent's score for its level. The score itself is the
caller's (`score` names it: "random", "regret", "alg_regret", ...); with `score="random"` the sampler is plain
domain randomisation and never replays.

Replay priorities, over the scored levels (temperature β):
    "rank":          P_S(i) ∝ (1 / rank_i)^{1/β}            (rank 1 = the highest score; PLR's default)
    "proportional":  P_S(i) ∝ exp(score_i / β)               (GROOVE's softmax transform)
mixed with staleness, P = (1 − ρ)·P_S + ρ·P_C, P_C(i) ∝ (sampling count now − count at i's last sample).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

from offline_rl.errors import ConfigError

Level = TypeVar("Level")
TRANSFORMS = ("rank", "proportional")


class LevelSampler(Generic[Level]):
    def __init__(self, generate: Callable[[np.random.Generator], Level], buffer_size: int = 64, score: str = "regret",
                 p_replay: float = 0.5, transform: str = "rank", temperature: float = 0.3, staleness: float = 0.1,
                 min_replay: int | None = None, seed: int = 0) -> None:
        if transform not in TRANSFORMS or buffer_size < 1 or not 0.0 <= p_replay <= 1.0 or temperature <= 0:
            raise ConfigError(f"LevelSampler: transform must be one of {TRANSFORMS}, buffer_size ≥ 1, p_replay in "
                              f"[0, 1], temperature > 0; got {transform}, {buffer_size}, {p_replay}, {temperature}")
        self.generate, self.score_name = generate, score
        self.buffer_size, self.p_replay, self.transform = buffer_size, p_replay, transform
        self.temperature, self.staleness = temperature, staleness
        self.min_replay = min_replay if min_replay is not None else max(1, buffer_size // 4)
        self.rng = np.random.default_rng(seed)
        self.levels: list[Level] = []
        self.scores: list[float | None] = []
        self.last_sampled: list[int] = []
        self.in_use: list[int] = []  # agents currently training on each level
        self.count = 0

    def priorities(self) -> np.ndarray:
        """Replay probabilities over the buffer (0 for levels without a score)."""
        scored = np.array([s is not None for s in self.scores])
        p = np.zeros(len(self.levels))
        if not scored.any():
            return p
        scores = np.array([s if s is not None else -np.inf for s in self.scores], dtype=np.float64)
        if self.transform == "rank":
            order = np.argsort(-scores[scored], kind="stable")
            ranks = np.empty(len(order))
            ranks[order] = np.arange(1, len(order) + 1)
            p[scored] = (1.0 / ranks) ** (1.0 / self.temperature)
        else:
            z = scores[scored] / self.temperature
            p[scored] = np.exp(z - z.max())
        p /= p.sum()
        if self.staleness > 0:
            stale = np.where(scored, self.count - np.array(self.last_sampled, dtype=np.float64), 0.0)
            if stale.sum() > 0:
                p = (1 - self.staleness) * p + self.staleness * stale / stale.sum()
        return p

    def sample(self) -> tuple[int, Level]:
        """(buffer id, level) for a new agent."""
        self.count += 1
        n_scored = sum(s is not None for s in self.scores)
        replay = self.score_name != "random" and n_scored >= self.min_replay and self.rng.random() < self.p_replay
        if replay:
            idx = int(self.rng.choice(len(self.levels), p=self.priorities()))
        else:
            idx = self._insert(self.generate(self.rng))
        self.last_sampled[idx] = self.count
        self.in_use[idx] += 1
        return idx, self.levels[idx]

    def _insert(self, level: Level) -> int:
        free = [i for i, n in enumerate(self.in_use) if n == 0]
        if len(self.levels) < self.buffer_size or not free:
            self.levels.append(level)
            self.scores.append(None)
            self.last_sampled.append(self.count)
            self.in_use.append(0)
            return len(self.levels) - 1
        scores = [self.scores[i] if self.scores[i] is not None else -np.inf for i in free]  # never scored: first
        idx = free[int(np.argmin(scores))]
        self.levels[idx], self.scores[idx] = level, None
        return idx

    def update(self, level_id: int, score: float) -> None:
        """Record the score of the agent that trained on buffer level `level_id` (it is no longer in use)."""
        self.in_use[level_id] -= 1
        if self.score_name != "random":
            self.scores[level_id] = float(score)

    def state(self) -> dict[str, Any]:
        return {"levels": len(self.levels), "scored": sum(s is not None for s in self.scores), "count": self.count}
