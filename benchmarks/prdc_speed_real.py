"""PRDC's nearest-neighbour cost on real data: PRDC against TD3+BC updates per second, in the same run, on a
generated dataset, starting from both algorithms' trained checkpoints (for example those of the hopper-research
suite), so that the PRDC queries (β·s, π(s)) come from a trained actor. Prints the tree fallbacks per query: the
keys that the exact neighbour cache cannot certify and that go to the cKDTree.

    python benchmarks/prdc_speed_real.py [--dataset hopper-medium] [--results results/hopper-research] [--seed 0]
                                         [--steps 300] [--block 50] [--rounds 6]

`benchmarks/prdc_speed.py` measures the same on a synthetic hopper-shaped dataset.
"""

from __future__ import annotations

import argparse
import time

import torch

from offline_rl import algos, load_dataset
from offline_rl.training.checkpoint import load_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="hopper-medium")
    parser.add_argument("--results", default="results/hopper-research", help="suite results folder with checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300, help="updates per algorithm per round")
    parser.add_argument("--block", type=int, default=50, help="updates per turn: the algorithms alternate in blocks")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset)
    trained = {}
    for name in ("prdc", "td3_bc"):
        algo = algos.make(name, data.spec, {}, dataset=data, seed=0)
        start = time.perf_counter()
        algo.prepare(data)
        if name == "prdc":
            print(f"PRDC index build: {time.perf_counter() - start:.1f} s ({len(data):,} transitions)", flush=True)
        state = load_checkpoint(f"{args.results}/{name}/{args.dataset}/seed{args.seed}/checkpoint.pt", "cpu")
        algo.load_state_dict(state["algo"])
        trained[name] = (algo, state["step"])
    prdc = trained["prdc"][0]
    search_time = [0.0]
    query = prdc.search.query

    def timed_query(keys: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        result = query(keys, k)
        search_time[0] += time.perf_counter() - start
        return result

    prdc.search.query = timed_query
    generator = torch.Generator().manual_seed(0)
    totals = {name: 0.0 for name in trained}
    steps_done = 0
    for r in range(args.rounds):
        seconds, fallbacks, search_time[0] = {name: 0.0 for name in trained}, [], 0.0
        for block in range(0, args.steps, args.block):
            for name, (algo, step0) in trained.items():
                first = step0 + 1 + r * args.steps + block
                start = time.perf_counter()
                for step in range(first, first + min(args.block, args.steps - block)):
                    algo.update(data.sample(256, generator), step)
                    if algo is prdc and step % algo.config.policy_freq == 0:
                        fallbacks.append(prdc.search.last_fallback)
                seconds[name] += time.perf_counter() - start
        for name in trained:
            totals[name] += seconds[name]
        steps_done += args.steps
        print(f"round {r}: td3_bc {args.steps / seconds['td3_bc']:.1f} upd/s, prdc {args.steps / seconds['prdc']:.1f} "
              f"upd/s, PRDC step time / TD3+BC's {seconds['prdc'] / seconds['td3_bc']:.2f}, search "
              f"{1e3 * search_time[0] / args.steps:.2f} ms per update = {search_time[0] / seconds['td3_bc']:.0%} of "
              f"TD3+BC's step, tree fallbacks per query {sum(fallbacks) / len(fallbacks):.1f} of 256", flush=True)
    print(f"all rounds: td3_bc {steps_done / totals['td3_bc']:.1f} upd/s, prdc {steps_done / totals['prdc']:.1f} upd/s, "
          f"PRDC step time / TD3+BC's {totals['prdc'] / totals['td3_bc']:.2f}")


if __name__ == "__main__":
    main()
