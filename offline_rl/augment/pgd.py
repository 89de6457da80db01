"""Policy-guided diffusion (Jackson et al., "Policy-Guided Diffusion", RLC 2024, arXiv 2404.06356): a trajectory
diffusion model of the dataset, sampled with guidance from a target policy's action likelihood.

Behaviour-regularised target: samples approximate p_D(τ)·Π_t π_T(a_t | s_t)^λ (∇ log π_B is left out, which keeps
the trajectories on the data's support). A torch port of `EmptyJackson/policy-guided-diffusion`:

- data (`environments/dataset.py`): windows of `trajectory_length` = 32 steps at stride 8 over the dataset's rows,
  no episode end inside a window, plus every window that starts an episode or ends on a terminal, minus those ending
  on a timeout; 5% of the episodes held out. x_t = [s, arctanh(clip(ã, ±0.999)), r, d] (ã = the action scaled to
  [−1, 1]), z-scored per dimension over all windows and steps (a constant dimension keeps std 1);
- model (`models/diffusion.py`, `diffusion/edm.py`): EDM with σ_data = 1 around the 1-D U-Net, loss weight
  (σ² + 1)/σ², log-normal σ (−1.2, 1.2), Adam with warmup-cosine LR (2e-3), batch 32, EMA 0.995 every 10 steps;
- sampler: Karras schedule (σ 0.002–80, ρ 7, 256 steps), churn 80, S_noise 1.003, Heun, Euler from x_i (the
  reference; `euler_from="x_hat"` is EDM Algorithm 2), and at step i the guidance on the action block only:
      x_a ← x_a + λ_i·∇_{x_a} Σ_t log π_T(tanh(unnorm(x_a,t)) | unnorm(x_s,t)),
      λ_i = coeff·(1 − i/N + c_cos·sin(π(i + 1)/N)), 0 at the last step and during the first `guidance_delay`;
  π_T(·|s) = N(μ(s), 1) for a deterministic actor (TD3+BC), the actor's Gaussian for IQL;
- decoding: a = tanh(unnorm(x_a)) (rescaled to the action bounds), d = 1[unnorm(x_d) > 0.5], s′ = the next step's
  s, so a sample of L steps gives L − 1 transitions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributions import Normal

from offline_rl.data.dataset import Dataset
from offline_rl.errors import ConfigError
from offline_rl.generative import EDMDenoiser, UNet1D, edm_loss, edm_sample, fit_edm
from offline_rl.paths import home
from offline_rl.utils.io import atomic_write, atomic_write_json

log = logging.getLogger(__name__)

ACTION_CLIP = 0.999
"""Actions are clipped to ±0.999 (in [−1, 1] units) before arctanh."""
LogProb = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""log π_T(ã | s) summed over action dims: (raw states [n, obs_dim], actions scaled to [−1, 1] [n, act_dim]) -> [n]."""


@dataclass
class PGDConfig:
    """The diffusion model and its sampler; defaults are the reference's (`util/args.py`, `diffusion/edm.py`).

    The reference defaults are far beyond a CPU (F = 1024: 178M parameters; 10 000 epochs): the presets in
    `algos/pgd.toml` shrink them per family and say so. `train_steps > 0` replaces the epoch count.
    """

    trajectory_length: int = 32
    dataset_stride: int = 8
    val_ratio: float = 0.05
    features: int = 1024
    blocks: int = 3
    lr: float = 2e-3
    diffusion_batch_size: int = 32
    epochs: int = 10_000
    train_steps: int = 0
    ema_decay: float = 0.995
    ema_every: int = 10
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_data: float = 1.0
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    sampling_steps: int = 256
    s_churn: float = 80.0
    s_tmin: float = 0.05
    s_tmax: float = 50.0
    s_noise: float = 1.003
    heun: bool = True
    euler_from: str = "x"
    guidance_coeff: float = 0.0
    guidance_cosine: float = 0.3
    guidance_delay: int = 0
    guidance_norm: str = "none"
    denoised_guidance: bool = False
    rollout_length: int = 0
    sample_batch: int = 256
    diffusion_seed: int = 0


TRAINING_FIELDS = ("trajectory_length", "dataset_stride", "val_ratio", "features", "blocks", "lr",
                   "diffusion_batch_size", "epochs", "train_steps", "ema_decay", "ema_every", "p_mean", "p_std",
                   "sigma_data", "diffusion_seed")
"""The config fields that determine the trained model (the rest only change how it is sampled)."""


