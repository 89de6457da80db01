"""Shared builders for the sequence-backend tests: random contexts of hand-made tensors (no model)."""

from __future__ import annotations

import pytest
import torch

from offline_rl.seq.context import LossContext, global_counts


def random_ctx(B: int = 6, T: int = 5, G: int = 3, seed: int = 0, spread: float = 0.3, V: int = 7) -> LossContext:
    """B completions in groups of G, prefix masks of random length >= 1, log-probs with a gradient."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    old = -torch.rand(B, T, generator=g) * 2 - 0.1
    logp = (old + spread * torch.randn(B, T, generator=g)).requires_grad_(True)
    rewards = torch.randint(0, 2, (B,), generator=g).float()
    ctx = LossContext(mask=mask, group_ids=torch.arange(B) // G, rewards=rewards,
                      token_ids=torch.randint(3, V, (B, T), generator=g), logp=logp, old_logp=old,
                      entropy=torch.rand(B, T, generator=g) * 2, old_entropy=torch.rand(B, T, generator=g) * 2)
    ctx.counts = global_counts(mask)
    return ctx


@pytest.fixture
def ctx() -> LossContext:
    return random_ctx()


@pytest.fixture
def make_ctx():
    """The `random_ctx` builder, as a fixture (test modules need not import conftest)."""
    return random_ctx


@pytest.fixture(autouse=True)
def one_thread():
    """The CI machine has 2 shared cores: torch's spinning intra-op threads slow these small tensors down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
