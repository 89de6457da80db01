"""The networks the generative core trains: an MLP denoiser for states or actions (optionally conditioned, e.g. on
the state for a policy) and the PGD reference's 1-D temporal U-Net for trajectories. Sizes are parameters.

Both take the noise level (or flow time) as a per-sample scalar `level` and embed it sinusoidally.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from offline_rl.generative.schedules import sinusoidal_embedding
from offline_rl.nets import mlp


class LevelEmbedding(nn.Module):
    """sinusoidal(level, `sin_dim`) → Linear(out_dim) → swish → Linear(out_dim) (the reference's `TimeEmbedding`)."""

    def __init__(self, sin_dim: int, out_dim: int) -> None:
        super().__init__()
        self.sin_dim = sin_dim
        self.net = nn.Sequential(nn.Linear(sin_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, level: torch.Tensor) -> torch.Tensor:
        return self.net(sinusoidal_embedding(level, self.sin_dim))


class DenoiserMLP(nn.Module):
    """F(x, level | cond): an MLP on [x, embed(level), cond] with SiLU activations, output of x's size.

    `cond_dim = 0` gives an unconditional model of x (CDSA's state score model); a policy conditions on the state
    (AWM's velocity field v(a_t, t | s)). `emb_dim = 0` feeds the level itself (Flow Q-Learning's flow networks
    concatenate t): for a flow time t ∈ [0, 1] that conditions far better than a 64-dimensional sinusoidal embedding,
    most of whose channels are nearly constant there (pendulum-medium, flow-matching BC after 2000 steps: correlation
    with an MSE regressor's actions 0.89 with t itself, 0.80 with 8 channels, 0.42 with 64).
    """

    def __init__(self, data_dim: int, cond_dim: int = 0, hidden: Sequence[int] = (256, 256, 256),
                 emb_dim: int = 64) -> None:
        super().__init__()
        self.data_dim, self.cond_dim = data_dim, cond_dim
        self.embed = LevelEmbedding(emb_dim, emb_dim) if emb_dim else None
        self.net = mlp(data_dim + max(emb_dim, 1) + cond_dim, data_dim, hidden, activation=nn.SiLU)

    def forward(self, x: torch.Tensor, level: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        level = level.expand(x.shape[:-1]) if level.dim() < x.dim() else level.squeeze(-1)
        embedded = self.embed(level) if self.embed is not None else level.unsqueeze(-1).to(x.dtype)
        parts = [x, embedded] + ([cond] if self.cond_dim else [])
        return self.net(torch.cat(parts, dim=-1))


class _SameConv1d(nn.Conv1d):
    """A length-preserving convolution padded like flax's 'SAME': (k − 1)//2 zeros on the left, the rest on the
    right (kernel 2: one zero on the right)."""

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__(c_in, c_out, kernel)
        self.pads = ((kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads))


_conv = _SameConv1d


class UNet1D(nn.Module):
    """F(x, level) for trajectories x of shape [B, L, D]: the PGD reference's U-Net over time (`models/diffusion.py`).

    Encoder block i (i < `blocks`, width F·2ⁱ): Conv3 + Dense(swish(t)), GroupNorm, ReLU, Conv3, GroupNorm, ReLU,
    kept as a skip, then max-pool by 2. Decoder block i (from `blocks` − 2 down to 0): nearest upsample to the skip's
    length, Conv2 + Dense(swish(t)), GroupNorm, ReLU, concatenate the skip, 2 × [Conv3, GroupNorm, ReLU]. A final
    Conv1 maps back to D. t = Dense(F) ∘ swish ∘ Dense(F) of the F/4-dimensional sinusoidal embedding of `level`.
    GroupNorm has `groups` groups and flax's eps 1e-6. At F = 1024, 3 blocks and D = 25 it has 177.7M parameters;
    at F = 256, 11.1M (the spec's figures).
    """

    def __init__(self, data_dim: int, features: int = 1024, blocks: int = 3, groups: int = 8) -> None:
        super().__init__()
        if blocks < 2:
            raise ValueError(f"the U-Net needs at least 2 blocks, got {blocks}")
        if features < 16 or features % 4 or features % groups:
            raise ValueError(f"features ({features}) must be ≥ 16 and a multiple of 4 and of groups ({groups})")
        self.data_dim, self.features, self.blocks = data_dim, features, blocks
        self.embed = LevelEmbedding(features // 4, features)
        width = [features * 2 ** i for i in range(blocks)]

        def norm(c: int) -> nn.GroupNorm:
            return nn.GroupNorm(groups, c, eps=1e-6)

        self.down = nn.ModuleList()
        c_prev = data_dim
        for c in width:
            self.down.append(nn.ModuleDict({"conv1": _conv(c_prev, c, 3), "time": nn.Linear(features, c),
                                            "norm1": norm(c), "conv2": _conv(c, c, 3), "norm2": norm(c)}))
            c_prev = c
        self.up = nn.ModuleList()
        for i in range(blocks - 2, -1, -1):
            c = width[i]
            self.up.append(nn.ModuleDict({"conv_up": _conv(c_prev, c, 2), "time": nn.Linear(features, c),
                                          "norm_up": norm(c), "conv1": _conv(2 * c, c, 3), "norm1": norm(c),
                                          "conv2": _conv(c, c, 3), "norm2": norm(c)}))
            c_prev = c
        self.out = nn.Conv1d(features, data_dim, 1)

    def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        t = F.silu(self.embed(level.reshape(x.shape[0])))
        h = x.transpose(1, 2)  # [B, D, L]: channels first for Conv1d
        skips = []
        for block in self.down:
            h = F.relu(block["norm1"](block["conv1"](h) + block["time"](t).unsqueeze(-1)))
            h = F.relu(block["norm2"](block["conv2"](h)))
            skips.append(h)
            h = F.max_pool1d(h, 2)
        h = skips[-1]
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            h = F.interpolate(h, size=skip.shape[-1], mode="nearest-exact")
            h = F.relu(block["norm_up"](block["conv_up"](h) + block["time"](t).unsqueeze(-1)))
            h = torch.cat([h, skip], dim=1)
            h = F.relu(block["norm1"](block["conv1"](h)))
            h = F.relu(block["norm2"](block["conv2"](h)))
        return self.out(h).transpose(1, 2)
