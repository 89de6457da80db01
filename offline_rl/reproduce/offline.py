"""`offline-rl reproduce prdc` and `odice`: the offline methods' defining properties, checked on real data.

PRDC: the exact nearest-neighbour search (KD-tree with its cached fast path, and the brute force) against a plain
float64 argmin, and the actor's constraint target against the true nearest (β·s, a) of the dataset. O-DICE: on a
real value step of `offline_rl.algos.odice`, the gradient written beyond the linear term satisfies
⟨g, g_f⟩ = ‖g_f‖², i.e. the added backward part is orthogonal to the forward gradient.
"""

from __future__ import annotations

import copy

import numpy as np

from offline_rl.reproduce import Row, register_entry, row


def _argmin_k(points: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    """The index of each key's k-th nearest point, by plain float64 squared distances, 64 keys at a time."""
    pts = points.astype(np.float64)
    out = []
    for start in range(0, len(keys), 64):
        chunk = keys[start:start + 64].astype(np.float64)
        d = ((chunk[:, None, :] - pts[None]) ** 2).sum(-1)
        out.append(np.argsort(d, axis=1, kind="stable")[:, k - 1])
    return np.concatenate(out)


@register_entry("prdc", "PRDC's dataset constraint: exact nearest neighbours (KD-tree = brute force = argmin)")
def prdc(quick: bool) -> list[Row]:
    import torch

    from offline_rl.algos import make
    from offline_rl.algos.nn_search import BruteForceSearch, KDTreeSearch
    from offline_rl.data import load_dataset

    torch.set_num_threads(1)
    rows = []
    gen = torch.Generator().manual_seed(0)
    n, dim, state_dim = (5000, 14, 11) if quick else (50000, 14, 11)
    points = torch.randn(n, dim, generator=gen)
    # keys at dataset states (the cached fast path's case) and anywhere
    keys = torch.cat([torch.cat([points[:200, :state_dim], torch.randn(200, dim - state_dim, generator=gen)], 1),
                      torch.randn(200, dim, generator=gen)])
    for k in (1, 2):
        truth = _argmin_k(points.numpy(), keys.numpy(), k)
        for name, search in (("kdtree+cache", KDTreeSearch(points, state_dim=state_dim, cache=16)),
                             ("kdtree", KDTreeSearch(points)), ("brute", BruteForceSearch(points, chunk_size=4096))):
            index = search.query(keys, k)[1].numpy()
            rows.append(row(f"random N={n} D={dim} k={k} {name}", "share equal to the float64 argmin",
                            float((index == truth).mean()), 1.0, 0.0))
    data = load_dataset("pendulum-medium")
    algo = make("prdc", data.spec, {"actor_hidden": [64, 64], "critic_hidden": [64, 64]}, dataset=data, seed=0)
    algo.prepare(data)
    batch = algo.normalize(data.sample(256 if quick else 2048, torch.Generator().manual_seed(1)))
    with torch.no_grad():
        pi = algo.actor(batch.observations)
        target, _ = algo.constraint_target(batch.observations, pi)
        states = algo.normalizer(data.observations)
        table = torch.cat([algo.config.beta * states, data.actions], 1).numpy()
        key = torch.cat([algo.config.beta * batch.observations, pi], 1).numpy()
    nearest = data.actions.numpy()[_argmin_k(table, key, algo.config.k)]
    rows.append(row(f"pendulum-medium β={algo.config.beta:g} k={algo.config.k}",
                    "target = action of the nearest (β·s, a)", float((target.numpy() == nearest).all(1).mean()),
                    1.0, 0.0))
    return rows


@register_entry("odice", "O-DICE's orthogonal-gradient update: ⟨g, g_f⟩ = ‖g_f‖² on real value steps")
def odice(quick: bool) -> list[Row]:
    import torch

    from offline_rl.algos import make
    from offline_rl.algos.odice import f_star
    from offline_rl.data import load_dataset

    torch.set_num_threads(1)
    data = load_dataset("pendulum-medium")
    algo = make("odice", data.spec, {"hidden": [64, 64], "policy_hidden": [64, 64]}, dataset=data, seed=0)
    algo.prepare(data)
    rows = []
    gen = torch.Generator().manual_seed(0)
    for step in range(1, (3 if quick else 20) + 1):
        batch = data.sample(256, gen)
        if step > 1:  # train a little between checks, so the target differs from V
            algo.update(data.sample(256, gen), step)
        ratio, cosine = _orthogonality(algo, batch, f_star)
        rows.append(row(f"pendulum-medium value step {step}", "⟨g − ∇lin, g_f⟩ / ‖g_f‖²", ratio, 1.0, 1e-4))
        rows.append(row(f"pendulum-medium value step {step}", "cos(added part, g_f)", cosine, 0.0, 1e-4))
    return rows


def _orthogonality(algo, batch, f_star) -> tuple[float, float]:
    """Run one real `value_step`; recompute g_f and the linear term at the pre-step weights by hand (a copy)."""
    import torch

    c = algo.config
    ref = copy.deepcopy(algo)
    obs, next_obs = ref.normalizer(batch.observations), ref.normalizer(batch.next_observations)
    rewards, not_done = ref.shape_rewards(batch.rewards), 1.0 - batch.dones
    with torch.no_grad():
        target_next = ref.values(ref.vf_target, next_obs).min(0).values
    v = ref.values(ref.vf, obs)
    params = list(ref.vf.parameters())
    forward = (c.Lambda * f_star(rewards + c.discount * not_done * target_next - v)).mean()
    g_f = torch.cat([g.reshape(-1) for g in torch.autograd.grad(forward, params, retain_graph=True)])
    linear = torch.cat([g.reshape(-1) for g in torch.autograd.grad(((1 - c.Lambda) * v).mean(), params)])
    algo.value_step(algo.normalizer(batch.observations), algo.normalizer(batch.next_observations),
                    algo.shape_rewards(batch.rewards), 1.0 - batch.dones)
    g = torch.cat([p.grad.reshape(-1) for p in algo.vf.parameters()]) - linear
    added = g - g_f
    ratio = float(torch.dot(g.double(), g_f.double()) / g_f.double().pow(2).sum())
    cosine = float(torch.dot(added.double(), g_f.double()) / (added.double().norm() * g_f.double().norm()))
    return ratio, cosine
