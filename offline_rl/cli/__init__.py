"""The `offline-rl` command line (typer). Bad input exits 2 with one line on stderr; internal errors exit 1.

Every command raises; `main` is the one place that turns exceptions into exit codes (`exit_code_for`). Heavy
modules are imported inside the commands so that `--help` stays fast.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from offline_rl.errors import UserError

app = typer.Typer(help="Offline RL toolkit: datasets, algorithms, training, evaluation and leaderboards.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
datasets_app = typer.Typer(help="List, inspect and generate datasets.", no_args_is_help=True)
algos_app = typer.Typer(help="List registered algorithms.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(algos_app, name="algos")

from offline_rl.cli.certify import certify as _certify  # noqa: E402

app.command("certify")(_certify)

try:  # the sequence backend's commands (its heavy imports stay lazy inside)
    from offline_rl.cli.seq import app as seq_app

    app.add_typer(seq_app, name="seq", help="The sequence-policy (LLM) backend: GRPO-family methods.")
except ImportError:  # pragma: no cover - only when the seq package is absent
    pass

from offline_rl.cli.online import train_online_command  # noqa: E402  (its heavy imports stay lazy inside)

app.command("train-online")(train_online_command)


def _version(value: bool) -> None:
    if value:
        from offline_rl import __version__

        typer.echo(f"offline-rl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Offline RL toolkit: datasets, algorithms, training, evaluation and leaderboards."""


def _print_json(obj: object) -> None:
    """JSON to stdout alone (logs go to stderr), so it pipes into jq."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_positive(name: str, value: int | None, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise UserError(f"--{name} must be {'≥ 0' if allow_zero else '> 0'}, got {value}")


@datasets_app.command("list")
def datasets_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False) -> None:
    """List the dataset cards (the embedded generated families and their levels)."""
    from offline_rl.data import list_cards

    cards = list_cards()
    if as_json:
        _print_json(cards)
        return
    for card in cards:
        typer.echo(f"{card['name']:<32} {card['env_id']:<28} {card.get('label', '')}")


@datasets_app.command("info")
def datasets_info(
    source: Annotated[str, typer.Argument(help="Card name, d4rl:<name>, path to .hdf5, or minari:<id>.")],
    env: Annotated[str | None, typer.Option(help="Env of a D4RL-format file whose name implies none (its action "
                                            "bounds and evaluation env; default bounds [-1, 1]).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")] = False,
) -> None:
    """Size, returns and the behaviour policy's normalised score of a dataset."""
    from offline_rl.data import load_dataset

    info = load_dataset(source, env=env).summary()
    if as_json:
        _print_json(info)
        return
    for key, value in info.items():
        typer.echo(f"{key:<24} {value}")


