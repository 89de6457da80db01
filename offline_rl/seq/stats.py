"""The per-prompt statistics store (cross-cutting): success history that samplers and budgets may read."""

from __future__ import annotations

from collections import defaultdict, deque


class PromptStats:
    """Per prompt key: the last `window` mean rewards and the number of visits."""

    def __init__(self, window: int = 16) -> None:
        self.window = window
        self._history: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=self.window))

    def update(self, keys: list[str], rewards: list[float]) -> None:
        """Record one rollout reward per (key, reward) pair."""
        per_key: dict[str, list[float]] = defaultdict(list)
        for k, r in zip(keys, rewards):
            per_key[k].append(r)
        for k, rs in per_key.items():
            self._history[k].append(sum(rs) / len(rs))

    def success_rate(self, key: str) -> float | None:
        h = self._history.get(key)
        return sum(h) / len(h) if h else None

    def visits(self, key: str) -> int:
        return len(self._history.get(key, ()))
