"""LPG-lite (GROOVE at CPU scale): the two checks of the spec on held-out grid levels, as a markdown results file.
A smoke-level result: there is no published number to match on a CPU.

    python benchmarks/lpg_lite.py --meta-steps 300 --out benchmarks/results/groove-lpg-lite.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from offline_rl.meta.lpg import LPGConfig, lpg_lite_checks
from offline_rl.utils.io import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meta-steps", type=int, default=300)
    parser.add_argument("--levels", type=int, default=32)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    c = LPGConfig()
    start = time.perf_counter()
    command = "python benchmarks/lpg_lite.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = ["# LPG-lite: GROOVE's learned policy gradient on tabular grid levels (smoke level)", "",
             f"{c.num_agents} tabular agents on 5×5 to 7×7 grid levels (two terminal objects, horizon {c.horizon}), "
             f"K = {c.num_agent_updates} unrolled SGD updates per meta-step, lifetime {c.lifetime} updates, GRU width "
             f"{c.gru_width}, {args.meta_steps} meta-steps per run (`offline_rl.meta.lpg`). Returns are exact "
             f"discounted values (γ = {c.discount}) of agents trained for one lifetime on {args.levels} held-out "
             "levels; regret = V* − R. Uniform = domain randomisation; GROOVE = PLR scored by algorithmic regret "
             "against a tabular A2C. No published number is matched: this is a smoke test of the two checks.", "",
             "| seed | return: initial rule | learned (uniform) | learned (GROOVE) | worst regret: initial | uniform "
             "| GROOVE | mean regret: uniform | GROOVE | check 1 | check 2 | meta-train s (uniform, GROOVE) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed in map(int, args.seeds.split(",")):
        r = lpg_lite_checks(args.meta_steps, args.levels, seed, c)
        check1 = r["return_uniform"] > r["return_initial"]
        check2 = r["worst_regret_groove"] < r["worst_regret_uniform"]
        lines.append(f"| {seed} | {r['return_initial']:.3f} | {r['return_uniform']:.3f} | {r['return_groove']:.3f} "
                     f"| {r['worst_regret_initial']:.3f} | {r['worst_regret_uniform']:.3f} "
                     f"| {r['worst_regret_groove']:.3f} | {r['mean_regret_uniform']:.3f} "
                     f"| {r['mean_regret_groove']:.3f} | {'pass' if check1 else 'FAIL'} | {'pass' if check2 else 'FAIL'} "
                     f"| {r['seconds_uniform']:.0f}, {r['seconds_groove']:.0f} |")
        print(lines[-1], flush=True)
    wall = time.perf_counter() - start
    lines += ["", "Check 1: the learned rule's agents beat the initial rule's (mean return). Check 2: GROOVE's "
              "worst-level regret is below uniform sampling's.", "",
              f"Command: `{command}`; wall time {wall / 60:.1f} min on 2 CPU cores shared with other jobs.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
