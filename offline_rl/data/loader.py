"""`load_dataset(source)`: one entry point for cards, D4RL files and Minari datasets."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from offline_rl.data.cards import card_variant, load_cards
from offline_rl.data.dataset import Dataset
from offline_rl.errors import DatasetError
from offline_rl.names import did_you_mean


def load_dataset(source: str | os.PathLike, device: str | torch.device = "cpu", keep_timeouts: bool = False,
                 use_next_observations: bool = False, env: str | None = None,
                 action_bounds: tuple[float | Sequence[float], float | Sequence[float]] | None = None) -> Dataset:
    """Load `source` as flat transition tensors on `device`, validated.

    `source` is one of: a card name (`pendulum-medium`, or `hopper-medium@20k` / `hopper-medium@20000,seed=1` for
    another size or seed; generated into `$OFFLINE_RL_HOME/minari` on first use), `d4rl:<name>` (from
    `$D4RL_DATASET_DIR`, downloaded when missing), a path to a D4RL `.hdf5` file, `minari:<dataset_id>`, or a path
    to a local Minari dataset folder, or the name of a dataset the toolkit wrote under `$OFFLINE_RL_HOME/datasets/`
    (e.g. by `augment pgd`).

    D4RL files follow `d4rl.qlearning_dataset`: timeout rows are dropped and the bootstrap mask is `terminals`;
    `keep_timeouts=True` keeps them (marked in `timeouts`), `use_next_observations=True` takes the file's
    `next_observations` key. Minari datasets (cards included) give exactly T transitions per episode of T steps,
    with `terminals` = terminations and `timeouts` = truncations; both options are D4RL-only.

    A D4RL file's actions are checked against the action space of its env: the env its name implies
    (`hopper-*` -> Hopper-v5), else `env` (a gymnasium id, which is then also the evaluation env), else
    `action_bounds` (low, high; scalars or one value per dimension), else [-1, 1], the action space of every D4RL
    env.
    """
    from offline_rl.data import d4rl, minari_io

    src = os.fspath(source)
    d4rl_options = {"keep_timeouts": keep_timeouts, "use_next_observations": use_next_observations, "device": device,
                    "env_id": env, "action_bounds": action_bounds}
    variant = card_variant(src)
    if variant is not None:
        from offline_rl.data.generate import ensure_card_dataset

        card = variant.card
        path = ensure_card_dataset(variant)
        return minari_io.read_minari(
            minari_io.open_dir(path, repair_hint=path), variant.name, source=variant.name, name=variant.name,
            family=card.family, label=card.label, ref_min_score=card.ref_min_score,
            ref_max_score=card.ref_max_score, device=device)
    if src.startswith("d4rl:"):
        return d4rl.load_d4rl(src[len("d4rl:"):], **d4rl_options)
    if src.startswith("minari:"):
        return minari_io.load_minari(src[len("minari:"):], device=device)
    path = Path(src).expanduser()
    if path.suffix in (".hdf5", ".h5"):
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        return d4rl.read_d4rl(path, **d4rl_options)
    if path.is_dir():
        return minari_io.load_minari_dir(path, device=device)
    named = minari_io.named_dataset_dir(src)
    if named is not None:
        return minari_io.read_minari(minari_io.open_dir(named), src, source=src, device=device)
    cards = sorted(load_cards())
    raise DatasetError(f"unknown dataset '{src}'{did_you_mean(src.partition('@')[0], cards)}: not a card name "
                       f"(available: {', '.join(cards) or 'none'}), an existing .hdf5 file or Minari folder, "
                       "'d4rl:<name>' or 'minari:<dataset_id>'")
