"""`offline-rl certify RUN_DIR`: the policy-smoothing certificate of a trained run (offline_rl.evaluation.certify)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from offline_rl.errors import UserError


def parse_budgets(text: str) -> list[float]:
    try:
        budgets = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--budgets must be comma-separated numbers, e.g. 0,0.5,1; got '{text}'") from None
    if not budgets or any(b < 0 for b in budgets):
        raise UserError(f"--budgets must be one or more numbers ≥ 0, got '{text}'")
    return budgets


def certify(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `train`.")],
    sigma: Annotated[float, typer.Option(help="Std of the Gaussian noise added to every observation.")],
    budgets: Annotated[str, typer.Option(help="Comma-separated total ℓ2 attack budgets B.")] = "0,0.5,1",
    episodes: Annotated[int, typer.Option(help="Smoothed clean episodes N.")] = 1000,
    alpha: Annotated[float, typer.Option(help="Failure probability of the certificate.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the episodes and the noise.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")] = False,
) -> None:
    """Certified lower bounds on the expected total reward of the smoothed policy under ℓ2 observation attacks."""
    from offline_rl.evaluation.certify import certify as run_certify
    from offline_rl.training import load_run

    if sigma <= 0:
        raise UserError(f"--sigma must be > 0, got {sigma}")
    if episodes <= 0:
        raise UserError(f"--episodes must be > 0, got {episodes}")
    if not 0 < alpha < 1:
        raise UserError(f"--alpha must be in (0, 1), got {alpha}")
    values = parse_budgets(budgets)
    agent, info = load_run(run_dir)
    cert = run_certify(agent.policy(), info["env_id"], sigma, values, episodes, alpha, seed)
    if as_json:
        sys.stdout.write(json.dumps({**cert.to_dict(), "run": str(run_dir)}, indent=2) + "\n")
        return
    typer.echo(f"{cert.env_id}: smoothed clean mean return {cert.mean:.4g} over {episodes} episodes "
               f"(σ = {sigma:g}, α = {alpha:g}, lowest return {cert.low:.4g})")
    typer.echo(f"{'budget':>10}  certified lower bound")
    for row in cert.certified:
        typer.echo(f"{row['budget']:>10g}  {row['lower_bound']:.4g}")
