"""HDPO on the one-store lost-sales grid (Zipkin 2008: L ∈ {1, 2, 3, 4} × p ∈ {4, 9, 19, 39}): test cost against the
DP optimum per cell, written as a markdown results file.

    python benchmarks/hdpo_grid.py --steps 1500 --out benchmarks/results/hdpo-lost-sales.md

The optimum of each cell is computed by this toolkit's DP (`offline_rl.envs.inventory.lost_sales_dp`), L = 4
included (`--table-l4` takes the tabulated constants instead). Training and test sizes are flags; the defaults are
the CPU setup of the spec (batch 1024, T = 50, Adam 3e-3, test 4096 × 3000 periods dropping the first 1000, orders
rounded) on HDPO's network ([32, 32, 32], ELU, softplus(x + 1)) and 32,768 fixed training scenarios.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from offline_rl.algos.hdpo import train_hdpo
from offline_rl.envs.inventory.oracles import LOST_SALES_DP_TABLE, LOST_SALES_L, LOST_SALES_P, lost_sales_dp
from offline_rl.utils.io import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--n-scenarios", type=int, default=32768)
    parser.add_argument("--test-scenarios", type=int, default=4096)
    parser.add_argument("--test-periods", type=int, default=3000)
    parser.add_argument("--test-ignore", type=int, default=1000)
    parser.add_argument("--lead-times", default=",".join(map(str, LOST_SALES_L)))
    parser.add_argument("--ps", default=",".join(f"{p:g}" for p in LOST_SALES_P))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table-l4", action="store_true", help="L = 4 optimum from the table, not the DP")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows, dp_seconds = [], {}
    for lead_time in map(int, args.lead_times.split(",")):
        for p in map(float, args.ps.split(",")):
            if lead_time == 4 and args.table_l4:
                opt, how = LOST_SALES_DP_TABLE[(lead_time, p)], "table"
            else:
                dp = lost_sales_dp(lead_time, p)
                opt, how = dp.cost, "DP"
                dp_seconds[(lead_time, p)] = dp.seconds
            run = train_hdpo({"lead_time": lead_time, "p": p, "batch_size": args.batch_size, "lr": args.lr,
                              "n_scenarios": args.n_scenarios, "test_scenarios": args.test_scenarios,
                              "test_periods": args.test_periods, "test_ignore_periods": args.test_ignore},
                             steps=args.steps, seed=args.seed)
            gap = 100 * (run.test_cost - opt) / opt
            rows.append((lead_time, p, opt, how, run.test_cost, run.test_stderr, gap, run.train_seconds))
            print(f"L={lead_time} p={p:g}: optimum {opt:.3f} ({how}), HDPO {run.test_cost:.3f} ± {run.test_stderr:.3f}"
                  f", gap {gap:.2f} %, {run.train_seconds:.0f} s", flush=True)
    wall = time.perf_counter() - start
    text = report(rows, dp_seconds, wall, args)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)


def report(rows: list[tuple], dp_seconds: dict, wall: float, args: argparse.Namespace) -> str:
    gaps = [r[6] for r in rows]
    command = "python benchmarks/hdpo_grid.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# HDPO on the one-store lost-sales grid (Zipkin 2008, Table 3)",
        "",
        f"Command: `{command}` (wall time {wall / 60:.1f} min on 2 CPU cores shared with other jobs, one torch "
        "thread). Demand Poisson(5), h = 1; the optimum of each cell is this toolkit's relative value iteration "
        "with HDPO's timing (`offline_rl.envs.inventory.lost_sales_dp`).",
        "",
        f"Training: {args.steps} Adam steps (lr {args.lr:g}), batch {args.batch_size} of {args.n_scenarios} fixed "
        "scenarios × 50 periods, HDPO's vanilla network ([32, 32, 32], ELU, softplus(x + 1)). Test: fresh "
        f"{args.test_scenarios} scenarios × {args.test_periods} periods, the first {args.test_ignore} dropped, orders "
        "rounded to integers.",
        "",
        "| L | p | optimum | HDPO test cost (± s.e.) | gap % | training s |",
        "|---|---|---|---|---|---|",
    ]
    for lead_time, p, opt, how, cost, se, gap, secs in rows:
        lines.append(f"| {lead_time} | {p:g} | {opt:.3f}{'' if how == 'DP' else ' (table)'} | {cost:.3f} ± {se:.3f} "
                     f"| {gap:.2f} | {secs:.0f} |")
    lines += [
        "",
        f"Mean gap {sum(gaps) / len(gaps):.2f} %, max {max(gaps):.2f} %, {sum(g < 0.35 for g in gaps)} of "
        f"{len(gaps)} cells under the paper's 0.35 % (v2) and {sum(g < 0.25 for g in gaps)} under the 0.25 % "
        "\"solved\" mark of the v3 co-author's fork. A negative gap is Monte Carlo error of the test cost "
        "(its standard error is in the table).",
    ]
    if dp_seconds:
        lines += ["", "DP time per cell (s): " + ", ".join(f"L={k[0]} p={k[1]:g}: {v:.2f}"
                                                            for k, v in dp_seconds.items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
