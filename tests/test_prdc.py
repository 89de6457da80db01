"""PRDC: exact nearest-neighbour backends (parity with a plain fp64 brute-force argmin), the dataset-constraint target
(brute-force equality, β limits, k-th neighbour semantics), the update against the paper's equations, and learning."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_algos import random_dataset, split_twin

from offline_rl import algos
from offline_rl.algos.nn_search import BruteForceSearch, KDTreeSearch, build_search
from offline_rl.data.dataset import Dataset, Spec
from offline_rl.errors import ConfigError

S, A, B = 11, 3, 256


def exact_kth(points: torch.Tensor, keys: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain definition: fp64 distances to every point, the k-th smallest (ties to the lower index)."""
    d = torch.cdist(keys.double(), points.double(), compute_mode="donot_use_mm_for_euclid_dist")
    order = torch.sort(d, dim=1, stable=True).indices
    idx = order[:, k - 1]
    return d.gather(1, idx[:, None]).squeeze(1), idx


def gaussian_case(seed: int = 0, n: int = 20_000) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's parity setting: N = 20 000 random (β·s, a), state dim 11, action dim 3, B = 256 queries."""
    g = torch.Generator().manual_seed(seed)
    points = torch.cat([2.0 * torch.randn(n, S, generator=g), torch.rand(n, A, generator=g) * 2 - 1], 1)
    keys = torch.cat([2.0 * torch.randn(B, S, generator=g), torch.rand(B, A, generator=g) * 2 - 1], 1)
    return points, keys


def manifold_states(n: int, rng: np.random.Generator, episode_len: int = 200) -> np.ndarray:
    """Hopper-like states: smooth trajectories of a 4-d latent process mapped nonlinearly into 11 dims, z-scored."""
    t = np.arange(episode_len)[None, :, None] / 25.0
    eps = n // episode_len
    z = np.sin(rng.uniform(0.5, 2, (eps, 1, 4)) * t + rng.uniform(0, 2 * np.pi, (eps, 1, 4)))
    s = (z @ rng.normal(size=(4, S)) + np.sin(2 * z) @ rng.normal(size=(4, S))).reshape(-1, S)
    s = s + 0.02 * rng.normal(size=s.shape)
    return ((s - s.mean(0)) / (s.std(0) + 1e-3)).astype(np.float32)


