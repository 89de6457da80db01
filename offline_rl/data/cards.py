"""Dataset cards: `datasets/<family>.toml`, one table per named dataset.

A card file has a `[family]` table with what its datasets share (env id, label, reference scores, version) and
one table per dataset, keyed by the dataset's name (`[pendulum-medium]`), with its level, description, size,
seed and behaviour policy. A card's own keys override the family's.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offline_rl.errors import DatasetError
from offline_rl.paths import resource_dir

LABEL_GENERATED = "offline-rl generated"
_REQUIRED = ("env_id", "level", "description", "label", "steps", "seed", "behaviour")


@dataclass(frozen=True)
class Card:
    """What a named dataset is and how to make it."""

    name: str
    family: str
    level: str
    env_id: str
    description: str
    label: str
    steps: int
    seed: int
    behaviour: dict[str, Any]
    version: int = 0
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    ref_episodes: int = 50
    ref_seed: int = 1000
    file: str = ""
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset_id(self) -> str:
        """The Minari id of the card's default dataset, e.g. `offline-rl/pendulum/medium-v0`."""
        return f"offline-rl/{self.family}/{self.level}-v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dataset_id": self.dataset_id}


def _cards_in(path: Path) -> list[Card]:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise DatasetError(f"{path}: cannot read the dataset card file: {e}") from e
    family = doc.get("family")
    if not isinstance(family, dict) or "name" not in family:
        raise DatasetError(f"{path}: key 'family' (a table with at least 'name') is missing")
    shared = {k: v for k, v in family.items() if k != "name"}
    cards = []
    for name, table in doc.items():
        if name == "family":
            continue
        if not isinstance(table, dict):
            raise DatasetError(f"{path}: top-level key '{name}' belongs in [family] or in a card table")
        merged = {**shared, **table}
        for key in _REQUIRED:
            if key not in merged:
                raise DatasetError(f"{path}: card '{name}' has no key '{key}'")
        if not isinstance(merged["behaviour"], dict):
            raise DatasetError(f"{path}: card '{name}' key 'behaviour' must be a table, e.g. {{ policy = \"random\" }}")
        unknown = set(merged) - set(Card.__dataclass_fields__)
        if unknown:
            raise DatasetError(f"{path}: card '{name}' has unknown keys {sorted(unknown)}")
        cards.append(Card(name=name, family=family["name"], file=str(path), **merged))
    return cards


def load_cards(directory: str | Path | None = None) -> dict[str, Card]:
    """Every card in `directory` (default: the shipped `datasets/` folder), by name."""
    folder = Path(directory) if directory is not None else resource_dir("datasets")
    cards: dict[str, Card] = {}
    for path in sorted(folder.glob("*.toml")):
        for card in _cards_in(path):
            if card.name in cards:
                raise DatasetError(f"{path}: card '{card.name}' is also defined in {cards[card.name].file}")
            cards[card.name] = card
    return cards


def list_cards() -> list[dict[str, Any]]:
    """The shipped cards as plain dicts (JSON-ready), sorted by name."""
    return [card.to_dict() for _, card in sorted(load_cards().items())]


def get_card(name: str) -> Card | None:
    """The card called `name`, or None."""
    return load_cards().get(name)


def cards_for_env(env_id: str) -> list[Card]:
    """The cards whose datasets are collected on `env_id`."""
    return [card for card in load_cards().values() if card.env_id == env_id]


def measure_reference_scores(card: Card, episodes: int | None = None) -> tuple[float, float]:
    """(random, expert) mean returns for the card's family, measured as the card file says.

    Random = uniform random actions; expert = the behaviour of the family's `expert` level. Each is the mean
    over `ref_episodes` (or `episodes`) episodes seeded `ref_seed + k` (see `offline_rl.envs.rollout`).
    """
    from offline_rl.envs.controllers import make_policy
    from offline_rl.envs.rollout import run_episodes

    experts = [c for c in load_cards(Path(card.file).parent).values() if c.family == card.family and c.level == "expert"]
    if not experts:
        raise DatasetError(f"{card.file}: family '{card.family}' has no 'expert' level to measure ref_max_score")
    scores = []
    for behaviour in ({"policy": "random"}, experts[0].behaviour):
        policy = make_policy(behaviour, card.env_id, seed=card.ref_seed)
        returns, _ = run_episodes(card.env_id, policy, episodes or card.ref_episodes, card.ref_seed, **card.env_kwargs)
        scores.append(float(np.mean(returns)))
    return scores[0], scores[1]
