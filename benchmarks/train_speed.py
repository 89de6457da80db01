"""Updates per second of our TD3+BC and IQL against a CORL-style reference loop, measured in the same run.

The reference is our own re-implementation of the way CORL's single-file scripts run (read from its public
`td3_bc.py` / `iql.py`): a numpy replay buffer indexed on the host and copied to the device every step, two separate
critic modules, the default (non-fused) Adam and a `.item()` per loss per step for logging. The update maths is the
same in both, so the ratio measures the engineering only. On CUDA the `ours+graphs` column replays each update from
CUDA graphs (offline_rl.training.graphs; IQL's cosine LR schedule keeps it eager, shown as nan); SAC (the zoo's
trainer) and the research methods (`--algos prdc,a2pr,odice`, with their default networks) have no reference loop.

    python benchmarks/train_speed.py [--steps 300] [--n 1000000] [--device cpu] [--threads 1] [--algos td3_bc,iql,sac]
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offline_rl import algos
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.training.graphs import UpdateStep

OBS, ACT = 11, 3  # hopper-shaped


def synthetic(n: int, device: str) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(torch.randn(n, OBS, generator=g), torch.rand(n, ACT, generator=g) * 2 - 1,
                   torch.randn(n, generator=g), torch.randn(n, OBS, generator=g), torch.rand(n, generator=g) < 1e-3,
                   torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.long), None,
                   Spec(OBS, ACT, (-1.0,) * ACT, (1.0,) * ACT), episode_returns=np.array([0.0, 1.0])).to(device)


def ours(name: str, data: Dataset, steps: int, cuda_graphs: bool = False) -> float:
    """Our update through the trainer's `UpdateStep` (CUDA graphs only where asked for and usable)."""
    algo = algos.make(name, data.spec, {}, data.device, seed=0)
    algo.configure_schedule(steps * 2)
    algo.prepare(data)
    gen = torch.Generator(device=data.device).manual_seed(0)
    update = UpdateStep(algo, lambda g: data.sample(256, g), gen, cuda_graphs)
    if cuda_graphs and not update.graphed:
        return float("nan")
    for step in range(1, 21):
        update(step)
    _sync(data.device)
    t = time.perf_counter()
    for step in range(21, 21 + steps):
        metrics = update(step)
    {k: float(v) for k, v in metrics.items()}
    _sync(data.device)
    return steps / (time.perf_counter() - t)


def mlp(i: int, o: int, out=None) -> nn.Sequential:
    layers = [nn.Linear(i, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, o)]
    return nn.Sequential(*layers, *([out] if out else []))


def corl_style_td3_bc(data: Dataset, steps: int) -> float:
    device = data.device
    buf = {k: getattr(data, k).cpu().numpy() for k in ("observations", "actions", "rewards", "next_observations")}
    buf["dones"] = data.terminals.cpu().numpy().astype(np.float32)
    actor, q1, q2 = mlp(OBS, ACT, nn.Tanh()).to(device), mlp(OBS + ACT, 1).to(device), mlp(OBS + ACT, 1).to(device)
    actor_t, q1_t, q2_t = copy.deepcopy(actor), copy.deepcopy(q1), copy.deepcopy(q2)
    opt_a = torch.optim.Adam(actor.parameters(), lr=3e-4)
    opt_q = torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=3e-4)
    log: list[float] = []

    def step(it: int) -> None:
        idx = np.random.randint(0, len(buf["rewards"]), size=256)
        s, a, r, s2, d = (torch.from_numpy(buf[k][idx]).to(device) for k in
                          ("observations", "actions", "rewards", "next_observations", "dones"))
        with torch.no_grad():
            a2 = (actor_t(s2) + (torch.randn_like(a) * 0.2).clamp(-0.5, 0.5)).clamp(-1, 1)
            y = r + 0.99 * (1 - d) * torch.min(q1_t(torch.cat([s2, a2], 1)), q2_t(torch.cat([s2, a2], 1))).squeeze(-1)
        sa = torch.cat([s, a], 1)
        loss_q = F.mse_loss(q1(sa).squeeze(-1), y) + F.mse_loss(q2(sa).squeeze(-1), y)
        opt_q.zero_grad()
        loss_q.backward()
        opt_q.step()
        log.append(loss_q.item())
        if it % 2 == 0:
            pi = actor(s)
            q = q1(torch.cat([s, pi], 1))
            loss_a = -2.5 / q.abs().mean().detach() * q.mean() + F.mse_loss(pi, a)
            opt_a.zero_grad()
            loss_a.backward()
            opt_a.step()
            log.append(loss_a.item())
            for t, src in ((q1_t, q1), (q2_t, q2), (actor_t, actor)):
                for pt, p in zip(t.parameters(), src.parameters()):
                    pt.data.copy_(0.005 * p.data + 0.995 * pt.data)

    return _time(step, steps, device)