@datasets_app.command("generate")
def datasets_generate(
    name: Annotated[str, typer.Argument(help="Card name, e.g. pendulum-medium or hopper-medium-replay.")],
    steps: Annotated[int | None, typer.Option(help="Number of transitions (default: the card's).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the behaviour rollouts (default: the card's).")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder to write the Minari dataset to (default: cache).")] = None,
    num_envs: Annotated[int, typer.Option(help="Sub-envs of the vector env (part of the recipe).")] = 8,
) -> None:
    """Roll out a card's behaviour policy and write a Minari dataset."""
    from offline_rl.data import generate_dataset
    from offline_rl.data.cards import card_variant

    _check_positive("steps", steps)
    _check_positive("seed", seed, allow_zero=True)
    _check_positive("num-envs", num_envs)
    path = generate_dataset(name, steps=steps, seed=seed, out=out, num_envs=num_envs)
    typer.echo(str(path))
    variant = card_variant(name, steps, seed)
    if variant is not None and out is None:
        typer.echo(f"train on it with: --dataset {variant.name}", err=True)
    else:
        typer.echo(f"train on it with: --dataset {path}", err=True)


@datasets_app.command("measure-refs")
def datasets_measure_refs(
    family: Annotated[str, typer.Argument(help="Dataset family, e.g. hopper (a card file's [family] name).")],
    episodes: Annotated[int | None, typer.Option(help="Episodes per policy (default: the card's ref_episodes).")]
    = None,
    write: Annotated[bool, typer.Option("--write", help="Store the scores in the family's card file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
) -> None:
    """Measure a family's reference scores: uniform random (min) and expert behaviour (max) mean returns."""
    from offline_rl.data.cards import update_reference_scores

    _check_positive("episodes", episodes)
    result = update_reference_scores(family, episodes, write)
    if as_json:
        _print_json(result)
        return
    typer.echo(f"{family} ({result['env_id']}, {result['ref_episodes']} episodes each, seeds {result['ref_seed']}+k): "
               f"ref_min_score {result['ref_min_score']:.2f}, ref_max_score {result['ref_max_score']:.2f}")
    typer.echo(f"measured with {result['ref_measured']}")
    typer.echo(f"written to {result['file']}" if write else "not written (pass --write to store them in the card file)")


@algos_app.command("list")
def algos_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False) -> None:
    """Registered algorithms, built-in and plug-in (entry-point group `offline_rl.algos`)."""
    from offline_rl import algos

    names = algos.available()
    if as_json:
        _print_json(names)
    else:
        typer.echo("\n".join(names))


@app.command()
def train(
    algo: Annotated[str, typer.Option(help="Algorithm name (see `algos list`).")],
    dataset: Annotated[str, typer.Option(help="Card name (NAME or NAME@STEPS[,seed=S]), d4rl:<name>, .hdf5 path "
                                         "or minari:<id>; on-policy algorithms also take a gymnasium env id.")],
    steps: Annotated[int, typer.Option(help="Gradient updates (on-policy and hybrid algorithms: env samples).")]
    = 100_000,
    seed: Annotated[int, typer.Option(help="Seed for python, numpy, torch and the envs.")] = 0,
    seeds: Annotated[str | None, typer.Option(help="Several seeds at once in one process, e.g. 0,1,2,3,4: one "
                                              "folder OUT/seed<S>/ per seed (replaces --seed).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "auto",
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N updates (0: only at the end; default: "
                                                   "the preset's protocol for the dataset, else 5000).")] = None,
    eval_episodes: Annotated[int | None, typer.Option(help="Episodes per evaluation (0: none; default: the "
                                                      "preset's protocol, e.g. 100 on AntMaze, else 10).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default: runs/<algo>/<dataset>/seed<S>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue this run from its checkpoint (or keep it when finished); "
                                         "the folder must hold the same run.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace whatever run the folder holds.")] = False,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default). 1 is fastest for small "
                                         "networks on a shared machine.")] = 1,
    obs_noise: Annotated[float, typer.Option(help="Std of Gaussian noise added to the observations of every offline "
                                             "batch (policy smoothing; see `certify`).")] = 0.0,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Hyperparameter override key=value (repeat).")]
    = None,
) -> None:
    """Train one algorithm on one dataset; writes result.json, checkpoints and TensorBoard logs."""
    from offline_rl.algos import parse_overrides
    from offline_rl.training import run_experiment

    _check_positive("steps", steps)
    _check_positive("seed", seed, allow_zero=True)
    _check_positive("eval-every", eval_every, allow_zero=True)
    _check_positive("eval-episodes", eval_episodes, allow_zero=True)
    _check_positive("threads", threads, allow_zero=True)
    seed_list = _seed_list(seeds)
    cell = Path("runs") / algo / dataset.replace(":", "_").replace("/", "_")
    out = out or (cell if seed_list else cell / f"seed{seed}")
    returned = run_experiment(algo, dataset, seed, steps, eval_every, eval_episodes, out, device,
                              parse_overrides(set_), resume, threads=threads or None, overwrite=overwrite,
                              seeds=seed_list, obs_noise=obs_noise)
    results = returned if isinstance(returned, list) else [returned]
    for result in results:
        folder = out / f"seed{result['seed']}" if seed_list else out
        typer.echo(f"{result['status']}: seed {result['seed']}, last score {_fmt(result['final_score'])} (return "
                   f"{_fmt(result['final_return'])}), best {_fmt(result['best_score'])}, "
                   f"{result['updates_per_s']:.0f} updates/s -> {folder / 'result.json'}")
        for label, curve in result.get("companion_curves", {}).items():
            typer.echo(f"  {label} policy: last score {_fmt(curve[-1][1])} (return {_fmt(curve[-1][2])})")
    if any(r["status"] == "diverged" for r in results):
        raise typer.Exit(1)


