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
