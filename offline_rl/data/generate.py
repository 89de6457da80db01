"""Roll out a behaviour policy in a vector env and write the episodes as a Minari dataset.

Size: `steps` is a lower bound on the number of transitions. Collection stops at the first step where the
finished episodes hold at least `steps` transitions; every finished episode is kept whole and the episodes still
running are discarded, so the dataset holds only complete episodes (ended by termination or the env's time
limit) and slightly more than `steps` transitions.

Parts: a card's behaviour may be several policies rolled out one after the other, each for an equal share of
`steps` and with seed + k·MIX_SEED_STRIDE (k = the part's index): a `mix` of other cards (e.g. medium-expert:
half medium, then half expert) or a zoo checkpoint schedule (medium-replay: SAC's uniform warm-up, then the
ordered zoo checkpoints before the medium one, see `offline_rl.envs.controllers.expand_behaviour`). Episodes are stored part after part.

Determinism: sub-env i is reset with seed + i, later episodes continue each sub-env's own RNG, and the behaviour
policy's noise (numpy) or sampled actions (zoo actors: torch) come from its own generator seeded from `seed`;
torch runs on one thread. Episodes are stored in the order they finish (ties by sub-env index). The same
arguments give the same dataset.

Speed: one batched policy call per vector-env step (a zoo actor: one forward pass under inference_mode).

Writing: the dataset is built in a temporary folder beside the target and renamed into place, so an interrupted
or concurrent generation never leaves a half-written dataset under the final name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from offline_rl.data.cards import LABEL_GENERATED, Card, CardVariant, card_variant, cards_for_env, load_cards
from offline_rl.data.minari_io import METADATA_KEY, cache_root
from offline_rl.envs import is_registered, make_env, make_vector_env
from offline_rl.envs.controllers import (
    describe_behaviour,
    expand_behaviour,
    make_policy,
    torch_threads,
    zoo_checkpoint,
)
from offline_rl.errors import DatasetError
from offline_rl.names import did_you_mean
from offline_rl.utils.progress import ProgressReporter

log = logging.getLogger(__name__)

NUM_ENVS = 8
DEFAULT_STEPS = 100_000
PLAIN_PROGRESS_FROM = 200_000
"""Without a TTY, generations of at least this many transitions print a progress line per tenth."""
MIX_SEED_STRIDE = 100_000
"""Part k of a dataset with several behaviour parts (mix, zoo schedule) is rolled out with seed + k·MIX_SEED_STRIDE."""

Policy = Callable[[np.ndarray], np.ndarray]


def collect_episodes(env_id: str, policy: Policy, steps: int, seed: int, num_envs: int = NUM_ENVS,
                     on_step: Callable[[int], None] | None = None, **env_kwargs: Any) -> list[dict[str, Any]]:
    """Whole episodes (dicts of numpy arrays, T + 1 observations) holding at least `steps` transitions.
    `on_step(n)` is told after each vector step that n more transitions were collected."""
    envs = make_vector_env(env_id, num_envs, seed=seed, **env_kwargs)
    try:
        act_dtype = envs.single_action_space.dtype
        obs, _ = envs.reset(seed=[seed + i for i in range(num_envs)])
        rows: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "term", "trunc", "next")}
        running = np.zeros(num_envs, dtype=np.int64)
        finished = 0
        while finished < steps:
            action = np.asarray(policy(obs), dtype=act_dtype)
            new_obs, reward, terminated, truncated, info = envs.step(action)
            done = terminated | truncated
            next_obs = np.array(new_obs, copy=True)
            for i in np.flatnonzero(done):  # same-step autoreset: the true last observation is in the info
                next_obs[i] = info["final_obs"][i]
            for key, value in zip(rows, (obs, action, reward, terminated, truncated, next_obs), strict=True):
                rows[key].append(value)
            running += 1
            finished += int(running[done].sum())
            if on_step is not None:
                on_step(num_envs)
            running[done] = 0
            obs = new_obs
    finally:
        envs.close()
    data = {k: np.stack(v) for k, v in rows.items()}  # (time, env, ...)
    ends = data["term"] | data["trunc"]
    episodes = []
    for i in range(num_envs):
        start = 0
        for end in np.flatnonzero(ends[:, i]):
            episodes.append((int(end), i, {
                "seed": seed + i if start == 0 else None,
                "observations": np.concatenate([data["obs"][start:end + 1, i], data["next"][end, i][None]]),
                "actions": data["act"][start:end + 1, i],
                "rewards": data["rew"][start:end + 1, i],
                "terminations": data["term"][start:end + 1, i],
                "truncations": data["trunc"][start:end + 1, i],
            }))
            start = end + 1
    return [ep for _, _, ep in sorted(episodes, key=lambda e: (e[0], e[1]))]


@dataclass
class _Plan:
    """What to roll out and where it goes."""

    env_id: str
    dataset_id: str
    parts: list[tuple[Policy | dict[str, Any], int, int]]  # (policy or behaviour table, steps, seed)
    ref_scores: tuple[float | None, float | None]
    label: str
    description: str
    metadata: dict[str, Any]
    env_kwargs: dict[str, Any]


def _share(steps: int, n: int, k: int) -> int:
    """Part k's share of `steps` split into n equal parts (the last takes the remainder)."""
    return steps // n + (steps % n if k == n - 1 else 0)