def manifold_case(seed: int = 0, n: int = 20_000, off_manifold: bool = False,
                  near_ties: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(β·s, a) on a low-dimensional manifold; queries at dataset states with π(s) near the data (in distribution),
    or uniform random (off-manifold). With `near_ties`, each of 64 keys gets two extra points at distances that
    differ by one part in 1e5, far below the fp32 error of ‖x‖² − 2x·y + ‖y‖² but resolvable in fp64."""
    rng = np.random.default_rng(seed)
    s = manifold_states(n, rng)
    a = np.clip(np.tanh(s @ rng.normal(size=(S, A)) / 3) + 0.1 * rng.normal(size=(n, A)), -1, 1).astype(np.float32)
    points = torch.from_numpy(np.concatenate([2.0 * s, a], 1))
    idx = rng.integers(0, n, B)
    act = rng.uniform(-1, 1, (B, A)) if off_manifold else np.clip(a[idx] + 0.05 * rng.normal(size=(B, A)), -1, 1)
    keys = torch.from_numpy(np.concatenate([2.0 * s[idx], act], 1).astype(np.float32))
    if near_ties:
        extra = []
        for i in range(64):
            u = torch.from_numpy(rng.normal(size=(2, S + A))).float()
            u = u / u.norm(dim=1, keepdim=True)
            r = 1e-3
            extra += [keys[i] + r * u[0], keys[i] + r * (1 + 1e-5) * u[1]]
        points = torch.cat([points, torch.stack(extra)])
        perm = torch.from_numpy(rng.permutation(len(points)))
        points = points[perm]
    return points, keys


CASES = {
    "gaussian": lambda: gaussian_case(),
    "manifold": lambda: manifold_case(),
    "manifold_off": lambda: manifold_case(off_manifold=True),
    "near_ties": lambda: manifold_case(near_ties=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("k", [1, 2])
def test_backends_return_the_plain_argmin(case, k):
    points, keys = CASES[case]()
    ref_d, ref_i = exact_kth(points, keys, k)
    searches = {"kdtree": KDTreeSearch(points), "brute": BruteForceSearch(points, chunk_size=4096)}
    if case != "gaussian":  # keys at dataset states; (11-d Gaussian states make the cache build slow and useless)
        searches["kdtree+cache"] = cached = KDTreeSearch(points, state_dim=S, cache=16)
        searches["kdtree+cache64"] = cached64 = KDTreeSearch(points, state_dim=S, cache=64)  # tiers 16, then 64
    for name, search in searches.items():
        d, i = search.query(keys, k)
        assert i.dtype == torch.int64 and i.shape == (B,) and d.shape == (B,)
        assert torch.equal(i, ref_i), f"{name}: {(i != ref_i).sum()} indices differ"
        torch.testing.assert_close(d.double(), ref_d, rtol=1e-6, atol=1e-6)
    assert bool(searches["brute"].last_certified.all())
    if case in ("manifold", "near_ties"):  # in distribution: the cache answers most keys itself
        assert cached.last_fallback < B // 4, cached.last_fallback
    if case != "gaussian":  # the longer prefix certifies keys that the short one cannot
        assert cached64.last_fallback < cached.last_fallback or cached.last_fallback == 0


def test_state_cache_is_exact_with_duplicate_states_large_k_and_unknown_states():
    """Many points share a state (more than the cache holds), k beyond the cache, keys at no dataset state: the
    certificate fails or does not apply, and the tree answers."""
    g = torch.Generator().manual_seed(0)
    states = torch.randn(200, S, generator=g).repeat_interleave(40, 0)
    points = torch.cat([states, torch.rand(len(states), A, generator=g) * 2 - 1], 1)
    keys = torch.cat([states[::37][:B], torch.rand(len(states[::37][:B]), A, generator=g) * 2 - 1], 1)
    search = KDTreeSearch(points, state_dim=S, cache=16)
    for k in (1, 3, 20):
        _, ref_i = exact_kth(points, keys, k)
        assert torch.equal(search.query(keys, k)[1], ref_i)
    off_states = keys + torch.cat([torch.full((len(keys), S), 1e-3), torch.zeros(len(keys), A)], 1)
    _, ref_i = exact_kth(points, off_states)
    assert torch.equal(search.query(off_states)[1], ref_i) and search.last_fallback == len(keys)  # no state matches


def test_near_ties_defeat_fp32_but_not_the_backends():
    """The near-tie case really is one: a plain fp32 expansion argmin picks the wrong point for some keys."""
    points, keys = manifold_case(near_ties=True)
    _, ref_i = exact_kth(points, keys)
    fp32 = (keys.pow(2).sum(1, keepdim=True) - 2 * keys @ points.T + points.pow(2).sum(1)).argmin(1)
    assert (fp32 != ref_i).any()
    assert torch.equal(BruteForceSearch(points, chunk_size=3000).query(keys)[1], ref_i)


def test_build_search_choices():
    points, _ = gaussian_case(n=100)
    assert isinstance(build_search(points), KDTreeSearch)  # auto on CPU: the reference's cKDTree
    assert isinstance(build_search(points, "brute"), BruteForceSearch)
    with pytest.raises(ValueError, match="unknown nearest-neighbour backend"):
        build_search(points, "faiss")
    with pytest.raises(ValueError, match="k must be"):
        KDTreeSearch(points).query(points[:2], 0)
    with pytest.raises(ConfigError, match="nn_backend must be one of"):
        algos.make("prdc", random_dataset().spec, {"nn_backend": "faiss"})


def prdc_setup(backend: str, beta: float = 2.0, k: int = 1, n: int = 2000) -> tuple:
    data = random_dataset(n)
    g = torch.Generator().manual_seed(0)
    data.observations = torch.randn(n, data.spec.obs_dim, generator=g) * 3 + 1
    algo = algos.make("prdc", data.spec, {"beta": beta, "k": k, "nn_backend": backend}, seed=0)
    algo.prepare(data)
    batch = algo.normalize(data.sample(64, torch.Generator().manual_seed(1)))
    pi = algo.actor(batch.observations)
    return algo, data, batch, pi


@pytest.mark.parametrize("backend", ["kdtree", "brute"])
def test_target_is_the_bruteforce_nearest_dataset_action(backend):
    algo, data, batch, pi = prdc_setup(backend)
    target, distance = algo.constraint_target(batch.observations, pi)
    states = (data.observations - algo.normalizer.mean) / algo.normalizer.std
    points = torch.cat([2.0 * states, data.actions], 1)
    dist, idx = exact_kth(points, torch.cat([2.0 * batch.observations, pi.detach()], 1))
    assert torch.equal(target, data.actions[idx])
    assert not target.requires_grad
    torch.testing.assert_close(distance.mean().float(), dist.mean().float())
    # The update's own path (key phase, host search, actor phase) picks the same target, with weight 1.
    _, ctx = algo.run_phases(data.sample(64, torch.Generator().manual_seed(1)), 2)
    assert torch.equal(ctx["nn_target"], target)
    assert algo.bc_target(ctx, pi)[1] == 1.0


@pytest.mark.parametrize("backend", ["kdtree", "brute"])
def test_beta_limits(backend):
    """β → 0: the dataset action nearest to π(s), whatever the state; β → ∞: the sample's own action (BC)."""
    algo, data, batch, pi = prdc_setup(backend, beta=1e-6)
    target, _ = algo.constraint_target(batch.observations, pi)
    nearest_action = torch.cdist(pi.detach().double(), data.actions.double()).argmin(1)
    assert torch.equal(target, data.actions[nearest_action])

    algo, data, batch, pi = prdc_setup(backend, beta=1e6)
    target, _ = algo.constraint_target(batch.observations, pi)
    assert torch.equal(target, batch.actions)


@pytest.mark.parametrize("backend", ["kdtree", "brute"])
def test_k2_is_the_second_neighbour_only(backend):
    algo, data, batch, pi = prdc_setup(backend, k=2)
    target, _ = algo.constraint_target(batch.observations, pi)
    states = (data.observations - algo.normalizer.mean) / algo.normalizer.std
    keys = torch.cat([2.0 * batch.observations, pi.detach()], 1)
    points = torch.cat([2.0 * states, data.actions], 1)
    _, second = exact_kth(points, keys, 2)
    _, first = exact_kth(points, keys, 1)
    assert target.shape == batch.actions.shape
    assert torch.equal(target, data.actions[second])
    assert (second != first).all() and not torch.equal(target, data.actions[first])


def test_reward_transform_touches_only_the_reward():
    data = random_dataset()
    algo = algos.make("prdc", data.spec, {"reward_scale": 10000.0, "reward_shift": -1.0}, seed=0)
    plain = algos.make("prdc", data.spec, {}, seed=0)
    for a in (algo, plain):
        a.prepare(data)
    batch = data.sample(32, torch.Generator().manual_seed(0))
    shaped, ref = algo.normalize(batch), plain.normalize(batch)
    torch.testing.assert_close(shaped.rewards, 10000.0 * batch.rewards - 1.0)
    for field in ("observations", "actions", "next_observations", "dones"):
        assert torch.equal(getattr(shaped, field), getattr(ref, field))
    assert algos.load_preset("prdc", family="antmaze") == {"alpha": 7.5, "beta": 7.5, "k": 1,
                                                            "reward_scale": 10000.0, "reward_shift": -1.0}


@pytest.mark.parametrize("backend,cache,overlap", [("kdtree", 16, True), ("kdtree", 16, False), ("kdtree", 0, True),
                                                   ("brute", 0, True)])
def test_prdc_matches_reference_equations(backend, cache, overlap):
    """Four updates equal TD3+BC's equations with the BC target replaced by the fp64 brute-force nearest
    dataset action to (β·s, π(s)), on separate nn.Linear critics."""
    data = random_dataset(1000)
    torch.manual_seed(0)
    algo = algos.make("prdc", data.spec, {"alpha": 2.5, "beta": 2.0, "nn_backend": backend, "nn_cache": cache,
                                          "nn_overlap": overlap})
    algo.prepare(data)
    actor, q1, q2 = copy.deepcopy(algo.actor), split_twin(algo.critic, 0), split_twin(algo.critic, 1)
    actor_t, q1_t, q2_t = copy.deepcopy(actor), copy.deepcopy(q1), copy.deepcopy(q2)
    opt_a = torch.optim.Adam(actor.parameters(), lr=3e-4)
    opt_c = torch.optim.Adam([*q1.parameters(), *q2.parameters()], lr=3e-4)
    mean, std = data.observations.mean(0), data.observations.std(0, unbiased=False) + 1e-3
    tree_points = torch.cat([2.0 * (data.observations - mean) / std, data.actions], 1)

    for step in (1, 2, 3, 4):
        batch = data.sample(64, torch.Generator().manual_seed(step))
        torch.manual_seed(100 + step)
        metrics = algo.update(batch, step)
        assert all(isinstance(v, torch.Tensor) for v in metrics.values())

        torch.manual_seed(100 + step)
        s, s2 = (batch.observations - mean) / std, (batch.next_observations - mean) / std
        a, r, d = batch.actions, batch.rewards, batch.dones
        with torch.no_grad():
            a2 = (actor_t(s2) + (torch.randn_like(a) * 0.2).clamp(-0.5, 0.5)).clamp(-1, 1)
            sa2 = torch.cat([s2, a2], 1)
            y = r + 0.99 * (1 - d) * torch.min(q1_t(sa2), q2_t(sa2)).squeeze(-1)
        sa = torch.cat([s, a], 1)
        loss_c = F.mse_loss(q1(sa).squeeze(-1), y) + F.mse_loss(q2(sa).squeeze(-1), y)
        opt_c.zero_grad()
        loss_c.backward()
        opt_c.step()
        if step % 2 == 0:
            pi = actor(s)
            q = q1(torch.cat([s, pi], 1))
            dist, nn_idx = exact_kth(tree_points, torch.cat([2.0 * s, pi.detach()], 1))
            loss_a = -2.5 / q.abs().mean().detach() * q.mean() + F.mse_loss(pi, tree_points[nn_idx, -a.shape[1]:])
            opt_a.zero_grad()
            loss_a.backward()
            opt_a.step()
            torch.testing.assert_close(metrics["nn_distance"], dist.mean().float())
            for t, src in ((q1_t, q1), (q2_t, q2), (actor_t, actor)):
                for pt, p in zip(t.parameters(), src.parameters()):
                    pt.data.mul_(0.995).add_(0.005 * p.data)

    for ours, ref in ((algo.actor, actor), (split_twin(algo.critic, 0), q1), (split_twin(algo.critic, 1), q2),
                      (split_twin(algo.critic_target, 0), q1_t), (algo.actor_target, actor_t)):
        for p, p_ref in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6)


