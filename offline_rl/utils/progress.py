"""Progress output: a rich progress bar on a TTY, plain log lines on stderr otherwise."""

from __future__ import annotations

import sys


class ProgressReporter:
    """Shows step, updates/s and the last score. `enabled=None` means: a bar when stderr is a TTY."""

    def __init__(self, total: int, start: int = 0, enabled: bool | None = None, label: str = "train",
                 plain_every: float = 0.0) -> None:
        self.total, self.label = total, label
        self.tty = sys.stderr.isatty() if enabled is None else enabled and sys.stderr.isatty()
        self.quiet = enabled is False
        self.plain_every = plain_every  # without a TTY, `show` prints at most once per this fraction of the total
        self._next_plain = 0.0
        self._progress = None
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=False)
            self._task = self._progress.add_task(label, total=total, completed=start, info="")
            self._progress.start()

    def update(self, step: int, updates_per_s: float, score: float | None, ret: float | None,
               metrics: dict[str, float]) -> None:
        info = f"{updates_per_s:,.0f} upd/s"
        if ret is not None:
            info += f"  return {ret:.1f}" + (f"  score {score:.1f}" if score is not None else "")
        loss = "  ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:4])
        self.show(step, info, f"step {step}/{self.total}  {info}  {loss}")

    def show(self, done: int, info: str, plain: str | None = None) -> None:
        """Move the bar to `done` with `info`; without a TTY print `plain` (default: done/total and info)."""
        if self._progress is not None:
            self._progress.update(self._task, completed=done, info=info)
        elif not self.quiet and done >= self._next_plain:
            self._next_plain = done + self.plain_every * self.total
            print(f"[{self.label}] {plain or f'{done:,}/{self.total:,}  {info}'}", file=sys.stderr, flush=True)

    def log(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.log(message)
        else:
            print(f"[{self.label}] {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
