"""Stochastic policy heads for on-policy methods (Gaussian, categorical, Gaussian mixture) and PMOE's tanh
Gaussian-mixture actor for SAC-style methods.

Every on-policy head has `dist(obs)` (a torch distribution over env actions, with `log_prob(a)` of shape [B];
argument validation is off, as it costs a third of a rollout step) and `forward(obs)` (the deterministic action
used by evaluation and export).

Initialisation (`init`):
- `"orthogonal"`: CleanRL's PPO, orthogonal weights with gain √2 in the hidden layers and bias 0, the output layer
  with gain `head_scale` (0.01 for the actor);
- `"torch"`: PyTorch's default `nn.Linear` init with the output layer's weights multiplied by `head_scale` and its
  bias set to 0 (ikostrikov/pytorch-trpo, the HNPG source: head_scale 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal
from torch.nn import functional as F

from offline_rl.nets.mlp import mlp, rlkit_init_

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def init_mlp(net: nn.Sequential, init: str, head_scale: float) -> nn.Sequential:
    """Apply the `init` scheme of the module docstring to a plain MLP (its last Linear is the head)."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    if init == "orthogonal":
        for layer in linears:
            nn.init.orthogonal_(layer.weight, math.sqrt(2.0) if layer is not linears[-1] else head_scale)
            nn.init.zeros_(layer.bias)
    elif init == "torch":
        with torch.no_grad():
            linears[-1].weight.mul_(head_scale)
            linears[-1].bias.zero_()
    else:
        raise ValueError(f"unknown init '{init}' (orthogonal | torch)")
    return net


def policy_mlp(in_dim: int, out_dim: int, hidden: Sequence[int], activation: str, init: str,
               head_scale: float, bias: bool = True) -> nn.Module:
    """The mean/logit network of a head; `hidden=()` with `bias=False` is a linear map (LQR's a = −Ks)."""
    if not hidden and not bias:
        layer = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.zeros_(layer.weight)
        return layer
    return init_mlp(mlp(in_dim, out_dim, hidden, ACTIVATIONS[activation]), init, head_scale)


