"""P3 hooks with real batches: Scaf-GRPO's hint retries (a fake generator whose success rises with the hint
level), HPT's switch and its SFT term, the demonstrations hook, batch concatenation."""

from __future__ import annotations

import pytest
import torch
from seq_helpers import prepare

from offline_rl.seq.methods import get_method
from offline_rl.seq.methods.base import Method
from offline_rl.seq.methods.scaf_grpo import first_success, hint_prompts
from offline_rl.seq.points.hooks import HookContext
from offline_rl.seq.registry import HOOKS
from offline_rl.seq.rollout import Generation, RolloutBatch, concat_batches, demonstrations
from offline_rl.seq.tasks import Problem, make_task
from offline_rl.seq.tokenizer import CharTokenizer

TOK = CharTokenizer("0123456789+-*/=()<>,:;| abcxy")
TASK = make_task("copy")


def rows(problems: list[Problem], n: list[int], rewards: list[float], texts: list[str] | None = None,
         first_group: int = 0, prompt_texts: list[str] | None = None) -> RolloutBatch:
    """A real batch: the prompts tokenised, each completion the text's characters + eos."""
    prompts = [TOK.encode_prompt(t) for t in (prompt_texts or [p.prompt for p in problems])]
    rep = [pr for pr, k in zip(prompts, n) for _ in range(k)]
    texts = texts or ["1"] * len(rep)
    from offline_rl.seq.rollout import left_pad

    p_ids, p_mask = left_pad(rep, TOK.pad_id)
    comps = [TOK.encode(t) + [TOK.eos_id] for t in texts]
    width = max(len(c) for c in comps)
    c_ids = torch.tensor([c + [TOK.pad_id] * (width - len(c)) for c in comps])
    c_mask = torch.tensor([[1] * len(c) + [0] * (width - len(c)) for c in comps])
    gen = Generation(p_ids, p_mask, c_ids, c_mask, torch.zeros(len(rep), dtype=torch.bool))
    groups = torch.tensor([first_group + i for i, k in enumerate(n) for _ in range(k)])
    return RolloutBatch(gen, groups, [p for p, k in zip(problems, n) for _ in range(k)], texts,
                        torch.tensor(rewards, dtype=torch.float32))


def hints(k: list[str], s: list[str]) -> dict:
    return {"knowledge_components_parts": k, "solution_breakdown_parts": s}


PROBLEMS = [Problem("1=", "1", hints(["a", "b", "c"], ["x", "y"])),  # solved at knowledge level 3 ("c" shown)
            Problem("2=", "2", hints(["a"], ["x", "y"])),  # solved at level 6 (solution tier, 2 parts)
            Problem("3=", "3", hints(["a"], ["x"])),  # never solved
            Problem("4=", "4", hints(["c"], ["y"]))]  # has a success already: untouched


def fake_generate(calls: list) -> callable:
    def generate(problems, n, prompt_texts=None, greedy=False):
        calls.append(list(prompt_texts))
        ok = {"1=": lambda t: "c" in t, "2=": lambda t: "x y" in t, "3=": lambda t: False}
        rewards = [float(ok[p.prompt](t)) for p, t in zip(problems, prompt_texts)]
        return rows(problems, n, rewards, texts=["7"] * len(problems), first_group=100, prompt_texts=prompt_texts)
    return generate


def scaf_ctx(step: int, calls: list) -> HookContext:
    batch = rows(PROBLEMS, [3, 3, 3, 3], [0.0] * 9 + [0.0, 1.0, 0.0])
    return HookContext(batch, step, generate=fake_generate(calls), concat=lambda bs: concat_batches(bs, 0), state={})


def test_hint_levels_accumulate_within_each_tier() -> None:
    levels = hint_prompts(PROBLEMS[0], ("knowledge_components_parts", "solution_breakdown_parts"))
    assert [lv for lv, _ in levels] == list(range(1, 9))
    assert [t for _, t in levels] == ["(a)1=", "(a b)1=", "(a b c)1=", "(a b c)1=", "(x)1=", "(x y)1=", "(x y)1=",
                                      "(x y)1="]
    assert first_success([1, 2, 3, 3, 5], [0, 0, 1, 1, 1]) == 2 and first_success([1, 2], [0, 0]) is None


