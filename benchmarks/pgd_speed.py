"""Throughput of PGD's trajectory sampler (synthetic transitions per second, unguided and guided by a TD3+BC
agent) and its cost relative to training the agent, measured in the same run.

The PGD protocol regenerates `trajectories` × (L − 1) synthetic transitions every `lifetime` agent updates; the
last line compares one regeneration with those updates. Sampling cost does not depend on the weights, so the U-Net
is untrained here (hopper-shaped data by default: 11 + 3 + 2 channels).

    python benchmarks/pgd_speed.py [--features 64] [--blocks 3] [--length 32] [--sampling-steps 32]
                                   [--trajectories 256] [--lifetime 10000] [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from offline_rl import algos
from offline_rl.augment import pgd
from offline_rl.data.dataset import Batch, Spec


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sampler_rate(model: pgd.TrajectoryModel, cfg: pgd.PGDConfig, n: int, log_prob, device: str) -> float:
    """Synthetic transitions per second of `sample_trajectories` + decoding (after one warm-up call)."""
    pgd.synthetic_transitions(model, min(n, cfg.sample_batch), cfg, log_prob)
    _sync(device)
    t = time.perf_counter()
    parts = pgd.synthetic_transitions(model, n, cfg, log_prob)
    _sync(device)
    return len(parts["rewards"]) / (time.perf_counter() - t)


def agent_rate(agent: algos.Algorithm, spec: Spec, steps: int, device: str) -> float:
    """Updates per second of `agent` on random 256-row batches (the PGD mixture's size)."""
    g = torch.Generator(device=device).manual_seed(0)

    def batch() -> Batch:
        return Batch(torch.randn(256, spec.obs_dim, generator=g, device=device),
                     torch.rand(256, spec.act_dim, generator=g, device=device) * 2 - 1,
                     torch.randn(256, generator=g, device=device),
                     torch.randn(256, spec.obs_dim, generator=g, device=device), torch.zeros(256, device=device))

    for step in range(1, 11):
        agent.update(batch(), step)
    _sync(device)
    t = time.perf_counter()
    for step in range(11, 11 + steps):
        agent.update(batch(), step)
    _sync(device)
    return steps / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--blocks", type=int, default=3)
    p.add_argument("--length", type=int, default=32, help="sampled trajectory length (L − 1 transitions)")
    p.add_argument("--sampling-steps", type=int, default=32)
    p.add_argument("--trajectories", type=int, default=256, help="trajectories timed")
    p.add_argument("--lifetime", type=int, default=10_000, help="agent updates between regenerations")
    p.add_argument("--regen-trajectories", type=int, default=8192, help="trajectories per regeneration")
    p.add_argument("--obs", type=int, default=11)
    p.add_argument("--act", type=int, default=3)
    p.add_argument("--agent-steps", type=int, default=300)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = Spec(args.obs, args.act, (-1.0,) * args.act, (1.0,) * args.act)
    low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
    model = pgd.TrajectoryModel(args.obs, args.act, low, high, args.features, args.blocks).to(args.device).eval()
    cfg = pgd.PGDConfig(features=args.features, blocks=args.blocks, trajectory_length=args.length,
                        sampling_steps=args.sampling_steps, guidance_coeff=0.1)
    agent = algos.make("td3_bc", spec, {}, args.device, seed=0)
    log_prob = pgd.target_log_prob(agent, low.to(args.device), high.to(args.device))
    params = sum(q.numel() for q in model.denoiser.parameters())
    nfe = 2 * args.sampling_steps - 1
    unguided = sampler_rate(model, cfg, args.trajectories, None, args.device)
    guided = sampler_rate(model, cfg, args.trajectories, log_prob, args.device)
    updates = agent_rate(agent, spec, args.agent_steps, args.device)
    per_regen = args.regen_trajectories * (args.length - 1)
    regen_s, train_s = per_regen / guided, args.lifetime / updates
    print(f"device {args.device}, {args.threads} thread(s); U-Net F={args.features}, {args.blocks} blocks, "
          f"{params / 1e6:.2f}M parameters, {args.obs + args.act + 2} channels, L={args.length}, "
          f"{args.sampling_steps} Heun steps ({nfe} network evaluations per sample)")
    print(f"sampler: unguided {unguided:,.0f} synthetic transitions/s, guided {guided:,.0f} transitions/s "
          f"({guided / unguided:.2f}x)")
    print(f"agent: td3_bc {updates:,.0f} updates/s (batch 256)")
    print(f"one regeneration ({args.regen_trajectories} trajectories = {per_regen:,} transitions): {regen_s:,.1f} s "
          f"= {regen_s / train_s:.2f}x the {args.lifetime:,} agent updates between regenerations ({train_s:,.1f} s)")


if __name__ == "__main__":
    main()
