"""Train the zoo's behaviour policies for one env: SAC online, actor snapshots every K steps, levels picked by
measured return, weights and manifest written into the package.

    python -m offline_rl.zoo.train --env Hopper-v5 --steps 160000

1. SAC (paper defaults, `algos/sac.toml`) trains for `--steps` env steps; the actor is snapshotted every
   `--snapshot-every` steps, from step 0 (the untrained actor) to the end, in `--run-dir`.
2. Every snapshot is measured over `--episodes` episodes (seeds eval_seed + i), both with sampled actions (the
   stochastic policy that generates data) and with tanh of the mean (deterministic). Measurements are cached in
   `run-dir/measurements.json`, so `--measure-only` can redo steps 2-4 without retraining; on a run that was killed
   it uses the snapshots written so far (the same command reproduces them) and records where training stopped.
3. Levels, chosen on the stochastic return (the one the generated data will have, as D4RL's "medium" is
   described by the return of the policy that collected it): `expert` is the final snapshot; `medium` is the
   snapshot whose return is nearest (5/12)·expert among those within [1/3, 1/2]·expert (nearest overall, with
   `in_range = false`, if none is); `random` is the step-0 snapshot (a randomly initialised actor, as D4RL's random).
4. Shipped: snapshots 0, S, 2S, ... before medium (`--ship-every` S: the ordered run leading to medium, for
   medium-replay-style data), medium and the expert, into `offline_rl/zoo/weights/<env>/`, plus the env's table in `offline_rl/zoo/manifest.toml`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from offline_rl.training.online import SNAPSHOTS
from offline_rl.zoo import MANIFEST, WEIGHTS_DIR, ZooPolicy, actor_from_state_dict

MEDIUM_RANGE = (1.0 / 3.0, 1.0 / 2.0)
EVAL_SEED = 10_000
HEADER = """\
# The behaviour-policy zoo: SAC actor snapshots per env, written by `python -m offline_rl.zoo.train`; do not edit.
# Per env: the run (command, seed, steps, SAC config), `levels` (indices into `checkpoints`), every measured
# snapshot (`measured`: [step, stochastic mean, deterministic mean]), and the shipped `checkpoints` in step order.
# Returns are means ± std over `eval_episodes` episodes seeded eval_seed + i; `return_*` with sampled actions (the
# data-generating policy), `deterministic_return_*` with tanh of the mean. Levels are chosen on the stochastic return.
# These are "offline-rl generated" policies on the env versions named here, not D4RL's.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m offline_rl.zoo.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--env", required=True, help="gymnasium env id, e.g. Hopper-v5")
    p.add_argument("--steps", type=int, required=True, help="env steps of SAC training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--snapshot-every", type=int, default=5_000, help="actor snapshots kept and measured")
    p.add_argument("--ship-every", type=int, default=10_000, help="shipped snapshots leading up to medium")
    p.add_argument("--eval-every", type=int, default=10_000, help="training-curve evaluation (10 episodes)")
    p.add_argument("--episodes", type=int, default=20, help="episodes per snapshot measurement")
    p.add_argument("--run-dir", default=None, help="default: /tmp/offline_rl_zoo/<env>")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--device", default="cpu", help="cpu or cuda (CUDA graphs replay the SAC update there)")
    p.add_argument("--envs", type=int, default=1, help="sub-envs stepped together (one update per env step)")
    p.add_argument("--time-limit", type=float, default=None,
                   help="stop training after this many seconds; the last snapshot is then the expert")
    p.add_argument("--train-only", action="store_true", help="train and snapshot; measure later (--measure-only)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training run from its checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="SAC hyperparameter key=value")
    p.add_argument("--measure-only", action="store_true", help="reuse the run dir's snapshots; do not train")
    p.add_argument("--no-ship", action="store_true", help="measure and select, but write nothing into the package")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir or f"/tmp/offline_rl_zoo/{args.env}")

    snap_steps = sorted({*range(0, args.steps + 1, args.snapshot_every), args.steps})
    given = sys.argv[1:] if argv is None else argv  # the training command: the flags that shape training only
    local_flags = ("--measure-only", "--no-ship", "--train-only", "--resume")
    command = "python -m offline_rl.zoo.train " + shlex.join(a for a in given if a not in local_flags)
    if args.measure_only:  # also for a run that was killed: its snapshots so far are what the command produces
        train_info = _read(run_dir / "zoo_train.json") or _read(run_dir / "zoo_run.json")
        if "train_wall_time_s" not in train_info:  # killed run: snapshot times bound the training time
            times = [p.stat().st_mtime for p in (run_dir / SNAPSHOTS).glob("step_*.pt")]
            train_info["train_wall_time_s"] = round(max(times) - min(times), 1) if times else 0.0
    else:
        train_info = _train(args, run_dir, snap_steps, command)
        if args.train_only:
            return train_info
    train_info.setdefault("command", command)
    # The snapshots on disk: the planned ones a run reached, plus the last one of a run stopped by --time-limit.
    snap_steps = sorted(s for s in (int(p.stem.split("_")[1]) for p in (run_dir / SNAPSHOTS).glob("step_*.pt"))
                        if s <= args.steps)
    if len(snap_steps) < 3:
        raise SystemExit(f"{run_dir}: too few actor snapshots to pick levels from")
    measured = _measure_all(args, run_dir, snap_steps)
    entry = _select(args, measured, train_info)
    if not args.no_ship:
        _ship(args.env, run_dir, entry)
    print(json.dumps({k: entry[k] for k in ("levels", "checkpoints")}, indent=1), flush=True)
    return entry


