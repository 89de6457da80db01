"""Where the toolkit keeps its cache and finds its shipped TOML files (dataset cards, presets, suites)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def home() -> Path:
    """The cache root: `$OFFLINE_RL_HOME`, default `~/.offline_rl`."""
    return Path(os.environ.get("OFFLINE_RL_HOME", Path.home() / ".offline_rl")).expanduser()


def resource_dir(kind: str) -> Path:
    """The folder holding the shipped `kind` TOMLs (`datasets`, `algos` or `benchmarks`).

    A source checkout (editable install) uses the repository's top-level folder; a wheel install uses the copy
    under `<prefix>/share/offline-rl/`.
    """
    for candidate in (REPO_DIR / kind, Path(sys.prefix) / "share" / "offline-rl" / kind):
        if candidate.is_dir():
            return candidate
    return REPO_DIR / kind
