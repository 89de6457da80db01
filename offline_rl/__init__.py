"""offline-rl: offline reinforcement learning toolkit.

    import offline_rl as orl
    data = orl.load_dataset("pendulum-medium")
    algo = orl.make_algo("td3_bc", data.spec, {"alpha": 2.5})
    result = orl.train(algo, data, steps=10_000, seed=0, out_dir="runs/td3bc")
"""

__version__ = "0.1.0"

from offline_rl.errors import ConfigError, DatasetError, UserError  # noqa: E402


def __getattr__(name: str):
    # Lazy public API: importing offline_rl stays cheap (no torch/gymnasium until used).
    if name in ("load_dataset", "generate_dataset", "Dataset"):
        from offline_rl import data

        return getattr(data, name)
    if name in ("make_algo", "list_algos", "register"):
        from offline_rl import algos

        return {"make_algo": algos.make, "list_algos": algos.available, "register": algos.register}[name]
    if name in ("train", "RunResult"):
        from offline_rl import training

        return getattr(training, name)
    if name == "compose_policies":
        from offline_rl.generative import compose_policies

        return compose_policies
    if name in ("evaluate", "EvalResult"):
        from offline_rl import evaluation

        return getattr(evaluation, name)
    raise AttributeError(f"module 'offline_rl' has no attribute {name!r}")


__all__ = ["ConfigError", "DatasetError", "UserError", "__version__", "load_dataset", "generate_dataset",
           "make_algo", "list_algos", "register", "train", "evaluate", "compose_policies"]
