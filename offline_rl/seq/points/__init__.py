"""The built-in entries of every extension point (importing this package registers them)."""

from offline_rl.seq.points import (  # noqa: F401
    advantages,
    aggregation,
    budgets,
    hooks,
    loss_scales,
    ratios,
    samplers,
    segments,
    selection,
    surrogates,
    token_weights,
)