def _train(args: argparse.Namespace, run_dir: Path, snap_steps: list[int], command: str) -> dict[str, Any]:
    from offline_rl import algos
    from offline_rl.data.dataset import Spec
    from offline_rl.envs import env_spaces
    from offline_rl.training import train_online
    from offline_rl.utils.io import atomic_write_json

    obs_space, act_space = env_spaces(args.env)
    spec = Spec(int(obs_space.shape[0]), int(act_space.shape[0]), tuple(map(float, act_space.low)),
                tuple(map(float, act_space.high)))
    values = algos.load_preset("sac", family=args.env.split("-")[0].lower())
    values.update(algos.parse_overrides(args.overrides))
    algo = algos.make("sac", spec, values, seed=args.seed, device=args.device)
    atomic_write_json(run_dir / "zoo_run.json", {"command": command, "config": dataclasses.asdict(algo.config)})
    result = train_online(algo, args.env, args.steps, seed=args.seed, num_envs=args.envs, eval_every=args.eval_every,
                          eval_episodes=10, out_dir=run_dir, snapshot_steps=snap_steps, progress=None,
                          log_every=5000, time_limit_s=args.time_limit, resume=args.resume)
    info = {"command": command, "config": dataclasses.asdict(algo.config), "train_wall_time_s": round(result.wall_time_s, 1),
            "updates_per_s": round(result.updates_per_s, 1), "status": result.status, "device": result.device,
            "trained_steps": result.step,
            "training_curve": [[int(s), round(r, 1)] for s, _, r in result.curve]}
    atomic_write_json(run_dir / "zoo_train.json", info)
    if result.status not in ("completed", "time_limit"):
        raise SystemExit(f"training ended with status {result.status}")
    return info


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _measure_all(args: argparse.Namespace, run_dir: Path, snap_steps: list[int]) -> dict[int, dict[str, float]]:
    from offline_rl.evaluation import evaluate
    from offline_rl.training.online import snapshot_path
    from offline_rl.utils.io import atomic_write_json

    cache_path = run_dir / "measurements.json"
    cache = {int(k): v for k, v in _read(cache_path).items()}
    for step in snap_steps:
        key = f"{args.episodes}@{EVAL_SEED}"
        if cache.get(step, {}).get("key") == key:
            continue
        actor = actor_from_state_dict(torch.load(snapshot_path(run_dir, step), weights_only=True))
        row: dict[str, Any] = {"key": key}
        for prefix, det in (("", False), ("deterministic_", True)):
            torch.manual_seed(EVAL_SEED + step)  # the sampled actions' noise
            ev = evaluate(ZooPolicy(actor, det), args.env, args.episodes, EVAL_SEED)
            row |= {f"{prefix}return_mean": ev.mean_return, f"{prefix}return_std": ev.std_return,
                    f"{prefix}return_min": min(ev.returns), f"{prefix}return_max": max(ev.returns),
                    f"{prefix}length_mean": float(np.mean(ev.lengths))}
        cache[step] = row
        atomic_write_json(cache_path, {str(k): v for k, v in sorted(cache.items())})
        print(f"[zoo] step {step}: return {row['return_mean']:.1f} ± {row['return_std']:.1f} (sampled), "
              f"{row['deterministic_return_mean']:.1f} ± {row['deterministic_return_std']:.1f} (deterministic)",
              file=sys.stderr, flush=True)
    return {s: cache[s] for s in snap_steps}


