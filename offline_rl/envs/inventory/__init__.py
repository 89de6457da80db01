"""The inventory suite (HDPO's benchmark problems): differentiable torch simulators, their known optima and
gymnasium wrappers (`offline_rl/InventoryLostSales-v0`, `offline_rl/InventoryBacklogged-v0`,
`offline_rl/InventorySerial-v0`)."""

from offline_rl.envs.inventory.oracles import (
    LOST_SALES_DP_TABLE,
    ZIPKIN_TABLE,
    backlogged_base_stock_level,
    backlogged_optimum,
    lost_sales_dp,
    lost_sales_optimum,
)
from offline_rl.envs.inventory.simulators import DifferentiableEnv, OneStore, SerialSystem, rollout

__all__ = ["LOST_SALES_DP_TABLE", "ZIPKIN_TABLE", "DifferentiableEnv", "OneStore", "SerialSystem",
           "backlogged_base_stock_level", "backlogged_optimum", "lost_sales_dp", "lost_sales_optimum", "rollout"]