def check_config(cfg: PGDConfig) -> None:
    if cfg.euler_from not in ("x", "x_hat"):
        raise ConfigError(f"pgd: euler_from must be 'x' (the reference) or 'x_hat' (EDM Algorithm 2), got "
                          f"'{cfg.euler_from}'")
    if cfg.guidance_norm not in ("none", "reference", "fixed"):
        raise ConfigError(f"pgd: guidance_norm must be 'none', 'reference' (g/‖g‖ + 1e-8, the released code) or "
                          f"'fixed' (g/(‖g‖ + 1e-8)), got '{cfg.guidance_norm}'")
    if cfg.trajectory_length < 2 or cfg.dataset_stride < 1:
        raise ConfigError(f"pgd: trajectory_length must be ≥ 2 and dataset_stride ≥ 1, got {cfg.trajectory_length}, "
                          f"{cfg.dataset_stride}")
    if cfg.rollout_length == 1 or cfg.rollout_length < 0:
        raise ConfigError(f"pgd: rollout_length must be 0 (= trajectory_length) or ≥ 2, got {cfg.rollout_length}")


# --- windows ---------------------------------------------------------------------------------------------------

def window_starts(split: np.ndarray, terminal: np.ndarray, timeout: np.ndarray, is_start: np.ndarray, length: int,
                  stride: int) -> np.ndarray:
    """Start rows of the training windows over flat rows (the reference's `_assemble_dataset`), sorted.

    A start j is valid when no row in j … j + L − 2 ends an episode (`split`). Kept: every `stride`-th valid start,
    every valid start of an episode (`is_start`), every valid start whose window ends on a terminal; removed: the
    windows ending on a timeout.
    """
    n = len(split)
    if n < length:
        return np.zeros(0, dtype=np.int64)
    ends = np.concatenate([[0], np.cumsum(split[:-1].astype(np.int64))])  # ends[k] = splits in rows < k
    starts = np.arange(n - length + 1)
    valid = starts[ends[starts + length - 1] - ends[starts] == 0]
    last = valid + length - 1
    keep = set(valid[::stride].tolist()) | set(valid[terminal[last]].tolist()) | set(valid[is_start[valid]].tolist())
    keep -= set(valid[timeout[last]].tolist())
    return np.array(sorted(keep), dtype=np.int64)


def episode_rows(dataset: Dataset) -> dict[str, np.ndarray]:
    """Per-row flags of `dataset` for windowing: split (an episode ends after this row), terminal, timeout, start."""
    ep = dataset.episode_ids.cpu().numpy()
    boundary = np.concatenate([ep[1:] != ep[:-1], [True]])
    terminal = dataset.terminals.cpu().numpy().astype(bool)
    timeout = dataset.timeouts.cpu().numpy().astype(bool)
    start = np.concatenate([[True], boundary[:-1]])
    return {"split": boundary | terminal | timeout, "terminal": terminal, "timeout": timeout, "start": start,
            "episode": ep}


