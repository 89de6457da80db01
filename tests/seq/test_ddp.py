"""Data parallelism: two gloo CPU processes end with the same parameters, and their losses match one process
over the same global batch (global counts, global batch statistics)."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("transformers")

from offline_rl.seq.distributed import DistWorld, wrap_ddp  # noqa: E402
from offline_rl.seq.learner import Learner  # noqa: E402
from offline_rl.seq.methods import get_method  # noqa: E402
from offline_rl.seq.policy import build_tiny_model  # noqa: E402
from offline_rl.seq.rollout import Generation, RolloutBatch  # noqa: E402
from offline_rl.seq.tasks import Problem  # noqa: E402

B, G, P, T, V = 16, 4, 3, 5, 12
METHODS = {"bnpo": {}, "grpo": {"aggregation": "token-mean"}}


def global_batch() -> RolloutBatch:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    gen = Generation(prompt_ids=torch.randint(3, V, (B, P), generator=g), prompt_mask=torch.ones(B, P, dtype=torch.long),
                     completion_ids=torch.randint(3, V, (B, T), generator=g),
                     completion_mask=(torch.arange(T)[None] < lengths[:, None]).long(),
                     truncated=torch.zeros(B, dtype=torch.bool))
    rewards = torch.randint(0, 2, (B,), generator=g).float()
    return RolloutBatch(gen, torch.arange(B) // G, [Problem("p", "a")] * B, [""] * B, rewards)


def one_update(method: str, rows: torch.Tensor, world=None) -> tuple[float, torch.Tensor]:
    model = build_tiny_model(V, seed=0, hidden_size=16, num_heads=2)
    from offline_rl.seq.context import LOCAL

    world = world or LOCAL
    policy = wrap_ddp(model, world)
    learner = Learner(policy, torch.optim.SGD(model.parameters(), lr=0.5), get_method(method).override(
        METHODS[method]), world=world, max_len=T)
    batch = global_batch().rows(rows)
    metrics = learner.update(batch, learner.prepare(batch))
    return float(metrics["loss"]), torch.cat([p.detach().flatten() for p in model.parameters()])


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    os.environ.pop("WORLD_SIZE", None)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    world = DistWorld()
    results = {}
    for method in METHODS:
        rows = torch.arange(rank * B // 2, (rank + 1) * B // 2)  # whole groups per rank
        results[method] = one_update(method, rows, world)
    import offline_rl.seq as seq

    r = seq.train(task="copy", steps=2, group_size=4, prompts_per_step=4, max_new_tokens=2, save_model=False,
                  progress=False, eval_problems=2, tiny={"hidden_size": 16, "num_layers": 1, "num_heads": 2})
    results["train"] = (r.param_norm, r.curve, r.world_size)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_cpu_ranks_match_one_process() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    for method in METHODS:
        single_loss, single_params = one_update(method, torch.arange(B))
        (loss0, params0), (loss1, params1) = ranks[0][method], ranks[1][method]
        assert torch.equal(params0, params1), method  # both replicas identical
        assert (loss0 + loss1) / 2 == pytest.approx(single_loss, abs=1e-6), method  # DDP's average = global loss
        assert torch.allclose(params0, single_params, atol=1e-6), method  # same step as one process
    assert ranks[0]["train"] == ranks[1]["train"] and ranks[0]["train"][2] == 2
