"""The toolkit's own gymnasium environments, registered under the `offline_rl/` namespace on import.

| id | what | exact optimum |
|---|---|---|
| `offline_rl/CombinationLock-H<H>-v0` (H = 3, 5, 10, 20, 50) | HNPG's continuous combination lock (`envs.lock`) | return 1 |
| `offline_rl/CombinationLock-v0` | the same, `horizon` etc. as kwargs | return 1 |
| `offline_rl/LQR-v0` | discounted scalar LQR (γ = 0.8), 40-step episodes (`envs.lqr`) | Riccati J* |
| `offline_rl/BimodalBandit-v0` | one-step bandit with reward bumps at ±0.6 (`envs.bandits`) | return 1 |
| `offline_rl/ArmedBandit-v0` | 10-armed Gaussian bandit of the PROPS repository | arm 9 |
| `offline_rl/ThresholdStep-v0` | the policy-smoothing tightness case | Φ((c − B)/σ) |
| `offline_rl/MultiPathGrid-v0` | three equal-reward paths, 20-step limit (`envs.grid`); kwarg `random_block` | return 1 |
| `offline_rl/InventoryLostSales-v0`, `InventoryBacklogged-v0`, `InventorySerial-v0` | the inventory suite (`envs.inventory`) | DP / closed form |
| `offline_rl/RiverSwim-v0` | episodic RiverSwim (`envs.riverswim`) | V* by DP |
"""

from __future__ import annotations

import gymnasium as gym

NAMESPACE = "offline_rl"
LOCK_HORIZONS = (3, 5, 10, 20, 50)


def lock_id(horizon: int) -> str:
    """The registered id of the combination lock with horizon H (combination seed 0)."""
    return f"{NAMESPACE}/CombinationLock-H{horizon}-v0"


def register_envs() -> None:
    """Register every toolkit env once (idempotent)."""
    entries = {
        f"{NAMESPACE}/CombinationLock-v0": ("offline_rl.envs.lock:CombinationLock", None, {}),
        f"{NAMESPACE}/LQR-v0": ("offline_rl.envs.lqr:LQR", 40, {}),
        f"{NAMESPACE}/BimodalBandit-v0": ("offline_rl.envs.bandits:BimodalBandit", None, {}),
        f"{NAMESPACE}/ArmedBandit-v0": ("offline_rl.envs.bandits:ArmedBandit", None, {}),
        f"{NAMESPACE}/ThresholdStep-v0": ("offline_rl.envs.bandits:ThresholdStep", None, {}),
        f"{NAMESPACE}/MultiPathGrid-v0": ("offline_rl.envs.grid:MultiPathGrid", 20, {}),
        f"{NAMESPACE}/InventoryLostSales-v0": ("offline_rl.envs.inventory.gym_env:lost_sales_env", 50, {}),
        f"{NAMESPACE}/InventoryBacklogged-v0": ("offline_rl.envs.inventory.gym_env:backlogged_env", 50, {}),
        f"{NAMESPACE}/InventorySerial-v0": ("offline_rl.envs.inventory.gym_env:serial_env", 50, {}),
        f"{NAMESPACE}/RiverSwim-v0": ("offline_rl.envs.riverswim:RiverSwimEnv", 20, {}),
    }
    # The lock ends itself after H steps; no time limit, so its last (rewarded) transition is a termination.
    entries |= {lock_id(h): ("offline_rl.envs.lock:CombinationLock", None, {"horizon": h}) for h in LOCK_HORIZONS}
    for env_id, (entry_point, max_steps, kwargs) in entries.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry_point, max_episode_steps=max_steps, kwargs=kwargs,
                         disable_env_checker=True)