def _card_parts(card: Card, steps: int, seed: int) -> list[tuple[dict[str, Any], int, int]]:
    """(behaviour, steps, seed) per part: the card's mix components in order (other cards by name, or behaviour
    tables written inline), each expanded into its zoo schedule."""
    mix = card.behaviour.get("mix")
    if mix is None:
        components = [(card.behaviour, steps)]
    else:
        cards = load_cards(Path(card.file).parent)
        behaviours = []
        for item in mix:
            if isinstance(item, dict):
                behaviours.append(item)
            elif item in cards and "mix" not in cards[item].behaviour:
                behaviours.append(cards[item].behaviour)
            else:
                raise DatasetError(f"{card.file}: card '{card.name}' mixes {item!r}, which is neither a plain card "
                                   "nor a behaviour table")
        components = [(b, _share(steps, len(mix), k)) for k, b in enumerate(behaviours)]
    parts = []
    for behaviour, component_steps in components:
        expanded = expand_behaviour(behaviour, card.env_id)
        parts += [(b, _share(component_steps, len(expanded), j)) for j, b in enumerate(expanded)]
    return [(b, part_steps, seed + k * MIX_SEED_STRIDE) for k, (b, part_steps) in enumerate(parts)]


def _plan(name_or_env_id: str, policy: Policy | None, steps: int | None, seed: int | None,
          level: str | None) -> _Plan:
    variant = card_variant(name_or_env_id, steps, seed)
    if variant is None and level is not None and is_registered(name_or_env_id):
        card = next((c for c in cards_for_env(name_or_env_id) if c.level == level), None)
        variant = None if card is None else card_variant(card.name, steps, seed)
    if variant is not None:
        card, steps, seed = variant.card, variant.steps, variant.seed
        lvl = card.level if policy is None else "custom"
        dataset_id = variant.dataset_id if policy is None else (
            f"offline-rl/{card.family}/custom-seed{seed}-steps{steps}-v{card.version}")
        parts = _card_parts(card, steps, seed) if policy is None else [(policy, steps, seed)]
        behaviour = card.behaviour if policy is None else {"policy": getattr(policy, "__name__", "custom")}
        return _Plan(card.env_id, dataset_id, parts, (card.ref_min_score, card.ref_max_score), card.label,
                     card.description, {"card": variant.name if policy is None else dataset_id, "family": card.family,
                                        "level": lvl, "behaviour": behaviour}, dict(card.env_kwargs))
    if not is_registered(name_or_env_id):
        names = sorted(load_cards())
        raise DatasetError(f"cannot generate '{name_or_env_id}'{did_you_mean(name_or_env_id, names)}: not a dataset "
                           f"card ({', '.join(names)}) and not a gymnasium env id")
    env_id, seed, steps = name_or_env_id, seed or 0, steps or DEFAULT_STEPS
    if policy is None and level != "random":
        raise DatasetError(f"generating on {env_id} needs a policy, or level='random'"
                           + ("" if level is None else f" (no card for {env_id} has level '{level}')"))
    behaviour: Policy | dict[str, Any] = policy if policy is not None else {"policy": "random"}
    lvl = level or "custom"
    family_cards = cards_for_env(env_id)
    refs = (family_cards[0].ref_min_score, family_cards[0].ref_max_score) if family_cards else (None, None)
    label = family_cards[0].label if family_cards else LABEL_GENERATED
    dataset_id = f"offline-rl/{env_id}/{lvl}-seed{seed}-steps{steps}-v0"
    desc = f"{lvl} behaviour on {env_id}, {steps} transitions, seed {seed}"
    return _Plan(env_id, dataset_id, [(behaviour, steps, seed)], refs, label, desc,
                 {"card": dataset_id, "family": env_id, "level": lvl,
                  "behaviour": behaviour if isinstance(behaviour, dict) else {"policy": "custom"}}, {})


