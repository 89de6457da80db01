"""Dataset cards: `datasets/<family>.toml`, one table per named dataset.

A card file has a `[family]` table with what its datasets share (env id, label, reference scores, version) and
one table per dataset, keyed by the dataset's name (`[pendulum-medium]`), with its level, description, size,
seed and behaviour policy. A card's own keys override the family's.

Reference scores are the mean returns of the uniform random policy (`ref_min_score`) and of the family's
`expert` behaviour (`ref_max_score`), measured on the card's env; `update_reference_scores` (CLI:
`offline-rl datasets measure-refs <family> --write`) measures them and writes them into the card file. A family
may leave them out until it can be measured (e.g. before its zoo policies exist).
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from offline_rl.errors import DatasetError
from offline_rl.names import find
from offline_rl.paths import resource_dir
from offline_rl.utils.io import atomic_write_text

LABEL_GENERATED = "offline-rl generated"
LABEL_D4RL_STYLE = "offline-rl generated (D4RL-style)"
"""The label of the MuJoCo families rolled out from the behaviour-policy zoo: D4RL's recipe, not D4RL's data."""
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
    ref_measured: str = ""
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
    """The card called `name` (case, `-`, `_` and `+` ignored), or None."""
    cards = load_cards()
    found = find(name, cards)
    return None if found is None else cards[found]


@dataclass(frozen=True)
class CardVariant:
    """A card with its size and seed: `hopper-medium@20k` is hopper-medium with 20 000 transitions; `@…,seed=1`
    also sets the seed. `name` is the canonical spelling, which `--dataset` takes and run records show."""

    card: Card
    steps: int
    seed: int

    @property
    def is_default(self) -> bool:
        return self.steps == self.card.steps and self.seed == self.card.seed

    @property
    def name(self) -> str:
        if self.is_default:
            return self.card.name
        seed = "" if self.seed == self.card.seed else f",seed={self.seed}"
        return f"{self.card.name}@{self.steps}{seed}"

    @property
    def dataset_id(self) -> str:
        """The Minari id its dataset is cached under."""
        if self.is_default:
            return self.card.dataset_id
        return f"offline-rl/{self.card.family}/{self.card.level}-seed{self.seed}-steps{self.steps}-v{self.card.version}"


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([km]?)$")


def _count(text: str, source: str) -> int:
    match = _SIZE.match(text.strip().lower())
    if match is None:
        raise DatasetError(f"'{source}': '{text}' is not a count (e.g. 20000, 20k or 1m)")
    value = float(match.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[match.group(2)]
    if value < 1 or value != int(value):
        raise DatasetError(f"'{source}': '{text}' must be a positive whole number of transitions")
    return int(value)


def card_variant(source: str, steps: int | None = None, seed: int | None = None) -> CardVariant | None:
    """The card (and size, seed) that `source` names: `pendulum-medium`, `hopper-medium@20k`,
    `hopper-medium@20000,seed=1`, `hopper-medium@seed=1`; None when `source` is not a card name."""
    name, at, spec = source.partition("@")
    card = get_card(name)
    if card is None:
        return None
    for item in (spec.split(",") if at else []):
        key, eq, value = item.partition("=")
        if not eq:
            key, value = "steps", key
        key = key.strip().lower()
        if key == "steps":
            steps = _count(value, source) if steps is None else steps
        elif key == "seed" and value.strip().isdigit():
            seed = int(value) if seed is None else seed
        else:
            raise DatasetError(f"'{source}': after '@' give the size and seed, e.g. {card.name}@20k or "
                               f"{card.name}@20000,seed=1")
    return CardVariant(card, card.steps if steps is None else steps, card.seed if seed is None else seed)


def cards_for_env(env_id: str) -> list[Card]:
    """The cards whose datasets are collected on `env_id`."""
    return [card for card in load_cards().values() if card.env_id == env_id]


def family_cards(family: str, directory: str | Path | None = None) -> list[Card]:
    """The cards of `family` (e.g. `hopper`), sorted by name; DatasetError listing the families if none."""
    cards = load_cards(directory).values()
    found = sorted((c for c in cards if c.family == family), key=lambda c: c.name)
    if not found:
        raise DatasetError(f"no dataset family '{family}'; families: {', '.join(sorted({c.family for c in cards}))}")
    return found


def _expert_card(card: Card) -> Card:
    cards = load_cards(Path(card.file).parent).values()
    experts = [c for c in cards if c.family == card.family and c.level == "expert"]
    if not experts:
        raise DatasetError(f"{card.file}: family '{card.family}' has no 'expert' level to measure ref_max_score")
    return experts[0]


def measure_reference_scores(card: Card, episodes: int | None = None) -> tuple[float, float]:
    """(random, expert) mean returns for the card's family, measured as the card file says.

    Random = uniform random actions; expert = the behaviour of the family's `expert` level (for the zoo
    families: the zoo's expert actor with sampled actions, the policy that generates the expert data). Each is
    the mean over `ref_episodes` (or `episodes`) episodes seeded `ref_seed + k` (see `offline_rl.envs.rollout`),
    with torch on one thread.
    """
    from offline_rl.envs.controllers import make_policy, torch_threads
    from offline_rl.envs.rollout import run_episodes

    behaviours = ({"policy": "random"}, _expert_card(card).behaviour)
    policies = [make_policy(b, card.env_id, seed=card.ref_seed) for b in behaviours]  # fails before any rollout
    with torch_threads(1):
        scores = [float(np.mean(run_episodes(card.env_id, policy, episodes or card.ref_episodes, card.ref_seed,
                                             **card.env_kwargs)[0])) for policy in policies]
    return scores[0], scores[1]


def _measured_with(card: Card) -> str:
    """What the reference scores depend on besides the env id: library versions and the expert behaviour."""
    from importlib.metadata import version

    from offline_rl.envs.controllers import describe_behaviour, zoo_checkpoint

    behaviour = _expert_card(card).behaviour
    expert = describe_behaviour(behaviour)
    if behaviour.get("policy") == "zoo":
        row = zoo_checkpoint(behaviour, card.env_id)
        expert += f" (checkpoint {row['index']}, step {row['step']}, {row['file']}, sha256 {row['sha256'][:12]})"
    libs = ", ".join(f"{lib} {version(lib)}" for lib in ("gymnasium", "mujoco", "torch"))
    return f"{libs}; expert: {expert}"


def update_reference_scores(family: str, episodes: int | None = None, write: bool = False,
                            directory: str | Path | None = None) -> dict[str, Any]:
    """Measure `family`'s reference scores (`measure_reference_scores`) and, with `write`, store them in its card
    file's `[family]` table (with `ref_episodes` and `ref_measured`); comments and other keys are kept."""
    card = family_cards(family, directory)[0]
    ref_min, ref_max = measure_reference_scores(card, episodes)
    values = {"ref_min_score": ref_min, "ref_max_score": ref_max, "ref_episodes": episodes or card.ref_episodes,
              "ref_measured": _measured_with(card)}
    if write:
        path = Path(card.file)
        text = _set_family_keys(path.read_text(), values)
        written = tomllib.loads(text)["family"]
        if any(written.get(k) != v for k, v in values.items()):
            raise DatasetError(f"{path}: the updated reference scores did not read back; file left unchanged")
        atomic_write_text(path, text)
    return {"family": family, "env_id": card.env_id, "file": card.file, "ref_seed": card.ref_seed, **values,
            "written": write}


def _set_family_keys(text: str, values: dict[str, Any]) -> str:
    """`text` (a card file) with `key = value` lines for `values` in its `[family]` table: replaced in place,
    or added after the table's last key."""
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == "[family]"), None)
    if start is None:
        raise DatasetError("the card file has no [family] table")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    for key, value in values.items():
        line = f"{key} = {json.dumps(value)}"  # a float, an int or a basic string is the same in JSON and TOML
        found = next((i for i in range(start + 1, end) if re.match(rf"{re.escape(key)}\s*=", lines[i])), None)
        if found is not None:
            lines[found] = line
        else:
            last_key = max(i for i in range(start, end) if lines[i].strip() and not lines[i].lstrip().startswith("#"))
            lines.insert(last_key + 1, line)
            end += 1
    return "\n".join(lines) + "\n"
