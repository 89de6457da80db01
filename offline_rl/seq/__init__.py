"""The sequence-policy backend: GRPO-family training of causal LMs on verifiable tasks (the `[llm]` extra).

    import offline_rl.seq as seq
    result = seq.train(task="copy", method="grpo", model="tiny", steps=200, out_dir="runs/copy")

A method is a bundle of choices at the extension points (registries in `offline_rl.seq.registry`); add one with
`@seq.register_method("name")` or the entry-point group `offline_rl.seq_methods`. Importing this package needs
only torch; building or loading a model needs transformers.
"""

from __future__ import annotations

from typing import Any

from offline_rl.seq import points  # noqa: F401  (registers the built-in extension-point entries)
from offline_rl.seq.context import Counts, LossContext, World, global_counts
from offline_rl.seq.methods import Choice, Method, available_methods, get_method, register_method
from offline_rl.seq.registry import ALL_REGISTRIES, EXTENSION_POINTS, Registry
from offline_rl.seq.tasks import CHECKERS, TASKS, Problem, Task, make_task
from offline_rl.seq.tokenizer import CharTokenizer


def train(config: Any = None, **overrides: Any) -> Any:
    """See `offline_rl.seq.trainer.train` (imported lazily)."""
    from offline_rl.seq.trainer import train as _train

    return _train(config, **overrides)


def __getattr__(name: str) -> Any:
    if name in ("SeqConfig", "SeqResult", "evaluate"):
        from offline_rl.seq import trainer

        return getattr(trainer, name)
    if name in ("build_tiny_model", "load_policy", "save_policy", "score_completions"):
        from offline_rl.seq import policy

        return getattr(policy, name)
    raise AttributeError(f"module 'offline_rl.seq' has no attribute {name!r}")


__all__ = ["ALL_REGISTRIES", "CHECKERS", "EXTENSION_POINTS", "TASKS", "CharTokenizer", "Choice", "Counts",
           "LossContext", "Method", "Problem", "Registry", "Task", "World", "available_methods", "get_method",
           "global_counts", "make_task", "register_method", "train"]
