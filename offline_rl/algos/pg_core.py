"""The on-policy core: the rollout record, advantage estimators, natural-gradient machinery and the base class of
every on-policy update rule (PPO, NPG, TRPO, HNPG, PROPS, N-PG-IGT, HARPG, Poly-PPO).

Rollouts are time-major tensors [T, N] (T steps of N sub-envs). The environment loop that fills them lives in
`offline_rl.training.onpolicy`; an algorithm only sees tensors.

    GAE (Schulman et al. 2016):   δ_t = r_t + γ (1 − term_t) V(s′_t) − V(s_t)
                                  Â_t = δ_t + γ λ (1 − end_t) Â_{t+1},     R_t = Â_t + V(s_t)
    Monte Carlo:                  G_t = r_t + γ (1 − term_t) [(1 − end_t) G_{t+1} + end_t·cut_t·V(s′_t)]

`end_t` marks the last step of an episode (terminated or truncated) and the last step of the rollout; s′_t is the
true next observation (the final one at an episode end), so a truncated episode or a rollout cut bootstraps from
V(s′_t) and only a termination stops the return.

Natural gradient (Kakade 2001; TRPO, Schulman et al. 2015), with F the Fisher information of the policy:

    F·v  = ∇_θ ( (∇_θ KL̄(π_old ‖ π_θ))ᵀ v ) + damping·v        (Hessian-vector product of the mean KL)
    x    ≈ F⁻¹ g  by conjugate gradient;   full step = x · √(2 δ / xᵀF x)   (so ½ Δᵀ F Δ = δ = max_kl)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from offline_rl.algos.base import Algorithm
from offline_rl.data.dataset import Spec
from offline_rl.errors import ConfigError
from offline_rl.nets.policies import CategoricalPolicy, GaussianMixturePolicy, GaussianPolicy


def is_discrete(spec: Spec) -> bool:
    """The on-policy loop encodes a Discrete(n) action space as act_dim = n with empty bounds."""
    return len(spec.action_low) == 0


@dataclass
class Rollout:
    """T steps of N sub-envs, time-major. `actions` are what the policy emitted (before any clipping for the env);
    `extras` holds per-step tensors the algorithm's `act` returned (log-probs, values, behaviour log-probs)."""

    observations: torch.Tensor        # [T, N, obs_dim]
    actions: torch.Tensor             # [T, N, act_dim] (float), or [T, N] (long) for discrete actions
    rewards: torch.Tensor             # [T, N]
    terminated: torch.Tensor          # [T, N] float: 1 where the episode ended by termination
    truncated: torch.Tensor           # [T, N] float: 1 where the episode was cut by a time limit
    next_observations: torch.Tensor   # [T, N, obs_dim]: the true next observation (final obs at an episode end)
    timesteps: torch.Tensor           # [T, N] long: the step index within the episode (h)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    env_states: list[list[Any]] | None = None  # [T][N] env states, when the algorithm asks for them

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.rewards.shape)  # type: ignore[return-value]

    @property
    def episode_end(self) -> torch.Tensor:
        """1 at the last step of an episode and at the rollout's last step (where recursions must stop)."""
        end = torch.maximum(self.terminated, self.truncated).clone()
        end[-1] = 1.0
        return end

    def flat(self, name: str) -> torch.Tensor:
        """A field or extra with the time and env dimensions merged (row t·N + i)."""
        x = self.extras[name] if name in self.extras else getattr(self, name)
        return x.reshape(-1, *x.shape[2:])

    def slice(self, t0: int, t1: int) -> Rollout:
        """Steps t0 ≤ t < t1 (views)."""
        tensors = {f.name: getattr(self, f.name)[t0:t1] for f in fields(self)
                   if isinstance(getattr(self, f.name), torch.Tensor)}
        states = self.env_states[t0:t1] if self.env_states is not None else None
        return replace(self, **tensors, extras={k: v[t0:t1] for k, v in self.extras.items()}, env_states=states)


