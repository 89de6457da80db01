"""Shared test setup: keep every cache inside a per-session temporary folder and torch on few threads."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("offline_rl_home")
    old = os.environ.get("OFFLINE_RL_HOME")
    os.environ["OFFLINE_RL_HOME"] = str(home)
    os.environ.setdefault("OFFLINE_RL_OFFLINE", "1")
    yield home
    if old is None:
        os.environ.pop("OFFLINE_RL_HOME", None)
    else:
        os.environ["OFFLINE_RL_HOME"] = old
