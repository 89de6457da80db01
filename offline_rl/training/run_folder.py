"""A run folder's integrity: what run it holds (a fingerprint of the whole resolved configuration), one writer at a
time (an exclusive lock for the run's lifetime), and whether a command may start, resume or skip it.

The fingerprint covers everything that makes two runs the same run: the algorithm and its resolved config, the
dataset source and a hash of its content, the step budget, the evaluation protocol, the seed and the toolkit
version. `run.json` stores it with its fields, so a mismatch can name the fields that differ.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from offline_rl import __version__
from offline_rl.errors import UserError
from offline_rl.utils.io import read_json

RUN = "run.json"
RESULT = "result.json"
CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"
FINISHED = ("completed", "diverged")
"""Statuses of a run that is over: a re-run skips it (a diverged run would diverge again)."""
_OWNED = (RUN, RESULT, CHECKPOINT, "tb", "error.log", "snapshots")
"""What a run writes in its folder (removed by --overwrite; anything else is left alone)."""
_HELD: dict[Path, int] = {}


def run_fields(algo: str, config: dict[str, Any], dataset_source: str, dataset_hash: str, steps: int,
               eval_every: int, eval_episodes: int, eval_seed: int, seed: int) -> dict[str, Any]:
    """The fields that define a run (JSON-ready)."""
    return json.loads(json.dumps({
        "algo": algo, "config": config, "dataset_source": dataset_source, "dataset_hash": dataset_hash,
        "steps": steps, "eval_every": eval_every, "eval_episodes": eval_episodes, "eval_seed": eval_seed,
        "seed": seed, "version": __version__}, default=str))


def fingerprint(fields: dict[str, Any]) -> str:
    """sha256 of the fields as canonical JSON."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def differing_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """`["steps: 5000 -> 4000", "config.alpha: 2.5 -> 3.0"]` for the fields whose values differ."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(absent)"), new.get(key, "(absent)")
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def read_record(path: Path) -> dict[str, Any] | None:
    """A JSON record of the run folder, None when absent; a UserError naming the file when it is unreadable."""
    if not path.exists():
        return None
    try:
        record = read_json(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e}); delete it, or pass --overwrite to start the run again") from e
    if not isinstance(record, dict):
        raise UserError(f"{path}: not a run record (a JSON object); delete it or pass --overwrite")
    return record


def make_run_folder(out: Path) -> Path:
    """Create `out` (and its parents) as a writable folder, or say why it cannot be one."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the run folder ({e.strerror or e})") from e
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: the folder is not writable")
    return out


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder `out` while the block runs (re-entrant in one process). The lock
    is an flock on `out/.lock`, so the OS releases it when the process dies; the file names the holder."""
    out = make_run_folder(Path(out)).resolve()
    if out in _HELD:
        _HELD[out] += 1
        try:
            yield
        finally:
            _HELD[out] -= 1
        return
    lock_path = out / LOCK
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"{out}: the run folder is in use by {holder}; wait for it to finish or use another --out") \
            from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        _HELD[out] = 1
        yield
    finally:
        _HELD.pop(out, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def clear(out: Path) -> None:
    """Remove what a run wrote in `out` (record, result, checkpoint, logs), for --overwrite."""
    for name in _OWNED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def plan(out: Path, fields: dict[str, Any], resume: bool, overwrite: bool) -> str:
    """What to do with the run folder `out` for a run with these `fields`: "fresh", "resume" or "done" (a finished
    run of the same configuration, with `resume`). A folder holding another run, or this run without `resume`,
    is a UserError that says what to pass, unless `overwrite` (then the old run is removed: "fresh")."""
    record = read_record(out / RUN)
    if record is None and not (out / CHECKPOINT).exists():
        if resume:
            print(f"{out}: no checkpoint to resume; starting fresh", file=sys.stderr, flush=True)
        return "fresh"
    if overwrite:
        clear(out)
        return "fresh"
    old = (record or {}).get("fingerprint")
    if old is None:
        raise UserError(f"{out}: holds files of a run without a fingerprint (an older offline-rl, or a partial run); "
                        "pass --overwrite to replace them, or use another --out")
    if old != fingerprint(fields):
        diff = differing_fields(record.get("fingerprint_fields", {}), fields)
        raise UserError(f"{out}: holds a different run ({'; '.join(diff) or 'fingerprint differs'}); pass "
                        "--overwrite to replace it, or use another --out")
    result = read_record(out / RESULT) or {}
    status = result.get("status", "started")
    if not resume:
        raise UserError(f"{out}: already holds this run (status {status}); pass --resume to continue or keep it, "
                        "or --overwrite to train it again")
    if status in FINISHED and result.get("fingerprint") == old:
        return "done"
    if not (out / CHECKPOINT).exists():
        print(f"{out}: no checkpoint to resume; starting fresh", file=sys.stderr, flush=True)
        return "fresh"
    return "resume"