def _select(args: argparse.Namespace, measured: dict[int, dict[str, float]], train_info: dict[str, Any]
            ) -> dict[str, Any]:
    steps = sorted(measured)
    final = steps[-1]
    expert = measured[final]["return_mean"]
    lo, hi = MEDIUM_RANGE[0] * expert, MEDIUM_RANGE[1] * expert
    target = 0.5 * (lo + hi)
    candidates = [s for s in steps[:-1] if lo <= measured[s]["return_mean"] <= hi] or steps[1:-1] or steps[:-1]
    medium = min(candidates, key=lambda s: (abs(measured[s]["return_mean"] - target), s))
    shipped = [s for s in steps if s < medium and s % args.ship_every == 0] + [medium, final]
    level_of = {0: "random", medium: "medium", final: "expert"}
    rows = []
    for i, s in enumerate(shipped):
        m = measured[s]
        rows.append({"index": i, "step": s, "level": level_of.get(s, ""), "file": f"{args.env}/step_{s:08d}.pt",
                     **{k: round(v, 2) for k, v in m.items() if k != "key"}})
    import gymnasium
    import mujoco

    if final == args.steps:
        stopped = {}
    elif train_info.get("status") == "time_limit":
        stopped = {"note": f"training stopped at step {final} of {args.steps} by --time-limit on "
                           f"{train_info.get('device', 'cpu')}; the expert is the last snapshot, at step {final}"}
    else:
        stopped = {"note": f"the training run was killed at step {final} of {args.steps}; the command reproduces these "
                           f"snapshots (deterministic on CPU) and the expert is the last one, at step {final}"}
    device = {"device": train_info["device"]} if "device" in train_info else {}
    return {
        "algo": "sac", "command": train_info["command"], **stopped, "seed": args.seed, "steps": args.steps,
        "trained_steps": final,
        "snapshot_every": args.snapshot_every, "ship_every": args.ship_every, "eval_episodes": args.episodes, "eval_seed": EVAL_SEED,
        "selection": (f"on the sampled-action return: expert = final snapshot; medium = nearest to 5/12 of expert "
                      f"within [1/3, 1/2] of expert ({lo:.1f} .. {hi:.1f})"),
        "medium_in_range": bool(lo <= measured[medium]["return_mean"] <= hi),
        "levels": {"random": 0, "medium": shipped.index(medium), "expert": len(shipped) - 1},
        **device, "train_wall_time_s": train_info.get("train_wall_time_s", 0.0),
        "updates_per_s": train_info.get("updates_per_s", 0.0),
        "versions": {"torch": torch.__version__, "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__},
        "sac_config": {k: list(v) if isinstance(v, tuple) else v
                       for k, v in train_info.get("config", {}).items() if v is not None},
        "training_curve": train_info.get("training_curve", []),
        "measured": [[s, round(measured[s]["return_mean"], 1), round(measured[s]["deterministic_return_mean"], 1)]
                     for s in steps],
        "checkpoints": rows,
    }


def _ship(env_id: str, run_dir: Path, entry: dict[str, Any]) -> None:
    import tomllib

    from offline_rl.training.checkpoint import save_checkpoint
    from offline_rl.training.online import snapshot_path
    from offline_rl.utils.io import atomic_write_text

    out = WEIGHTS_DIR / env_id
    keep = {row["file"] for row in entry["checkpoints"]}
    if out.exists():
        for old in out.glob("*.pt"):
            if f"{env_id}/{old.name}" not in keep:
                old.unlink()
    for row in entry["checkpoints"]:
        state = torch.load(snapshot_path(run_dir, row["step"]), weights_only=True)
        save_checkpoint(WEIGHTS_DIR / row["file"], {k: v.to(torch.float32).contiguous() for k, v in state.items()})
        (WEIGHTS_DIR / row["file"]).chmod(0o644)  # package data: readable by all (temp files are created 0600)
    tables = tomllib.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    tables[env_id] = entry
    atomic_write_text(MANIFEST, HEADER + "".join(_toml_env(k, tables[k]) for k in sorted(tables)))
    MANIFEST.chmod(0o644)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _toml_env(env_id: str, entry: dict[str, Any]) -> str:
    key = json.dumps(env_id)
    lines = [f"\n[{key}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entry.items() if k != "checkpoints"]
    for row in entry["checkpoints"]:
        lines.append(f"\n[[{key}.checkpoints]]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in row.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
