"""P1 samplers and the statistics store: uniform / sequential, SEC's bandit, VADE's posteriors, MMR1's VPS draws,
with simulated Bernoulli prompts (no model)."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import pytest
import torch
from scipy.stats import chisquare

from offline_rl.seq.methods.mmr1 import ngram_precision, trajectory_diversity, vps_score
from offline_rl.seq.methods.sec import boltzmann, q_update
from offline_rl.seq.methods.vade import posterior_update
from offline_rl.seq.points.samplers import SamplerContext
from offline_rl.seq.registry import SAMPLERS
from offline_rl.seq.stats import GroupRecord, PromptStats
from offline_rl.seq.tasks.base import Problem, Task


class Pool(Task):
    """A finite pool: problem i has prompt "i=" and category cats[i]."""

    name = "pool"

    def __init__(self, cats: list[int]) -> None:
        super().__init__(0)
        self.cats = cats
        self.size = len(cats)

    def problem(self, index: int) -> Problem:
        return Problem(f"{index}=", "0", {"category": self.cats[index]})


def grpo_abs_adv(rewards: list[float]) -> float:
    mu = statistics.mean(rewards)
    sd = statistics.stdev(rewards)
    return statistics.mean(abs(r - mu) / (sd + 1e-4) for r in rewards)


def simulate(name: str, rates: list[float], cats: list[int], steps: int, n: int = 8, G: int = 8, seed: int = 0,
             **params) -> Counter:
    """Run the sampler against Bernoulli(rates[i]) prompts; count how often each index is drawn."""
    task, stats, state = Pool(cats), PromptStats(), {}
    rng = random.Random(seed)
    drawn: Counter = Counter()
    for step in range(steps):
        ctx = SamplerContext(step, n, list(range(len(rates))), random.Random(f"{seed}:{step}"), stats, task, state)
        picked = SAMPLERS.get(name)(ctx, **params)
        drawn.update(picked)
        records = []
        for i in picked:
            rewards = [float(rng.random() < rates[i]) for _ in range(G)]
            records.append(GroupRecord(task.problem(i).key, rewards, grpo_abs_adv(rewards), cats[i], step))
        stats.record(records)
    return drawn


def test_uniform_and_sequential() -> None:
    stats = PromptStats()
    seq = SAMPLERS.get("sequential")(SamplerContext(2, 4, [10, 11, 12, 13, 14], random.Random(0), stats))
    assert seq == [13, 14, 10, 11]  # positions 8..11 wrap round the pool of 5
    assert SAMPLERS.get("sequential")(SamplerContext(2, 3, None, random.Random(0), stats)) == [6, 7, 8]
    uni = SAMPLERS.get("uniform")(SamplerContext(0, 2000, [3, 5, 9], random.Random(1), stats))
    counts = Counter(uni)
    assert set(counts) == {3, 5, 9} and chisquare([counts[3], counts[5], counts[9]]).pvalue > 1e-3


# --- the statistics store ---------------------------------------------------------------------------------------

def test_stats_store_default_window_is_16_rollouts() -> None:
    s = PromptStats()
    s.record([GroupRecord("a", [1.0] * 4 + [0.0] * 8 + [1.0] * 8)])
    assert s.success_rate("a") == 0.5 and s.count("a") == 20  # the last 16 of 20


def test_record_step_keeps_the_mean_abs_advantage_per_group() -> None:
    from offline_rl.seq.context import LOCAL
    from offline_rl.seq.rollout import Generation, RolloutBatch
    from offline_rl.seq.trainer import record_step

    gen = Generation(torch.ones(4, 2, dtype=torch.long), torch.ones(4, 2, dtype=torch.long),
                     torch.ones(4, 3, dtype=torch.long), torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]]),
                     torch.zeros(4, dtype=torch.bool))
    probs = [Problem("a=", "1", {"category": 2})] * 2 + [Problem("b=", "1")] * 2
    batch = RolloutBatch(gen, torch.tensor([0, 0, 1, 1]), probs, ["x"] * 4, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    stats = PromptStats()
    token_adv = torch.tensor([[1.0, 3.0, 9.0], [-1.0, -1.0, -1.0], [0.5, 7.0, 7.0], [0.0, 0.0, 0.0]])
    record_step(stats, batch, token_adv, 4, LOCAL)
    a, b = stats.last_step
    assert (a.key, a.category, a.rewards, a.step) == ("a=", 2, [1.0, 0.0], 4)
    assert a.abs_advantage == pytest.approx((2.0 + 1.0) / 2) and b.abs_advantage == pytest.approx(0.25)


def test_stats_store_window_counts_and_state_dict() -> None:
    s = PromptStats(window=4)
    s.record([GroupRecord("a", [1.0, 0.0, 1.0], 0.5, 1, 0), GroupRecord("b", [0.0], 0.0, 2, 0)])
    s.record([GroupRecord("a", [0.0, 0.0, 0.0], 0.0, 1, 3), GroupRecord("a", [1.0], 0.0, 1, 3)])
    assert s.success_rate("a") == pytest.approx(1 / 4)  # the last 4 of 1,0,1,0,0,0,1
    assert (s.count("a"), s.visits("a"), s.visits("b"), s.success_rate("nope")) == (7, 2, 1, None)
    assert s.history["a"].last_step == 3 and [r.key for r in s.last_step] == ["a"]
    assert s.last_step[0].rewards == [0.0, 0.0, 0.0, 1.0]  # a prompt drawn twice in a step is one visit
    again = PromptStats()
    again.load_state_dict(s.state_dict())
    assert again.success_rate("a") == s.success_rate("a") and again.count("a") == 7
    assert again.last_step[0].rewards == s.last_step[0].rewards


# --- SEC --------------------------------------------------------------------------------------------------------

def test_sec_q_update_arithmetic_and_boltzmann() -> None:
    q = q_update({0: 0.2, 1: 0.6}, [GroupRecord("x", [1.0], 0.8, 0), GroupRecord("y", [0.0], 0.4, 0),
                                    GroupRecord("z", [1.0], 1.0, 2)], alpha=0.5)
    assert q == pytest.approx({0: 0.5 * 0.6 + 0.5 * 0.2, 1: 0.6, 2: 0.5 * 1.0})  # r(0) = mean(0.8, 0.4)
    q = q_update({0: 0.2}, [GroupRecord("x", [1.0], 0.8, 0)], alpha=0.3)
    assert q[0] == pytest.approx(0.3 * 0.8 + 0.7 * 0.2)
    probs = boltzmann({0: 1.0, 1: 0.0}, [0, 1, 2], tau=0.5)
    e = [math.exp(2.0), 1.0, 1.0]
    assert probs == pytest.approx([x / sum(e) for x in e]) and sum(probs) == pytest.approx(1.0)
    assert boltzmann({0: 5.0, 1: -3.0}, [0, 1], tau=1e9) == pytest.approx([0.5, 0.5])  # tau -> inf: uniform


def test_sec_concentrates_on_the_category_with_pass_rate_one_half() -> None:
    cats = [0] * 10 + [1] * 10 + [2] * 10
    rates = [0.1] * 10 + [0.5] * 10 + [0.9] * 10
    drawn = simulate("sec", rates, cats, steps=60, tau=0.2, seed=1)
    per_cat = [sum(drawn[i] for i in range(10 * c, 10 * c + 10)) for c in range(3)]
    assert per_cat[1] > 2 * max(per_cat[0], per_cat[2]), per_cat


def test_sec_samples_categories_by_its_q_values() -> None:
    cats = [0, 0, 1, 1]
    task, stats = Pool(cats), PromptStats()
    stats.record([GroupRecord("0=", [1.0, 0.0], 1.0, 0, 4)])  # last step: category 0 had |A| = 1
    state = {"sec": {"q": {0: -1.0, 1: 1.0}, "updated": 4}}
    ctx = SamplerContext(5, 4000, [0, 1, 2, 3], random.Random(0), stats, task, state)
    drawn = Counter(SAMPLERS.get("sec")(ctx))  # alpha 0.5: Q(0) = 0.5 * 1 + 0.5 * (-1) = 0; tau 1: pi(1) = e/(1+e)
    assert state["sec"]["q"][0] == pytest.approx(0.0) and state["sec"]["updated"] == 5
    share = (drawn[2] + drawn[3]) / 4000
    assert share == pytest.approx(math.e / (1 + math.e), abs=0.03)
    assert abs(drawn[2] - drawn[3]) < 200  # uniform within the category


# --- VADE -------------------------------------------------------------------------------------------------------

def test_vade_posterior_update_with_two_scale_decay() -> None:
    post = {"alpha": {}, "beta": {}, "last": {}}
    posterior_update(post, 7, [1.0, 1.0, 0.0], step=0, prior=(1.0, 1.0), lam_update=0.9, lam_time=0.99)
    assert (post["alpha"][7], post["beta"][7]) == (3.0, 2.0)
    posterior_update(post, 7, [1.0], step=4, prior=(1.0, 1.0), lam_update=0.9, lam_time=0.99)
    f = 0.9 * 0.99 ** 3  # one update and 3 extra steps since the last visit
    assert post["alpha"][7] == pytest.approx(f * 2 + 1 + 1) and post["beta"][7] == pytest.approx(f * 1 + 1)


def test_vade_sampler_updates_from_the_last_step_with_a_uniform_prior() -> None:
    task, stats, state = Pool([0, 0, 0]), PromptStats(), {}
    ctx = SamplerContext(0, 2, [0, 1, 2], random.Random(0), stats, task, state)
    first = SAMPLERS.get("vade")(ctx)
    stats.record([GroupRecord(task.problem(i).key, [1.0, 1.0, 0.0, 1.0], 0.0, 0, 0) for i in first])
    SAMPLERS.get("vade")(SamplerContext(1, 2, [0, 1, 2], random.Random(1), stats, task, state))
    post = state["vade"]
    assert {i: (post["alpha"][i], post["beta"][i]) for i in first} == {i: (1 + 3.0, 1 + 1.0) for i in first}


def test_vade_posterior_converges_and_tracks_a_step_change() -> None:
    rng = random.Random(0)
    post = {"alpha": {}, "beta": {}, "last": {}}
    means = []
    for step in range(200):
        p = 0.3 if step < 100 else 0.8
        posterior_update(post, 0, [float(rng.random() < p) for _ in range(8)], step, (1.0, 1.0), 0.9, 0.99)
        means.append(post["alpha"][0] / (post["alpha"][0] + post["beta"][0]))
    assert statistics.mean(means[60:100]) == pytest.approx(0.3, abs=0.05)
    assert statistics.mean(means[100 + 30:]) == pytest.approx(0.8, abs=0.05)  # within ~3 / (1 - 0.9) updates


def test_vade_picks_the_uncertain_items() -> None:
    rates = [0.0] * 5 + [0.5] * 5 + [1.0] * 5
    drawn = simulate("vade", rates, [0] * 15, steps=40, n=4)
    middle = sum(drawn[i] for i in range(5, 10))
    assert middle > 0.8 * sum(drawn.values()), drawn


# --- MMR1 VPS ---------------------------------------------------------------------------------------------------

def test_vps_scores_and_diversity() -> None:
    assert vps_score(0.5, 0.0, 1.0, 0.1) == 0.25 and vps_score(0.2, 0.5, 1.0, 0.1) == pytest.approx(0.16 + 0.05)
    assert max(vps_score(p / 10, 0.0, 1.0, 0.0) for p in range(11)) == vps_score(0.5, 0.0, 1.0, 0.0)
    assert ngram_precision("12", "21", 1) == 1.0 and ngram_precision("12", "21", 2) == 0.0
    assert trajectory_diversity(["12", "12"]) == 0.0
    assert trajectory_diversity(["12", "34"]) == pytest.approx(1.0)
    assert trajectory_diversity(["12", "21"]) == pytest.approx(0.5)  # unigrams shared, bigrams not


def test_vps_draw_frequencies_chi_square() -> None:
    task, stats = Pool([0] * 4), PromptStats()
    for i, rate in enumerate([0.5, 0.25, 0.0, 1.0]):
        stats.record([GroupRecord(task.problem(i).key, [1.0] * int(8 * rate) + [0.0] * (8 - int(8 * rate)), 0.0,
                                  0, 0, ["1", "1"])])
    n = 40_000
    ctx = SamplerContext(1, n, [0, 1, 2, 3], random.Random(0), stats, task, {})
    drawn = Counter(SAMPLERS.get("vps")(ctx, lam=0.5))
    vps = [0.25 + 0.0, 0.1875 + 0.0, 0.0, 0.0]  # OVS (+ 0.1 x TDS = 0: identical completions)
    expected = [n * (0.5 * v / sum(vps) + 0.5 / 4) for v in vps]
    assert chisquare([drawn[i] for i in range(4)], expected).pvalue > 1e-3
    uniform = Counter(SAMPLERS.get("vps")(SamplerContext(1, 4000, [0, 1, 2, 3], random.Random(1), stats, task, {}),
                                          lam=0.0))
    assert chisquare([uniform[i] for i in range(4)]).pvalue > 1e-3


def test_vps_unseen_prompts_are_optimistic() -> None:
    task, stats, state = Pool([0, 0]), PromptStats(), {}
    stats.record([GroupRecord(task.problem(0).key, [1.0] * 8, 0.0, 0, 0, ["1"] * 8)])  # solved: VPS 0
    drawn = Counter(SAMPLERS.get("vps")(SamplerContext(1, 200, [0, 1], random.Random(0), stats, task, state),
                                        lam=1.0))
    assert drawn[1] == 200 and state["vps"]["scores"][1] == pytest.approx(1.0 / 4 + 0.1)


def test_samplers_are_deterministic_given_the_step_rng() -> None:
    a = simulate("sec", [0.5] * 6, [0, 0, 1, 1, 2, 2], steps=5, seed=3)
    b = simulate("sec", [0.5] * 6, [0, 0, 1, 1, 2, 2], steps=5, seed=3)
    assert a == b and torch.tensor(list(a.values())).sum() == 40
