"""Data parallelism: two gloo CPU processes end with the same parameters, and their losses match one process
over the same global batch (global counts and global batch statistics: BNPO's fit, the entropy top fraction,
D3S's batch subset and token fraction, GRPO-Guard's bucket statistics, S-PPO's clip scale, CAPO's joint update,
EMPG's normalisation); a training run's statistics store, method state and budgets are the same on both ranks."""

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
from offline_rl.seq.methods import get_method, register_method  # noqa: E402
from offline_rl.seq.methods.base import Choice, Method  # noqa: E402
from offline_rl.seq.policy import build_tiny_model  # noqa: E402
from offline_rl.seq.registry import HOOKS  # noqa: E402
from offline_rl.seq.rollout import Generation, RolloutBatch  # noqa: E402
from offline_rl.seq.tasks import Problem  # noqa: E402

B, G, P, T, V = 16, 4, 3, 5, 12


@HOOKS.register("test_rank_state")
def rank_state(ctx):
    """Writes this rank's id into the method state: after the step every rank must hold rank 0's state."""
    ctx.state["writer"] = ctx.world.rank
    return ctx.batch


register_method("test_rank_state", Method("test_rank_state", hook=Choice("test_rank_state")))
METHODS = {  # name: (registered method, overrides, optimiser passes)
    "bnpo": ("bnpo", {}, 1),
    "grpo": ("grpo", {"aggregation": "token-mean"}, 1),
    "top_entropy": ("grpo", {"token_weights": "top_entropy", "token_weights.rho": 0.3}, 1),
    "d3s": ("d3s", {"selection.scope": "batch", "selection.schedule_kind": "constant",
                    "token_weights.schedule_kind": "constant"}, 1),
    "grpo_guard": ("grpo_guard", {}, 2),
    "s_ppo": ("s_ppo", {}, 2),
    "capo": ("capo", {"selection.delta": 1e-4}, 1),
    "empg": ("empg", {}, 1),
}


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
    name, overrides, passes = METHODS[method]
    learner = Learner(policy, torch.optim.SGD(model.parameters(), lr=0.5), get_method(name).override(overrides),
                      world=world, max_len=T, num_iterations=passes)
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

    small = {"hidden_size": 16, "num_layers": 1, "num_heads": 2}
    r = seq.train(task="copy", steps=2, group_size=4, prompts_per_step=4, max_new_tokens=2, save_model=False,
                  progress=False, eval_problems=2, tiny=small)
    results["train"] = (r.param_norm, r.curve, r.world_size)
    results["state"] = seq.train(task="copy", method="test_rank_state", steps=1, group_size=2, prompts_per_step=2,
                                 max_new_tokens=1, save_model=False, progress=False, eval_problems=1,
                                 tiny=small).state
    from offline_rl.seq.stats import PromptStats
    from offline_rl.seq.trainer import record_step

    stats = PromptStats()  # each rank records its own half; the store ends the same on both
    half = global_batch().rows(torch.arange(rank * B // 2, (rank + 1) * B // 2))
    half.problems = [Problem(f"p{int(g)}", "a") for g in half.group_ids]
    record_step(stats, half, torch.randn(half.size), 0, world)
    results["stats"] = stats.state_dict()
    for method in ("sec", "knapsack_rl"):  # budgets and the sampler's state from the gathered statistics
        r = seq.train(task="levels", task_options={"levels": "0", "per_level": 10}, method=method, steps=4,
                      group_size=4, prompts_per_step=4, max_new_tokens=1, save_model=False, progress=False,
                      eval_problems=2, tiny=small, out_dir=os.path.join(out_dir, f"{method}{rank}"))
        ckpt = torch.load(os.path.join(out_dir, f"{method}{rank}", "checkpoint.pt"), weights_only=False) \
            if rank == 0 else None
        results[method] = (r.param_norm, r.curve, r.state, r.step_tokens, ckpt and ckpt["stats"])
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
    for method in ("sec", "knapsack_rl"):
        assert ranks[0][method][:4] == ranks[1][method][:4], method  # weights, curve, state, token counts
        stats = ranks[0][method][4]
        assert sum(len(h["rewards"]) for h in stats["history"].values()) > 0  # both ranks' rollouts recorded
    assert ranks[0]["sec"][2]["sec"]["updated"] == 3
    assert ranks[0]["stats"] == ranks[1]["stats"] and len(ranks[0]["stats"]["history"]) == B // G
    assert ranks[0]["state"] == ranks[1]["state"] == {"writer": 0}  # the state is rank 0's everywhere
