"""End to end: training on CPU, result.json and TensorBoard, learning, save/load, the CLI, and plug-in methods."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
import torch

pytest.importorskip("transformers")

from typer.testing import CliRunner  # noqa: E402

import offline_rl.seq as seq  # noqa: E402
from offline_rl.cli.seq import app  # noqa: E402
from offline_rl.seq import methods as methods_module  # noqa: E402
from offline_rl.seq.methods.base import Choice, Method  # noqa: E402
from offline_rl.seq.policy import load_policy  # noqa: E402
from offline_rl.seq.tasks import make_task  # noqa: E402
from offline_rl.seq.trainer import evaluate  # noqa: E402

COPY1 = dict(task="copy", task_options={"min_len": 1, "max_len": 1}, max_new_tokens=1, group_size=8,
             prompts_per_step=16, lr=3e-3, progress=False, log_every=1000, seed=0)


@seq.register_method("test_rloo_token_mean")
def rloo_token_mean() -> Method:
    """A method registered from outside the package (this test module)."""
    return Method("test_rloo_token_mean", description="RLOO advantages, token-mean",
                  advantage=Choice("rloo"), aggregation=Choice("token-mean"))


def test_train_writes_result_tensorboard_and_a_model_that_round_trips(tmp_path) -> None:
    out = tmp_path / "run"
    r = seq.train(**{**COPY1, "steps": 4}, out_dir=str(out), eval_problems=10)
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == "completed" and len(result["curve"]) == 4 and result["config"]["task"] == "copy"
    assert result["method"]["advantage"]["name"] == "grpo" and result["tokens_per_s"] > 0
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    model, tok = load_policy(out / "model")
    assert evaluate(model, tok, make_task("copy", min_len=1, max_len=1), 10, 1) == r.final_eval
    again = seq.train(**{**COPY1, "steps": 1}, model=str(out / "model"), eval_problems=2, save_model=False)
    assert again.model == r.model  # training resumes from the saved directory (--model PATH)


def test_grpo_learns_single_digit_copy() -> None:
    """GRPO lifts a random tiny Llama's exact-match on 1-digit copy from ~1/V to near 1 (seed 0, ~100 steps)."""
    r = seq.train(**COPY1, steps=100, eval_problems=10)
    first = sum(c[1] for c in r.curve[:10]) / 10
    last = sum(c[1] for c in r.curve[-10:]) / 10
    assert first < 0.2 and last > first + 0.6 and r.final_eval >= 0.9, (first, last, r.final_eval)


@pytest.mark.slow
def test_grpo_learns_single_digit_arithmetic() -> None:
    """a + b with a, b <= 4 (answers 0..8): greedy exact-match from ~0 to >= 0.6 in 300 steps (~20 s alone)."""
    r = seq.train(**{**COPY1, "task": "arithmetic", "task_options": {"max_operand": 4, "ops": "+"}}, steps=300,
                  eval_problems=64)
    assert r.curve[0][1] < 0.15 and r.final_eval >= 0.6, r.eval_curve


def test_every_method_trains_a_step() -> None:
    for name in seq.available_methods():
        r = seq.train(**{**COPY1, "steps": 1, "group_size": 4, "prompts_per_step": 2, "max_new_tokens": 2},
                      method=name, eval_problems=2, save_model=False)
        assert r.status == "completed", name


def test_reference_kl_multiple_minibatches_and_gpt2() -> None:
    r = seq.train(**{**COPY1, "steps": 2, "group_size": 4, "prompts_per_step": 4}, model="tiny-gpt2",
                  method_overrides={"kl_coef": 0.04}, num_iterations=2, minibatches=2, eval_problems=2)
    assert r.status == "completed" and r.method["kl_coef"] == 0.04


def test_plugin_method_registered_from_a_test_module(monkeypatch) -> None:
    assert "test_rloo_token_mean" in seq.available_methods()
    r = seq.train(**{**COPY1, "steps": 1}, method="test_rloo_token_mean", eval_problems=2)
    assert r.method["aggregation"]["name"] == "token-mean"


def test_entry_point_plugins(monkeypatch) -> None:
    ep = metadata.EntryPoint("ep_gspo_copy", "offline_rl.seq.methods.grpo:gspo", methods_module.ENTRY_POINT_GROUP)
    monkeypatch.setattr(methods_module.metadata, "entry_points",
                        lambda group: [ep] if group == methods_module.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(methods_module, "_plugins_loaded", False)
    assert "ep_gspo_copy" in seq.available_methods()
    assert seq.get_method("ep_gspo_copy").ratio.name == "segment"


runner = CliRunner()


def test_cli_list() -> None:
    res = runner.invoke(app, ["list", "--json"])
    assert res.exit_code == 0
    info = json.loads(res.stdout)
    assert {"grpo", "bnpo", "gtpo", "capo"} <= set(info["methods"]) and "countdown" in info["tasks"]
    assert "seq-mean-token-sum-norm" in info["extension_points"]["aggregation"]
    plain = runner.invoke(app, ["list"])
    assert plain.exit_code == 0 and "extension points:" in plain.stdout


def test_cli_train(tmp_path) -> None:
    res = runner.invoke(app, ["train", "--task", "copy", "--method", "dr_grpo", "--model", "tiny", "--steps", "2",
                              "--group-size", "4", "--prompts-per-step", "2", "--max-new-tokens", "2", "--out",
                              str(tmp_path), "--set", "surrogate.eps_high=0.28", "--task-opt", "max_len=2",
                              "--eval-problems", "4"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["method"]["surrogate"]["params"]["eps_high"] == 0.28 and len(result["curve"]) == 2


@pytest.mark.parametrize("args,needle", [
    (["--method", "nope"], "unknown method 'nope'"),
    (["--task", "nope"], "unknown task"),
    (["--model", "/no/such/dir"], "no model at"),
    (["--set", "nope.x=1"], "unknown method setting"),
    (["--set", "novalue"], "KEY=VALUE"),
])
def test_cli_bad_input_exits_2_with_one_line(args: list[str], needle: str) -> None:
    res = runner.invoke(app, ["train", "--steps", "1", *args])
    assert res.exit_code == 2 and needle in res.output and len(res.output.strip().splitlines()) == 1, res.output


def test_cli_malformed_jsonl(tmp_path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text("not json\n")
    res = runner.invoke(app, ["train", "--task", str(f), "--steps", "1"])
    assert res.exit_code == 2 and "bad.jsonl:1" in res.output


def test_same_seed_same_result() -> None:
    a = seq.train(**{**COPY1, "steps": 3}, eval_problems=4, save_model=False)
    b = seq.train(**{**COPY1, "steps": 3}, eval_problems=4, save_model=False)
    assert a.curve == b.curve and torch.isfinite(torch.tensor(a.final_reward))
