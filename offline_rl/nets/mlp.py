"""MLPs, batched ensembles (one batched matmul per layer for all members), actors, critics and value nets."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Normal
from torch.nn import functional as F


def mlp(in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256), activation: type[nn.Module] = nn.ReLU,
        out_activation: type[nn.Module] | None = None, layer_norm: bool = False,
        dropout: float | None = None) -> nn.Sequential:
    """A plain MLP: Linear → [LayerNorm] → act → [Dropout] per hidden layer, then a Linear head."""
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for d_in, d_out in zip(dims[:-1], dims[1:]):
        layers.append(nn.Linear(d_in, d_out))
        if layer_norm:
            layers.append(nn.LayerNorm(d_out))
        layers.append(activation())
        if dropout:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(dims[-1], out_dim))
    if out_activation is not None:
        layers.append(out_activation())
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """`n` independent linear layers applied as one batched matmul: [n, B, in] -> [n, B, out].

    Each member is initialised exactly like `nn.Linear` (uniform ±1/sqrt(fan_in) for weight and bias).
    """

    def __init__(self, n: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, frozen: bool = False, member: int | None = None) -> torch.Tensor:
        """[n, B, in] -> [n, B, out]; with `member`, that member alone on [B, in]. `frozen`: `member_params`."""
        weight, bias = member_params(self, frozen, member)
        return torch.baddbmm(bias, x, weight) if member is None else torch.addmm(bias, x, weight)


@torch.no_grad()
def rlkit_init_(net: nn.Module, last_init_w: float | None = None) -> None:
    """rlkit's `Mlp` initialisation, in place, over the `nn.Linear`/`EnsembleLinear` layers of `net` in order:
    hidden weights U(±1/√f) with rlkit's f = the layer's OUTPUT width (`ptu.fanin_init` reads size[0] of a
    [out, in] weight), hidden biases 0.1; the last layer U(±last_init_w), weight and bias (None: every layer is a
    hidden one)."""
    layers = [m for m in net.modules() if isinstance(m, nn.Linear | EnsembleLinear)]
    for i, layer in enumerate(layers):
        if last_init_w is not None and i == len(layers) - 1:
            layer.weight.uniform_(-last_init_w, last_init_w)
            layer.bias.uniform_(-last_init_w, last_init_w)
        else:
            bound = 1.0 / math.sqrt(layer.weight.shape[0 if isinstance(layer, nn.Linear) else -1])
            layer.weight.uniform_(-bound, bound)
            layer.bias.fill_(0.1)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with separate affine parameters per member: [n, B, d] -> [n, B, d]."""

    def __init__(self, n: int, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, frozen: bool = False, member: int | None = None) -> torch.Tensor:
        weight, bias = member_params(self, frozen, member)
        return torch.addcmul(bias, F.layer_norm(x, x.shape[-1:], eps=self.eps), weight)


