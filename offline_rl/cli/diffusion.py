"""`offline-rl augment pgd` (a synthetic dataset from policy-guided diffusion) and `offline-rl compose` (GPC at test
time). Mounted by the main CLI; heavy imports stay inside the commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from offline_rl.errors import UserError

augment_app = typer.Typer(help="Dataset augmentation: policy-guided diffusion.", no_args_is_help=True)


def _print_json(obj: object) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


@augment_app.command("pgd")
def augment_pgd(
    dataset: Annotated[str, typer.Option(help="Source dataset: card name, minari:<id>, path, or a named dataset.")],
    agent: Annotated[Path, typer.Option(help="Run folder of the agent whose policy guides the sampler.")],
    out: Annotated[str, typer.Option(help="Name of the dataset to write ($OFFLINE_RL_HOME/datasets/NAME).")],
    trajectories: Annotated[int, typer.Option(help="Synthetic trajectories to sample (reference: 8192).")] = 1000,
    guidance: Annotated[float | None, typer.Option(help="Guidance coefficient (default: the pgd preset's).")] = None,
    synthetic_only: Annotated[bool, typer.Option("--synthetic-only", help="Leave the real episodes out.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the sampler.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset of that name.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Diffusion/sampler setting key=value (repeat); "
                                                   "see PGDConfig in offline_rl/augment/pgd.py.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the provenance record as JSON.")] = False,
) -> None:
    """Write a synthetic Minari dataset sampled by policy-guided diffusion (the diffusion model of the source is
    trained on first use and reused for any other guiding agent)."""
    import dataclasses

    import torch

    from offline_rl.algos import build_config, get, load_preset, parse_overrides
    from offline_rl.augment.pgd import PGDConfig
    from offline_rl.augment.synthetic import check_free, pgd_augment
    from offline_rl.data import load_dataset
    from offline_rl.training import load_run, resolve_device

    if trajectories <= 0:
        raise UserError(f"--trajectories must be > 0, got {trajectories}")
    check_free(out, overwrite)
    torch.set_num_threads(1)
    dev = str(resolve_device(device))
    source = load_dataset(dataset, device=dev)
    real = None if synthetic_only else load_dataset(dataset, device=dev, keep_timeouts=True)
    guide, info = load_run(agent, dev)
    if guide.spec.obs_dim != source.spec.obs_dim or guide.spec.act_dim != source.spec.act_dim:
        raise UserError(f"--agent {agent}: trained on observation/action sizes {guide.spec.obs_dim}/"
                        f"{guide.spec.act_dim}, the dataset has {source.spec.obs_dim}/{source.spec.act_dim}")
    names = {f.name for f in dataclasses.fields(PGDConfig)}
    values = {k: v for k, v in load_preset("pgd", source.name, source.family).items() if k in names}
    overrides = parse_overrides(set_)
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise UserError(f"--set: '{unknown[0]}' is not a PGD setting; valid: {', '.join(sorted(names))}")
    values.update(overrides)
    if guidance is not None:
        values["guidance_coeff"] = guidance
    full = build_config(get("pgd"), values, where="augment pgd")
    cfg = PGDConfig(**{k: getattr(full, k) for k in names})

    def progress(step: int, loss: float) -> None:
        typer.echo(f"[pgd] diffusion step {step}: loss {loss:.4f}", err=True)

    record = pgd_augment(source, guide, out, trajectories, cfg, real, seed, overwrite,
                         {"agent_run": str(agent), "agent_algo": info["algo"]}, progress)
    if as_json:
        _print_json(record)
        return
    model = record["model"]
    typer.echo(f"{record['synthetic_transitions']} synthetic + {record['real_transitions']} real transitions -> "
               f"{record['path']} (diffusion model {'reused' if model['reused'] else 'trained'}: {model['path']})")


def compose(
    runs: Annotated[list[Path], typer.Argument(help="Two or more run folders of flow policies (e.g. awm).")],
    weights: Annotated[str | None, typer.Option(help="Comma-separated convex weights (default: equal).")] = None,
    search: Annotated[bool, typer.Option("--search", help="Pick the weights by rollouts on a grid.")] = False,
    grid_step: Annotated[float, typer.Option(help="Grid spacing of --search.")] = 0.1,
    episodes: Annotated[int, typer.Option(help="Episodes per evaluation.")] = 10,
    seed: Annotated[int, typer.Option(help="Evaluation seed (the search uses seed + 1000).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")] = False,
) -> None:
    """GPC: evaluate each policy and their composition (convex combination of velocity fields)."""
    import torch

    from offline_rl.evaluation import evaluate
    from offline_rl.generative import compose_policies, search_weights
    from offline_rl.training import load_run

    if episodes <= 0:
        raise UserError(f"--episodes must be > 0, got {episodes}")
    if len(runs) < 2:
        raise UserError(f"compose needs at least 2 run folders, got {len(runs)}")
    torch.set_num_threads(1)
    policies, infos = [], []
    for run in runs:
        agent, info = load_run(run)
        policy = agent.policy()
        if not hasattr(policy, "velocity"):
            raise UserError(f"{run}: the policy of '{info['algo']}' is not a flow or diffusion policy; compose "
                            "needs flow policies (e.g. awm)")
        policies.append(policy)
        infos.append(info)
    env_id, ref_min, ref_max = infos[0]["env_id"], infos[0]["ref_min_score"], infos[0]["ref_max_score"]
    if any(i["env_id"] != env_id for i in infos):
        raise UserError(f"compose: the runs are for different environments: {sorted({i['env_id'] for i in infos})}")

    def run_eval(policy: torch.nn.Module, eval_seed: int) -> Any:
        return evaluate(policy, env_id, episodes, eval_seed, ref_min, ref_max)

    parents = []
    for run, info, policy in zip(runs, infos, policies, strict=True):
        ev = run_eval(policy, seed)
        parents.append({"run": str(run), "algo": info["algo"], "mean_return": ev.mean_return,
                        "normalized_score": ev.normalized_score})
    table = None
    if search:
        w, table = search_weights(lambda w: run_eval(compose_policies(policies, w), seed + 1000).mean_return,
                                  len(policies), grid_step)
    elif weights is not None:
        try:
            w = [float(x) for x in weights.split(",")]
        except ValueError:
            raise UserError(f"--weights expects comma-separated numbers, got '{weights}'") from None
    else:
        w = [1.0 / len(policies)] * len(policies)
    ev = run_eval(compose_policies(policies, w), seed)
    report = {"env_id": env_id, "episodes": episodes, "seed": seed, "parents": parents,
              "composition": {"weights": w, "mean_return": ev.mean_return, "normalized_score": ev.normalized_score}}
    if table is not None:
        report["search"] = [{"weights": wt, "mean_return": r} for wt, r in table]
        report["search_seed"] = seed + 1000
    if as_json:
        _print_json(report)
        return
    for p in parents:
        typer.echo(f"{p['run']:<40} return {p['mean_return']:9.2f}  score {_fmt(p['normalized_score'])}")
    typer.echo(f"{'composition ' + ','.join(f'{x:g}' for x in w):<40} return {ev.mean_return:9.2f}  score "
               f"{_fmt(ev.normalized_score)}")