def test_scaf_replaces_one_rollout_at_the_minimal_level() -> None:
    calls: list = []
    ctx = scaf_ctx(step=50, calls=calls)  # the warm-up is 50 steps: step 50 is the first guided one
    out = HOOKS.get("scaf_hints")(ctx)
    assert len(calls) == 1 and len(calls[0]) == 3 * 8  # three hard groups x 8 levels, one sample each
    assert out.size == 12 and torch.equal(out.group_ids, ctx.batch.group_ids)  # group sizes unchanged
    assert out.rewards.tolist() == [1.0, 0, 0, 1.0, 0, 0, 0, 0, 0, 0, 1.0, 0]  # exactly one replaced per group
    prompt0 = TOK.decode([t for t, m in zip(out.gen.prompt_ids[0].tolist(), out.gen.prompt_mask[0].tolist()) if m])
    prompt3 = TOK.decode([t for t, m in zip(out.gen.prompt_ids[3].tolist(), out.gen.prompt_mask[3].tolist()) if m])
    assert (prompt0, prompt3) == ("(a b c)1=", "(x y)2=")  # the minimal successful level's hinted prompt
    assert out.texts[0] == "7" and out.texts[1:3] == ["1", "1"]
    assert ctx.state["scaf"] == {"solved_by_hint": 2, "hard": 3}
    from offline_rl.seq.context import LossContext

    a = get_method("scaf_grpo").fn("advantage")(LossContext(
        mask=out.gen.completion_mask.float(), group_ids=out.group_ids, rewards=out.rewards,
        token_ids=out.gen.completion_ids, logp=torch.zeros(12, 2), old_logp=torch.zeros(12, 2)))
    assert a[:6].abs().sum() > 0 and (a[6:9] == 0).all()  # the hinted groups now carry a gradient


def test_scaf_keeps_the_prompt_with_replace_hint_prompt_and_waits_for_the_warmup() -> None:
    calls: list = []
    out = HOOKS.get("scaf_hints")(scaf_ctx(step=60, calls=calls), replace_hint_prompt=True)
    prompt0 = TOK.decode([t for t, m in zip(out.gen.prompt_ids[0].tolist(), out.gen.prompt_mask[0].tolist()) if m])
    assert prompt0 == "1=" and out.texts[0] == "7" and out.rewards[0] == 1.0
    early = scaf_ctx(step=49, calls=calls)
    assert HOOKS.get("scaf_hints")(early) is early.batch and len(calls) == 1


# --- HPT --------------------------------------------------------------------------------------------------------

def hpt_ctx(step: int = 0) -> HookContext:
    a, b = Problem("12=", "12"), Problem("3=", "3")
    batch = rows([a, b], [8, 8], [0.0] * 8 + [1.0, 1.0, 1.0] + [0.0] * 5,
                 texts=["9"] * 8 + ["3"] * 3 + ["5"] * 5)

    def demos(problems, group_ids):
        return demonstrations(TOK, TASK, problems, group_ids)

    return HookContext(batch, step, demonstrations=demos, concat=lambda bs: concat_batches(bs, TOK.pad_id), state={})


def loss_ctx(batch: RolloutBatch, seed: int = 0):
    from offline_rl.seq.context import LossContext, global_counts

    g = torch.Generator().manual_seed(seed)
    mask = batch.gen.completion_mask.float()
    old = -torch.rand(mask.shape, generator=g) - 0.1
    ctx = LossContext(mask=mask, valid=mask.clone(), group_ids=batch.group_ids, rewards=batch.rewards,
                      token_ids=batch.gen.completion_ids, logp=(old + 0.1 * torch.randn(mask.shape, generator=g))
                      .requires_grad_(True), old_logp=old, flags=dict(batch.flags))
    ctx.counts = global_counts(mask)
    return ctx


