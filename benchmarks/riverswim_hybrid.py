"""Tan, Fan & Wei's comparison on RiverSwim (6 states, H = 20): cumulative regret against V* (exact, by DP) of the
online-only optimistic, hybrid non-optimistic and offline-only pessimistic tabular actor-critics, over the number of
offline episodes, with good coverage and in the coverage ablation (data that never reaches the last state).

    python benchmarks/riverswim_hybrid.py --out benchmarks/results/riverswim-hybrid.md
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from offline_rl.algos.hybrid_ac import HybridACConfig, compare
from offline_rl.envs.riverswim import RiverSwim, concentrability, optimal_q, sample_episodes, swim_behaviour
from offline_rl.utils.io import atomic_write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--n-offline", default="10,30,100,300")
    parser.add_argument("--right-prob", type=float, default=0.7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    mdp = RiverSwim()
    cfg = HybridACConfig()
    checkpoints = [k for k in (10, 30, 100, 300, 1000) if k <= args.episodes]
    coverages = {"good coverage": swim_behaviour(mdp, args.right_prob),
                 "ablation (never reaches state 5)": swim_behaviour(mdp, args.right_prob, max_state=mdp.n_states - 2)}
    command = "python benchmarks/riverswim_hybrid.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = ["# Hybrid actor-critic on RiverSwim: regret against V*", "",
             f"RiverSwim with {mdp.n_states} states, horizon {mdp.horizon}, V*_0 = {optimal_q(mdp)[1][0, 0]:.4f} "
             f"(DP). Tabular agents of `offline_rl.algos.hybrid_ac` (η = {cfg.eta:g}, bonus c = {cfg.bonus:g}, rare "
             f"switching). Offline data: episodes of a swimmer going right w.p. {args.right_prob:g}. Regret: "
             f"Σ_k V*_0 − V^{{π_k}}_0, each value exact; the mean over {args.seeds} seeds. C*: the data's empirical "
             "single-policy concentrability (median over seeds; ∞ when the optimal path is missing).", ""]
    header = "| data | N_off | C* | agent | " + " | ".join(f"regret @ {k}" for k in checkpoints) + " |"
    lines += [header, "|" + "---|" * (4 + len(checkpoints))]
    for label, behaviour in coverages.items():
        for n_off in map(int, args.n_offline.split(",")):
            c_star = np.median([concentrability(mdp, sample_episodes(mdp, behaviour, n_off,
                                                                     np.random.default_rng(s))[:, 1:3].astype(int))
                                for s in range(args.seeds)])
            curves = compare(mdp, behaviour, n_off, args.episodes, args.seeds, cfg)
            for agent, curve in curves.items():
                if agent.startswith("online") and n_off != int(args.n_offline.split(",")[0]):
                    continue  # the online-only agent ignores the offline data: one row per data kind
                cells = " | ".join(f"{curve[k - 1]:.1f}" for k in checkpoints)
                shown_n = "–" if agent.startswith("online") else str(n_off)
                lines.append(f"| {label} | {shown_n} | {'–' if agent.startswith('online') else f'{c_star:.1f}'} "
                             f"| {agent} | {cells} |")
            print(lines[-1], flush=True)
    wall = time.perf_counter() - start
    lines += ["", f"Command: `{command}`; wall time {wall:.0f} s on 2 CPU cores shared with other jobs.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