def bandit_dataset(n: int = 4096, seed: int = 0) -> Dataset:
    """A 1-d contextual bandit (every step terminal): s ~ U[−1, 1], two action modes around −0.6 and +0.3 (std
    0.15), reward 1 − 4(a − 0.3)², so the upper mode holds the best action at every state."""
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, 1, generator=g) * 2 - 1
    a = (torch.where(torch.rand(n, 1, generator=g) < 0.5, -0.6, 0.3) + 0.15 * torch.randn(n, 1, generator=g))
    a = a.clamp(-1, 1)
    return Dataset(observations=s, actions=a, rewards=1 - 4 * (a[:, 0] - 0.3) ** 2, next_observations=s.clone(),
                   terminals=torch.ones(n, dtype=torch.bool), timeouts=torch.zeros(n, dtype=torch.bool),
                   episode_ids=torch.arange(n), env_id=None, spec=Spec(1, 1, (-1.0,), (1.0,)))


@pytest.mark.parametrize("alpha", [0.0, 2.5])
def test_bandit_learning_level(alpha):
    """α → 0: π(s) settles on a dataset action (BC loss → 0). α = 2.5: π(s) moves to the higher-Q mode at every
    state and stays close to the data."""
    data = bandit_dataset()
    algo = algos.make("prdc", data.spec, {"alpha": alpha, "beta": 1.0, "actor_hidden": [64, 64],
                                          "critic_hidden": [64, 64], "policy_freq": 1}, seed=0)
    algo.prepare(data)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 401 if alpha == 0.0 else 1001):
        metrics = algo.update(data.sample(256, g), step)
    with torch.no_grad():
        pi = algo.policy()(torch.linspace(-0.9, 0.9, 19)[:, None]).squeeze(1)
    if alpha == 0.0:
        assert float(metrics["bc_loss"]) < 1e-3 and float(metrics["nn_distance"]) < 0.05
    else:
        assert (pi > 0.1).all(), pi
        assert float(metrics["nn_distance"]) < 0.1