def cat_rollouts(rollouts: Sequence[Rollout]) -> Rollout:
    """Rollouts of the same env count joined along time (a buffer of the last b batches)."""
    first = rollouts[0]
    tensors = {f.name: torch.cat([getattr(r, f.name) for r in rollouts]) for f in fields(first)
               if isinstance(getattr(first, f.name), torch.Tensor)}
    extras = {k: torch.cat([r.extras[k] for r in rollouts]) for k in first.extras}
    return replace(first, **tensors, extras=extras, env_states=None)


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        episode_end: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages Â, λ-returns Â + V) by the recursion in the module docstring; all [T, N]."""
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * (1.0 - episode_end[t]) * running
        advantages[t] = running
    return advantages, advantages + values


def discounted_returns(rewards: torch.Tensor, terminated: torch.Tensor, episode_end: torch.Tensor,
                       gamma: float, bootstrap: torch.Tensor | None = None) -> torch.Tensor:
    """Monte-Carlo returns G_t (module docstring); `bootstrap` [T, N] is V(s′_t), used where an episode is cut
    (truncation or rollout end) and ignored elsewhere; None means no bootstrap (whole episodes)."""
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        cut = episode_end[t] * (1.0 - terminated[t])
        tail = (1.0 - episode_end[t]) * running + (cut * bootstrap[t] if bootstrap is not None else 0.0)
        running = rewards[t] + gamma * (1.0 - terminated[t]) * tail
        returns[t] = running
    return returns


def reward_to_go_from_start(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """Σ_{t ≥ k} γ^t r_t for each k of one trajectory [T] (discounted from time 0: the GPOMDP weights)."""
    discounts = gamma ** torch.arange(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    return (discounts * rewards).flip(0).cumsum(0).flip(0)


# ---- flat parameter vectors ----------------------------------------------------------------------------------

def flat_params(params: Iterable[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def set_flat_params(params: Iterable[nn.Parameter], flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset:offset + n].view_as(p))
            offset += n


def flat_grad(y: torch.Tensor, params: Sequence[nn.Parameter], create_graph: bool = False,
              retain_graph: bool | None = None) -> torch.Tensor:
    """∇_θ y as one flat vector (zeros for parameters y does not depend on)."""
    grads = torch.autograd.grad(y, params, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


# ---- natural gradient -----------------------------------------------------------------------------------------

def fisher_vector_product(mean_kl: Callable[[], torch.Tensor], params: Sequence[nn.Parameter],
                          damping: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """v ↦ F·v + damping·v, with F the Hessian of `mean_kl()` = mean KL(π_old ‖ π_θ) at θ = θ_old (two autograd
    passes; `mean_kl` must hold π_old detached, so that its value and gradient are 0 at θ_old)."""

    def fvp(v: torch.Tensor) -> torch.Tensor:
        grad_kl = flat_grad(mean_kl(), params, create_graph=True)
        return flat_grad((grad_kl * v).sum(), params) + damping * v

    return fvp


def conjugate_gradient(avp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       residual_tol: float = 1e-10) -> torch.Tensor:
    """Solve A x = b for a symmetric positive-definite A given only x ↦ A x (x_0 = 0; stops early once
    ‖r‖² < residual_tol)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        ap = avp(p)
        alpha = rr / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = r @ r
        if rr_new < residual_tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


@dataclass
class NaturalStep:
    """The solution of F x = −g and the KL-scaled full step (TRPO's `shs`, `lm` in ikostrikov/pytorch-trpo)."""

    direction: torch.Tensor    # x ≈ −F⁻¹ g
    full_step: torch.Tensor    # x / √(xᵀF x / (2 max_kl))
    expected_improve: torch.Tensor  # −gᵀ full_step: the first-order decrease of the loss for the full step


def natural_step(loss: torch.Tensor, mean_kl: Callable[[], torch.Tensor], params: Sequence[nn.Parameter],
                 max_kl: float, damping: float, cg_iters: int = 10) -> NaturalStep:
    """The natural-gradient step that decreases `loss` with ½ Δᵀ(F + damping)Δ = max_kl."""
    g = flat_grad(loss, params)
    fvp = fisher_vector_product(mean_kl, params, damping)
    x = conjugate_gradient(fvp, -g, cg_iters)
    shs = 0.5 * (x @ fvp(x))
    full = x / torch.sqrt(shs / max_kl)
    return NaturalStep(x, full, -(g @ full))


