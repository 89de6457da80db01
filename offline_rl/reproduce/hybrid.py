"""`offline-rl reproduce riverswim`: V* of RiverSwim by DP against Monte Carlo, and the regret comparison of Tan, Fan
& Wei's tabular actor-critics (online-only optimistic, hybrid non-optimistic, offline-only pessimistic)."""

from __future__ import annotations

import math

import numpy as np

from offline_rl.reproduce import Row, register_entry, row


def _at_most(case: str, metric: str, ours: float, reference: float) -> Row:
    """A row that passes when ours ≤ reference (gap = ours − reference)."""
    return Row(case, metric, float(ours), float(reference), float(ours - reference), bool(ours <= reference))


@register_entry("riverswim", "hybrid actor-critic on RiverSwim: regret against V* (DP), coverage ablation")
def riverswim(quick: bool) -> list[Row]:
    from offline_rl.algos.hybrid_ac import compare
    from offline_rl.envs.riverswim import (
        RiverSwim,
        concentrability,
        greedy_policy,
        optimal_q,
        sample_episodes,
        swim_behaviour,
    )

    mdp = RiverSwim()
    seeds, episodes, n_off = (3, 300, 100) if quick else (20, 1000, 100)
    q, v = optimal_q(mdp)
    returns = sample_episodes(mdp, greedy_policy(q), 4000, np.random.default_rng(0))[:, 3].reshape(4000, -1).sum(1)
    rows = [row(f"RiverSwim S={mdp.n_states} H={mdp.horizon}", "V* (DP) vs MC return of π* (4 s.e.)",
                returns.mean(), v[0, mdp.start], 4 * returns.std() / math.sqrt(len(returns)))]
    good = swim_behaviour(mdp, 0.7)
    gap = swim_behaviour(mdp, 0.7, max_state=mdp.n_states - 2)
    curves = compare(mdp, good, n_off, episodes, seeds)
    online = curves["online-only optimistic"][-1]
    c_good = concentrability(mdp, sample_episodes(mdp, good, n_off, np.random.default_rng(0))[:, 1:3].astype(int))
    rows.append(_at_most(f"good coverage N_off={n_off} (C*={c_good:.1f}), {episodes} episodes",
                         "hybrid regret ≤ online-only", curves["hybrid non-optimistic"][-1], online))
    ablation = compare(mdp, gap, n_off, episodes, seeds)
    c_gap = concentrability(mdp, sample_episodes(mdp, gap, n_off, np.random.default_rng(0))[:, 1:3].astype(int))
    rows.append(Row(f"ablation N_off={n_off}: data never reaches state {mdp.n_states - 1}", "C* (∞: path missing)",
                    c_gap, math.inf, 0.0 if c_gap == math.inf else math.inf, c_gap == math.inf))
    rows.append(_at_most(f"ablation N_off={n_off}, {episodes} episodes", "hybrid regret ≤ offline-only",
                         ablation["hybrid non-optimistic"][-1], ablation["offline-only pessimistic"][-1]))
    return rows
