"""The shared trainer (`train`) and the one-call experiment runner used by the CLI and the benchmark runners."""

from offline_rl.training.experiment import load_run, run_experiment
from offline_rl.training.online import ReplayBuffer, train_online
from offline_rl.training.seeding import resolve_device, seed_everything
from offline_rl.training.trainer import RunResult, train

__all__ = ["ReplayBuffer", "RunResult", "load_run", "resolve_device", "run_experiment", "seed_everything", "train",
           "train_online"]