@contextlib.contextmanager
def _minari_datasets_path(path: Path) -> Iterator[None]:
    """Point Minari's `MINARI_DATASETS_PATH` at `path` for the duration (not thread-safe)."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _write(plan: _Plan, episodes: list[dict[str, Any]], root: Path, overwrite: bool, metadata: dict[str, Any]) -> Path:
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(id=k, **ep) for k, ep in enumerate(episodes)]
    final = root / plan.dataset_id
    root.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix=".generating-", dir=root))
    ref_min, ref_max = plan.ref_scores
    refs = {"ref_min_score": ref_min, "ref_max_score": ref_max} if None not in plan.ref_scores else {}
    try:
        env = make_env(plan.env_id, **plan.env_kwargs)
        with _minari_datasets_path(tmp_root), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari warns about unset author e-mail, permalink and eval env
            ds = minari.create_dataset_from_buffers(
                plan.dataset_id, buffers, env=env, author="offline-rl",
                algorithm_name=metadata["behaviour_description"], description=plan.description, **refs)
            ds.storage.update_metadata({METADATA_KEY: metadata})
        env.close()
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            if not overwrite:
                return final  # a concurrent generation finished first; its data is identical
            shutil.rmtree(final)
        os.replace(tmp_root / plan.dataset_id, final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return final


def generate_dataset(name_or_env_id: str, policy: Policy | None = None, steps: int | None = None,
                     seed: int | None = None, out: str | os.PathLike | None = None, level: str | None = None,
                     num_envs: int = NUM_ENVS, overwrite: bool = True, progress: bool | None = None) -> Path:
    """Roll out a behaviour and write a Minari dataset; returns its folder (`<root>/<dataset id>`).

    `name_or_env_id` is a card name (its behaviour, steps and seed are the defaults; a card's default dataset
    is the one `load_dataset(name)` uses) or a gymnasium env id with `level` (a card level for that env, or
    `"random"`) or a `policy` (a callable: observation batch -> action batch, numpy). `seed=None` takes the
    card's seed (0 otherwise). `out` is the Minari root folder (default: `$OFFLINE_RL_HOME/minari`).
    The reference scores (card's measured random and expert returns) go into the Minari metadata. A line on
    stderr names the dataset, its size and where it goes, then a progress bar (a TTY; `progress=None`) or a line
    per tenth of the rollouts follows (`progress=False`: none). A card whose
    behaviour is a zoo policy of an env without shipped zoo weights (or an unknown zoo level) is a DatasetError,
    raised before any rollout.
    """
    if steps is not None and steps <= 0:
        raise DatasetError(f"steps must be > 0, got {steps}")
    plan = _plan(name_or_env_id, policy, steps, seed, level)
    root = Path(out) if out is not None else cache_root()
    if root.exists() and not root.is_dir():
        raise DatasetError(f"{root}: --out must be a folder (the Minari root), but it is a file")
    start = time.perf_counter()
    checkpoints = _zoo_checkpoints(plan)
    total = sum(s for _, s, _ in plan.parts)
    print(f"generating {plan.metadata['card']}: {total:,} transitions on {plan.env_id} (about "
          f"{_size_estimate(plan.env_id, total) / 1e6:,.1f} MB) into {root / plan.dataset_id}", file=sys.stderr,
          flush=True)
    if progress is None and not sys.stderr.isatty() and total < PLAIN_PROGRESS_FROM:
        progress = False  # a few seconds: the line above is enough in a log
    reporter = ProgressReporter(total, enabled=progress, label=f"generate {plan.metadata['card']}", plain_every=0.1)
    collected_so_far = [0]

    def on_step(n: int) -> None:
        collected_so_far[0] += n
        rate = collected_so_far[0] / max(time.perf_counter() - start, 1e-9)
        reporter.show(min(collected_so_far[0], total), f"{rate:,.0f} transitions/s")

    try:
        with torch_threads(1):
            policies = [make_policy(b, plan.env_id, part_seed) if isinstance(b, dict) else b
                        for b, _, part_seed in plan.parts]  # every policy loads (or fails) before any rollout
            collected = [collect_episodes(plan.env_id, pol, part_steps, part_seed, num_envs, on_step,
                                          **plan.env_kwargs)
                         for pol, (_, part_steps, part_seed) in zip(policies, plan.parts, strict=True)]
    finally:
        reporter.close()
    episodes = [ep for part in collected for ep in part]
    parts = [{"behaviour": b if isinstance(b, dict) else {"policy": "custom"}, "steps": part_steps, "seed": part_seed,
              "episodes": len(eps), "transitions": sum(len(ep["actions"]) for ep in eps),
              **({"zoo_checkpoint": ckpt} if ckpt else {})}
             for (b, part_steps, part_seed), eps, ckpt in zip(plan.parts, collected, checkpoints, strict=True)]
    descriptions = [describe_behaviour(b) if isinstance(b, dict) else "custom policy" for b, _, _ in plan.parts]
    metadata = {**plan.metadata, "label": plan.label, "env_id": plan.env_id,
                "steps": sum(s for _, s, _ in plan.parts), "seed": plan.parts[0][2], "num_envs": num_envs,
                "recipe": _recipe(plan, num_envs, checkpoints), "behaviour_description": " | ".join(descriptions),
                "parts": parts, "generator": __name__}
    path = _write(plan, episodes, root, overwrite, metadata)
    log.info("generated %s: %d transitions in %d episodes, %.1f s", plan.dataset_id,
             sum(p["transitions"] for p in parts), len(episodes), time.perf_counter() - start)
    return path


def _size_estimate(env_id: str, transitions: int) -> float:
    """Bytes on disk of a Minari dataset of `transitions` steps on `env_id` (float64 observations and rewards,
    float32 actions, two flags; measured: 1M Hopper-v5 transitions take about 168 MB)."""
    from offline_rl.envs import env_spaces

    obs_space, act_space = env_spaces(env_id)
    row = 8 * int(np.prod(obs_space.shape)) + 4 * int(np.prod(act_space.shape or (1,))) + 8 + 2
    return 1.5 * transitions * row


def _zoo_checkpoints(plan: _Plan) -> list[dict[str, Any] | None]:
    """Per part: the zoo checkpoint it rolls out (index, step, file, measured return, sha256), else None."""
    keys = ("index", "step", "file", "return_mean", "sha256")
    return [{k: row.get(k) for k in keys} if (row := _zoo_row(b, plan.env_id)) else None for b, _, _ in plan.parts]


def _zoo_row(behaviour: Policy | dict[str, Any], env_id: str) -> dict[str, Any] | None:
    is_zoo = isinstance(behaviour, dict) and behaviour.get("policy") == "zoo"
    return zoo_checkpoint(behaviour, env_id) if is_zoo else None


def _recipe(plan: _Plan, num_envs: int, checkpoints: list[dict[str, Any] | None]) -> list[Any] | None:
    """What determines the data (env, behaviours, sizes, seeds, and the zoo weights' sha256 when the behaviour
    is a zoo policy, so that retrained zoo weights make a cached dataset stale); None for a custom policy.
    `checkpoints` is `_zoo_checkpoints(plan)`, which callers compute once (it hashes the weight files)."""
    if not all(isinstance(b, dict) for b, _, _ in plan.parts):
        return None
    recipe = [plan.env_id, plan.env_kwargs, num_envs, [[b, s, seed] for b, s, seed in plan.parts]]
    weights = [ckpt["sha256"] for ckpt in checkpoints if ckpt]
    return recipe + [weights] if weights else recipe


def ensure_card_dataset(variant: CardVariant) -> Path:
    """The folder of a card's dataset (at its size and seed) in the cache, generated on first use.

    A cached dataset whose recipe (behaviours, sizes, seeds, zoo weights) differs from the card's, because the card
    file or the zoo changed, is generated again.
    """
    path = cache_root() / variant.dataset_id
    meta_file = path / "data" / "metadata.json"
    if meta_file.is_file():
        try:
            cached = json.loads(meta_file.read_text()).get(METADATA_KEY, {}).get("recipe")
        except (OSError, ValueError) as e:
            raise DatasetError(f"{meta_file}: the cached dataset's metadata is unreadable ({e}); delete {path} and it "
                               "will be generated again") from e
        plan = _plan(variant.name, None, None, None, None)
        wanted = json.loads(json.dumps(_recipe(plan, NUM_ENVS, _zoo_checkpoints(plan))))
        if cached == wanted:
            return path
        log.warning("%s: the cached dataset does not match the card any more; generating it again", variant.name)
    generate_dataset(variant.name, overwrite=meta_file.is_file())
    return path
