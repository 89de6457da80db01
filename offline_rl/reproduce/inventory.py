"""`offline-rl reproduce hdpo`: the inventory oracles against the published tables, base-stock at S* against the
closed form, and HDPO's test cost against the known optimum (the DP, L = 4 from the table constants)."""

from __future__ import annotations

import math

from offline_rl.reproduce import Row, register_entry, row


@register_entry("hdpo", "HDPO and the inventory suite: gap to the DP / closed-form optimum (Zipkin 2008)")
def hdpo(quick: bool) -> list[Row]:
    import torch

    from offline_rl.algos.hdpo import train_hdpo
    from offline_rl.envs.inventory import (
        LOST_SALES_DP_TABLE,
        OneStore,
        backlogged_base_stock_level,
        backlogged_optimum,
        lost_sales_dp,
        rollout,
    )
    from offline_rl.nets.order_heads import BaseStockHead

    torch.set_num_threads(1)
    rows = []
    for lead_time in (1, 2, 3) if quick else (1, 2, 3, 4):
        for p in (4.0, 9.0, 19.0, 39.0):
            rows.append(row(f"lost sales DP L={lead_time} p={p:g}", "optimal cost (3 decimals)",
                            lost_sales_dp(lead_time, p).cost, LOST_SALES_DP_TABLE[(lead_time, p)], 5e-4))
    for lead_time, p in ((1, 4.0), (4, 39.0)):
        env = OneStore(lead_time, p, lost_sales=False, demand="normal")
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            costs = rollout(env, BaseStockHead(backlogged_base_stock_level(lead_time, p)),
                            torch.full((2000, lead_time), 5.0), env.sample_demands(2000, 400, generator))
        per_scenario = costs[:, 50:].mean(1)
        se = float(per_scenario.std()) / math.sqrt(len(per_scenario))
        rows.append(row(f"backlogged base-stock S* L={lead_time} p={p:g}", "cost vs closed form (4 s.e.)",
                        float(per_scenario.mean()), backlogged_optimum(lead_time, p), 4 * se))
    if quick:  # the spec's CI tier: two instances, ~500 steps, gap < 2 %
        cells, steps, tol, sizes = ((1, 4.0), (2, 9.0)), 500, 0.02, {"n_scenarios": 8192, "test_scenarios": 2048,
                                                                      "test_periods": 1500, "test_ignore_periods": 500}
    else:  # the nightly tier: the 16-cell grid, gap < 0.5 %
        cells, steps, tol, sizes = [(lt, p) for lt in (1, 2, 3, 4) for p in (4.0, 9.0, 19.0, 39.0)], 1500, 0.005, {}
    for lead_time, p in cells:
        run = train_hdpo({"lead_time": lead_time, "p": p, **sizes}, steps=steps, seed=0)
        rows.append(row(f"HDPO lost sales L={lead_time} p={p:g}", f"test cost ({steps} steps, gap < {100 * tol:g}%)",
                        run.test_cost, run.optimum, tol, relative=True))
    return rows
