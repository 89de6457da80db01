"""Shared fixtures for the sequence-backend tests (the builders live in seq_helpers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from seq_helpers import random_ctx  # noqa: E402


@pytest.fixture
def ctx():
    return random_ctx()


@pytest.fixture
def make_ctx():
    """The `random_ctx` builder, as a fixture."""
    return random_ctx


@pytest.fixture(autouse=True)
def one_thread():
    """The CI machine has 2 shared cores: torch's spinning intra-op threads slow these small tensors down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