def member_params(layer: EnsembleLinear | EnsembleLayerNorm, frozen: bool = False,
                  member: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of an ensemble layer: every member's, or one `member`'s; `frozen`: detached, so that a
    backward pass through the layer computes its input's gradient only (an actor loss through a critic, whose
    weight gradients would be computed and thrown away)."""
    weight, bias = (layer.weight, layer.bias) if member is None else (layer.weight[member], layer.bias[member])
    return (weight.detach(), bias.detach()) if frozen else (weight, bias)


class EnsembleMLP(nn.Module):
    """`n` MLPs evaluated together. Input [B, in] (shared) or [n, B, in]; output [n, B, out]."""

    def __init__(self, n: int, in_dim: int, out_dim: int, hidden: Sequence[int] = (256, 256),
                 activation: type[nn.Module] = nn.ReLU, layer_norm: bool = False) -> None:
        super().__init__()
        self.n = n
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers.append(EnsembleLinear(n, d_in, d_out))
            if layer_norm:  # one LayerNorm per member, as in separate networks (O-DICE's TwinV)
                layers.append(EnsembleLayerNorm(n, d_out))
            layers.append(activation())
        layers.append(EnsembleLinear(n, dims[-1], out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, frozen: bool = False, member: int | None = None) -> torch.Tensor:
        """`member`: that member alone, [B, in] -> [B, out]; `frozen`: gradients to the input only
        (`member_params`)."""
        if x.dim() == 2 and member is None:
            x = x.unsqueeze(0).expand(self.n, *x.shape)
        for layer in self.net:
            x = layer(x, frozen, member) if isinstance(layer, EnsembleLinear | EnsembleLayerNorm) else layer(x)
        return x


class TwinQ(nn.Module):
    """The TD3/SAC/IQL critic ensemble Q_i(s, a), i = 1..n (n = 2: the twin critic). Returns [n, B]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), n: int = 2,
                 layer_norm: bool = False) -> None:
        super().__init__()
        self.qs = EnsembleMLP(n, obs_dim + act_dim, 1, hidden, layer_norm=layer_norm)

    def forward(self, obs: torch.Tensor, act: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """`frozen`: gradients flow to the inputs only (`member_params`)."""
        return self.qs(torch.cat([obs, act], dim=-1), frozen).squeeze(-1)

    def q1(self, obs: torch.Tensor, act: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """The first critic only (TD3+BC's actor loss uses Q1), computed alone, not via the ensemble."""
        return self.qs(torch.cat([obs, act], dim=-1), frozen, member=0).squeeze(-1)


class ValueNet(nn.Module):
    """V(s): an MLP with a scalar head. Returns [B]."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (256, 256), layer_norm: bool = False) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, layer_norm=layer_norm)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class DeterministicActor(nn.Module):
    """a = max_action · tanh(f(s)), the TD3 actor."""

    def __init__(self, obs_dim: int, act_dim: int, max_action: float, hidden: Sequence[int] = (256, 256),
                 dropout: float | None = None) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, out_activation=nn.Tanh, dropout=dropout)
        self.max_action = max_action

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.max_action * self.net(obs)


class GaussianActor(nn.Module):
    """IQL's policy: N(tanh(f(s)), exp(log_std)) with a state-independent log-std clamped to [−20, 2] (CORL).

    `forward` returns the deterministic action max_action · mean, clipped; `dist` returns the distribution over
    normalised actions for the AWR log-likelihood. `tanh_mean=False` leaves the mean unsquashed (O-DICE's
    `GaussianPolicy`, which also clamps the log-std to [−5, 2]: `log_std_min=-5`).
    """

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, max_action: float, hidden: Sequence[int] = (256, 256),
                 dropout: float | None = None, tanh_mean: bool = True, log_std_min: float = LOG_STD_MIN) -> None:
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, out_activation=nn.Tanh if tanh_mean else None, dropout=dropout)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.max_action = max_action
        self.log_std_min = log_std_min

    def dist(self, obs: torch.Tensor) -> Normal:
        std = self.log_std.clamp(self.log_std_min, self.LOG_STD_MAX).exp()
        return Normal(self.net(obs), std)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (self.max_action * self.net(obs)).clamp(-self.max_action, self.max_action)


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


class TanhGaussianActor(nn.Module):
    """π(a|s) = scale·tanh(u) + bias, u ~ N(μ(s), σ(s)²), with a state-dependent log σ clamped to [−20, 2].

    One MLP outputs [μ, log σ]. `forward` is the deterministic action scale·tanh(μ) + bias (evaluation, export);
    `sample` draws a reparameterised action and returns log π of its normalised value tanh(u), with the tanh
    change-of-variables term: log π = Σ_j [log N(u_j; μ_j, σ_j) − log(1 − tanh(u_j)²)].
    """

    LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # the original SAC code's LOG_SIG_CAP_MIN/MAX

    def __init__(self, obs_dim: int, act_dim: int, action_low: Sequence[float], action_high: Sequence[float],
                 hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.act_dim = act_dim
        self.net = mlp(obs_dim, 2 * act_dim, hidden)
        low = torch.as_tensor(action_low, dtype=torch.float32)
        high = torch.as_tensor(action_high, dtype=torch.float32)
        self.register_buffer("action_scale", (high - low) / 2.0)
        self.register_buffer("action_bias", (high + low) / 2.0)

    def mean_log_std(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(self.LOG_STD_MIN, self.LOG_STD_MAX)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mean, _ = self.mean_log_std(obs)
        return self.action_scale * torch.tanh(mean) + self.action_bias

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(env action, log π of the normalised action) for a reparameterised draw; log π has shape [B]."""
        mean, log_std = self.mean_log_std(obs)
        eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device, generator=generator)
        u = mean + log_std.exp() * eps
        # log N(u; μ, σ) = −ε²/2 − log σ − log(2π)/2;  log(1 − tanh²u) = 2(log 2 − u − softplus(−2u)) (stable form)
        log_prob = (-0.5 * eps.pow(2) - log_std - _HALF_LOG_2PI - 2.0 * (_LOG_2 - u - F.softplus(-2.0 * u))).sum(-1)
        return self.action_scale * torch.tanh(u) + self.action_bias, log_prob


class ConditionalVAE(nn.Module):
    """BCQ's VAE of actions given states: encoder (s, a) → (μ, log σ) with log σ clamped to [−4, 15]; decoder
    (s, z) → max_action·tanh(·). A2PR uses it with 750-750 layers and latent dim 2·act_dim."""

    def __init__(self, obs_dim: int, act_dim: int, latent_dim: int, max_action: float,
                 hidden: Sequence[int] = (750, 750)) -> None:
        super().__init__()
        self.encoder = mlp(obs_dim + act_dim, 2 * latent_dim, hidden)  # one head holding [μ, log σ]
        self.decoder = mlp(obs_dim + latent_dim, act_dim, hidden, out_activation=nn.Tanh)
        self.latent_dim = latent_dim
        self.max_action = max_action

    def forward(self, obs: torch.Tensor, act: torch.Tensor,
                eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode, sample z = μ + σ·ε (reparameterised; ε ~ N(0, I), drawn here unless given), decode.
        Returns (reconstruction, μ, σ)."""
        mean, log_std = self.encoder(torch.cat([obs, act], -1)).chunk(2, dim=-1)
        std = log_std.clamp(-4.0, 15.0).exp()
        z = mean + std * (torch.randn_like(std) if eps is None else eps)
        return self.decode(obs, z), mean, std

    def decode(self, obs: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Decode z; without z, sample z ~ N(0, I) clipped to [−0.5, 0.5] (BCQ)."""
        if z is None:
            z = torch.randn(obs.shape[0], self.latent_dim, device=obs.device).clamp(-0.5, 0.5)
        return self.max_action * self.decoder(torch.cat([obs, z], -1))
