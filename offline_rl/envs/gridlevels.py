"""Small tabular grid levels (LPG's tabular grid worlds at CPU size), batched in torch, with exact evaluation.

A level is an n × n grid (n ≤ `MAX_SIZE`) with walls, a start cell and objects; each object has a reward and
ends the episode when the agent steps onto it (LPG's `auto_collect`, p_terminate = 1). Actions: up, down, left,
right; a move into a wall or off the grid stays put. Episodes last at most `horizon` steps (a truncation). The
state is the agent's cell, so the policy and the prediction y are tables.

Levels are padded to MAX_SIZE² cells so that a batch of levels of different sizes steps as one tensor program:
`next_cell[level, cell, action]`, `reward[level, cell, action]`, `terminal[level, cell, action]`. Any tabular
policy [levels, cells, actions] is evaluated exactly by backward induction over the horizon (`evaluate`), which
gives returns, advantages and V* without sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAX_SIZE = 7
N_ACTIONS = 4
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))


@dataclass(frozen=True)
class GridLevel:
    """One level: size, wall cells, start cell and (cell, reward) objects; cells index row·MAX_SIZE + column."""

    size: int
    walls: tuple[int, ...]
    start: int
    objects: tuple[tuple[int, float], ...]


def random_level(rng: np.random.Generator, sizes: tuple[int, ...] = (5, 6, 7), n_walls: tuple[int, int] = (0, 6),
                 n_objects: int = 2) -> GridLevel:
    """A random level: size from `sizes`, walls, a start and `n_objects` objects on distinct free cells. Object
    rewards are U[−1, 1] with the first one positive (as GROOVE's `uniform_first_pos`), so each level has a goal."""
    size = int(rng.choice(sizes))
    cells = [r * MAX_SIZE + c for r in range(size) for c in range(size)]
    walls = rng.choice(cells, size=int(rng.integers(n_walls[0], n_walls[1] + 1)), replace=False)
    free = [c for c in cells if c not in set(walls)]
    picks = rng.choice(free, size=n_objects + 1, replace=False)
    rewards = np.concatenate([rng.uniform(0.0, 1.0, 1), rng.uniform(-1.0, 1.0, n_objects - 1)])
    return GridLevel(size, tuple(int(w) for w in walls), int(picks[0]),
                     tuple((int(c), float(r)) for c, r in zip(picks[1:], rewards)))


@dataclass
class LevelBatch:
    """Levels as padded tensors: next_cell, reward, terminal [L, C, A], start [L] (C = MAX_SIZE²)."""

    next_cell: torch.Tensor
    reward: torch.Tensor
    terminal: torch.Tensor
    start: torch.Tensor

    @classmethod
    def from_levels(cls, levels: list[GridLevel]) -> LevelBatch:
        n_cells = MAX_SIZE * MAX_SIZE
        nxt = np.zeros((len(levels), n_cells, N_ACTIONS), dtype=np.int64)
        rew = np.zeros((len(levels), n_cells, N_ACTIONS), dtype=np.float32)
        term = np.zeros((len(levels), n_cells, N_ACTIONS), dtype=bool)
        for i, level in enumerate(levels):
            walls, objects = set(level.walls), dict(level.objects)
            for cell in range(n_cells):
                row, col = divmod(cell, MAX_SIZE)
                for a, (dr, dc) in enumerate(MOVES):
                    r2, c2 = row + dr, col + dc
                    target = r2 * MAX_SIZE + c2
                    inside = 0 <= r2 < level.size and 0 <= c2 < level.size and target not in walls
                    nxt[i, cell, a] = target if inside and row < level.size and col < level.size else cell
                    if nxt[i, cell, a] in objects:
                        rew[i, cell, a], term[i, cell, a] = objects[nxt[i, cell, a]], True
        start = torch.tensor([lv.start for lv in levels])
        return cls(torch.from_numpy(nxt), torch.from_numpy(rew), torch.from_numpy(term), start)

    def __len__(self) -> int:
        return int(self.start.shape[0])

    def select(self, idx: torch.Tensor | list[int]) -> LevelBatch:
        idx = torch.as_tensor(idx)
        return LevelBatch(self.next_cell[idx], self.reward[idx], self.terminal[idx], self.start[idx])

    def replace(self, idx: int, other: LevelBatch) -> None:
        """Put the one level of `other` at position idx (in place)."""
        for name in ("next_cell", "reward", "terminal", "start"):
            getattr(self, name)[idx] = getattr(other, name)[0]

    def step(self, cells: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """cells, actions [L, W] (W workers per level) → (next cells, rewards, terminal), each [L, W]."""
        level = torch.arange(len(self))[:, None].expand_as(cells)
        return (self.next_cell[level, cells, actions], self.reward[level, cells, actions],
                self.terminal[level, cells, actions])


def evaluate(levels: LevelBatch, policy: torch.Tensor, horizon: int,
             discount: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q [H, L, C, A], V [H + 1, L, C]) of the tabular `policy` [L, C, A] (or the greedy optimum when None),
    with V_h(s) the discounted return of the remaining H − h steps. Differentiable in `policy`."""
    n_levels, n_cells, _ = levels.reward.shape
    level = torch.arange(n_levels)[:, None, None]
    values = [torch.zeros(n_levels, n_cells, dtype=levels.reward.dtype)]
    qs = []
    for _ in range(horizon):
        v_next = values[0][level, levels.next_cell]  # [L, C, A]
        q = levels.reward + discount * (~levels.terminal) * v_next
        v = q.max(-1).values if policy is None else (policy * q).sum(-1)
        qs.insert(0, q)
        values.insert(0, v)
    return torch.stack(qs), torch.stack(values)


def start_values(levels: LevelBatch, policy: torch.Tensor | None, horizon: int, discount: float) -> torch.Tensor:
    """V_0(start) per level [L]: the exact discounted return of `policy` (None: the optimum V*)."""
    return evaluate(levels, policy, horizon, discount)[1][0, torch.arange(len(levels)), levels.start]
