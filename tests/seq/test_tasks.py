"""Tasks, checkers and tokenizers (no model needed)."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from offline_rl.errors import UserError
from offline_rl.seq.tasks import CHECKERS, Problem, make_task
from offline_rl.seq.tasks.countdown import safe_eval
from offline_rl.seq.tokenizer import CharTokenizer, load_tokenizer


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "copy", "reverse", "sort"])
def test_generators_are_seeded_and_solvable(name: str) -> None:
    a, b, c = make_task(name, seed=1), make_task(name, seed=1), make_task(name, seed=2)
    probs = [a.problem(i) for i in range(30)]
    assert probs == [b.problem(i) for i in range(30)] and probs != [c.problem(i) for i in range(30)]
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
