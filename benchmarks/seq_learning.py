"""Learning check of the sequence backend: GRPO beside three of the new methods on the tiny model, on a task where
GRPO's reward rises within a CPU budget.

The task is `levels` with categories 0 and 1 (the 10 one-digit copies and the 25 sums a + b with a, b <= 4: 35
problems, single-character answers). Every method shares the model, optimiser, group size, batch and steps; only
its own extension-point choices differ: SEC (curriculum over the two categories), VADE (Thompson sampling of
uncertain problems) and Knapsack RL (rollout budgets by success rate). The curve that compares them is the greedy
exact-match over the whole pool (in-sample: the question is whether each method learns the task, and the pool is
the same for every method); the training reward depends on which problems a sampler picks and is reported beside it.

    python benchmarks/seq_learning.py --out benchmarks/results/seq-learning   # writes .json and .md

The toolkit is used as a library (`offline_rl.seq.train`); the runs are sequential, one thread each.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ("grpo", "sec", "vade", "knapsack_rl")


def run(method: str, seed: int, args: argparse.Namespace) -> dict:
    import offline_rl.seq as seq

    t0 = time.perf_counter()
    r = seq.train(task="levels", task_options={"per_level": args.per_level, "levels": args.levels}, method=method,
                  seed=seed, steps=args.steps, group_size=args.group_size, prompts_per_step=args.prompts,
                  max_new_tokens=args.max_new_tokens, lr=args.lr, eval_every=args.eval_every, eval_problems=10**6,
                  eval_holdout=args.holdout, progress=False, log_every=10**9, save_model=False)
    return {"method": method, "seed": seed, "curve": r.curve, "eval_curve": r.eval_curve,
            "wall_s": time.perf_counter() - t0, "eval_split": r.eval_split, "pool": r.task["size"]}


def initial_exact_match(seed: int, args: argparse.Namespace) -> float:
    """The untrained model's greedy exact-match on the same problems (every method starts from it)."""
    from offline_rl.seq.tasks import make_task
    from offline_rl.seq.trainer import SeqConfig, build_policy, evaluate

    task = make_task("levels", seed=seed, per_level=args.per_level, levels=args.levels)
    model, tok = build_policy(SeqConfig(seed=seed), task)
    return evaluate(model, tok, task, 10**6, args.max_new_tokens, holdout=args.holdout)


def window_mean(curve: list[list[float]], start: int, end: int) -> float:
    return statistics.mean(v for s, v in curve if start <= s < end)


def table(results: list[dict], args: argparse.Namespace, initial: list[float]) -> str:
    evals = sorted({s for r in results for s, _ in r["eval_curve"]})
    lines = ["| method | step 0 | " + " | ".join(f"step {s + 1}" for s in evals) + " | train reward, first 25 steps "
             "| last 25 steps |", "|---" * (len(evals) + 4) + "|"]
    step0 = f"{statistics.mean(initial):.3f} ± {statistics.stdev(initial):.3f}"
    for m in METHODS:
        runs = [r for r in results if r["method"] == m]
        cells = []
        for s in evals:
            vals = [v for r in runs for st, v in r["eval_curve"] if st == s]
            cells.append(f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}")
        first = [window_mean(r["curve"], 0, 25) for r in runs]
        last = [window_mean(r["curve"], args.steps - 25, args.steps) for r in runs]
        lines.append(f"| {m} | {step0} | " + " | ".join(cells) + f" | {statistics.mean(first):.3f} | "
                     f"{statistics.mean(last):.3f} ± {statistics.stdev(last):.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--levels", default="01")
    p.add_argument("--per-level", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=1)
    p.add_argument("--holdout", type=float, default=0.0, help="0: evaluate on the whole pool (in-sample)")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--out", default=None, help="write OUT.json and OUT.md")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    results = []
    initial = [initial_exact_match(seed, args) for seed in range(args.seeds)]
    for seed in range(args.seeds):
        for m in METHODS:
            results.append(run(m, seed, args))
            print(f"{m:12} seed {seed}: exact-match {initial[seed]:.3f} -> {results[-1]['eval_curve'][-1][1]:.3f} "
                  f"({results[-1]['wall_s']:.0f} s)", flush=True)
    wall = time.perf_counter() - start
    md = table(results, args, initial)
    print(md)
    if args.out:
        cmd = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/seq_learning.py " + " ".join(sys.argv[1:])
        Path(args.out + ".json").write_text(json.dumps({"command": cmd, "args": vars(args), "wall_s": wall,
                                                        "initial_exact_match": initial, "runs": results}, indent=1))
        Path(args.out + ".md").write_text(
            f"# Sequence backend: learning check\n\n"
            f"`{cmd}` ({wall / 60:.1f} min wall on {platform.machine()} with {torch.get_num_threads()} torch thread, "
            f"a 2-core machine shared with other jobs, under `nice`).\n\n"
            f"Task `levels` (categories {args.levels}, per_level {args.per_level}: {results[0]['pool']} generated "
            f"problems, {args.max_new_tokens} new token(s)), the tiny random Llama, G = {args.group_size}, "
            f"{args.prompts} prompts per step, {args.steps} steps, lr {args.lr}, {args.seeds} seeds (mean ± std). "
            f"Columns: greedy exact-match over the evaluation problems ({results[0]['eval_split']}: 'train' is the "
            f"whole pool, in-sample; the same for every method) at the evaluation steps, then the mean training reward over the first and last 25 steps "
            f"(the problems each sampler picked).\n\n{md}\n")


if __name__ == "__main__":
    main()
