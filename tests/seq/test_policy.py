"""The HF policy: padding-aware per-token log-probs, generation, hidden states, save/load, lazy transformers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from offline_rl.errors import UserError  # noqa: E402
from offline_rl.seq.policy import build_tiny_model, load_policy, save_policy, score_completions  # noqa: E402
from offline_rl.seq.rollout import HFGenerator, SamplingParams, completion_mask, left_pad  # noqa: E402
from offline_rl.seq.tokenizer import CharTokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def reference_logps(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Unpadded, one sequence at a time: log pi(o_t | prompt, o_<t) from the full logits."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1:-1], -1)
    return logp.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_batched_logprobs_match_unpadded_reference(arch: str) -> None:
    model = build_tiny_model(20, arch, seed=1)
    prompts = [[1, 5, 6, 7], [1, 8], [1, 9, 9]]
    completions = [[3, 4, 2], [5, 2], [6, 7, 8]]
    p_ids, p_mask = left_pad(prompts, 0)
    c_ids = torch.tensor([c + [0] * (3 - len(c)) for c in completions])
    c_mask, truncated = completion_mask(c_ids, eos_id=2)
    assert c_mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1]] and truncated.tolist() == [False, False, True]
    with torch.no_grad():
        out = score_completions(model, p_ids, p_mask, c_ids, c_mask, with_hidden=True)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        assert torch.allclose(out.logp[i, : len(c)], reference_logps(model, p, c), atol=1e-5)
    assert out.entropy.shape == (3, 3) and (out.entropy > 0).all()
    head = model.get_output_embeddings()
    assert out.hidden.shape[:2] == (3, 3)
    assert torch.allclose(torch.log_softmax(head(out.hidden).float(), -1).gather(-1, c_ids[..., None])[..., 0],
                          out.logp, atol=1e-5)


def test_generation_groups_and_masks() -> None:
    tok = CharTokenizer()
    model = build_tiny_model(tok.vocab_size, seed=0)
    gen = HFGenerator(model, tok.pad_id, tok.eos_id)
    torch.manual_seed(0)
    out = gen.generate([tok.encode_prompt("1+2="), tok.encode_prompt("33=")], [3, 2], SamplingParams(max_new_tokens=5))
    assert out.prompt_ids.shape[0] == 5 and out.completion_ids.shape[1] <= 5
    assert (out.prompt_ids[:3] == out.prompt_ids[0]).all()
    ends = (out.completion_ids == tok.eos_id).long().cumsum(-1)
    assert ((ends > 1) <= (out.completion_mask == 0)).all()  # nothing valid after the first eos
    assert (out.completion_ids[out.completion_mask == 0] == tok.pad_id).all()


def test_save_and_load_round_trip(tmp_path) -> None:
    tok = CharTokenizer()
    model = build_tiny_model(tok.vocab_size, seed=3)
    save_policy(model, tok, tmp_path / "m")
    again, tok2 = load_policy(tmp_path / "m")
    assert isinstance(tok2, CharTokenizer) and tok2.itos == tok.itos
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    ids = torch.tensor([tok.encode_prompt("12+3=")])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    with pytest.raises(UserError, match="no model"):
        load_policy(tmp_path / "missing")


def test_import_without_transformers() -> None:
    """`import offline_rl.seq` works without transformers (using it fails); seq never imports offline_rl.algos."""
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import offline_rl.seq as seq, offline_rl.seq.trainer, offline_rl.cli.seq\n"
            "assert 'grpo' in seq.available_methods()\n"
            "assert not any(m.startswith('offline_rl.algos') for m in sys.modules)\n"
            "try:\n    seq.train(task='copy', steps=1)\nexcept ImportError:\n    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fast_sampler_draws_the_same_tokens_as_generate(arch: str) -> None:
    from offline_rl.seq.fast_generator import CachedSampler

    tok = CharTokenizer()
    model = build_tiny_model(tok.vocab_size, arch, seed=2)
    prompts = [tok.encode_prompt(s) for s in ["12+3=", "4=", "99-7="]]
    for params in [SamplingParams(8), SamplingParams(6, 6), SamplingParams(6, 2, 0.7, 5, 0.9),
                   SamplingParams(5, temperature=0.0)]:
        outs = []
        for cls in (HFGenerator, CachedSampler):
            torch.manual_seed(0)
            outs.append(cls(model, tok.pad_id, tok.eos_id).generate(prompts, [4, 2, 3], params))
        a, b = outs
        assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_mask, b.completion_mask)
        assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.truncated, b.truncated)


@pytest.mark.parametrize("generator", ["hf", "fast"])
def test_top_k_zero_samples_the_full_softmax_over_a_vocabulary_above_50(generator: str) -> None:
    """top_k = 0 is off: the draws follow the softmax the learner scores, beyond the 50 most likely tokens."""
    from offline_rl.seq.fast_generator import CachedSampler

    V = 80
    model = build_tiny_model(V, seed=4, hidden_size=16, num_layers=1, num_heads=2)
    prompt = [1, 5, 9]
    with torch.no_grad():
        probs = torch.softmax(model(input_ids=torch.tensor([prompt])).logits[0, -1].float(), -1)
    outside = torch.argsort(probs, descending=True)[50:]
    mass = float(probs[outside].sum())
    cls = HFGenerator if generator == "hf" else CachedSampler
    torch.manual_seed(0)
    out = cls(model, 0, 2).generate([prompt], [4000], SamplingParams(max_new_tokens=1))
    drawn = out.completion_ids[:, 0]
    frac = float(torch.isin(drawn, outside).float().mean())
    assert mass > 0.2 and frac == pytest.approx(mass, abs=0.03), (frac, mass)
    torch.manual_seed(0)
    cut = cls(model, 0, 2).generate([prompt], [2000], SamplingParams(max_new_tokens=1, top_k=50))
    assert not torch.isin(cut.completion_ids[:, 0], outside).any()  # a real top-k when asked for


class FakeVLLM:
    """A stand-in for the vllm module: SamplingParams records its arguments; LLM returns fixed completions."""

    class SamplingParams:
        def __init__(self, **kw) -> None:
            self.kw = kw

    class Logprob:
        def __init__(self, v: float) -> None:
            self.logprob = v

    class LLM:
        def __init__(self) -> None:
            self.loaded, self.calls = [], []

        def apply_model(self, fn) -> None:
            class EngineModel:
                def load_weights(inner, weights):  # noqa: N805
                    self.loaded.append(len(weights))
            fn(EngineModel())

        def generate(self, requests, sampling, use_tqdm=False):
            self.calls.append([s.kw for s in sampling])
            outs = []
            for _req, s in zip(requests, sampling):
                comps = []
                for j in range(s.kw["n"]):
                    ids = [5 + j, 6, 2] if j % 2 == 0 else [7]
                    comps.append(type("C", (), {"token_ids": ids,
                                                "logprobs": [{t: FakeVLLM.Logprob(-0.5 * (k + 1))} for k, t in
                                                             enumerate(ids)]}))
                outs.append(type("O", (), {"outputs": comps}))
            return outs


def test_vllm_batches_are_built_on_the_policy_device() -> None:
    from offline_rl.seq.vllm_generator import VLLMGenerator

    with torch.device("meta"):
        meta_model = build_tiny_model(12, seed=0, hidden_size=16, num_layers=1, num_heads=2)
    llm = FakeVLLM.LLM()
    gen = VLLMGenerator("unused", 0, 2, engine=llm, vllm_module=FakeVLLM)
    gen.sync_weights(meta_model)
    out = gen.generate([[1, 3], [1, 4, 4]], [2, 1], SamplingParams(max_new_tokens=4))
    tensors = [out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask, out.truncated, out.logprobs]
    assert all(t.device.type == "meta" for t in tensors) and llm.loaded
    kw = llm.calls[0][0]
    assert kw["top_k"] == -1 and kw["logprobs"] == 0 and kw["n"] == 2  # full softmax, sampled-token log-probs


def test_vllm_batch_reaches_the_learner() -> None:
    from offline_rl.seq.learner import Learner
    from offline_rl.seq.methods import get_method
    from offline_rl.seq.rollout import collect
    from offline_rl.seq.tasks import make_task
    from offline_rl.seq.vllm_generator import VLLMGenerator

    tok = CharTokenizer()
    model = build_tiny_model(tok.vocab_size, seed=0, hidden_size=16, num_layers=1, num_heads=2)
    gen = VLLMGenerator("unused", tok.pad_id, tok.eos_id, engine=FakeVLLM.LLM(), vllm_module=FakeVLLM)
    gen.sync_weights(model)
    task = make_task("copy")
    batch = collect(gen, tok, task, [task.problem(0), task.problem(1)], [2, 2], SamplingParams(max_new_tokens=4))
    learner = Learner(model, torch.optim.SGD(model.parameters(), lr=0.1), get_method("grpo"), max_len=4)
    ctx = learner.prepare(batch)
    device = next(model.parameters()).device
    assert ctx.mask.device == device and ctx.rollout_logp is not None
    assert ctx.rollout_logp[0, :3].tolist() == [-0.5, -1.0, -1.5] and ctx.rollout_logp[1, 1] == 0
    assert torch.isfinite(learner.update(batch, ctx)["loss"])