def line_search(params: Sequence[nn.Parameter], loss_fn: Callable[[], torch.Tensor], step: NaturalStep,
                max_backtracks: int = 10, accept_ratio: float = 0.1, backtrack_coef: float = 0.5,
                kl_fn: Callable[[], torch.Tensor] | None = None, max_kl: float | None = None) -> tuple[bool, int]:
    """Backtracking from θ_old + full_step: accept the first fraction f = coef^i whose actual improvement is > 0
    and > accept_ratio × the expected f·(−gᵀΔ); with `kl_fn`, also require mean KL ≤ max_kl (TRPO; the HNPG
    source does not check the KL). Leaves the accepted parameters in place (θ_old when none is accepted) and
    returns (accepted, backtracks)."""
    old = flat_params(params)
    with torch.no_grad():
        before = loss_fn()
    for i in range(max_backtracks):
        frac = backtrack_coef**i
        set_flat_params(params, old + frac * step.full_step)
        with torch.no_grad():
            actual = before - loss_fn()
            ok = actual > 0 and actual / (frac * step.expected_improve) > accept_ratio
            if ok and kl_fn is not None and max_kl is not None:
                ok = bool(kl_fn() <= max_kl)
        if ok:
            return True, i
    set_flat_params(params, old)
    return False, max_backtracks


def detached(dist: Distribution) -> Distribution:
    """A copy of a Normal/Independent-Normal/Categorical distribution with its parameters detached (the "old"
    policy of a KL; cloned, since a state-independent std is an `expand_as` view of the live parameter)."""
    if isinstance(dist, Independent):
        return Independent(detached(dist.base_dist), dist.reinterpreted_batch_ndims, validate_args=False)
    if isinstance(dist, Normal):
        return Normal(dist.loc.detach().clone(), dist.scale.detach().clone(), validate_args=False)
    if hasattr(dist, "logits"):
        return type(dist)(logits=dist.logits.detach().clone(), validate_args=False)
    raise ConfigError(f"no closed-form KL for {type(dist).__name__} (natural-gradient methods need Gaussian or "
                      "categorical heads)")


def mean_kl_to(policy: nn.Module, obs: torch.Tensor) -> Callable[[], torch.Tensor]:
    """() ↦ mean_s KL(π_old(·|s) ‖ π_θ(·|s)), π_old = the policy now (frozen)."""
    old = detached(policy.dist(obs))
    return lambda: kl_divergence(old, policy.dist(obs)).mean()


# ---- the base of every on-policy algorithm -------------------------------------------------------------------

@dataclass
class ActorCriticConfig:
    """Network settings shared by the actor-critic algorithms (PPO, NPG, TRPO and their subclasses): 64-64 tanh
    actor and critic with CleanRL's orthogonal init, actions clipped to finite Box bounds for the env."""

    clip_actions: bool = True
    hidden: tuple[int, ...] = (64, 64)
    critic_hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    init: str = "orthogonal"
    head_scale: float = 0.01
    log_std_init: float = 0.0
    policy_head: str = "gaussian"      # gaussian | gmm (PMOE's mixture, PPO only); discrete envs: categorical
    gmm_k: int = 4


def make_policy_head(spec: Spec, c: Any) -> nn.Module:
    """The policy network a config asks for: categorical for discrete actions, else Gaussian or mixture."""
    if is_discrete(spec):
        return CategoricalPolicy(spec.obs_dim, spec.act_dim, c.hidden, c.activation, c.init, c.head_scale)
    if c.policy_head == "gaussian":
        return GaussianPolicy(spec.obs_dim, spec.act_dim, c.hidden, c.activation, c.init, c.head_scale,
                              c.log_std_init)
    if c.policy_head == "gmm":
        return GaussianMixturePolicy(spec.obs_dim, spec.act_dim, c.gmm_k, c.hidden, c.activation, c.init,
                                     c.head_scale, c.log_std_init)
    raise ConfigError(f"policy_head must be gaussian or gmm, got '{c.policy_head}'")


