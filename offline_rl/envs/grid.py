"""A small gridworld with three equal-reward paths to one goal: the polychromic-objective (Poly-PPO) testbed.

    row 0   . . . . . . .        S = start (2, 0), G = goal (2, 6), # = wall
    row 1   . # # # # # .        paths: top (row 0), middle (row 2), bottom (row 4); the middle one is shortest
    row 2   S . . . . . G
    row 3   . # # # # # .
    row 4   . . . . . . .

Actions 0 up, 1 right, 2 down, 3 left; a move into a wall or off the grid stays put. Reaching G ends the episode
with reward 1 (terminated); otherwise reward 0 and a time limit. The observation is the one-hot of the cell.
A trajectory's *path* is the row in which it first enters the middle column (3).

With `random_block=True` every reset puts lava in the middle-column cell of one path drawn uniformly (unobserved):
entering it ends the episode with reward 0. A policy that always takes one path then succeeds with probability
2/3, and k attempts do no better; one that spreads over the paths succeeds in at least one of k attempts with
probability 1 − (1/3)·Σ_j p_j^k. This is the pass@k check of the polychromic objective. `get_state` /
`set_state` restore the env exactly (vine sampling).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["MultiPathGrid", "PATH_ROWS"]

ROWS, COLS = 5, 7
START, GOAL = (2, 0), (2, 6)
PATH_ROWS = (0, 2, 4)
MIDDLE_COL = 3
WALLS = frozenset((r, c) for r in (1, 3) for c in range(1, 6))
MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))


class MultiPathGrid(gym.Env):
    """See the module docstring. `info["path"]` is the trajectory's path index (0, 1, 2) once it is known."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, random_block: bool = False) -> None:
        self.random_block = bool(random_block)
        self.observation_space = gym.spaces.Box(0.0, 1.0, (ROWS * COLS,), np.float32)
        self.action_space = gym.spaces.Discrete(4)
        self.optimal_return, self.min_return = 1.0, 0.0
        self.pos, self.path, self.blocked = START, -1, -1

    def _obs(self) -> np.ndarray:
        obs = np.zeros(ROWS * COLS, np.float32)
        obs[self.pos[0] * COLS + self.pos[1]] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos, self.path = START, -1
        self.blocked = int(self.np_random.integers(len(PATH_ROWS))) if self.random_block else -1
        return self._obs(), {"path": self.path}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        dr, dc = MOVES[int(np.asarray(action).reshape(-1)[0])]
        r, c = self.pos[0] + dr, self.pos[1] + dc
        if 0 <= r < ROWS and 0 <= c < COLS and (r, c) not in WALLS:
            self.pos = (r, c)
        if self.pos[1] == MIDDLE_COL and self.path < 0:
            self.path = PATH_ROWS.index(self.pos[0])
        lava = self.blocked >= 0 and self.pos == (PATH_ROWS[self.blocked], MIDDLE_COL)
        at_goal = self.pos == GOAL
        return self._obs(), float(at_goal), bool(at_goal or lava), False, {"path": self.path}

    def get_state(self) -> tuple[tuple[int, int], int, int]:
        return self.pos, self.path, self.blocked

    def set_state(self, state: tuple[tuple[int, int], int, int]) -> None:
        self.pos, self.path, self.blocked = (int(state[0][0]), int(state[0][1])), int(state[1]), int(state[2])