def corl_style_iql(data: Dataset, steps: int) -> float:
    device = data.device
    buf = {k: getattr(data, k).cpu().numpy() for k in ("observations", "actions", "rewards", "next_observations")}
    buf["dones"] = data.terminals.cpu().numpy().astype(np.float32)
    actor, log_std = mlp(OBS, ACT, nn.Tanh()).to(device), torch.zeros(ACT, device=device, requires_grad=True)
    q1, q2, vf = mlp(OBS + ACT, 1).to(device), mlp(OBS + ACT, 1).to(device), mlp(OBS, 1).to(device)
    q1_t, q2_t = copy.deepcopy(q1), copy.deepcopy(q2)
    opt_a = torch.optim.Adam([*actor.parameters(), log_std], lr=3e-4)
    opt_q = torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=3e-4)
    opt_v = torch.optim.Adam(vf.parameters(), lr=3e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, steps * 2)
    log: list[float] = []

    def step(it: int) -> None:
        idx = np.random.randint(0, len(buf["rewards"]), size=256)
        s, a, r, s2, d = (torch.from_numpy(buf[k][idx]).to(device) for k in
                          ("observations", "actions", "rewards", "next_observations", "dones"))
        sa = torch.cat([s, a], 1)
        with torch.no_grad():
            next_v = vf(s2).squeeze(-1)
            tq = torch.min(q1_t(sa), q2_t(sa)).squeeze(-1)
        adv = tq - vf(s).squeeze(-1)
        loss_v = (torch.abs(0.7 - (adv < 0).float()) * adv**2).mean()
        opt_v.zero_grad()
        loss_v.backward()
        opt_v.step()
        target = r + 0.99 * (1 - d) * next_v
        loss_q = (F.mse_loss(q1(sa).squeeze(-1), target) + F.mse_loss(q2(sa).squeeze(-1), target)) / 2
        opt_q.zero_grad()
        loss_q.backward()
        opt_q.step()
        for t, src in ((q1_t, q1), (q2_t, q2)):
            for pt, p in zip(t.parameters(), src.parameters()):
                pt.data.copy_(0.005 * p.data + 0.995 * pt.data)
        w = torch.exp(3.0 * adv.detach()).clamp(max=100.0)
        dist = torch.distributions.Normal(actor(s), log_std.clamp(-20, 2).exp())
        loss_a = torch.mean(w * -dist.log_prob(a).sum(-1))
        opt_a.zero_grad()
        loss_a.backward()
        opt_a.step()
        sched.step()
        log.extend([loss_v.item(), loss_q.item(), loss_a.item()])

    return _time(step, steps, device)


def _time(step, steps: int, device: torch.device) -> float:
    for it in range(1, 21):
        step(it)
    _sync(device)
    t = time.perf_counter()
    for it in range(21, 21 + steps):
        step(it)
    _sync(device)
    return steps / (time.perf_counter() - t)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--n", type=int, default=1_000_000, help="dataset size (transitions)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--algos", default="td3_bc,iql,sac",
                   help="comma-separated; td3_bc and iql also run the CORL-style reference, others (sac, prdc, a2pr, "
                        "odice) only ours")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    data = synthetic(args.n, args.device)
    print(f"device={args.device} threads={args.threads} N={args.n:,} batch=256 steps={args.steps}")
    graphs = data.device.type == "cuda"
    print(f"{'algorithm':<8} {'ours upd/s':>11} {'ours+graphs':>12} {'CORL-style upd/s':>17} {'ratio':>6}")
    references = {"td3_bc": corl_style_td3_bc, "iql": corl_style_iql}
    for name in args.algos.split(","):
        ref = references.get(name)
        a = ours(name, data, args.steps)
        g = ours(name, data, args.steps, cuda_graphs=True) if graphs else float("nan")
        b = ref(data, args.steps) if ref is not None else float("nan")
        best = a if math.isnan(g) else max(a, g)
        ratio = "    -" if math.isnan(b) else f"{best / b:>5.2f}x"
        print(f"{name:<8} {a:>11.0f} {g:>12.0f} {b:>17.0f} {ratio}", flush=True)


if __name__ == "__main__":
    main()