class GaussianPolicy(nn.Module):
    """π(a|s) = N(μ(s), diag σ²) with a state-independent log σ (initialised to `log_std_init`, learnable unless
    `learn_std=False`); `forward` is μ(s)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh",
                 init: str = "orthogonal", head_scale: float = 0.01, log_std_init: float = 0.0,
                 learn_std: bool = True, bias: bool = True) -> None:
        super().__init__()
        self.mean = policy_mlp(obs_dim, act_dim, hidden, activation, init, head_scale, bias)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)), requires_grad=learn_std)

    def dist(self, obs: torch.Tensor) -> Distribution:
        mean = self.mean(obs)
        # expand_as returns a view of the parameter: a distribution kept as "old" must be detached (HNPG trap).
        return Independent(Normal(mean, self.log_std.exp().expand_as(mean), validate_args=False), 1, validate_args=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.mean(obs)


class CategoricalPolicy(nn.Module):
    """π(a|s) = softmax(f(s)) over `n_actions`; `forward` is the arg-max action."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh",
                 init: str = "orthogonal", head_scale: float = 0.01) -> None:
        super().__init__()
        self.logits = policy_mlp(obs_dim, n_actions, hidden, activation, init, head_scale)

    def dist(self, obs: torch.Tensor) -> Distribution:
        return Categorical(logits=self.logits(obs), validate_args=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.logits(obs).argmax(-1)


class GaussianMixturePolicy(nn.Module):
    """PMOE's head for PPO-style methods: a shared trunk h(s), K Gaussian experts N(μ_k(s), diag σ_k²) with
    state-independent log σ_k, and routing α(s) = softmax(W·h(s)) on the *detached* trunk features (the router
    does not train the trunk). log π(a|s) = log Σ_k α_k(s) N(a; μ_k(s), σ_k²), the exact mixture density.
    `forward` is the mean of the most probable expert."""

    def __init__(self, obs_dim: int, act_dim: int, k: int = 4, hidden: Sequence[int] = (64, 64),
                 activation: str = "tanh", init: str = "orthogonal", head_scale: float = 0.01,
                 log_std_init: float = 0.0) -> None:
        super().__init__()
        self.k, self.act_dim = k, act_dim
        self.trunk = init_mlp(mlp(obs_dim, hidden[-1], hidden[:-1], ACTIVATIONS[activation]), init, math.sqrt(2.0))
        self.activation = ACTIVATIONS[activation]()
        self.means = init_mlp(nn.Sequential(nn.Linear(hidden[-1], k * act_dim)), init, head_scale)
        self.router = nn.Linear(hidden[-1], k)
        # Spread the experts' initial means so that they do not start identical (a symmetric start never splits).
        with torch.no_grad():
            self.means[0].bias.copy_(torch.linspace(-1.0, 1.0, k).repeat_interleave(act_dim) * 0.5)
        self.log_std = nn.Parameter(torch.full((k, act_dim), float(log_std_init)))

    def parts(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(routing probabilities [B, K], expert means [B, K, act_dim])."""
        h = self.activation(self.trunk(obs))
        return F.softmax(self.router(h.detach()), -1), self.means(h).view(*obs.shape[:-1], self.k, self.act_dim)

    def dist(self, obs: torch.Tensor) -> Distribution:
        alpha, means = self.parts(obs)
        experts = Independent(Normal(means, self.log_std.exp().expand_as(means), validate_args=False), 1,
                              validate_args=False)
        return MixtureSameFamily(Categorical(probs=alpha, validate_args=False), experts, validate_args=False)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        alpha, means = self.parts(obs)
        return means.gather(-2, alpha.argmax(-1)[..., None, None].expand(*means.shape[:-2], 1, self.act_dim)).squeeze(-2)


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


class TanhMixtureActor(nn.Module):
    """PMOE's SAC actor (`JieRen98/rlkit-pmoe` `TanhPMOEGaussianPolicy`): a shared trunk, K tanh-Gaussian experts
    (state-dependent log σ clamped to [−20, 2]) and routing α(s) = softmax(W·h(s)) on the detached last hidden
    features. Env actions are scale·tanh(u) + bias, as in `TanhGaussianActor`; log-densities are those of the
    normalised action tanh(u), one per expert.

    `forward` is the tanh mean of the most probable expert (the source samples the expert from α even for its
    deterministic action; a deterministic `policy()` needs a fixed choice).
    """

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, action_low: Sequence[float], action_high: Sequence[float],
                 k: int = 4, hidden: Sequence[int] = (256, 256), init_w: float = 1e-3) -> None:
        super().__init__()
        self.k, self.act_dim = k, act_dim
        self.trunk = mlp(obs_dim, hidden[-1], hidden[:-1])
        self.heads = nn.Linear(hidden[-1], 2 * k * act_dim)  # [μ, log σ] for every expert
        self.router = nn.Linear(hidden[-1], k)
        # rlkit's init (PMOEMlp, TanhPMOEGaussianPolicy): the trunk's `fanin_init` weights and biases 0.1, the μ and
        # log σ heads U(±init_w) (the source's default 1e-3: every expert starts at μ ≈ 0, σ ≈ 1), the router
        # nn.Linear's default.
        rlkit_init_(self.trunk)
        rlkit_init_(self.heads, last_init_w=init_w)
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def parts(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(routing α [B, K], expert means [B, K, A], expert log σ [B, K, A])."""
        h = F.relu(self.trunk(obs))
        mean, log_std = self.heads(h).view(obs.shape[0], self.k, 2 * self.act_dim).chunk(2, -1)
        return F.softmax(self.router(h.detach()), -1), mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def sample_experts(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A reparameterised action from every expert: (env actions [B, K, A], log π_k of each [B, K], α [B, K])."""
        alpha, mean, log_std = self.parts(obs)
        eps = torch.randn_like(mean)
        u = mean + log_std.exp() * eps
        log_prob = (-0.5 * eps.pow(2) - log_std - _HALF_LOG_2PI - 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))).sum(-1)
        return self.action_scale * torch.tanh(u) + self.action_bias, log_prob, alpha

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Act like the mixture: an expert index i ~ Cat(α(s)), then that expert's action and log π_i."""
        actions, log_prob, alpha = self.sample_experts(obs)
        index = torch.multinomial(alpha, 1)
        return (actions.gather(1, index[..., None].expand(-1, 1, self.act_dim)).squeeze(1),
                log_prob.gather(1, index).squeeze(1))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        alpha, mean, _ = self.parts(obs)
        best = alpha.argmax(-1)
        return self.action_scale * torch.tanh(mean[torch.arange(obs.shape[0], device=obs.device), best]) + self.action_bias
