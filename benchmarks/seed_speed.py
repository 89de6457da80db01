"""Seeds trained at once (`offline_rl.training.seeds.SeedBatch`) against the same seeds trained one after the other.

Prints seed-updates per second of S seeds vectorised (one batched update per step, every phase under torch.vmap)
and of S single-seed instances updated in turn, measured in alternating blocks of the same run, and their ratio.
Both sides draw one batch per seed per step from the same dataset.

    python benchmarks/seed_speed.py                          # TD3+BC and IQL, 5 seeds, 256-256 and 64-64 networks
    python benchmarks/seed_speed.py --device cuda --algos td3_bc,iql,prdc --seeds 5
"""

from __future__ import annotations

import argparse
import time

import torch

from offline_rl import algos
from offline_rl.data import load_dataset
from offline_rl.data.dataset import Batch
from offline_rl.training.seeds import SeedBatch, fresh_instances

WIDTHS = {"256": [256, 256], "128": [128, 128], "64": [64, 64]}
HIDDEN_KEYS = {"td3_bc": ("actor_hidden", "critic_hidden"), "prdc": ("actor_hidden", "critic_hidden"),
               "iql": ("hidden",), "bc": ("hidden",),
               "a2pr": ("actor_hidden", "critic_hidden", "value_hidden", "vae_hidden"),
               "odice": ("hidden", "policy_hidden")}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(name: str, width: list[int], data, n_seeds: int, steps: int, rounds: int, device: torch.device):
    cls = algos.get(name)
    config = algos.build_config(cls, {k: width for k in HIDDEN_KEYS[name]})

    def make():
        return cls(data.spec, config, device).to(device)

    seeds = list(range(n_seeds))
    singles, _ = fresh_instances(make, seeds)
    batched, noise_states = fresh_instances(make, seeds)
    for algo in singles + batched:
        algo.configure_schedule(10**6)
    for algo in singles:
        algo.prepare(data)
    batched[0].prepare(data)
    batch = SeedBatch(batched, 10**6)
    b = config.batch_size
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    noise = [torch.Generator(device=device).manual_seed(100 + s) for s in seeds]
    step = {"single": 0, "batched": 0}

    def run_single(n: int) -> None:
        for _ in range(n):
            step["single"] += 1
            for algo, g in zip(singles, gens, strict=True):
                algo.update(data.sample(b, g), step["single"])

    def run_batched(n: int) -> None:
        for _ in range(n):
            step["batched"] += 1
            parts = [data.sample(b, g) for g in gens]
            stacked = Batch(*(torch.stack(p) for p in zip(*parts, strict=True)))
            shapes = batch.carrier.noise_shapes(b, step["batched"])
            draws = [{k: torch.randn(s, generator=g, device=device) for k, s in shapes.items()} for g in noise]
            batch.update(stacked, {k: torch.stack([d[k] for d in draws]) for k in shapes}, step["batched"])

    run_single(10)
    run_batched(10)  # warm-up
    times = {"single": 0.0, "batched": 0.0}
    for _ in range(rounds):
        for label, fn in (("single", run_single), ("batched", run_batched)):
            sync(device)
            t = time.perf_counter()
            fn(steps)
            sync(device)
            times[label] += time.perf_counter() - t
    total = n_seeds * steps * rounds
    return total / times["single"], total / times["batched"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="td3_bc,iql")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--widths", default="256,64")
    parser.add_argument("--steps", type=int, default=50, help="updates per block")
    parser.add_argument("--rounds", type=int, default=4, help="alternating blocks per side")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_dataset("pendulum-medium", device=str(device))
    print(f"{args.seeds} seeds on {device} ({args.threads} thread(s)), pendulum-medium, batch 256, "
          f"{args.rounds} alternating blocks of {args.steps} updates per side")
    print(f"{'algo':<8} {'width':>6} {'sequential seed-upd/s':>22} {'vectorised seed-upd/s':>22} {'ratio':>7}")
    for name in args.algos.split(","):
        for width in args.widths.split(","):
            single, batched = measure(name, WIDTHS[width], data, args.seeds, args.steps, args.rounds, device)
            print(f"{name:<8} {width:>6} {single:>22.0f} {batched:>22.0f} {batched / single:>6.2f}x", flush=True)


if __name__ == "__main__":
    main()
