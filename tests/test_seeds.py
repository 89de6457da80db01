"""Many seeds in one process: a seed of the batch matches the same seed trained alone; per-seed folders, resume,
divergence, and the CLI and the benchmark runner on top."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import cli

from offline_rl import algos
from offline_rl.data import load_dataset
from offline_rl.training import train
from offline_rl.training.seeding import seed_everything
from offline_rl.training.seeds import SeedBatch, fresh_instances, train_seeds
from offline_rl.utils.io import read_json

SMALL = {
    "bc": {"hidden": [32, 32]},
    "td3_bc": {"actor_hidden": [32, 32], "critic_hidden": [32, 32]},
    "iql": {"hidden": [32, 32]},
    "prdc": {"actor_hidden": [32, 32], "critic_hidden": [32, 32]},
    "a2pr": {"actor_hidden": [32, 32], "critic_hidden": [32, 32], "value_hidden": [32, 32], "vae_hidden": [32, 32]},
    "odice": {"hidden": [32, 32], "policy_hidden": [32, 32]},
}
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def data():
    return load_dataset("pendulum-medium")


def maker(name: str, data, **extra):
    cls = algos.get(name)
    config = algos.build_config(cls, {**algos.load_preset(cls.name, data.name, data.family), **SMALL[name], **extra})
    return lambda: cls(data.spec, config, "cpu")


def alone(make, data, seed: int, steps: int):
    """The single-seed run: seed everything, build, prepare, and update on the seed's own sampler."""
    seed_everything(seed)
    algo = make()
    algo.configure_schedule(steps)
    algo.prepare(data)
    sampler = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        algo.update(data.sample(algo.config.batch_size, sampler), step)
    return algo


@pytest.mark.parametrize("name", ["td3_bc", "iql", "prdc", "a2pr", "odice", "bc"])
def test_a_seed_in_the_batch_is_the_seed_trained_alone(name, data):
    make, steps = maker(name, data, batch_size=64), 100
    results = train_seeds(make, data, steps, SEEDS, eval_every=0, eval_episodes=0)
    assert [r.seed for r in results] == SEEDS and all(r.status == "completed" for r in results)
    batched = _batched_states(make, data, steps)
    for i, seed in enumerate(SEEDS):
        single = alone(make, data, seed, steps).state_dict()["modules"]
        for key, value in single.items():
            torch.testing.assert_close(batched[i][key], value, rtol=1e-4, atol=1e-5, msg=f"{name} seed {seed} {key}")
    different = [batched[0][k] for k in batched[0] if k.endswith("weight")][0]
    assert not torch.allclose(different, [batched[1][k] for k in batched[1] if k.endswith("weight")][0])


def _batched_states(make, data, steps):
    """Drive a SeedBatch by hand (as train_seeds does) and return each seed's module state."""
    from offline_rl.data.dataset import Batch

    instances, noise_states = fresh_instances(make, SEEDS)
    for algo in instances:
        algo.configure_schedule(steps)
    instances[0].prepare(data)
    for algo in instances[1:]:
        for key, buf in instances[0].named_buffers():
            dict(algo.named_buffers())[key].copy_(buf)
    samplers = [torch.Generator().manual_seed(s) for s in SEEDS]
    noise = []
    for state in noise_states:
        g = torch.Generator()
        g.set_state(state)
        noise.append(g)
    batch = SeedBatch(instances, steps)
    b = instances[0].config.batch_size
    for step in range(1, steps + 1):
        parts = [data.sample(b, g) for g in samplers]
        stacked = Batch(*(torch.stack(p) for p in zip(*parts, strict=True)))
        shapes = batch.carrier.noise_shapes(b, step)
        draws = [{k: torch.randn(shape, generator=g) for k, shape in shapes.items()} for g in noise]
        batch.update(stacked, {k: torch.stack([d[k] for d in draws]) for k in shapes}, step)
    return [batch.seed_state(i)["modules"] for i in range(len(SEEDS))]


def test_seed_folders_are_single_seed_runs_and_the_batch_resumes(tmp_path, data):
    make = maker("td3_bc", data)
    out = tmp_path / "cell"
    results = train_seeds(make, data, 200, [3, 5], eval_every=100, eval_episodes=2, out_dir=out)
    for seed, result in zip((3, 5), results, strict=True):
        folder = out / f"seed{seed}"
        record = read_json(folder / "result.json")
        assert record["seed"] == seed and record["status"] == "completed" and len(record["curve"]) == 2
        assert record == json.loads(json.dumps(result.to_dict())) | {"wall_time_s": record["wall_time_s"]}
        # The same seed trained alone in a folder of its own has the same fingerprint and curve.
        seed_everything(seed)
        single = train(make(), data, 200, seed, eval_every=100, eval_episodes=2, out_dir=tmp_path / f"alone{seed}")
        assert single.fingerprint == record["fingerprint"]
        for (s1, _, ret1), (s2, _, ret2) in zip(single.curve, record["curve"], strict=True):
            assert s1 == s2 and ret1 == pytest.approx(ret2, rel=1e-3)
    # Finished seeds are kept; a batch stopped after its first checkpoint resumes to the same result.
    again = train_seeds(make, data, 200, [3, 5], eval_every=100, eval_episodes=2, out_dir=out, resume=True)
    assert [r.curve for r in again] == [r.curve for r in results]
    _interrupt_after_first_checkpoint(make, data, tmp_path / "killed")
    resumed = train_seeds(make, data, 200, [3, 5], eval_every=100, eval_episodes=2, out_dir=tmp_path / "killed",
                          resume=True)
    assert [r.curve for r in resumed] == [r.curve for r in results]


