"""The progress reporter lives in `offline_rl.utils.progress` (the dataset generator uses it too)."""

from offline_rl.utils.progress import ProgressReporter

__all__ = ["ProgressReporter"]
