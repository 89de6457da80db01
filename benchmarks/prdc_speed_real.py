"""PRDC's nearest-neighbour cost on real data: PRDC against TD3+BC updates per second, in the same run, on a
generated dataset, starting from both algorithms' trained checkpoints (for example those of the hopper-research
suite), so that the PRDC queries (β·s, π(s)) come from a trained actor. torch runs on one thread. PRDC runs twice,
sharing one index: `prdc` searches inline (one core in all, the strict comparison) and `prdc[overlap]` searches on a
second thread during the critic step (`nn_overlap`, the default). The contenders alternate in blocks of updates.
Prints the search time per update and the tree fallbacks per query: the keys that the exact neighbour cache cannot
certify and that go to the cKDTree.

    python benchmarks/prdc_speed_real.py [--dataset hopper-medium] [--results results/hopper-research] [--seed 0]
                                         [--steps 300] [--block 50] [--rounds 6]

`benchmarks/prdc_speed.py` measures the same on a synthetic hopper-shaped dataset.
"""

from __future__ import annotations

import argparse
import time

import torch

from offline_rl import algos, load_dataset
from offline_rl.algos.core import TD3BCBase
from offline_rl.training.checkpoint import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="hopper-medium")
    parser.add_argument("--results", default="results/hopper-research", help="suite results folder with checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300, help="updates per algorithm per round")
    parser.add_argument("--block", type=int, default=50, help="updates per turn: the contenders alternate in blocks")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    # PRDC twice, sharing one index: the search inline (one core in all) and overlapped with the critic step.
    setups = {"td3_bc": ("td3_bc", {}), "prdc": ("prdc", {"nn_overlap": False}),
              "prdc[overlap]": ("prdc", {"nn_overlap": True})}
    contenders = {}
    for label, (name, overrides) in setups.items():
        algo = algos.make(name, data.spec, overrides, dataset=data, seed=0)
        start = time.perf_counter()
        if label == "prdc[overlap]":
            TD3BCBase.prepare(algo, data)  # the normaliser; the index is shared
            algo.search = contenders["prdc"][0].search
        else:
            algo.prepare(data)
        if label == "prdc":
            print(f"PRDC index build: {time.perf_counter() - start:.1f} s ({len(data):,} transitions)", flush=True)
        state = load_checkpoint(f"{args.results}/{name}/{args.dataset}/seed{args.seed}/checkpoint.pt", "cpu")
        algo.load_state_dict(state["algo"])
        contenders[label] = (algo, state["step"])
    search = contenders["prdc"][0].search
    search_time = [0.0]
    query = search.query

    def timed_query(keys: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        result = query(keys, k)
        search_time[0] += time.perf_counter() - start
        return result

    search.query = timed_query
    generator = torch.Generator().manual_seed(0)
    totals = {label: 0.0 for label in contenders}
    for r in range(args.rounds):
        seconds, fallbacks, search_time[0] = {label: 0.0 for label in contenders}, [], 0.0
        for block in range(0, args.steps, args.block):
            for label, (algo, step0) in contenders.items():
                first = step0 + 1 + r * args.steps + block
                start = time.perf_counter()
                for step in range(first, first + min(args.block, args.steps - block)):
                    algo.update(data.sample(256, generator), step)
                    if algo.name == "prdc" and step % algo.config.policy_freq == 0:
                        fallbacks.append(search.last_fallback)
                seconds[label] += time.perf_counter() - start
        for label in contenders:
            totals[label] += seconds[label]
        search_ms = 1e3 * search_time[0] / (2 * args.steps)  # both PRDC contenders searched
        print(f"round {r}: " + ", ".join(f"{label} {args.steps / t:.1f}" for label, t in seconds.items())
              + f" upd/s; step time / TD3+BC's: prdc {seconds['prdc'] / seconds['td3_bc']:.2f}, prdc[overlap] "
              f"{seconds['prdc[overlap]'] / seconds['td3_bc']:.2f}; search {search_ms:.2f} ms per update = "
              f"{search_ms * args.steps / 1e3 / seconds['td3_bc']:.0%} of TD3+BC's step; tree fallbacks per query "
              f"{sum(fallbacks) / len(fallbacks):.1f} of 256", flush=True)
    steps = args.rounds * args.steps
    print("all rounds: " + ", ".join(f"{label} {steps / t:.1f}" for label, t in totals.items()) + " upd/s; step time "
          f"/ TD3+BC's: prdc {totals['prdc'] / totals['td3_bc']:.2f}, prdc[overlap] "
          f"{totals['prdc[overlap]'] / totals['td3_bc']:.2f}")


if __name__ == "__main__":
    main()
