"""`offline-rl export RUN_DIR --format torchscript|onnx [--out FILE]`: a trained run's policy as one file that
acts without offline_rl (`offline_rl.export` does the work)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `train`.")],
    fmt: Annotated[str, typer.Option("--format", help="torchscript (loads with torch.jit.load) | onnx "
                                     "(loads with onnxruntime; needs offline-rl's export extra).")] = "torchscript",
    out: Annotated[Path | None, typer.Option(help="File to write (default: RUN_DIR/policy.pt or "
                                             "RUN_DIR/policy.onnx).")] = None,
) -> None:
    """Export the run's deterministic policy, state normalisation inside: raw observations (batch, obs_dim)
    float32 in, actions out, the same actions as the toolkit's policy."""
    from offline_rl.export import export_policy

    path = export_policy(run_dir, fmt, out)
    typer.echo(str(path))
