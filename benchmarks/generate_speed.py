"""Dataset generation speed: our generator against a naive rollout loop, measured in the same run.

    python benchmarks/generate_speed.py [--card hopper-medium] [--steps 100000] [--naive-steps 100000]
                                        [--num-envs 8] [--seed 0]

Ours: `generate_dataset(card, steps=...)` end to end (zoo policy load, rollouts in a vector env with one batched
policy call per vector step, Minari write) into a temporary folder. Reference: a naive loop, one gymnasium env and
one policy call per env step with the same behaviour policy (for a zoo card the same SAC actor, sampled actions),
keeping the transitions in Python lists and writing nothing. Both run with torch on one thread. The report gives
transitions per second of each, their ratio and the projected time for 1M transitions. The defaults take about
1-2 minutes on 2 CPU cores; run it with `nice -n 10` on a shared machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import gymnasium as gym

from offline_rl.data import generate_dataset, get_card
from offline_rl.envs.controllers import expand_behaviour, make_policy, torch_threads

MILLION = 1_000_000


def naive_rate(card_name: str, steps: int, seed: int) -> float:
    """Transitions per second of one env and one policy call per step (the card's first behaviour part)."""
    card = get_card(card_name)
    if card is None or "mix" in card.behaviour:
        raise SystemExit(f"--card must name a card with a single behaviour, got {card_name!r}")
    policy = make_policy(expand_behaviour(card.behaviour, card.env_id)[0], card.env_id, seed)
    env = gym.make(card.env_id)
    rows: list[tuple] = []
    start = time.perf_counter()
    with torch_threads(1):
        obs, _ = env.reset(seed=seed)
        for _ in range(steps):
            action = policy(obs[None])[0]
            next_obs, reward, terminated, truncated, _ = env.step(action)
            rows.append((obs, action, reward, terminated, truncated, next_obs))
            obs = env.reset()[0] if terminated or truncated else next_obs
    elapsed = time.perf_counter() - start
    env.close()
    return len(rows) / elapsed


def ours_rate(card_name: str, steps: int, seed: int, num_envs: int) -> tuple[float, int]:
    """(transitions per second, transitions) of `generate_dataset` end to end, Minari write included."""
    import minari

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        path = generate_dataset(card_name, steps=steps, seed=seed, out=out, num_envs=num_envs)
        elapsed = time.perf_counter() - start
        total = minari.MinariDataset(path / "data").total_steps
    return total / elapsed, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--card", default="hopper-medium", help="Dataset card to generate (default hopper-medium).")
    parser.add_argument("--steps", type=int, default=100_000, help="Transitions for our generator.")
    parser.add_argument("--naive-steps", type=int, default=None,
                        help="Transitions for the naive loop (default: --steps).")
    parser.add_argument("--num-envs", type=int, default=8, help="Sub-envs of our generator's vector env.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    naive_steps = args.naive_steps or args.steps
    ours, total = ours_rate(args.card, args.steps, args.seed, args.num_envs)
    naive = naive_rate(args.card, naive_steps, args.seed)
    print(f"card {args.card}: generator {total} transitions ({args.num_envs} sub-envs, Minari write included), "
          f"naive loop {naive_steps} transitions (1 env, 1 policy call per step, no write); torch on 1 thread")
    for name, rate in (("generator", ours), ("naive loop", naive)):
        print(f"{name:<11} {rate:10.0f} transitions/s   projected 1M: {MILLION / rate / 60:6.2f} min")
    print(f"ratio       {ours / naive:10.2f}x (generator / naive loop)")


if __name__ == "__main__":
    main()