@pytest.mark.parametrize("backend", ["kdtree", "brute"])
def test_state_dict_round_trip(backend):
    data = random_dataset()
    algo = algos.make("prdc", data.spec, {"nn_backend": backend}, seed=1)
    algo.prepare(data)
    for step in range(1, 5):
        algo.update(data.sample(32), step)
    clone = algos.make("prdc", data.spec, {"nn_backend": backend}, seed=2)
    clone.prepare(data)
    clone.load_state_dict(copy.deepcopy(algo.state_dict()))
    obs = torch.randn(4, data.spec.obs_dim)
    torch.testing.assert_close(clone.policy()(obs), algo.policy()(obs))
    batch = algo.normalize(data.sample(8, torch.Generator().manual_seed(0)))
    assert torch.equal(clone.constraint_target(batch.observations, clone.actor(batch.observations))[0],
                       algo.constraint_target(batch.observations, algo.actor(batch.observations))[0])


def test_overlapped_search_gives_the_same_updates():
    """The search on a second thread during the critic step (`nn_overlap`) changes nothing: equal parameters."""
    data = random_dataset(2000)
    runs = {}
    for overlap in (True, False):
        algo = algos.make("prdc", data.spec, {"nn_overlap": overlap, "actor_hidden": [32, 32],
                                              "critic_hidden": [32, 32]}, seed=0)
        algo.prepare(data)
        g = torch.Generator().manual_seed(0)
        for step in range(1, 41):
            algo.update(data.sample(64, g), step)
        runs[overlap] = algo.state_dict()["modules"]
    assert runs[True].keys() == runs[False].keys()
    for name, value in runs[True].items():
        assert torch.equal(value, runs[False][name]), name


def test_update_without_prepare_is_a_clear_error():
    data = random_dataset()
    algo = algos.make("prdc", data.spec, {}, seed=0)
    with pytest.raises(RuntimeError, match="prepare"):
        algo.update(data.sample(8), 2)


@pytest.mark.slow
def test_prdc_beats_behaviour_on_pendulum_medium():
    """About a minute on 2 CPU cores (a reference run scored 95-99 from step 6000; behaviour ≈ 55)."""
    from offline_rl.data import load_dataset
    from offline_rl.training import train

    data = load_dataset("pendulum-medium")
    algo = algos.make("prdc", data.spec, {"actor_hidden": [128, 128], "critic_hidden": [128, 128]}, dataset=data,
                      seed=0)
    result = train(algo, data, 8000, seed=0, eval_every=2000, eval_episodes=10, progress=False)
    assert result.final_score > data.summary()["normalized_return_mean"], result.curve
