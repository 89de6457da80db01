"""Run logging: TensorBoard under out_dir/tb, a rich progress bar on a TTY, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("offline_rl.seq")


class RunLogger:
    def __init__(self, out_dir: str | Path | None, total_steps: int, log_every: int = 10, enabled: bool = True,
                 progress: bool | None = None) -> None:
        self.total, self.log_every, self.enabled = total_steps, max(1, log_every), enabled
        self.writer = None
        if enabled and out_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(out_dir) / "tb"))
        use_bar = sys.stderr.isatty() if progress is None else progress
        self.bar = self.task = None
        if enabled and use_bar:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("seq train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                TextColumn("{task.fields[info]}"), transient=False)
            self.task = self.bar.add_task("train", total=total_steps, info="")
            self.bar.start()

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Write scalars to TensorBoard each step; update the bar, or print a line every `log_every` steps."""
        if not self.enabled:
            return
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, float(v), step)
        info = " ".join(f"{k}={float(v):.3g}" for k, v in metrics.items() if k in ("reward", "eval_exact", "loss"))
        if self.bar is not None:
            self.bar.update(self.task, completed=step + 1, info=info)
        elif (step + 1) % self.log_every == 0 or step + 1 == self.total:
            print(f"[seq] step {step + 1}/{self.total} {info}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.writer is not None:
            self.writer.close()