def _interrupt_after_first_checkpoint(make, data, out):
    """A batch stopped by Ctrl-C right after its first checkpoint (step 100 of 200)."""
    from offline_rl.training import trainer

    original = trainer.sync_point
    calls = {"n": 0}

    def stop_after_first(*args, **kwargs):
        ok = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # both seeds synced at step 100
            raise KeyboardInterrupt
        return ok

    import offline_rl.training.seeds as seeds_module

    seeds_module.sync_point = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            train_seeds(make, data, 200, [3, 5], eval_every=100, eval_episodes=2, out_dir=out)
    finally:
        seeds_module.sync_point = original
    assert read_json(out / "seed3/result.json")["status"] == "interrupted"


def test_a_diverging_seed_is_marked_and_the_others_go_on(tmp_path, data):
    """Seed 1 starts with a NaN critic weight; seeds 0 and 2 finish as they would alone."""
    make = maker("td3_bc", data)
    built = {"n": 0}

    def factory():  # train_seeds builds a probe, then the seeds' instances: the third build is seed 1's
        algo = make()
        built["n"] += 1
        if built["n"] == 3:
            with torch.no_grad():
                algo.critic.qs.net[0].weight[0, 0, 0] = float("nan")
        return algo

    results = train_seeds(factory, data, 300, SEEDS, eval_every=100, eval_episodes=1, out_dir=tmp_path / "cell",
                          log_every=50)
    statuses = [r.status for r in results]
    assert statuses == ["completed", "diverged", "completed"]
    assert read_json(tmp_path / "cell/seed1/result.json")["status"] == "diverged"
    seed_everything(2)
    alone2 = train(make(), data, 300, 2, eval_every=100, eval_episodes=1)
    assert [p[2] for p in alone2.curve] == pytest.approx([p[2] for p in results[2].curve], rel=1e-3)


def test_cli_seeds_write_one_folder_per_seed(tmp_path):
    out = tmp_path / "run"
    proc = cli("train", "--algo", "bc", "--dataset", "pendulum-medium", "--steps", "100", "--eval-every", "100",
               "--eval-episodes", "1", "--seeds", "0,1,2", "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads((out / f"seed{s}/result.json").read_text())["seed"] for s in (0, 1, 2)] == [0, 1, 2]
    assert proc.stdout.count("completed") == 3
    evaluated = cli("evaluate", str(out / "seed1"), "--json")
    assert evaluated.returncode == 0 and json.loads(evaluated.stdout)["seed"] == 101
    bad = cli("train", "--algo", "bc", "--dataset", "pendulum-medium", "--seeds", "0,x")
    assert bad.returncode == 2 and "--seeds" in bad.stderr


def test_the_python_api_takes_seeds(tmp_path, data):
    import offline_rl as orl

    algo = orl.make_algo("bc", data.spec, SMALL["bc"], dataset=data)
    results = orl.train(algo, data, steps=50, eval_every=50, eval_episodes=1, out_dir=tmp_path, seeds=[4, 7])
    assert [r.seed for r in results] == [4, 7] and [r.status for r in results] == ["completed", "completed"]
    assert read_json(tmp_path / "seed7/result.json")["seed"] == 7
    seed_everything(7)
    alone7 = orl.train(orl.make_algo("bc", data.spec, SMALL["bc"], dataset=data), data, steps=50, seed=7,
                       eval_every=50, eval_episodes=1)
    assert alone7.curve[0][2] == pytest.approx(results[1].curve[0][2], rel=1e-4)


@pytest.mark.parametrize("name", ["td3_bc", "prdc", "a2pr"])
def test_the_loop_mode_is_bit_equal_to_single_seed_runs(name, data, tmp_path):
    """`mode="loop"` (chosen on a CPU for wide networks) updates plain instances, each on its own noise stream: the
    checkpoints equal those of the seeds trained alone, bit for bit."""
    make = maker(name, data, batch_size=64)
    train_seeds(make, data, 40, [0, 1], eval_every=0, eval_episodes=0, out_dir=tmp_path / "loop", mode="loop")
    for seed in (0, 1):
        seed_everything(seed)
        train(make(), data, 40, seed, eval_every=0, eval_episodes=0, out_dir=tmp_path / f"alone{seed}")
        batched = torch.load(tmp_path / f"loop/seed{seed}/checkpoint.pt", weights_only=False)["algo"]["modules"]
        single = torch.load(tmp_path / f"alone{seed}/checkpoint.pt", weights_only=False)["algo"]["modules"]
        assert all(torch.equal(batched[k], v) for k, v in single.items()), (name, seed)


def test_the_mode_is_chosen_by_size_on_a_cpu(data):
    from offline_rl.training.seeds import VECTORISE_CPU_PARAMS, choose_mode

    small, wide = maker("td3_bc", data)(), algos.make("td3_bc", data.spec, {})
    assert sum(p.numel() for p in small.parameters() if p.requires_grad) <= VECTORISE_CPU_PARAMS
    assert (choose_mode(small), choose_mode(wide), choose_mode(wide, "vmap")) == ("vmap", "loop", "vmap")
    with pytest.raises(Exception, match="seed mode must be"):
        choose_mode(small, "threads")
