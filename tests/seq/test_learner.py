"""The learner on a real tiny model: the multi-epoch path against a plain PPO loop (ratios away from 1), the
reference model and the KL term, the vocabulary log-probs, and the rollout log-probs of the fast sampler."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from offline_rl.seq.context import global_counts  # noqa: E402
from offline_rl.seq.learner import Learner  # noqa: E402
from offline_rl.seq.methods import get_method  # noqa: E402
from offline_rl.seq.methods.base import Method  # noqa: E402
from offline_rl.seq.policy import build_tiny_model, score_completions  # noqa: E402
from offline_rl.seq.rollout import Generation, RolloutBatch  # noqa: E402
from offline_rl.seq.tasks import Problem  # noqa: E402

B, G, P, T, V = 8, 4, 3, 5, 12


def tiny(seed: int = 0):
    return build_tiny_model(V, seed=seed, hidden_size=16, num_layers=1, num_heads=2)


def batch(seed: int = 0) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    gen = Generation(torch.randint(3, V, (B, P), generator=g), torch.ones(B, P, dtype=torch.long),
                     torch.randint(3, V, (B, T), generator=g), (torch.arange(T)[None] < lengths[:, None]).long(),
                     torch.zeros(B, dtype=torch.bool))
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5])
    return RolloutBatch(gen, torch.arange(B) // G, [Problem(f"p{i // G}", "a") for i in range(B)], [""] * B, rewards)


def logps(model, b: RolloutBatch) -> torch.Tensor:
    g = b.gen
    return score_completions(model, g.prompt_ids, g.prompt_mask, g.completion_ids, g.completion_mask).logp


def test_multi_epoch_update_matches_a_plain_ppo_loop() -> None:
    """2 iterations x 2 mini-batches: old log-probs from the rollout-time pass, one SGD step per mini-batch."""
    model, ref_model = tiny(), tiny()
    ref_model.load_state_dict(model.state_dict())
    b = batch()
    learner = Learner(model, torch.optim.SGD(model.parameters(), lr=2.0), get_method("grpo"), num_iterations=2,
                      minibatches=2, max_len=T)
    metrics = learner.update(b, learner.prepare(b))

    opt = torch.optim.SGD(ref_model.parameters(), lr=2.0)
    mask = b.gen.completion_mask.float()
    with torch.no_grad():
        old = logps(ref_model, b)
    r = b.rewards.view(2, G)
    a = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).reshape(-1)
    clipped = []
    for _ in range(2):
        for rows in (torch.arange(0, 4), torch.arange(4, 8)):
            lp = logps(ref_model, b.rows(rows))
            rho = torch.exp(lp - old[rows])
            m = mask[rows]
            ar = a[rows][:, None]
            per = torch.maximum(-ar * rho, -ar * rho.clamp(0.8, 1.2)) * m
            loss = (per.sum(-1) / m.sum(-1)).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 1.0)
            opt.step()
            clipped.append(float((((ar > 0) & (rho > 1.2)) | ((ar < 0) & (rho < 0.8))).float()[m > 0].mean()))
    for p1, p2 in zip(model.parameters(), ref_model.parameters()):
        assert torch.allclose(p1, p2, atol=1e-5)
    assert clipped[-1] > 0 and float(metrics["clip_frac"]) == pytest.approx(clipped[-1], abs=1e-6)


def test_reference_model_and_the_kl_term() -> None:
    model, ref = tiny(0), tiny(1)
    b = batch(1)
    method = Method("g", kl_coef=0.1)
    learner = Learner(model, torch.optim.SGD(model.parameters(), lr=0.0), method, ref_model=ref, max_len=T)
    ctx = learner.prepare(b)
    with torch.no_grad():
        ref_lp = logps(ref, b)
    assert torch.allclose(ctx.ref_logp, ref_lp, atol=1e-6)
    ctx.counts = global_counts(ctx.mask)
    loss = learner.loss(ctx.with_(logp=learner._train_pass.logp))
    m = ctx.mask
    lp = learner._train_pass.logp.detach()
    d = ref_lp - lp
    kl = ((torch.exp(d) - d - 1) * m).sum(-1) / m.sum(-1)
    a = ctx.advantages
    surrogate = (-a[:, None] * m).sum(-1) / m.sum(-1)  # on-policy: rho = 1
    assert torch.allclose(loss.detach(), (surrogate + 0.1 * kl).mean(), atol=1e-5)


def test_vocabulary_log_probs_reach_the_loss() -> None:
    model = tiny()
    b = batch(2)
    learner = Learner(model, torch.optim.SGD(model.parameters(), lr=0.1), get_method("otr"), max_len=T)
    ctx = learner.prepare(b)
    out = learner._train_pass
    assert out.vocab_logp.shape == (B, T, V) and out.vocab_logp.requires_grad
    assert torch.allclose(out.vocab_logp.exp().sum(-1), torch.ones(B, T), atol=1e-5)
    assert torch.allclose(out.vocab_logp.gather(-1, b.gen.completion_ids[..., None])[..., 0], out.logp, atol=1e-6)
    assert learner.update(b, ctx)["loss"].isfinite()


def test_fast_sampler_log_probs_are_the_learners_at_full_softmax() -> None:
    """top_k = 0, top_p = 1, temperature 1: the sampler draws from the distribution the learner scores."""
    from offline_rl.seq.fast_generator import CachedSampler
    from offline_rl.seq.rollout import SamplingParams

    model = build_tiny_model(80, seed=0, hidden_size=16, num_layers=1, num_heads=2, eos_id=2)
    torch.manual_seed(0)
    gen = CachedSampler(model, 0, 2).generate([[1, 5, 6], [1, 7]], [3, 2], SamplingParams(max_new_tokens=6))
    scored = score_completions(model, gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask).logp
    m = gen.completion_mask.bool()
    assert torch.allclose(gen.logprobs[m], scored.detach()[m], atol=1e-5)
    torch.manual_seed(0)
    cut = CachedSampler(model, 0, 2).generate([[1, 5, 6], [1, 7]], [3, 2], SamplingParams(max_new_tokens=6, top_k=50))
    m2 = cut.completion_mask.bool()
    rescored = score_completions(model, cut.prompt_ids, cut.prompt_mask, cut.completion_ids,
                                 cut.completion_mask).logp.detach()
    assert (cut.logprobs[m2] > rescored[m2] + 1e-4).all()  # truncation renormalises: not the scored policy


@pytest.mark.parametrize("name", ["gspo", "turn_ppo", "ma_rlhf", "s_ppo", "st_ppo", "stratified_grpo"])
def test_paper_defaults_are_not_grpo(name: str) -> None:
    """With its paper's defaults (mini-batches, clip ranges, macro returns, turns) a method's update differs from
    GRPO's on the same batch; completions contain the turn marker (token 4)."""
    b = batch(3)
    b.gen.completion_ids[::2, 1] = 4
    b.rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    params = {}
    for m in ("grpo", name):
        method = get_method(m)
        model, ref = tiny(), tiny()
        ref.load_state_dict(model.state_dict())
        learner = Learner(model, torch.optim.SGD(model.parameters(), lr=1.0), method, ref_model=ref, max_len=T,
                          num_iterations=method.num_iterations or 1, minibatches=method.minibatches or 1,
                          turn_marker_id=4)
        learner.update(b, learner.prepare(b))
        params[m] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert not torch.allclose(params["grpo"], params[name], atol=1e-6)
    expected = {"gspo": 4, "turn_ppo": 2, "s_ppo": 2, "st_ppo": 2}
    assert (get_method(name).minibatches or 1) == expected.get(name, 1)
