"""CUDA-graph replay of the update (offline_rl.training.graphs): the replayed update equals the eager one, the
replay buffer's graph-safe sampling follows the buffer as it grows, and both training loops run with graphs.
The GPU tests skip on machines without CUDA; the CPU tests check what the graph path relies on."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import pendulum_dataset

from offline_rl import algos
from offline_rl.data.dataset import Batch, Spec
from offline_rl.training import ReplayBuffer, train, train_online
from offline_rl.training.graphs import UpdateStep, graphs_usable

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SPEC = Spec(3, 1, (-2.0,), (2.0,))


def small(name: str, width: int = 64) -> dict:
    """Small networks for `name` (TD3-style configs size actor and critic separately)."""
    return {"hidden": [width, width]} if name in ("bc", "sac") else {"actor_hidden": [width] * 2, "critic_hidden": [width] * 2}


def fixed_batch(device: str, n: int = 256) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(*(t.to(device) for t in (torch.randn(n, 3, generator=g), torch.rand(n, 1, generator=g) * 4 - 2,
                                          torch.randn(n, generator=g), torch.randn(n, 3, generator=g),
                                          (torch.rand(n, generator=g) < 0.1).float())))


def test_replay_buffer_wraps_a_multi_row_add_and_samples_only_filled_rows():
    buf = ReplayBuffer(5, 2, 1)
    buf.add(np.zeros((2, 2)), np.zeros((2, 1)), np.array([1.0, 2.0]), np.zeros((2, 2)), np.array([0, 1]))
    batch = buf.sample(500, torch.Generator().manual_seed(0))
    assert set(batch.rewards.tolist()) == {1.0, 2.0}  # rows 2..4 are empty and never drawn
    assert torch.equal(batch.dones, batch.rewards - 1.0)  # columns stay aligned row by row
    buf.add(np.zeros((4, 2)), np.zeros((4, 1)), np.array([3.0, 4.0, 5.0, 6.0]), np.zeros((4, 2)), np.zeros(4))
    assert len(buf) == 5 and buf.ptr == 1
    assert buf.column("rewards").tolist() == [6.0, 2.0, 3.0, 4.0, 5.0]  # the 4-row add wrapped around the ring
    assert float(buf.size_t) == 5.0


def test_update_step_is_eager_on_cpu():
    algo = algos.make("td3_bc", SPEC, small("td3_bc", 16), seed=0)
    assert algo.graph_safe and algo.update_period == 2 and not graphs_usable(algo)
    twin = copy.deepcopy(algo)
    batch = fixed_batch("cpu")
    step = UpdateStep(algo, lambda gen: batch)
    for n in range(1, 5):
        torch.manual_seed(n)
        step(n)
        torch.manual_seed(n)
        twin.update(batch, n)
    for p, q in zip(algo.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not step.captured


@pytest.mark.parametrize("name,overrides", [("bc", {}), ("td3_bc", {"policy_noise": 0.0})])
@cuda
def test_graph_replay_equals_eager_update(name, overrides):
    """The same deterministic updates (BC; TD3+BC with zero target noise, both phases of the delayed actor update),
    eager and replayed from graphs, on one fixed batch: the parameters agree after 9 updates."""
    cfg = {**small(name), **overrides}
    eager = algos.make(name, SPEC, cfg, device="cuda", seed=0)
    graphed = algos.make(name, SPEC, cfg, device="cuda", seed=0)
    batch = fixed_batch("cuda")
    step = UpdateStep(graphed, lambda gen: batch)
    assert step.graphed
    for n in range(1, 10):
        eager.update(batch, n)
        step(n)
    assert step.captured
    for (k, p), q in zip(eager.named_parameters(), graphed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=k)


@cuda
def test_graph_safe_sampling_follows_the_growing_buffer():
    buf = ReplayBuffer(1000, 2, 1, "cuda")
    buf.add(np.zeros((3, 2)), np.zeros((3, 1)), np.array([0.0, 1.0, 2.0]), np.zeros((3, 2)), np.zeros(3))
    g = torch.cuda.CUDAGraph()
    static = buf.sample(4096)  # warm-up outside the capture
    torch.cuda.synchronize()
    with torch.cuda.graph(g):
        static = buf.sample(4096)
    g.replay()
    assert set(static.rewards.tolist()) == {0.0, 1.0, 2.0}
    buf.add(np.zeros((7, 2)), np.zeros((7, 1)), np.arange(3.0, 10.0), np.zeros((7, 2)), np.zeros(7))
    g.replay()
    assert set(static.rewards.tolist()) == set(np.arange(10.0))


@cuda
def test_offline_trainer_with_graphs():
    result = train(algos.make("td3_bc", SPEC, small("td3_bc"), device="cuda", seed=0),
                   pendulum_dataset(episodes=5), steps=600, eval_every=300, eval_episodes=2, progress=False,
                   log_every=100)
    assert result.status == "completed" and all(np.isfinite(v) for v in result.metrics.values())


@cuda
def test_online_sac_with_graphs_and_time_limit(tmp_path):
    algo = algos.make("sac", SPEC, {"hidden": [64, 64], "batch_size": 64}, device="cuda", seed=0)
    result = train_online(algo, "Pendulum-v1", 2000, seed=0, num_envs=2, eval_every=400, eval_episodes=2,
                          out_dir=tmp_path, start_steps=200, snapshot_steps=[0, 400], progress=False,
                          log_every=200)
    assert result.status == "completed" and all(np.isfinite(v) for v in result.metrics.values())
    short = train_online(algos.make("sac", SPEC, {"hidden": [64, 64]}, device="cuda", seed=0), "Pendulum-v1",
                         10**6, seed=0, eval_every=0, out_dir=tmp_path / "limited", start_steps=100,
                         progress=False, time_limit_s=3.0)
    assert short.status == "time_limit" and 100 < short.step < 10**6
    assert (tmp_path / "limited" / "snapshots" / f"step_{short.step:08d}.pt").exists()


def test_online_time_limit_stops_with_a_final_snapshot(tmp_path):
    algo = algos.make("sac", SPEC, {"hidden": [16, 16], "batch_size": 32}, seed=0)
    result = train_online(algo, "Pendulum-v1", 10**6, seed=0, eval_every=0, out_dir=tmp_path, start_steps=100,
                          progress=False, time_limit_s=1.5)
    assert result.status == "time_limit" and 100 < result.step < 10**6
    assert (tmp_path / "snapshots" / f"step_{result.step:08d}.pt").exists()
    assert (tmp_path / "checkpoint.pt").exists()


def test_replay_buffer_state_round_trip_keeps_chronological_order():
    full = ReplayBuffer(4, 1, 1)
    for t in range(6):  # wraps: holds rewards 2, 3, 4, 5 with the oldest at ptr 2
        full.add(np.zeros((1, 1)), np.zeros((1, 1)), np.array([float(t)]), np.zeros((1, 1)), np.zeros(1))
    state = full.state_dict()
    assert state["rows"][:, full.columns["rewards"]].flatten().tolist() == [2.0, 3.0, 4.0, 5.0]
    bigger = ReplayBuffer(10, 1, 1)
    bigger.load_state_dict(state)
    bigger.add(np.zeros((1, 1)), np.zeros((1, 1)), np.array([6.0]), np.zeros((1, 1)), np.zeros(1))
    assert bigger.column("rewards").tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    smaller = ReplayBuffer(3, 1, 1)
    smaller.load_state_dict(state)
    assert smaller.column("rewards").tolist() == [3.0, 4.0, 5.0] and smaller.ptr == 0