def _seed_list(text: str | None) -> list[int] | None:
    """`--seeds 0,1,2` -> [0, 1, 2]."""
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds must be distinct integers ≥ 0, got '{text}'")
    return seeds


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `train`.")],
    episodes: Annotated[int | None, typer.Option(help="Episodes to run (default: the run's evaluation episodes)."
                                                 )] = None,
    seed: Annotated[int | None, typer.Option(help="Evaluation seed (default: the run's, seed + 100, so the "
                                             "result matches result.json's last evaluation).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
) -> None:
    """Evaluate a trained run's last checkpoint with the deterministic policy, by the run's own protocol."""
    from offline_rl.evaluation import evaluate as run_eval
    from offline_rl.training import load_run
    from offline_rl.training.trainer import EVAL_SEED_OFFSET

    _check_positive("episodes", episodes)
    _check_positive("seed", seed, allow_zero=True)
    agent, info = load_run(run_dir)
    if info.get("env_id") is None:
        raise UserError(f"{run_dir}: the run's dataset names no env to evaluate on")
    episodes = episodes or int(info.get("eval_episodes") or 10)
    seed = int(info.get("eval_seed", int(info.get("seed", 0)) + EVAL_SEED_OFFSET)) if seed is None else seed
    typer.echo(f"evaluating {run_dir} on {info['env_id']}: {episodes} episodes, seed {seed}", err=True)
    result = run_eval(agent.policy(), info["env_id"], episodes, seed, info["ref_min_score"], info["ref_max_score"])
    if as_json:
        _print_json(result.to_dict())
    else:
        typer.echo(f"{info['env_id']}: return {result.mean_return:.2f} ± {result.std_return:.2f}, "
                   f"normalised score {_fmt(result.normalized_score)} over {episodes} episodes (seed {seed})")


@app.command()
def benchmark(
    suite: Annotated[str, typer.Argument(help="Suite name in benchmarks/ or a path to a suite TOML.")] = "quick",
    runner: Annotated[str, typer.Option(help="local | ray.")] = "local",
    workers: Annotated[int | None, typer.Option(
        help="Parallel runs: processes for local (default: one per CPU core this process may use), "
             "tasks for ray (default 1).")] = None,
    out: Annotated[Path | None, typer.Option(help="Results folder (default: results/<suite>).")] = None,
    address: Annotated[str | None, typer.Option(help="Ray cluster address (ray runner only).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace runs whose folders hold another configuration.")]
    = False,
) -> None:
    """Run a suite (algorithms × datasets × seeds), skipping completed runs, then print its leaderboard.

    Every run is checked first (names, datasets, overrides, device, folders); a problem refuses the whole suite."""
    from offline_rl.bench import load_suite, run_suite, write_leaderboard

    if runner not in ("local", "ray"):
        raise UserError(f"--runner must be local or ray, got '{runner}'")
    _check_positive("workers", workers)
    if workers is None:
        workers = _usable_cores() if runner == "local" else 1
    spec = load_suite(suite)
    out = out or Path("results") / spec.name
    failures = run_suite(spec, out, runner=runner, workers=workers, address=address, overwrite=overwrite)
    if len(failures) == len(spec.runs()):
        typer.echo(f"all {len(failures)} run(s) failed; see {out}/*/*/*/error.log", err=True)
        raise typer.Exit(1)
    for fmt in ("csv", "html"):
        write_leaderboard(out, fmt, out / f"leaderboard.{fmt}")
    table = write_leaderboard(out, "md", out / "leaderboard.md")
    typer.echo(table)
    typer.echo(f"leaderboard written to {out / 'leaderboard.md'} (.csv, .html)")
    if failures:
        typer.echo(f"{len(failures)} run(s) failed; see the log above", err=True)
        raise typer.Exit(1)


@app.command()
def leaderboard(
    results_dir: Annotated[Path, typer.Argument(help="Folder of result.json files (searched recursively).")],
    fmt: Annotated[str, typer.Option("--format", help="md | csv | html.")] = "md",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Aggregate results into mean ± std over seeds per (algorithm, dataset)."""
    from offline_rl.bench import write_leaderboard

    if fmt not in ("md", "csv", "html"):
        raise UserError(f"--format must be md, csv or html, got '{fmt}'")
    text = write_leaderboard(results_dir, fmt, out)
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        typer.echo(f"written {out}", err=True)


@app.command()
def reproduce(
    name: Annotated[str | None, typer.Argument(help="Entry name (see --list).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="The few-minute version on 2 CPU cores.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="Name every entry.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object to stdout.")] = False,
) -> None:
    """Run a method's minimal faithful benchmark live and compare it with its reference; exit 1 if a row fails."""
    from offline_rl import reproduce as rep

    if list_ or name is None:
        if name is None and not list_:
            raise UserError("give an entry name, or --list to see them")
        rows = [{"name": e.name, "description": e.description} for e in rep.entries()]
        if as_json:
            _print_json(rows)
        else:
            typer.echo("\n".join(f"{r['name']:<18} {r['description']}" for r in rows) or "no entries")
        return
    report = rep.run_entry(name, quick=quick)
    failed = sum(not r["passed"] for r in report["rows"])
    if as_json:
        _print_json(report)
    else:
        typer.echo(f"{'case':<34} {'metric':<26} {'ours':>12} {'reference':>12} {'gap':>10}  pass")
        for r in report["rows"]:
            typer.echo(f"{r['case']:<34} {r['metric']:<26} {r['ours']:>12.5g} {r['reference']:>12.5g} "
                       f"{r['gap']:>10.3g}  {'yes' if r['passed'] else 'NO'}")
    typer.echo(f"{report['name']}: {len(report['rows']) - failed}/{len(report['rows'])} rows pass", err=True)
    if failed:  # a check that does not reproduce: exit 1 (2 is for bad input), so scripts and CI can tell
        raise typer.Exit(1)


from offline_rl.cli.export import export  # noqa: E402  (its heavy imports stay lazy inside)

app.command("export")(export)
from offline_rl.cli.diffusion import augment_app  # noqa: E402  (augment pgd and compose: docs/diffusion.md)
from offline_rl.cli.diffusion import compose as _compose  # noqa: E402

app.add_typer(augment_app, name="augment")
app.command("compose")(_compose)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"


_USER_OS_ERRORS = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                   errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG}
"""OS errors caused by the paths or the machine the user gave us, not by a bug."""


def exit_code_for(error: BaseException) -> tuple[int, str]:
    """The one mapping from an exception to (exit code, message): 2 and one line for bad input, 130 for Ctrl-C,
    1 for an internal error (a bug), whose message says how to report it."""
    if isinstance(error, UserError):
        return 2, f"error: {error}"
    if isinstance(error, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(error, OSError) and error.errno in _USER_OS_ERRORS:
        where = f"{error.filename}: " if error.filename else ""
        return 2, f"error: {where}{error.strerror or error}"
    report = _save_traceback(error)
    return 1, (f"internal error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}\n"
               f"This is a bug in offline-rl. Please report it on the project's issue tracker with the command you "
               f"ran and the traceback in {report}")


def _save_traceback(error: BaseException) -> str:
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        fd, path = tempfile.mkstemp(prefix="offline-rl-crash-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            f.write(text)
    except OSError:
        return "(could not be saved; rerun with OFFLINE_RL_DEBUG=1 to print it)"
    return path


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every exception becomes one message and an exit code (`exit_code_for`).
    `OFFLINE_RL_DEBUG=1` re-raises internal errors with their traceback."""
    try:
        app(args=argv, prog_name="offline-rl")
    except (Exception, KeyboardInterrupt) as e:
        code, message = exit_code_for(e)
        if code == 1 and os.environ.get("OFFLINE_RL_DEBUG"):
            raise
        print(message, file=sys.stderr)
        sys.exit(code)


if __name__ == "__main__":
    main()
