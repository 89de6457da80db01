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
             prompts_per_step=16, lr=3e-3, progress=False, log_every=1000, seed=0, eval_holdout=0.0)
SMALL = {"hidden_size": 16, "num_layers": 1, "num_heads": 2}
TASK_FOR = {"turn_ppo": "multistep", "st_ppo": "multistep", "stratified_grpo": "multistep", "sec": "levels",
            "vade": "levels", "mmr1_vps": "levels"}


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
    assert result["eval_split"] == "train"  # the 10-problem pool is evaluated in-sample here (eval_holdout 0)
    assert result["method"]["advantage"]["name"] == "grpo" and result["tokens_per_s"] > 0
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    model, tok = load_policy(out / "model")
    assert evaluate(model, tok, make_task("copy", min_len=1, max_len=1), 10, 1, holdout=0.0) == r.final_eval
    again = seq.train(**{**COPY1, "steps": 1}, model=str(out / "model"), eval_problems=2, save_model=False)
    assert again.model == r.model  # training resumes from the saved directory (--model PATH)


def test_grpo_learns_single_digit_copy() -> None:
    """GRPO lifts a random tiny Llama's exact-match on 1-digit copy from ~1/V to near 1 (seed 0, ~100 steps);
    the pool of 10 is evaluated in-sample (eval_holdout 0)."""
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
    """Each registered method runs on a task with the features it needs; trained methods move the weights."""
    start = None
    for name in seq.available_methods():
        overrides = {"hook.warmup_steps": 0} if name == "scaf_grpo" else {}
        if name == "gtpo":  # the code's 0.7 filters every completion of a random tiny model (it warns)
            overrides = {"advantage.entropy_threshold": 5.0}
        if name == "automate_cot":
            overrides = {"hook.slots": 2, "hook.candidates": 2, "hook.samples": 2}
        # one-digit copy (a random model succeeds about 1 time in V, so groups have non-zero advantages); the
        # curriculum samplers get the same problems as the `levels` pool, turn methods a turn marker
        task = {"task": "levels", "task_options": {"levels": "0", "per_level": 10}} \
            if TASK_FOR.get(name) == "levels" else {}
        marker = {"turn_marker": "5"} if TASK_FOR.get(name) == "multistep" else {}
        r = seq.train(**{**COPY1, "steps": 1, **task, **marker}, method=name, eval_problems=2, save_model=False,
                      tiny=SMALL, method_overrides=overrides)
        start = start or seq.train(**{**COPY1, "steps": 1, "lr": 0.0}, eval_problems=2, save_model=False,
                                   tiny=SMALL).param_norm
        assert r.status == "completed", name
        trained = seq.get_method(name).trains_policy
        assert (r.param_norm != pytest.approx(start, abs=1e-9)) == trained, name


def test_gtpo_says_when_its_filter_removes_everything(caplog) -> None:
    with caplog.at_level("WARNING", logger="offline_rl.seq"):
        r = seq.train(**{**COPY1, "steps": 2}, method="gtpo", eval_problems=2, save_model=False, tiny=SMALL)
    assert r.state["gtpo_warned"] and sum("entropy filter removed every completion" in m for m in caplog.messages) == 1


def test_methods_refuse_unmet_task_preconditions() -> None:
    from offline_rl.errors import UserError

    for method, task, needle in [("turn_ppo", "copy", "turn markers"), ("stratified_grpo", "arithmetic", "turn"),
                                 ("sec", "copy", "categories"), ("vade", "arithmetic", "finite problem pool"),
                                 ("scaf_grpo", "countdown", "tiered hints")]:
        with pytest.raises(UserError, match=needle):
            seq.train(**{**COPY1, "steps": 1, "task": task, "task_options": {}}, method=method, save_model=False)
    r = seq.train(**{**COPY1, "steps": 1, "task": "copy", "task_options": {}}, method="stratified_grpo",
                  save_model=False, method_overrides={"advantage.stratum": "length_bins"}, eval_problems=2,
                  tiny=SMALL)
    assert r.status == "completed"  # another stratum needs no turn markers


def test_resume_continues_exactly(tmp_path) -> None:
    """A run stopped after 2 steps and resumed to 4 equals the uninterrupted 4-step run (weights, curve, state)."""
    kw = {**COPY1, "task": "levels", "task_options": {"per_level": 4}, "method": "sec", "group_size": 4,
          "prompts_per_step": 4, "max_new_tokens": 2, "eval_problems": 2, "save_model": False, "tiny": SMALL}
    full = seq.train(**kw, steps=4, out_dir=str(tmp_path / "full"))
    seq.train(**kw, steps=2, out_dir=str(tmp_path / "cut"))
    resumed = seq.train(**kw, steps=4, out_dir=str(tmp_path / "cut"), resume=True)
    assert resumed.curve == full.curve and resumed.param_norm == full.param_norm
    assert resumed.state == full.state and full.state["sec"]["updated"] == 3


def test_finite_pools_train_without_their_held_out_problems(tmp_path) -> None:
    f = tmp_path / "digits.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": f"{i}=", "answer": str(i)}) for i in range(10)))
    r = seq.train(**{**COPY1, "steps": 6, "eval_holdout": 0.2, "task": str(f), "task_options": {}},
                  eval_problems=10, out_dir=str(tmp_path / "run"), save_model=False, tiny=SMALL)
    from offline_rl.seq.trainer import split_pool

    held = {make_task(str(f)).problem(i).key for i in split_pool(make_task(str(f)), 0.2, 10)[1]}
    seen = set(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["stats"]["history"])
    assert r.eval_split == "held-out" and len(held) == 2 and seen and not seen & held


def test_reference_kl_multiple_minibatches_and_gpt2() -> None:
    """The reference model is loaded for the KL: after the first mini-batch the policy leaves it and the k3 term
    changes the update (with kl_coef 0 the same run ends elsewhere)."""
    kw = {**COPY1, "steps": 2, "group_size": 4, "prompts_per_step": 4, "lr": 3e-2}
    runs = [seq.train(**kw, model="tiny-gpt2", method_overrides={"kl_coef": beta}, num_iterations=2, minibatches=2,
                      eval_problems=2, save_model=False) for beta in (0.5, 0.0)]
    assert runs[0].config["num_iterations"] == 2 and runs[0].method["kl_coef"] == 0.5
    assert runs[0].param_norm != pytest.approx(runs[1].param_norm, abs=1e-7)


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


@pytest.mark.parametrize("method", ["sec", "vade", "mmr1_vps", "knapsack_rl", "scaf_grpo", "hpt", "otr", "copg",
                                    "fdpg", "automate_cot"])
def test_cli_trains_every_new_method(tmp_path, method: str) -> None:
    task = "levels" if method in TASK_FOR else "arithmetic"
    extra = ["--set", "hook.slots=2", "--set", "hook.candidates=2", "--set", "hook.samples=2"] \
        if method == "automate_cot" else []
    res = runner.invoke(app, ["train", "--task", task, "--method", method.upper().replace("_", "-"), "--steps", "1",
                              "--group-size", "2", "--prompts-per-step", "2", "--max-new-tokens", "2",
                              "--eval-problems", "2", "--out", str(tmp_path), *extra])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "result.json").read_text())["method"]["name"] == method


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
