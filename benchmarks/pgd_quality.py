"""How good PGD's synthetic pendulum transitions are: the one-step dynamics error against Pendulum-v1's true
dynamics, and how far the actions sit from a guiding agent's μ(s), per sampler variant and guidance coefficient.

Trains (or loads from the cache) the trajectory model of pendulum-medium with the given size and steps, then samples
128 trajectories per setting. The figures in `algos/pgd.toml` come from this script:

    offline-rl train --algo td3_bc --dataset pendulum-medium --steps 3000 --eval-every 3000 --out runs/td3-3k
    python benchmarks/pgd_quality.py --agent runs/td3-3k --train-steps 3000
    python benchmarks/pgd_quality.py --agent runs/td3-3k --train-steps 6000   # the preset
    python benchmarks/pgd_quality.py --agent runs/td3-3k --train-steps 10000
"""

from __future__ import annotations

import argparse
import math

import torch

from offline_rl.augment import pgd
from offline_rl.data import load_dataset
from offline_rl.training import load_run

G, DT, MAX_SPEED, MAX_TORQUE = 10.0, 0.05, 8.0, 2.0  # Pendulum-v1 (m = l = 1)


def dynamics_error(parts: dict[str, torch.Tensor]) -> float:
    """Mean ‖s′ − f(s, a)‖ with f Pendulum-v1's semi-implicit Euler step on (cos θ, sin θ, θ̇)."""
    o, a = parts["observations"], parts["actions"][..., 0].clamp(-MAX_TORQUE, MAX_TORQUE)
    theta, speed = torch.atan2(o[..., 1], o[..., 0]), o[..., 2]
    speed = (speed + (3 * G / 2 * torch.sin(theta) + 3.0 * a) * DT).clamp(-MAX_SPEED, MAX_SPEED)
    theta = theta + speed * DT
    predicted = torch.stack([torch.cos(theta), torch.sin(theta), speed], -1)
    return float((predicted - parts["next_observations"]).norm(dim=-1).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agent", required=True, help="run folder of the guiding agent")
    p.add_argument("--features", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=6000)
    p.add_argument("--sampling-steps", type=int, default=24)
    p.add_argument("--coefficients", default="0,0.1,0.3,1,3")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("pendulum-medium")
    cfg = pgd.PGDConfig(features=args.features, train_steps=args.train_steps, sampling_steps=args.sampling_steps,
                        euler_from="x_hat")
    model, info = pgd.load_or_train(data, cfg)
    agent, _ = load_run(args.agent)
    policy = agent.policy()
    low, high = model.action_bias - model.action_scale, model.action_bias + model.action_scale
    log_prob = pgd.target_log_prob(agent, low, high)
    with torch.no_grad():
        data_gap = float((data.actions - policy(data.observations)).abs().mean())
    print(f"model: F={args.features}, {info['steps']} steps ({'cached' if info['reused'] else 'trained'}), "
          f"validation loss {info['val_loss']:.3f}; dataset mean |a − μ(s)| {data_gap:.3f}")
    for euler_from in ("x", "x_hat"):
        variant = pgd.PGDConfig(**{**vars(cfg), "euler_from": euler_from})
        parts = pgd.synthetic_transitions(model, 128, variant, None, torch.Generator().manual_seed(0))
        print(f"unguided, euler_from={euler_from}: dynamics error {dynamics_error(parts):.4f}")
    for coeff in (float(c) for c in args.coefficients.split(",")):
        guided = pgd.PGDConfig(**{**vars(cfg), "guidance_coeff": coeff})
        parts = pgd.synthetic_transitions(model, 128, guided, log_prob, torch.Generator().manual_seed(0))
        with torch.no_grad():
            gap = float((parts["actions"] - policy(parts["observations"])).abs().mean())
        done = float(parts["terminals"].float().mean())
        print(f"guidance {coeff:g}: mean |a − μ(s)| {gap:.3f}, dynamics error {dynamics_error(parts):.4f}, "
              f"terminal share {done:.3f}{'' if math.isfinite(gap) else ' (diverged)'}")


if __name__ == "__main__":
    main()
