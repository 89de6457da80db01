"""Tasks, checkers and tokenizers (no model needed)."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from offline_rl.errors import UserError
from offline_rl.seq.tasks import CHECKERS, Problem, make_task
from offline_rl.seq.tasks.countdown import safe_eval
from offline_rl.seq.tokenizer import CharTokenizer, load_tokenizer


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "copy", "reverse", "sort", "multistep", "levels"])
def test_generators_are_seeded_and_solvable(name: str) -> None:
    a, b, c = make_task(name, seed=1), make_task(name, seed=1), make_task(name, seed=2)
    idx = range(a.size or 30)
    probs = [a.problem(i) for i in idx]
    assert probs == [b.problem(i) for i in idx] and probs != [c.problem(i) for i in idx]
    tok = CharTokenizer(a.alphabet)
    for p in probs:
        assert a.reward(p.answer, p) == 1.0  # the reference answer passes the exact checker
        assert tok.decode(tok.encode_prompt(p.prompt)) == p.prompt


def test_task_answers() -> None:
    assert make_task("reverse").transform("123") == "321" and make_task("sort").transform("312") == "123"
    p = make_task("arithmetic", max_operand=4, ops="+", max_answer=5).problem(0)
    a, b = map(int, p.prompt[:-1].split("+"))
    assert p.answer == str(a + b) and int(p.answer) <= 5
    assert make_task("copy", min_len=1, max_len=1).size == 10


def test_countdown_checker() -> None:
    p = Problem("3,5,7:22=", "3*5+7", {"numbers": [3, 5, 7], "target": 22})
    check = CHECKERS.get("countdown")
    assert check("7+5*3", p) == 1.0 and check("(3+5)*7", p) == 0.0  # wrong value
    assert check("3*5+7+0", p) == 0.0 and check("22", p) == 0.0  # extra / missing numbers
    assert check("__import__('os')", p) == 0.0 and check("3*/5", p) == 0.0
    assert safe_eval("(7-1)/4")[0] == Fraction(3, 2)


def test_jsonl_task(tmp_path) -> None:
    f = tmp_path / "qa.jsonl"
    f.write_text('{"prompt": "2+2=", "answer": 4}\n\n{"prompt": "cat?", "answer": "Yes", "id": 7}\n')
    task = make_task(str(f), checker="case_insensitive")
    assert task.size == 2 and task.problem(1).meta == {"id": 7} and task.reward(" yes ", task.problem(1)) == 1.0
    assert set("cat?Y") <= set(task.alphabet)


@pytest.mark.parametrize("content,needle", [('{"prompt": "a"\n', ":1: not valid JSON"),
                                            ('{"answer": "a"}\n', "needs a string"), ("", "no problems")])
def test_jsonl_errors_are_user_errors(tmp_path, content: str, needle: str) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(UserError, match=needle):
        make_task(str(f))


def test_unknown_names_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="unknown task"):
        make_task("nope")
    with pytest.raises(UserError, match="not found"):
        make_task(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="unknown checker"):
        (tmp_path / "ok.jsonl").write_text('{"prompt": "a", "answer": "b"}\n')
        make_task(str(tmp_path / "ok.jsonl"), checker="nope")


def test_char_tokenizer_round_trip(tmp_path) -> None:
    tok = CharTokenizer()
    ids = tok.encode_prompt("12+3=")
    assert ids[0] == tok.bos_id and tok.decode(ids + [tok.eos_id, tok.pad_id]) == "12+3="
    with pytest.raises(UserError, match="alphabet"):
        tok.encode("x")
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again.itos == tok.itos


def test_hf_tokenizer_from_a_local_directory(tmp_path) -> None:
    hf = CharTokenizer().to_hf()
    hf.save_pretrained(str(tmp_path))
    tok = load_tokenizer(tmp_path)
    char = CharTokenizer()
    assert tok.encode_prompt("12+3=") == char.encode_prompt("12+3=")
    assert tok.decode(char.encode_prompt("40-2=") + [char.eos_id]) == "40-2="
    assert (tok.pad_id, tok.eos_id, tok.vocab_size) == (0, 2, char.vocab_size)
    with pytest.raises(UserError):
        load_tokenizer(tmp_path / "nothing")


def test_jsonl_written_by_json_dumps(tmp_path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": f"{i}=", "answer": str(i)}) for i in range(5)))
    assert make_task(str(f)).problem(3).answer == "3"


def test_multistep_turns_and_rewards() -> None:
    task = make_task("multistep", seed=3)
    p = task.problem(0)
    terms = list(map(int, p.prompt[:-1].split("+")))
    sums = [sum(terms[: k + 1]) for k in range(1, len(terms))]
    assert p.answer == "|".join(map(str, sums)) and task.turn_marker == "|" and p.meta["turns"] == len(terms) - 1
    assert task.reward(p.answer, p) == 1.0 and task.reward("0|" + p.answer, p) == 0.0
    final = make_task("multistep", seed=3, reward="final")
    assert final.reward("99|" + p.answer.split("|")[-1], p) == 1.0
    assert {len(make_task("multistep", min_terms=3, max_terms=3).problem(i).answer.split("|")) for i in range(20)} == {2}
    with pytest.raises(UserError, match="min_terms"):
        make_task("multistep", min_terms=1)


def test_levels_categories_and_pool() -> None:
    task = make_task("levels", per_level=12, levels="013")
    assert task.size == 10 + 12 + 12  # copy-one-digit has only 10 distinct problems
    cats = [task.problem(i).meta["category"] for i in range(task.size)]
    assert cats == [0] * 10 + [1] * 12 + [3] * 12
    assert [task.problem(i).prompt for i in range(10)] == [f"{d}=" for d in range(10)]
    assert len({task.problem(i).prompt for i in range(task.size)}) == task.size  # distinct: held out means unseen
    a, b = map(int, task.problem(12).prompt[:-1].split("+"))
    assert a <= 4 and b <= 4 and task.problem(12).answer == str(a + b)
    assert task.problem(task.size + 5) == task.problem(5)  # indices wrap round the pool
    assert make_task("levels", per_level=40, levels="1").size == 25
    with pytest.raises(UserError, match="levels"):
        make_task("levels", levels="7")


def test_hint_tiers_in_the_problems() -> None:
    p = make_task("arithmetic", max_operand=99, ops="+").problem(0)
    a, b = map(int, p.prompt[:-1].split("+"))
    assert p.meta["knowledge_components_parts"] == [f"{a % 10}+{b % 10}={a % 10 + b % 10}",
                                                    f"{a // 10 * 10}+{b // 10 * 10}={a // 10 * 10 + b // 10 * 10}"]
    assert p.meta["solution_breakdown_parts"] == list(p.answer)
    assert make_task("copy").problem(2).meta["solution_breakdown_parts"] == list(make_task("copy").problem(2).answer)


def test_finite_pools_hold_out_their_evaluation_problems(tmp_path) -> None:
    from offline_rl.seq.trainer import EVAL_OFFSET, split_pool

    f = tmp_path / "qa.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": f"{i}=", "answer": str(i)}) for i in range(20)))
    task = make_task(str(f))
    train, held, kind = split_pool(task, 0.2, 64)
    assert kind == "held-out" and len(held) == 4 and len(train) == 16 and not set(train) & set(held)
    assert split_pool(make_task(str(f), seed=5), 0.2, 64)[1] == held  # independent of the training seed
    assert split_pool(task, 0.0, 8)[2] == "train" and len(split_pool(task, 0.0, 8)[1]) == 8
    endless = split_pool(make_task("arithmetic"), 0.2, 3)
    assert endless == (None, [EVAL_OFFSET, EVAL_OFFSET + 1, EVAL_OFFSET + 2], "held-out")
    with pytest.raises(UserError, match="no training problems"):
        split_pool(make_task("copy", min_len=1, max_len=1), 0.95, 8)
