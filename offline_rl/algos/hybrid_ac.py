"""The tabular actor-critic of Tan, Fan & Wei, "Actor-Critics Can Achieve Optimal Sample Efficiency" (ICML 2025,
arXiv 2505.03710), in its online-optimistic, hybrid and offline-pessimistic forms, for finite-horizon tabular MDPs.

    actor (mirror descent / NPG over a softmax policy):  π_{k+1}(a | h, s) ∝ π_k(a | h, s)·exp(η·f(h, s, a))
    critic (off-policy, towards Q*): fitted Q iteration on every transition so far, offline ones included; with a
    table as the function class, fitted Q iteration is backward induction on the empirical model
        f(h, s, a) = clip(r̂(s, a) + P̂(·|s, a)·max_a′ f(h + 1, ·, a′) + σ·b_h(s, a), 0, H − h)
        b_h(s, a) = c·(H − h)/√N(s, a)          (Hoeffding-style count bonus)
    σ = +1 "optimistic" (GOLF-style optimism; an unseen pair is worth H − h), 0 "hybrid" (non-optimistic, the
    critic initialised from the offline data; an unseen pair is worth 0), −1 "pessimistic" (an unseen pair is 0).
    rare switching: the critic is refitted only when some pair's count has doubled since the last refit (a pair
    seen for the first time counts), and the actor is reset to uniform at each refit.

The paper's constants are not reproduced (unverified); `bonus` c and `eta` η are this toy's. The offline-only
pessimistic baseline never learns online: it plays the greedy policy of its pessimistic critic on the offline data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offline_rl.errors import ConfigError
from offline_rl.names import resolve

MODES = {"optimistic": 1.0, "hybrid": 0.0, "pessimistic": -1.0}


@dataclass
class HybridACConfig:
    mode: str = "hybrid"          # optimistic | hybrid | pessimistic
    eta: float = 5.0              # mirror-descent step size η
    bonus: float = 0.3            # c in b_h(s, a) = c·(H − h)/√N(s, a)
    rare_switching: bool = True   # False: refit every episode, never reset the actor


class TabularActorCritic:
    """One agent on an MDP with `n_states`, `n_actions`, `horizon`; `offline` rows (h, s, a, r, s′) seed its data."""

    def __init__(self, n_states: int, n_actions: int, horizon: int, config: HybridACConfig | None = None,
                 offline: np.ndarray | None = None) -> None:
        self.config = config or HybridACConfig()
        self.sign = MODES[resolve(self.config.mode, MODES, "actor-critic mode", ConfigError)]
        self.n_states, self.n_actions, self.horizon = n_states, n_actions, horizon
        self.counts = np.zeros((n_states, n_actions))
        self.reward_sum = np.zeros((n_states, n_actions))
        self.next_counts = np.zeros((n_states, n_actions, n_states))
        if offline is not None and len(offline):
            self.add(offline)
        self.switches = 0
        self._refit()

    def add(self, rows: np.ndarray) -> None:
        """Add transitions (h, s, a, r, s′) to the critic's data."""
        s, a, s2 = rows[:, 1].astype(int), rows[:, 2].astype(int), rows[:, 4].astype(int)
        np.add.at(self.counts, (s, a), 1.0)
        np.add.at(self.reward_sum, (s, a), rows[:, 3])
        np.add.at(self.next_counts, (s, a, s2), 1.0)

    def fit_critic(self) -> np.ndarray:
        """f [H, S, A]: fitted Q iteration towards Q* on the data so far, with the mode's bonus (module docstring)."""
        n = np.maximum(self.counts, 1.0)
        r_hat = self.reward_sum / n
        p_hat = self.next_counts / n[..., None]
        seen = self.counts > 0
        f = np.zeros((self.horizon, self.n_states, self.n_actions))
        v_next = np.zeros(self.n_states)
        for h in range(self.horizon - 1, -1, -1):
            cap = self.horizon - h
            q = r_hat + p_hat @ v_next + self.sign * self.config.bonus * cap / np.sqrt(n)
            unseen_value = cap if self.sign > 0 else 0.0
            f[h] = np.where(seen, np.clip(q, 0.0, cap), unseen_value)
            v_next = f[h].max(1)
        return f

    def _refit(self) -> None:
        self.critic = self.fit_critic()
        self.logits = np.zeros((self.horizon, self.n_states, self.n_actions))  # the uniform policy
        self._counts_at_switch = self.counts.copy()
        self.switches += 1

    def end_episode(self, rows: np.ndarray) -> None:
        """After an online episode: add its data, refit (and reset the actor) when due, then one actor step."""
        self.add(rows)
        if self.config.rare_switching:
            doubled = (self.counts > 0) & (self.counts >= 2 * self._counts_at_switch)
            if doubled.any():
                self._refit()
        else:
            self.critic = self.fit_critic()
        self.logits = self.logits + self.config.eta * self.critic

    @property
    def policy(self) -> np.ndarray:
        """π_k [H, S, A] = softmax(η Σ_{j since the last reset} f_j): the actor's mirror-descent iterate."""
        z = np.exp(self.logits - self.logits.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

    def greedy(self) -> np.ndarray:
        """The greedy policy [H, S, A] of the current critic (the actor's limit under a fixed critic)."""
        pi = np.zeros_like(self.critic)
        np.put_along_axis(pi, self.critic.argmax(-1)[..., None], 1.0, axis=-1)
        return pi


def regret_curve(mdp, agent: TabularActorCritic, episodes: int, rng: np.random.Generator,
                 learn: bool = True) -> np.ndarray:
    """Cumulative regret Σ_{k ≤ K} (V*_0(s₀) − V^{π_k}_0(s₀)) over K = 1 … `episodes`, each V^{π_k} exact.

    `mdp` has `transitions`, `rewards`, `horizon`, `start` (e.g. `offline_rl.envs.riverswim.RiverSwim`). With
    `learn` the agent plays π_k, adds the episode and updates; without (offline-only) it plays its greedy policy.
    """
    from offline_rl.envs.riverswim import optimal_q, policy_value, sample_episodes

    v_star = optimal_q(mdp)[1][0, mdp.start]
    gaps = np.zeros(episodes)
    fixed = None if learn else agent.greedy()
    for k in range(episodes):
        pi = agent.policy if learn else fixed
        gaps[k] = v_star - policy_value(mdp, pi)
        if learn:
            agent.end_episode(sample_episodes(mdp, pi, 1, rng))
    return np.cumsum(gaps)


def compare(mdp, behaviour: np.ndarray, n_offline: int, episodes: int, seeds: int,
            config: HybridACConfig | None = None) -> dict[str, np.ndarray]:
    """Mean cumulative-regret curves over `seeds` of the three agents of Tan et al.'s comparison:

        "online-only optimistic"   no offline data, optimistic critic, learns online
        "hybrid non-optimistic"    critic initialised from `n_offline` episodes of `behaviour`, learns online
        "offline-only pessimistic" pessimistic critic on the same episodes, greedy, never learns online

    Seed k draws the offline episodes and then the online episodes from one generator seeded k."""
    from offline_rl.envs.riverswim import sample_episodes

    base = config or HybridACConfig()
    agents = {"online-only optimistic": ("optimistic", False), "hybrid non-optimistic": ("hybrid", True),
              "offline-only pessimistic": ("pessimistic", True)}
    curves = {name: np.zeros(episodes) for name in agents}
    for name, (mode, uses_offline) in agents.items():
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            offline = sample_episodes(mdp, behaviour, n_offline, rng) if uses_offline and n_offline else None
            agent = TabularActorCritic(mdp.n_states, 2, mdp.horizon, HybridACConfig(mode, base.eta, base.bonus,
                                                                                   base.rare_switching), offline)
            curves[name] += regret_curve(mdp, agent, episodes, rng, learn=mode != "pessimistic") / seeds
    return curves
