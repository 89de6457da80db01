"""TD3+BC (Fujimoto & Gu, "A Minimalist Approach to Offline RL", 2021).

    critic:  y = r + γ(1 − d) min_i Q_i,targ(s′, π_targ(s′) + clip(ε, −c, c)),   L_Q = Σ_i MSE(Q_i(s, a), y)
    actor:   every `policy_freq` steps,  L_π = −λ·mean Q₁(s, π(s)) + MSE(π(s), a),   λ = α / mean|Q₁| (detached)

States are z-scored with dataset statistics (eps 1e-3); rewards are used as they are.
"""

from offline_rl.algos.base import register
from offline_rl.algos.core import TD3BCBase, TD3BCConfig


@register("td3_bc")
class TD3BC(TD3BCBase):
    """Plain TD3+BC: the behaviour-cloning target is the dataset action with weight 1."""

    Config = TD3BCConfig
    graph_safe = True