def split_episodes(episodes: np.ndarray, val_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) episode ids: `val_ratio` of the episodes, drawn without replacement with `seed`."""
    ids = np.unique(episodes)
    n_val = int(val_ratio * len(ids))
    if n_val == 0:
        return ids, ids[:0]
    val = np.random.default_rng(seed).choice(ids, size=n_val, replace=False)
    return np.setdiff1d(ids, val), np.sort(val)


def subset_windows(rows: dict[str, np.ndarray], episodes: np.ndarray, length: int, stride: int) -> np.ndarray:
    """Windows ([n, L] row indices) of the rows whose episode is in `episodes`, as if those rows were concatenated."""
    idx = np.flatnonzero(np.isin(rows["episode"], episodes))
    if len(idx) == 0:
        return np.zeros((0, length), dtype=np.int64)
    starts = window_starts(rows["split"][idx], rows["terminal"][idx], rows["timeout"][idx], rows["start"][idx],
                           length, stride)
    return idx[starts[:, None] + np.arange(length)]


# --- the trajectory model --------------------------------------------------------------------------------------

class TrajectoryModel(nn.Module):
    """The trained denoiser D(x; σ) over normalised trajectories, with the statistics to encode and decode them."""

    def __init__(self, obs_dim: int, act_dim: int, action_low: torch.Tensor, action_high: torch.Tensor,
                 features: int, blocks: int, sigma_data: float = 1.0) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.dim = obs_dim + act_dim + 2
        self.denoiser = EDMDenoiser(UNet1D(self.dim, features, blocks), sigma_data)
        self.register_buffer("mean", torch.zeros(self.dim))
        self.register_buffer("std", torch.ones(self.dim))
        self.register_buffer("action_scale", (action_high - action_low) / 2.0)
        self.register_buffer("action_bias", (action_high + action_low) / 2.0)

    @property
    def actions(self) -> slice:
        return slice(self.obs_dim, self.obs_dim + self.act_dim)

    def to_unit(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions scaled to [−1, 1]."""
        return (actions - self.action_bias) / self.action_scale

    def raw_steps(self, dataset: Dataset, windows: np.ndarray) -> torch.Tensor:
        """[n, L, D] unnormalised x_t = [s, arctanh(clip(ã)), r, d] of the windows' rows."""
        idx = torch.as_tensor(windows, device=dataset.device)
        pre_tanh = torch.atanh(self.to_unit(dataset.actions).clamp(-ACTION_CLIP, ACTION_CLIP))
        steps = torch.cat([dataset.observations, pre_tanh, dataset.rewards[:, None],
                           dataset.terminals.float()[:, None]], dim=1)
        return steps[idx]

    def fit_stats(self, raw: torch.Tensor) -> None:
        """Per-dimension mean and std over all windows and steps (std 0 → 1), as the reference's `normalise_traj`."""
        flat = raw.reshape(-1, self.dim)
        std = flat.std(0, unbiased=False)
        self.mean.copy_(flat.mean(0))
        self.std.copy_(torch.where(std == 0, torch.ones_like(std), std))

    def normalize(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean

    def unit_actions(self, x: torch.Tensor) -> torch.Tensor:
        """The action block of normalised samples decoded to [−1, 1]: tanh(unnormalise(x_a))."""
        a = self.actions
        return torch.tanh(x[..., a] * self.std[a] + self.mean[a])

    def decode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Transitions from normalised samples [n, L, D]: (n, L − 1) of obs, actions, rewards, next_obs, terminals."""
        raw = self.unnormalize(x)
        o, a = self.obs_dim, self.actions
        return {"observations": raw[:, :-1, :o], "actions": self.action_bias + self.action_scale * self.unit_actions(x)[:, :-1],
                "rewards": raw[:, :-1, a.stop], "next_observations": raw[:, 1:, :o],
                "terminals": raw[:, :-1, a.stop + 1] > 0.5}


def guidance_weight(step: int, steps: int, coeff: float, cosine: float, delay: int = 0) -> float:
    """λ_i = coeff·(1 − i/N + c_cos·sin(π(i + 1)/N)) for delay ≤ i < N − 1, else 0."""
    if step < delay or step >= steps - 1:
        return 0.0
    return coeff * (1.0 - step / steps + cosine * math.sin(math.pi * (step + 1) / steps))


def action_guidance(model: TrajectoryModel, log_prob: LogProb, x: torch.Tensor, norm: str = "none") -> torch.Tensor:
    """g = ∇ over the normalised action block of Σ_t log π_T(tanh(unnorm(x_a)) | unnorm(x_s)), per trajectory;
    normalised per trajectory by its Frobenius norm when `norm` is 'reference' (g/‖g‖ + 1e-8, the released code's
    precedence) or 'fixed' (g/(‖g‖ + 1e-8)). Returns [n, L, act_dim]."""
    x = x.detach()
    a = x[..., model.actions].clone().requires_grad_(True)
    states = model.unnormalize(x)[..., :model.obs_dim].reshape(-1, model.obs_dim)
    actions = torch.tanh(a * model.std[model.actions] + model.mean[model.actions]).reshape(-1, model.act_dim)
    (g,) = torch.autograd.grad(log_prob(states, actions).sum(), a)
    if norm != "none":
        size = g.flatten(1).norm(dim=1).reshape(-1, 1, 1)
        g = g / size + 1e-8 if norm == "reference" else g / (size + 1e-8)
    return g


def make_guidance(model: TrajectoryModel, log_prob: LogProb, cfg: PGDConfig, steps: int):
    """The sampler hook adding λ_i·g to the action block of x_i (evaluated at D(x_i; σ_i) with `denoised_guidance`).
    States, rewards and dones get 0."""

    def guidance(x: torch.Tensor, i: int, sigma: float) -> torch.Tensor:
        term = torch.zeros_like(x)
        lam = guidance_weight(i, steps, cfg.guidance_coeff, cfg.guidance_cosine, cfg.guidance_delay)
        if lam == 0.0:
            return term
        at = x
        if cfg.denoised_guidance:
            with torch.no_grad():
                at = model.denoiser(x, sigma)
        term[..., model.actions] = lam * action_guidance(model, log_prob, at, cfg.guidance_norm)
        return term

    return guidance


@torch.no_grad()
def sample_trajectories(model: TrajectoryModel, n: int, cfg: PGDConfig, log_prob: LogProb | None = None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """n normalised trajectories [n, L_s, D] (L_s = `rollout_length` or the training length), guided when
    `log_prob` is given and `guidance_coeff` ≠ 0; drawn in chunks of `sample_batch`."""
    length = cfg.rollout_length or cfg.trajectory_length
    device = model.mean.device
    guide = None
    if log_prob is not None and cfg.guidance_coeff != 0.0:
        guide = make_guidance(model, log_prob, cfg, cfg.sampling_steps)
    out = []
    for k in range(0, n, cfg.sample_batch):
        m = min(cfg.sample_batch, n - k)
        out.append(edm_sample(model.denoiser, (m, length, model.dim), cfg.sampling_steps, cfg.sigma_min,
                              cfg.sigma_max, cfg.rho, cfg.s_churn, cfg.s_tmin, cfg.s_tmax, cfg.s_noise, cfg.heun,
                              cfg.euler_from, guide, generator=generator, device=device))
    return torch.cat(out)


def synthetic_transitions(model: TrajectoryModel, n: int, cfg: PGDConfig, log_prob: LogProb | None = None,
                          generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """`sample_trajectories` decoded and flattened: n·(L_s − 1) transitions (obs, actions, rewards, next_obs, terminals)."""
    parts = model.decode(sample_trajectories(model, n, cfg, log_prob, generator))
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in parts.items()}


# --- target policies --------------------------------------------------------------------------------------------

def target_log_prob(agent: nn.Module, action_low: torch.Tensor, action_high: torch.Tensor) -> LogProb:
    """log π_T(ã | s) of a trained agent (an `Algorithm`), for actions ã in [−1, 1] units.

    An actor with a distribution (`actor.dist`, IQL's Gaussian over actions / max_action) is used as it is; any
    other policy is treated as deterministic with π_T = N(μ(s), 1) around its action μ(s) in [−1, 1] units (the
    reference's `det_guidance` for TD3+BC).
    """
    scale, bias = (action_high - action_low) / 2.0, (action_high + action_low) / 2.0
    actor = getattr(agent, "actor", None)
    if actor is not None and hasattr(actor, "dist") and hasattr(agent, "normalizer"):
        def stochastic(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
            env_actions = bias + scale * actions
            return actor.dist(agent.normalizer(states)).log_prob(env_actions / actor.max_action).sum(-1)

        return stochastic
    policy = agent.policy()

    def deterministic(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            mu = (policy(states) - bias) / scale
        return Normal(mu, 1.0).log_prob(actions).sum(-1)

    return deterministic


# --- training and the model cache -------------------------------------------------------------------------------

def dataset_fingerprint(dataset: Dataset) -> str:
    """sha256 over the dataset's transition arrays (what the model is trained on)."""
    h = hashlib.sha256()
    for key in ("observations", "actions", "rewards", "terminals", "timeouts", "episode_ids"):
        h.update(getattr(dataset, key).detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def model_key(dataset: Dataset, cfg: PGDConfig) -> str:
    """The cache key of a trained model: the dataset's content and the training fields of the config."""
    fields = {k: getattr(cfg, k) for k in TRAINING_FIELDS}
    text = json.dumps([dataset_fingerprint(dataset), fields], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where trained trajectory models are kept: `$OFFLINE_RL_HOME/generative/pgd/<key>/`."""
    return home() / "generative" / "pgd"


def train_model(dataset: Dataset, cfg: PGDConfig, progress: Callable[[int, float], None] | None = None
                ) -> tuple[TrajectoryModel, dict[str, Any]]:
    """Train the trajectory model on `dataset` (seeded by `diffusion_seed`); returns the EMA model and a summary."""
    check_config(cfg)
    rows = episode_rows(dataset)
    train_eps, val_eps = split_episodes(rows["episode"], cfg.val_ratio, cfg.diffusion_seed)
    train_w = subset_windows(rows, train_eps, cfg.trajectory_length, cfg.dataset_stride)
    val_w = subset_windows(rows, val_eps, cfg.trajectory_length, cfg.dataset_stride)
    if len(train_w) < cfg.diffusion_batch_size:
        raise ConfigError(f"pgd: {dataset.source or 'dataset'} gives {len(train_w)} training windows of "
                          f"{cfg.trajectory_length} steps, fewer than the batch size {cfg.diffusion_batch_size}")
    low = torch.tensor(dataset.spec.action_low, device=dataset.device)
    high = torch.tensor(dataset.spec.action_high, device=dataset.device)
    with torch.random.fork_rng(devices=[]):  # the initialisation is seeded without touching the caller's RNG
        torch.manual_seed(cfg.diffusion_seed)
        model = TrajectoryModel(dataset.spec.obs_dim, dataset.spec.act_dim, low, high, cfg.features, cfg.blocks,
                                cfg.sigma_data).to(dataset.device)
    raw = model.raw_steps(dataset, train_w)
    model.fit_stats(raw)
    data = model.normalize(raw)
    steps = cfg.train_steps or (len(data) // cfg.diffusion_batch_size) * cfg.epochs
    start = time.perf_counter()
    generator = torch.Generator(device=dataset.device).manual_seed(cfg.diffusion_seed)
    ema, losses = fit_edm(model.denoiser, data, steps, cfg.diffusion_batch_size, cfg.lr, 0.1, cfg.ema_decay,
                          cfg.ema_every, cfg.p_mean, cfg.p_std, generator, progress)
    model.denoiser = ema
    val_loss = None
    if len(val_w):
        with torch.no_grad():
            val = model.normalize(model.raw_steps(dataset, val_w))
            val_loss = float(torch.stack([edm_loss(model.denoiser, val[k:k + 256], cfg.p_mean, cfg.p_std,
                                                   generator=generator) for k in range(0, len(val), 256)]).mean())
    summary = {"train_windows": len(train_w), "val_windows": len(val_w), "steps": steps, "losses": losses,
               "val_loss": val_loss, "parameters": sum(p.numel() for p in model.denoiser.parameters()),
               "train_seconds": time.perf_counter() - start}
    return model, summary


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (a second process training the same model waits, then loads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_or_train(dataset: Dataset, cfg: PGDConfig, retrain: bool = False,
                  progress: Callable[[int, float], None] | None = None) -> tuple[TrajectoryModel, dict[str, Any]]:
    """The model for (dataset, training config) from the cache, trained and saved first when it is not there.

    Only the guidance and sampling settings may differ between uses of one cached model, so changing the guiding
    agent (or its coefficient) reuses it. The summary has `reused` and `path`.
    """
    check_config(cfg)
    folder = cache_dir() / model_key(dataset, cfg)
    with _locked(folder.parent / f".{folder.name}.lock"):
        if (folder / "model.pt").is_file() and not retrain:
            state = torch.load(folder / "model.pt", map_location=dataset.device, weights_only=False)
            model = _build(state["dims"], state["training"]).to(dataset.device)
            model.load_state_dict(state["model"])
            return model, {**state["summary"], "reused": True, "path": str(folder)}
        model, summary = train_model(dataset, cfg, progress)
        training = {k: getattr(cfg, k) for k in TRAINING_FIELDS}
        dims = {"obs_dim": model.obs_dim, "act_dim": model.act_dim, "action_low": list(dataset.spec.action_low),
                "action_high": list(dataset.spec.action_high)}
        state = {"model": model.state_dict(), "training": training, "dims": dims, "summary": summary}
        atomic_write(folder / "model.pt", lambda f: torch.save(state, f), mode="wb")
        atomic_write_json(folder / "info.json", {"dataset": dataset.source, "dataset_sha256": dataset_fingerprint(dataset),
                                                 "training": training, **summary})
    return model, {**summary, "reused": False, "path": str(folder)}


def _build(dims: dict[str, Any], training: dict[str, Any]) -> TrajectoryModel:
    return TrajectoryModel(dims["obs_dim"], dims["act_dim"], torch.tensor(dims["action_low"]),
                           torch.tensor(dims["action_high"]), training["features"], training["blocks"],
                           training["sigma_data"])


def config_from(values: dict[str, Any]) -> PGDConfig:
    """A PGDConfig from a dict, ignoring keys that are not PGDConfig fields (e.g. a preset's agent settings)."""
    names = {f.name for f in dataclasses.fields(PGDConfig)}
    return PGDConfig(**{k: v for k, v in values.items() if k in names})
