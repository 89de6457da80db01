"""Network building blocks shared by the algorithms."""

from offline_rl.nets.mlp import (
    DeterministicActor,
    EnsembleLinear,
    EnsembleMLP,
    GaussianActor,
    TanhGaussianActor,
    TwinQ,
    ValueNet,
    mlp,
)

__all__ = ["DeterministicActor", "EnsembleLinear", "EnsembleMLP", "GaussianActor", "TanhGaussianActor", "TwinQ", "ValueNet", "mlp"]
