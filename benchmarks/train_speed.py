"""Updates per second of our TD3+BC and IQL against a CORL-style reference loop, in alternating blocks of one run.

The reference is our own re-implementation of the way CORL's single-file scripts run (read from its public
`td3_bc.py` / `iql.py`): a numpy replay buffer indexed on the host and copied to the device every step, two separate
critic modules, the default (non-fused) Adam and a `.item()` per loss per step for logging. The update maths is the
same in both, so the ratio measures the engineering only.

Each side runs in its own process, as a user's run would, and the two take turns: `--rounds` rounds of `--steps` updates each, the order alternating per round, so that a change in the
machine's load hits both sides alike. The ratio printed is the median of the per-round ratios. On CUDA the
`ours+graphs` column replays each update from CUDA graphs (offline_rl.training.graphs; IQL's cosine LR schedule
keeps it eager, shown as nan); SAC (the zoo's trainer) and the research methods (`--algos prdc,a2pr,odice`, with
their default networks) have no reference loop.

    python benchmarks/train_speed.py [--steps 100] [--rounds 5] [--n 1000000] [--device cpu] [--threads 1]
                                     [--algos td3_bc,iql,sac]
"""

from __future__ import annotations

import argparse
import copy
import math
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

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


def ours(name: str, data: Dataset, total: int, cuda_graphs: bool = False) -> Stepper | None:
    """Our update through the trainer's `UpdateStep` (CUDA graphs only where asked for and usable)."""
    algo = algos.make(name, data.spec, {}, data.device, seed=0)
    algo.configure_schedule(total)
    algo.prepare(data)
    gen = torch.Generator(device=data.device).manual_seed(0)
    update = UpdateStep(algo, lambda g: data.sample(256, g), gen, cuda_graphs)
    if cuda_graphs and not update.graphed:
        return None
    latest: dict[str, torch.Tensor] = {}

    def step(it: int) -> None:
        latest.update(update(it))

    return Stepper(step, lambda: {k: float(v) for k, v in latest.items()})


def td3_bc_products(device: torch.device, hidden: int = 256, batch: int = 256
                    ) -> tuple[list[tuple[torch.Tensor, ...]], list[tuple[torch.Tensor, ...]]]:
    """The matrix products a TD3+BC update needs, as (out, a, b) triples on preallocated tensors: every step's (the
    target actor's and twin target critic's forward, the twin critic's forward, weight and input gradients) and
    the actor step's (actor and Q1 forward, Q1's gradient with respect to the action only, the actor's gradients)."""
    def mm(m: int, k: int, n: int) -> tuple[torch.Tensor, ...]:
        return tuple(torch.randn(*shape, device=device) for shape in ((m, n), (m, k), (k, n)))

    def forward(i: int, o: int) -> list[tuple[int, int, int]]:
        return [(batch, i, hidden), (batch, hidden, hidden), (batch, hidden, o)]

    def weight_grads(i: int, o: int) -> list[tuple[int, int, int]]:
        return [(hidden, batch, o), (hidden, batch, hidden), (i, batch, hidden)]

    def input_grads(o: int, first_layer_inputs: int = 0) -> list[tuple[int, int, int]]:
        """Back to the hidden layers' inputs and, when asked, to `first_layer_inputs` columns of the input."""
        return [(batch, o, hidden), (batch, hidden, hidden)] + \
            ([(batch, hidden, first_layer_inputs)] if first_layer_inputs else [])

    sa = OBS + ACT
    critic_step = forward(sa, 1) + weight_grads(sa, 1) + input_grads(1)  # one twin member
    every_step = forward(OBS, ACT) + 2 * forward(sa, 1) + 2 * critic_step
    actor_step = forward(OBS, ACT) + forward(sa, 1) + input_grads(1, ACT) + weight_grads(OBS, ACT) + input_grads(ACT)
    return [mm(*shape) for shape in every_step], [mm(*shape) for shape in actor_step]


def products_only(data: Dataset, total: int) -> Stepper:
    """The floor: the update's matrix products alone, into preallocated outputs, the actor's on every second step.
    No implementation of the same fp32 update can beat this on the same machine and BLAS."""
    every_step, actor_step = td3_bc_products(data.device)

    def step(it: int) -> None:
        for out, a, b in every_step + (actor_step if it % 2 == 0 else []):
            torch.mm(a, b, out=out)

    return Stepper(step, lambda: None)


def mlp(i: int, o: int, out=None) -> nn.Sequential:
    layers = [nn.Linear(i, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, o)]
    return nn.Sequential(*layers, *([out] if out else []))


def corl_style_td3_bc(data: Dataset, total: int) -> Stepper:
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

    return Stepper(step, lambda: log[-1])