def test_hpt_switch_turns_an_all_fail_group_into_its_demonstration() -> None:
    out = HOOKS.get("hpt_switch")(hpt_ctx())
    assert out.size == 9 and out.flags["sft"].tolist() == [False] * 8 + [True]
    assert out.texts[-1] == "12" and out.group_ids[-1] == 0 and out.rewards[-1] == 1.0
    demo = out.gen.completion_ids[-1][out.gen.completion_mask[-1].bool()].tolist()
    assert demo == TOK.encode("12") + [TOK.eos_id]


def test_hpt_loss_is_grpo_on_rl_rows_plus_sft_on_the_demonstration() -> None:
    from offline_rl.seq.loss import policy_loss

    out = HOOKS.get("hpt_switch")(hpt_ctx())
    ctx = loss_ctx(out)
    method = get_method("hpt")
    c = prepare(method, ctx)
    loss = policy_loss(method, c)
    (g,) = torch.autograd.grad(loss, ctx.logp)
    m = ctx.valid
    demo_tokens = m[-1].sum()
    assert torch.allclose(g[-1], -m[-1] / demo_tokens, atol=1e-6)  # grad of -mean log pi(demo)
    rl = out.rows(torch.arange(8))  # prompt B's rollouts alone, GRPO with token-mean
    rl_ctx = loss_ctx(rl)
    rl_ctx.logp = ctx.logp[:8].detach().clone().requires_grad_(True)
    rl_ctx.old_logp = ctx.old_logp[:8]
    grpo = Method("grpo_tm", aggregation=method.aggregation)
    rl_loss = policy_loss(grpo, prepare(grpo, rl_ctx))
    (g_rl,) = torch.autograd.grad(rl_loss, rl_ctx.logp)
    assert torch.allclose(g[:8], g_rl, atol=1e-6)
    sft = -(ctx.logp[-1] * m[-1]).sum() / demo_tokens
    assert torch.allclose(loss, rl_loss + 1.0 * sft, atol=1e-6)  # sft_coef 1.0


def test_hpt_gates_minus_one_and_n_are_pure_grpo_and_pure_sft() -> None:
    assert HOOKS.get("hpt_switch")(hpt_ctx(), switch_gate=-1).flags == {}
    out = HOOKS.get("hpt_switch")(hpt_ctx(), switch_gate=8)
    assert out.size == 2 and out.flags["sft"].all() and out.texts == ["12", "3"]


def test_demonstrations_hook_with_no_rollouts() -> None:
    a, b = Problem("12=", "12"), Problem("3=", "3")
    from offline_rl.seq.rollout import empty_generation

    empty = RolloutBatch(empty_generation(), torch.zeros(0, dtype=torch.long), [], [], torch.zeros(0))
    ctx = HookContext(empty, 0, [a, b], [0, 0], demonstrations=lambda ps, g=None: demonstrations(TOK, TASK, ps,
                                                                                                 [0, 1]),
                      concat=lambda bs: concat_batches(bs, 0))
    out = HOOKS.get("demonstrations")(ctx)
    assert out.texts == ["12", "3"] and out.flags["sft"].all() and out.group_ids.tolist() == [0, 1]


def test_concat_pads_prompts_left_and_completions_right() -> None:
    x = rows([Problem("1=", "1")], [1], [1.0], texts=["12"])
    y = rows([Problem("123=", "1")], [1], [0.0], texts=["1234"])
    z = concat_batches([x, y], TOK.pad_id)
    assert z.gen.prompt_ids.shape == (2, 5) and z.gen.completion_ids.shape == (2, 5)
    assert z.gen.prompt_mask.tolist()[0] == [0, 0, 1, 1, 1] and z.gen.completion_mask.tolist()[0] == [1, 1, 1, 0, 0]
    assert z.rewards.tolist() == [1.0, 0.0] and z.texts == ["12", "1234"]
    with pytest.raises(IndexError):
        z.rows(torch.tensor([2]))
