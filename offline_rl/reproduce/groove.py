"""`offline-rl reproduce groove`: LPG-lite's two checks (a smoke-level result; GROOVE's published comparisons need
GPU-days and are not reproduced)."""

from __future__ import annotations

from offline_rl.reproduce import Row, register_entry


@register_entry("groove", "LPG-lite (GROOVE at CPU scale, smoke level): learned rule and regret-prioritised levels")
def groove(quick: bool) -> list[Row]:
    import torch

    from offline_rl.meta.lpg import lpg_lite_checks

    torch.set_num_threads(1)
    rows = []
    for seed in (0,) if quick else (0, 1, 2):  # 300 meta-steps: at 100, check 2 does not pass yet (the docs say why)
        r = lpg_lite_checks(300, n_levels=32, seed=seed)
        case = f"LPG-lite smoke seed={seed}, 300 meta-steps, 32 levels"
        rows += [
            Row(case, "mean return: learned > initial", r["return_uniform"], r["return_initial"],
                r["return_uniform"] - r["return_initial"], r["return_uniform"] > r["return_initial"]),
            Row(case, "worst regret: GROOVE < uniform", r["worst_regret_groove"], r["worst_regret_uniform"],
                r["worst_regret_groove"] - r["worst_regret_uniform"],
                r["worst_regret_groove"] < r["worst_regret_uniform"]),
        ]
    return rows
