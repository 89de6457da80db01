"""`offline-rl seq ...`: the sequence-policy backend's commands (mounted by the main CLI as `seq`).

    python -m offline_rl.cli.seq list
    python -m offline_rl.cli.seq train --task copy --method grpo --model tiny --steps 200 --out runs/copy
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import typer

from offline_rl.errors import UserError

app = typer.Typer(help="Sequence-policy (LLM) training: GRPO-family methods on verifiable tasks.",
                  no_args_is_help=True)


def _pairs(items: list[str] | None, flag: str) -> dict[str, Any]:
    from offline_rl.seq.methods.base import parse_value

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value)
    return out


def _fail(e: UserError) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="one JSON object on stdout")) -> None:
    """Registered methods, tasks, checkers and every extension point's entries."""
    import offline_rl.seq as seq

    methods = {name: seq.get_method(name).description for name in seq.available_methods()}
    info = {"methods": methods, "tasks": seq.TASKS.names(), "checkers": seq.CHECKERS.names(),
            "extension_points": {k: r.names() for k, r in seq.ALL_REGISTRIES.items()}}
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo("methods:")
    for name, desc in methods.items():
        typer.echo(f"  {name:<16} {desc}")
    typer.echo(f"tasks: {', '.join(info['tasks'])} (or a .jsonl path)")
    typer.echo(f"checkers: {', '.join(info['checkers'])}")
    typer.echo("extension points:")
    for point, names in info["extension_points"].items():
        typer.echo(f"  {point:<14} {', '.join(names)}")


@app.command()
def train(
    task: str = typer.Option("arithmetic", help="a built-in task or a path to a .jsonl file"),
    method: str = typer.Option("grpo", help="a registered method (see `seq list`)"),
    model: str = typer.Option("tiny", help="tiny, tiny-gpt2 or a local Hugging Face model directory"),
    tokenizer: str | None = typer.Option(None, help="a local tokenizer directory (default: the model's)"),
    steps: int = typer.Option(100, min=1),
    group_size: int = typer.Option(8, min=1, help="completions per prompt (G)"),
    prompts_per_step: int = typer.Option(8, min=1),
    max_new_tokens: int = typer.Option(8, min=1),
    temperature: float = typer.Option(1.0, min=0.0),
    lr: float = typer.Option(1e-3),
    num_iterations: int | None = typer.Option(None, min=1, help="optimiser passes per rollout batch "
                                              "(default: the method's)"),
    minibatches: int | None = typer.Option(None, min=1, help="optimiser steps per pass (default: the method's)"),
    seed: int = typer.Option(0),
    out: str | None = typer.Option(None, "--out", help="run folder: result.json, tb/, model/"),
    eval_every: int = typer.Option(0, min=0),
    eval_problems: int = typer.Option(64, min=1),
    eval_holdout: float = typer.Option(0.2, min=0.0, max=0.9, help="finite pools: fraction held out for evaluation "
                                       "(0: evaluate in-sample)"),
    checkpoint_every: int = typer.Option(0, min=0, help="also checkpoint OUT/checkpoint.pt every N steps"),
    resume: bool = typer.Option(False, help="continue from OUT/checkpoint.pt"),
    device: str = typer.Option("cpu"),
    generator: str = typer.Option("fast", help="fast (KV-cache sampler), hf (generate) or vllm"),
    turn_marker: str | None = typer.Option(None, help="the token ending a turn (default: the task's own)"),
    set_: list[str] | None = typer.Option(None, "--set", help="method override POINT.PARAM=VALUE or kl_coef=V"),
    task_opt: list[str] | None = typer.Option(None, "--task-opt", help="task option KEY=VALUE"),
) -> None:
    """Train a causal LM with a method on a verifiable task; writes OUT/result.json with the reward curve."""
    from offline_rl.seq.trainer import SeqConfig
    from offline_rl.seq.trainer import train as run

    try:
        cfg = SeqConfig(task=task, method=method, model=model, tokenizer=tokenizer, steps=steps,
                        group_size=group_size, prompts_per_step=prompts_per_step, max_new_tokens=max_new_tokens,
                        temperature=temperature, lr=lr, num_iterations=num_iterations, minibatches=minibatches,
                        seed=seed, out_dir=out, eval_every=eval_every, eval_problems=eval_problems,
                        eval_holdout=eval_holdout, checkpoint_every=checkpoint_every, resume=resume, device=device,
                        generator=generator, turn_marker=turn_marker, method_overrides=_pairs(set_, "--set"),
                        task_options=_pairs(task_opt, "--task-opt"))
        result = run(cfg)
    except UserError as e:
        _fail(e)
    if int(os.environ.get("RANK", "0")) != 0:  # one summary line under torchrun
        return
    typer.echo(f"final reward {result.final_reward:.3f}, eval exact-match {result.final_eval:.3f}, "
               f"{result.tokens_per_s:.0f} tokens/s" + (f", run in {out}" if out else ""), err=True)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
