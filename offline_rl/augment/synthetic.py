"""Write synthetic (and optionally real) episodes as a named Minari dataset under `$OFFLINE_RL_HOME/datasets/NAME`,
which `load_dataset(NAME)`, `datasets info NAME` and `train --dataset NAME` find.

A synthetic trajectory of L − 1 transitions becomes one episode, split after every transition the model marks
terminal (each piece is an episode ending in a termination); the piece that reaches the end of the sample ends in
a truncation (the sample was cut there). Its last transition is complete (the decoded next observation is stored),
so it is kept and bootstrapped through, as Minari's truncated steps are.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_rl.data.dataset import Dataset
from offline_rl.data.generate import _minari_datasets_path
from offline_rl.data.minari_io import METADATA_KEY, named_datasets_root
from offline_rl.envs import make_env
from offline_rl.errors import UserError

LABEL_SYNTHETIC = "offline-rl synthetic (policy-guided diffusion)"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise UserError(f"--out '{name}': a dataset name is letters, digits, '.', '_' and '-' (no '/')")
    return name


def check_free(name: str, overwrite: bool) -> Path:
    """The folder the dataset `name` goes to, after checking the name and that it is free (or `overwrite`)."""
    final = named_datasets_root() / check_name(name)
    if final.exists() and not overwrite:
        raise UserError(f"dataset '{name}' exists ({final}); pass --overwrite to replace it")
    return final


def synthetic_episodes(parts: dict[str, torch.Tensor], low: np.ndarray, high: np.ndarray) -> list[dict[str, Any]]:
    """Episodes (Minari buffer dicts) from decoded samples: per-trajectory tensors [n, L − 1, ...]."""
    obs = parts["observations"].cpu().numpy()
    nxt = parts["next_observations"].cpu().numpy()
    act = np.clip(parts["actions"].cpu().numpy(), low, high)
    rew = parts["rewards"].cpu().numpy()
    term = parts["terminals"].cpu().numpy().astype(bool)
    episodes = []
    for k in range(len(obs)):
        start = 0
        ends = list(np.flatnonzero(term[k])) + ([len(obs[k]) - 1] if not term[k, -1] else [])
        for end in ends:
            steps = slice(start, end + 1)
            truncated = np.zeros(end + 1 - start, dtype=bool)
            truncated[-1] = not term[k, end]
            episodes.append({"observations": np.concatenate([obs[k, steps], nxt[k, end][None]]),
                             "actions": act[k, steps], "rewards": rew[k, steps], "terminations": term[k, steps],
                             "truncations": truncated})
            start = end + 1
    return episodes


def real_episodes(dataset: Dataset) -> list[dict[str, Any]]:
    """The dataset's own episodes (load it with `keep_timeouts=True` to copy its time-limit rows too)."""
    ep = dataset.episode_ids.cpu().numpy()
    cut = np.flatnonzero(np.concatenate([[True], ep[1:] != ep[:-1], [True]]))
    arrays = {k: getattr(dataset, k).cpu().numpy() for k in
              ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")}
    episodes = []
    for a, b in zip(cut[:-1], cut[1:], strict=True):
        episodes.append({"observations": np.concatenate([arrays["observations"][a:b], arrays["next_observations"][b - 1][None]]),
                         "actions": arrays["actions"][a:b], "rewards": arrays["rewards"][a:b],
                         "terminations": arrays["terminals"][a:b], "truncations": arrays["timeouts"][a:b]})
    return episodes


def write_named_dataset(name: str, source: Dataset, episodes: list[dict[str, Any]], metadata: dict[str, Any],
                        description: str, overwrite: bool = False) -> Path:
    """Write `episodes` as the Minari dataset `name` for `source`'s env (its reference scores kept); returns the
    folder. Built in a temporary folder and renamed into place."""
    import minari
    from minari.data_collector import EpisodeBuffer

    final = check_free(name, overwrite)
    root = final.parent
    if source.env_id is None:
        raise UserError(f"{source.source}: the dataset names no environment, so a Minari dataset cannot be written")
    dataset_id = f"offline-rl/named/{name.lower().replace('.', '-').replace('_', '-')}-v0"
    refs = ({"ref_min_score": source.ref_min_score, "ref_max_score": source.ref_max_score}
            if source.ref_min_score is not None and source.ref_max_score is not None else {})
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".writing-", dir=root))
    try:
        env = make_env(source.env_id, **source.env_kwargs)
        with _minari_datasets_path(tmp), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari warns about unset author e-mail, permalink and eval env
            ds = minari.create_dataset_from_buffers(
                dataset_id, [EpisodeBuffer(id=k, **e) for k, e in enumerate(episodes)], env=env,
                author="offline-rl", algorithm_name="policy-guided diffusion", description=description, **refs)
            ds.storage.update_metadata({METADATA_KEY: {"card": name, "family": source.family,
                                                       "label": LABEL_SYNTHETIC, **metadata}})
        env.close()
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp / dataset_id, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def pgd_augment(source: Dataset, agent: Any, name: str, trajectories: int, cfg: Any, real: Dataset | None = None,
                seed: int = 0, overwrite: bool = False, provenance: dict[str, Any] | None = None,
                progress: Any = None) -> dict[str, Any]:
    """Sample `trajectories` PGD trajectories guided by `agent` (an Algorithm; cfg.guidance_coeff) from the model of
    `source` (trained and cached on first use) and write them, with `real`'s episodes when given, as the dataset
    `name`. Returns the provenance record stored in the dataset's metadata."""
    from offline_rl import __version__
    from offline_rl.augment import pgd

    check_free(name, overwrite)
    model, info = pgd.load_or_train(source, cfg, progress=progress)
    low, high = model.action_bias - model.action_scale, model.action_bias + model.action_scale
    log_prob = pgd.target_log_prob(agent, low, high) if cfg.guidance_coeff != 0.0 else None
    generator = torch.Generator(device=model.mean.device).manual_seed(seed)
    parts = model.decode(pgd.sample_trajectories(model, trajectories, cfg, log_prob, generator))
    episodes = synthetic_episodes(parts, low.cpu().numpy(), high.cpu().numpy())
    n_synth = sum(len(e["actions"]) for e in episodes)
    real_eps = real_episodes(real) if real is not None else []
    record = {
        "synthetic": True, "method": "policy-guided diffusion (Jackson et al. 2024)", "version": __version__,
        "source": source.source, "source_sha256": pgd.dataset_fingerprint(source), **(provenance or {}),
        "guidance_coeff": cfg.guidance_coeff, "trajectories": trajectories, "seed": seed,
        "synthetic_episodes": len(episodes), "synthetic_transitions": n_synth,
        "synthetic_truncated": sum(bool(e["truncations"][-1]) for e in episodes),
        "real_episodes": len(real_eps), "real_transitions": sum(len(e["actions"]) for e in real_eps),
        "model": {"path": info["path"], "reused": info["reused"], "parameters": info["parameters"],
                  "train_steps": info["steps"], "val_loss": info["val_loss"]},
        "config": dataclasses.asdict(cfg),
    }
    description = (f"{n_synth} synthetic transitions ({trajectories} policy-guided diffusion trajectories, guidance "
                   f"{cfg.guidance_coeff}) of {source.source}" + (" plus its real episodes" if real_eps else ""))
    path = write_named_dataset(name, source, episodes + real_eps, record, description, overwrite)
    return {**record, "path": str(path)}
