"""The per-prompt statistics store (cross-cutting): rollout history that samplers, budgets and hooks read.

The trainer records every step's groups from all ranks (gathered), so the store is identical on every rank, and
it is saved in the checkpoint. Per prompt key it keeps the last `window` individual rollout rewards (Knapsack RL's
rolling reward buffer), the number of rollouts and visits, the step of the last visit, the last mean |A| and the
category; `last_step` holds the records of the most recent step (what a bandit sampler updates on).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GroupRecord:
    """One prompt's rollouts in one step."""

    key: str
    rewards: list[float]
    abs_advantage: float = 0.0  # mean over the group of the sequences' |A|
    category: Any = None
    step: int = 0
    texts: list[str] = field(default_factory=list)  # decoded completions (for diversity statistics)


@dataclass
class PromptHistory:
    rewards: deque[float]
    count: int = 0  # rollouts seen
    visits: int = 0
    last_step: int = -1
    abs_advantage: float = 0.0
    category: Any = None


class PromptStats:
    """Per prompt key: the last `window` rollout rewards, counts, last visit, last mean |A| and category."""

    def __init__(self, window: int = 16) -> None:
        self.window = window
        self.history: dict[str, PromptHistory] = {}
        self.last_step: list[GroupRecord] = []

    def record(self, records: list[GroupRecord]) -> None:
        """Add one step's groups (from every rank, in the same order on every rank)."""
        merged: dict[str, GroupRecord] = {}
        for r in records:  # a prompt drawn twice in one step counts as one visit with all its rollouts
            if r.key in merged:
                m = merged[r.key]
                n_old, n_new = len(m.rewards), len(r.rewards)
                m.abs_advantage = (m.abs_advantage * n_old + r.abs_advantage * n_new) / max(n_old + n_new, 1)
                m.rewards = m.rewards + r.rewards
                m.texts = m.texts + r.texts
            else:
                merged[r.key] = GroupRecord(**{**asdict(r), "rewards": list(r.rewards), "texts": list(r.texts)})
        for r in merged.values():
            h = self.history.get(r.key)
            if h is None:
                h = self.history[r.key] = PromptHistory(deque(maxlen=self.window))
            h.rewards.extend(r.rewards)
            h.count += len(r.rewards)
            h.visits += 1
            h.last_step, h.abs_advantage, h.category = r.step, r.abs_advantage, r.category
        self.last_step = list(merged.values())

    def success_rate(self, key: str) -> float | None:
        """Mean of the last `window` rollout rewards, or None for an unseen prompt."""
        h = self.history.get(key)
        return sum(h.rewards) / len(h.rewards) if h and h.rewards else None

    def count(self, key: str) -> int:
        h = self.history.get(key)
        return h.count if h else 0

    def visits(self, key: str) -> int:
        h = self.history.get(key)
        return h.visits if h else 0

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "last_step": [asdict(r) for r in self.last_step],
                "history": {k: {**asdict(h), "rewards": list(h.rewards)} for k, h in self.history.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = state["window"]
        self.history = {k: PromptHistory(**{**h, "rewards": deque(h["rewards"], maxlen=self.window)})
                        for k, h in state["history"].items()}
        self.last_step = [GroupRecord(**r) for r in state["last_step"]]
