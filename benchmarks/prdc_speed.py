"""PRDC update speed against TD3+BC, in the same run, on a synthetic hopper-shaped dataset (1M transitions).

    python benchmarks/prdc_speed.py [--n 1000000] [--steps 400] [--rounds 5] [--brute-steps 0]
                                    [--variants kdtree,kdtree-overlap,kdtree-plain,brute] [--device cpu] [--threads 1]

States lie on a low-dimensional manifold (smooth trajectories of a 4-d latent process mapped into 11 dims, like
locomotion data); actions = tanh(linear(s)) + N(0, 0.1²), clipped, in 3 dims; the reward −‖a − tanh(linear(s))‖²
is best at the behaviour mean. All contenders start from the same state (a briefly behaviour-cloned actor, then
`--warmup` TD3+BC updates), so the PRDC queries (β·s, π(s)) lie near the data, as in training once the actor has
left its random initialisation. Algorithms are timed in interleaved rounds (robust to a shared, noisy machine); the report
gives the median step time of each, the ratio to TD3+BC and the nearest-neighbour overhead per update. The
isolated search time per query (in distribution and off-manifold) and the index build time are printed too.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from offline_rl import algos
from offline_rl.data.dataset import Dataset, Spec

OBS, ACT = 11, 3


def hopper_like(n: int, seed: int = 0, episode_len: int = 1000) -> Dataset:
    rng = np.random.default_rng(seed)
    eps = n // episode_len
    t = np.arange(episode_len)[None, :, None] / 50.0
    z = np.sin(rng.uniform(0.5, 2, (eps, 1, 4)) * t + rng.uniform(0, 2 * np.pi, (eps, 1, 4)))
    z = z * rng.uniform(0.5, 1.5, (eps, 1, 4))
    s = (z @ rng.normal(size=(4, OBS)) + np.sin(2 * z) @ rng.normal(size=(4, OBS))).reshape(-1, OBS)
    s = (s + 0.05 * rng.normal(size=s.shape)).astype(np.float32)
    mean_a = np.tanh(s @ rng.normal(size=(OBS, ACT)) / np.sqrt(OBS))
    a = np.clip(mean_a + 0.1 * rng.normal(size=mean_a.shape), -1, 1)
    reward = -((a - mean_a) ** 2).sum(1)  # best at the behaviour mean, so the learned policy stays in distribution
    n = len(s)
    next_s = np.concatenate([s[1:], s[-1:]])
    return Dataset(observations=torch.from_numpy(s), actions=torch.from_numpy(a.astype(np.float32)),
                   rewards=torch.from_numpy(reward.astype(np.float32)),
                   next_observations=torch.from_numpy(next_s), terminals=torch.zeros(n, dtype=torch.bool),
                   timeouts=torch.zeros(n, dtype=torch.bool),
                   episode_ids=torch.arange(n) // episode_len, env_id=None,
                   spec=Spec(OBS, ACT, (-1.0,) * ACT, (1.0,) * ACT), name="synthetic-hopper-like")


def warm_start(data: Dataset, device: str, steps: int) -> dict:
    """The state of a TD3+BC run after `steps` updates, preceded by 500 steps of MSE behaviour cloning of the actor:
    every contender starts from it, with its queries (β·s, π(s)) near the data."""
    algo = algos.make("td3_bc", data.spec, {}, device=device, seed=0)
    algo.prepare(data)
    opt = torch.optim.Adam(algo.actor.parameters(), lr=1e-3)
    g = torch.Generator(device=data.device).manual_seed(0)
    for _ in range(500):
        b = algo.normalize(data.sample(256, g))
        loss = (algo.actor(b.observations) - b.actions).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    algo.actor_target.load_state_dict(algo.actor.state_dict())
    for step in range(1, steps + 1):
        algo.update(data.sample(256, g), step)
    return algo.state_dict()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=400, help="updates per algorithm per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variants", default="kdtree,kdtree-plain,brute",
                   help="PRDC variants: kdtree (with the state-neighbour cache, searching inline), kdtree-overlap "
                        "(the search on a second thread during the critic step, the training default), kdtree-plain "
                        "(the reference's bare cKDTree query), brute")
    p.add_argument("--brute-steps", type=int, default=0, help="updates per round for the brute force (0: --steps)")
    p.add_argument("--warmup", type=int, default=1000, help="TD3+BC updates before timing (shared start)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the trainer's default: 1)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    print(f"device {dev}, torch threads {torch.get_num_threads()}, N = {args.n}, obs {OBS}, act {ACT}")

    data = hopper_like(args.n).to(dev)
    t0 = time.perf_counter()
    state = warm_start(data, dev, args.warmup)
    print(f"warm start (BC + {args.warmup} TD3+BC updates): {time.perf_counter() - t0:.1f} s")
    contenders: dict[str, algos.Algorithm] = {"td3_bc": algos.make("td3_bc", data.spec, {}, device=dev, seed=0)}
    for variant in args.variants.split(","):
        backend, _, suffix = variant.partition("-")
        over = {"nn_backend": backend, "nn_overlap": suffix == "overlap", **({"nn_cache": 0} if suffix == "plain" else {})}
        contenders[f"prdc[{variant}]"] = algos.make("prdc", data.spec, over, device=dev, seed=0)
    for name, algo in contenders.items():
        t0 = time.perf_counter()
        algo.prepare(data)
        sync(dev)
        print(f"{name:20s} prepare (normaliser{', neighbour index' if 'prdc' in name else ''}): "
              f"{time.perf_counter() - t0:.2f} s")
        algo.load_state_dict(state)  # same modules (actor, critic, targets, normaliser) and optimiser state

    # The search alone, 256 keys per query: in distribution (π(s) of the BC actor) and off-manifold (uniform a).
    prdc = next(a for n, a in contenders.items() if n.startswith("prdc"))  # for the keys (all share one actor)
    g = torch.Generator(device=dev).manual_seed(1)
    batch = prdc.normalize(data.sample(256, g))
    with torch.no_grad():
        keys_in = torch.cat([prdc.config.beta * batch.observations, prdc.actor(batch.observations)], 1)
    keys_off = torch.cat([keys_in[:, :OBS], torch.rand(256, ACT, device=dev) * 2 - 1], 1)
    searches = {f"prdc[{v}]": contenders[f"prdc[{v}]"].search for v in args.variants.split(",")}
    for name, search in searches.items():
        for label, keys in (("in-distribution", keys_in), ("off-manifold", keys_off)):
            times = []
            for _ in range(3 if "brute" in name and dev == "cpu" else 20):
                t0 = time.perf_counter()
                d, _ = search.query(keys)
                sync(dev)
                times.append(time.perf_counter() - t0)
            print(f"search {name:20s} {label:15s}: {1e3 * statistics.median(times):8.2f} ms per 256 keys, "
                  f"mean NN distance {float(d.mean()):.3f}"
                  + (f", {search.last_fallback} keys to the tree" if hasattr(search, "last_fallback") else ""))

    step_times: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_times: dict[str, list[float]] = {name: [] for name in contenders}
    step_no = {name: 0 for name in contenders}
    samplers = {name: torch.Generator(device=dev).manual_seed(2) for name in contenders}
    metrics: dict[str, dict] = {}
    for r in range(args.rounds + 1):  # round 0 warms up and is discarded
        for name, algo in contenders.items():
            n = args.brute_steps if "brute" in name and args.brute_steps else args.steps
            batches = [data.sample(256, samplers[name]) for _ in range(n)]
            sync(dev)
            t0, c0 = time.perf_counter(), time.process_time()
            for b in batches:
                step_no[name] += 1
                metrics[name] = algo.update(b, step_no[name])
            sync(dev)
            if r:
                step_times[name].append((time.perf_counter() - t0) / n)
                cpu_times[name].append((time.process_time() - c0) / n)

    base, cpu_base = statistics.median(step_times["td3_bc"]), statistics.median(cpu_times["td3_bc"])
    print(f"\n{'algorithm':20s} {'updates/s':>9s} {'ms/update':>9s} {'ratio':>6s} {'NN overhead':>11s} "
          f"{'CPU ms/upd':>10s} {'CPU overhead':>12s}  mean NN dist")
    for name, times in step_times.items():
        t, cpu = statistics.median(times), statistics.median(cpu_times[name])
        nn_d = f"{float(metrics[name]['nn_distance']):.3f}" if "nn_distance" in metrics[name] else "-"
        print(f"{name:20s} {1 / t:9.1f} {1e3 * t:9.2f} {t / base:6.3f} {100 * (t - base) / base:10.1f}% "
              f"{1e3 * cpu:10.2f} {100 * (cpu - cpu_base) / cpu_base:11.1f}%  {nn_d}")
    print("\nNN overhead = (PRDC step − TD3+BC step) / TD3+BC step, in wall-clock time (what a run sees) and in\n"
          "process CPU time (the work, all threads; less sensitive to other load on the machine). Target: <= 25%\n"
          "on CPU. The search runs on actor steps only (every policy_freq = 2 updates).")


if __name__ == "__main__":
    main()
