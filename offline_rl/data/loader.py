"""`load_dataset(source)`: one entry point for cards, D4RL files and Minari datasets."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from offline_rl.data.cards import get_card, load_cards
from offline_rl.data.dataset import Dataset
from offline_rl.errors import DatasetError
from offline_rl.names import did_you_mean


def load_dataset(source: str | os.PathLike, device: str | torch.device = "cpu", keep_timeouts: bool = False,
                 use_next_observations: bool = False) -> Dataset:
    """Load `source` as flat transition tensors on `device`, validated.

    `source` is one of: a card name (`pendulum-medium`; generated into `$OFFLINE_RL_HOME/minari` on first use),
    the name of a dataset the toolkit wrote under `$OFFLINE_RL_HOME/datasets/` (e.g. by `augment pgd`), `d4rl:<name>` (from `$D4RL_DATASET_DIR`, downloaded when missing), a path to a D4RL `.hdf5` file,
    `minari:<dataset_id>`, or a path to a local Minari dataset folder.

    Defaults follow D4RL's `qlearning_dataset`: timeout (truncated) rows are dropped and the bootstrap mask is
    `terminals`. `keep_timeouts=True` keeps them (marked in `timeouts`); `use_next_observations=True` takes a
    D4RL file's `next_observations` key (Minari data always has the true next observation).
    """
    from offline_rl.data import d4rl, minari_io

    src = os.fspath(source)
    options = {"keep_timeouts": keep_timeouts, "device": device}
    card = get_card(src)
    if card is not None:
        from offline_rl.data.generate import ensure_card_dataset

        path = ensure_card_dataset(card)
        return minari_io.read_minari(
            minari_io.open_dir(path), card.name, source=card.name, name=card.name, family=card.family,
            label=card.label, ref_min_score=card.ref_min_score, ref_max_score=card.ref_max_score, **options)
    if src.startswith("d4rl:"):
        return d4rl.load_d4rl(src[len("d4rl:"):], use_next_observations=use_next_observations, **options)
    if src.startswith("minari:"):
        return minari_io.load_minari(src[len("minari:"):], **options)
    path = Path(src).expanduser()
    if path.suffix in (".hdf5", ".h5"):
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        return d4rl.read_d4rl(path, use_next_observations=use_next_observations, **options)
    if path.is_dir():
        return minari_io.load_minari_dir(path, **options)
    named = minari_io.named_dataset_dir(src)
    if named is not None:
        return minari_io.read_minari(minari_io.open_dir(named), src, source=src, **options)
    cards = sorted(load_cards())
    raise DatasetError(f"unknown dataset '{src}'{did_you_mean(src, cards)}: not a card name (available: "
                       f"{', '.join(cards) or 'none'}), an existing .hdf5 file or Minari folder, 'd4rl:<name>' or "
                       "'minari:<dataset_id>'")