class OnPolicyAlgorithm(Algorithm):
    """An algorithm that learns from its own rollouts (`offline_rl.training.onpolicy.train_onpolicy`).

    Each iteration the loop steps `num_envs` sub-envs `rollout_length` times with `act`, calls `on_step` after
    every vector step, then `update_rollout` once. Hybrid methods also get the offline dataset in `prepare`.
    """

    loop: ClassVar[str] = "onpolicy"
    needs_env_states: ClassVar[bool] = False
    """True: the loop records each sub-env's `get_state()` in `Rollout.env_states` (vine sampling)."""

    @property
    def num_envs(self) -> int:
        return int(getattr(self.config, "num_envs", 1))

    @property
    def rollout_length(self) -> int:
        return int(getattr(self.config, "num_steps", 2048))

    @classmethod
    def env_defaults(cls, env: Any) -> dict[str, Any]:
        """Config values read from the env before the algorithm is built (e.g. the lock's horizon)."""
        return {}

    def act(self, obs: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(actions to store [N, ...], per-step extras) for a batch of observations and their steps within the
        episode (long [N]); called without gradients."""
        raise NotImplementedError

    def env_action(self, actions: torch.Tensor) -> torch.Tensor:
        """What the env receives for the stored actions (clipped to finite Box bounds unless the config says not)."""
        if is_discrete(self.spec) or not getattr(self.config, "clip_actions", True):
            return actions
        low = torch.as_tensor(self.spec.action_low, dtype=actions.dtype, device=actions.device)
        high = torch.as_tensor(self.spec.action_high, dtype=actions.dtype, device=actions.device)
        return torch.maximum(torch.minimum(actions, high), low)

    def attach_env(self, make_env: Callable[[], Any]) -> None:
        """The loop hands over an env factory (a fresh env of the run's id), for algorithms that also interact
        with the environment themselves (vine sampling)."""
        self.make_env = make_env

    def on_step(self, rollout: Rollout, t: int) -> None:
        """Called after vector step t (0-based) with the rollout filled up to t (PROPS's behaviour updates)."""

    def update_rollout(self, rollout: Rollout, iteration: int) -> dict[str, torch.Tensor]:
        """Learn from one iteration's rollout; returns metrics (tensors)."""
        raise NotImplementedError

    def extra_samples(self) -> int:
        """Env samples taken by the algorithm itself in the last update (vines); counted in the step total."""
        return 0

    def n_updates(self) -> int:
        """Gradient (or natural-gradient) steps taken so far, for the loop's update count."""
        return int(getattr(self, "_updates", 0))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {**super().state_dict(*args, **kwargs), "updates": self.n_updates()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> Any:  # type: ignore[override]
        self._updates = int(state.get("updates", 0))
        return super().load_state_dict(state, strict)


class ActorCritic(OnPolicyAlgorithm):
    """A policy head and a state-value critic V(s) (tanh MLP, orthogonal init with head gain 1, as in CleanRL),
    with GAE advantages. The config extends `ActorCriticConfig` with `gamma` and `gae_lambda`.

    Subclasses implement `update_rollout` with `advantages(rollout)` and the policy's `dist`.
    """

    def __init__(self, spec: Spec, config: Any, device: str | torch.device = "cpu") -> None:
        super().__init__(spec, config, device)
        from offline_rl.nets.mlp import mlp
        from offline_rl.nets.policies import ACTIVATIONS, init_mlp

        self.actor = make_policy_head(spec, config)
        self.critic = init_mlp(mlp(spec.obs_dim, 1, config.critic_hidden, ACTIVATIONS[config.activation]),
                               "orthogonal" if config.init == "orthogonal" else "torch", 1.0)
        self._updates = 0

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)

    def act(self, obs: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.actor.dist(obs).sample(), {}

    def advantages(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(values V(s_t), GAE advantages, λ-returns), all [T, N], under the current critic."""
        c = self.config
        with torch.no_grad():
            values = self.value(rollout.observations)
            next_values = self.value(rollout.next_observations)
        adv, returns = gae(rollout.rewards, values, next_values, rollout.terminated, rollout.episode_end,
                           c.gamma, c.gae_lambda)
        return values, adv, returns

    def policy(self) -> nn.Module:
        """The deterministic policy (the Gaussian mean, the most probable discrete action or expert)."""
        return self.actor