def corl_style_iql(data: Dataset, total: int) -> Stepper:
    device = data.device
    buf = {k: getattr(data, k).cpu().numpy() for k in ("observations", "actions", "rewards", "next_observations")}
    buf["dones"] = data.terminals.cpu().numpy().astype(np.float32)
    actor, log_std = mlp(OBS, ACT, nn.Tanh()).to(device), torch.zeros(ACT, device=device, requires_grad=True)
    q1, q2, vf = mlp(OBS + ACT, 1).to(device), mlp(OBS + ACT, 1).to(device), mlp(OBS, 1).to(device)
    q1_t, q2_t = copy.deepcopy(q1), copy.deepcopy(q2)
    opt_a = torch.optim.Adam([*actor.parameters(), log_std], lr=3e-4)
    opt_q = torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=3e-4)
    opt_v = torch.optim.Adam(vf.parameters(), lr=3e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, total)
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

    return Stepper(step, lambda: log[-1])


class Stepper(NamedTuple):
    """`step(it)` runs update `it`; `read()` reads the latest metrics on the host (a logging sync)."""

    step: Callable[[int], None]
    read: Callable[[], object]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _worker(conn, side: str, name: str, args: argparse.Namespace, cuda_graphs: bool) -> None:
    """One side of the comparison in its own process: build it, warm it up, then time the blocks asked for."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    data = synthetic(args.n, args.device)
    total = args.steps * args.rounds + WARMUP
    stepper = ours(name, data, total, cuda_graphs) if side == "ours" else \
        products_only(data, total) if side == "floor" else REFERENCES[name](data, total)
    if stepper is None:
        conn.send(None)
        return
    for it in range(1, WARMUP + 1):
        stepper.step(it)
    stepper.read()
    _sync(data.device)
    done = WARMUP
    conn.send("ready")
    while (steps := conn.recv()) is not None:
        t = time.perf_counter()
        for it in range(done + 1, done + 1 + steps):
            stepper.step(it)
        done += steps
        stepper.read()
        _sync(data.device)
        conn.send(time.perf_counter() - t)


def compare(name: str, args: argparse.Namespace, sides: list[tuple[str, bool]]) -> list[list[float]]:
    """Updates/s of each side in each round: the sides' processes take turns, the order alternating per round."""
    ctx = mp.get_context("spawn")
    procs, conns, ready = [], [], []
    for side, graphs in sides:
        mine, theirs = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(theirs, side, name, args, graphs), daemon=True)
        proc.start()
        procs.append(proc)
        conns.append(mine)
        ready.append(mine.recv() == "ready")  # each side builds and warms up alone
    rates: list[list[float]] = [[] for _ in sides]
    for r in range(args.rounds):
        order = range(len(sides)) if r % 2 == 0 else reversed(range(len(sides)))
        for i in order:
            if ready[i]:
                conns[i].send(args.steps)
                rates[i].append(args.steps / conns[i].recv())
    for conn, proc, up in zip(conns, procs, ready, strict=True):
        if up:
            conn.send(None)
        proc.join()
    return [r or [float("nan")] * args.rounds for r in rates]


WARMUP = 20
REFERENCES: dict[str, Callable[[Dataset, int], Stepper]] = {"td3_bc": corl_style_td3_bc, "iql": corl_style_iql}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100, help="updates per block")
    p.add_argument("--rounds", type=int, default=5, help="blocks per side, alternating")
    p.add_argument("--n", type=int, default=1_000_000, help="dataset size (transitions)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--algos", default="td3_bc,iql,sac",
                   help="comma-separated; td3_bc and iql also run the CORL-style reference, others (sac, prdc, a2pr, "
                        "odice) only ours")
    args = p.parse_args()
    print(f"device={args.device} threads={args.threads} N={args.n:,} batch=256 {args.rounds} rounds x "
          f"{args.steps} updates, alternating")
    graphs = torch.device(args.device).type == "cuda"
    print(f"{'algorithm':<8} {'ours upd/s':>11} {'ours+graphs':>12} {'CORL-style upd/s':>17} {'ratio':>6} "
          f"{'products only':>14} {'its ratio':>9}")
    med = statistics.median
    for name in args.algos.split(","):
        sides = [("ours", False)] + ([("ours", True)] if graphs else [])
        if name in REFERENCES:
            sides.append(("reference", False))
        if name == "td3_bc":
            sides.append(("floor", False))
        rates = dict(zip([s if not g else "graphs" for s, g in sides], compare(name, args, sides), strict=True))
        nan = [float("nan")] * args.rounds
        a, g, b, f = (rates.get(k, nan) for k in ("ours", "graphs", "reference", "floor"))
        best = [x if math.isnan(y) else max(x, y) for x, y in zip(a, g, strict=True)]
        ratio = _ratio(med(x / y for x, y in zip(best, b, strict=True)))
        floor_ratio = _ratio(med(x / y for x, y in zip(f, b, strict=True)))
        print(f"{name:<8} {med(a):>11.0f} {med(g):>12.0f} {med(b):>17.0f} {ratio:>6} {med(f):>14.0f} "
              f"{floor_ratio:>9}", flush=True)


def _ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}x"


if __name__ == "__main__":
    main()
