"""Benchmarks: suite files, the runners that execute them, and leaderboards built from the result files.

    from offline_rl.bench import load_suite, run_suite, write_leaderboard
    run_suite(load_suite("quick"), "results/quick", workers=2)
    print(write_leaderboard("results/quick", fmt="md"))
"""

from offline_rl.bench.leaderboard import (
           aggregate,
           collect,
           plot_curves,
           to_csv,
           to_html,
           to_markdown,
           write_leaderboard,
)
from offline_rl.bench.runner import run_suite
from offline_rl.bench.suite import RunSpec, Suite, list_suites, load_suite

__all__ = ["RunSpec", "Suite", "aggregate", "collect", "list_suites", "load_suite", "plot_curves", "run_suite",
           "to_csv", "to_html", "to_markdown", "write_leaderboard"]
