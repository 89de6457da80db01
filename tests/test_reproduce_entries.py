"""`offline-rl reproduce` through the CLI for this family's entries: --list names them, and an entry's --quick
--json report has the issue's keys, computed live."""

from __future__ import annotations

import json

import pytest
from test_cli import cli

from offline_rl.envs.riverswim import RiverSwim, optimal_q
from offline_rl.errors import UserError
from offline_rl.reproduce import entries, run_entry


def test_list_names_the_entries():
    proc = cli("reproduce", "--list")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]
    assert {"hdpo", "riverswim", "groove", "prdc", "odice"} <= set(names)
    assert {e.name for e in entries()} >= {"hdpo", "riverswim", "groove", "prdc", "odice"}


def test_riverswim_quick_json_through_the_cli():
    proc = cli("reproduce", "riverswim", "--quick", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["name"] == "riverswim" and len(report["rows"]) == 4
    for r in report["rows"]:
        assert set(r) == {"case", "metric", "ours", "reference", "gap", "passed"}
        assert r["passed"] is True, r
    v_star = optimal_q(RiverSwim())[1][0, 0]
    assert report["rows"][0]["case"] == "RiverSwim S=6 H=20"
    assert report["rows"][0]["reference"] == pytest.approx(v_star)  # the DP value, computed live
    assert "N_off=100" in report["rows"][1]["case"]


def test_a_failing_row_exits_1_with_the_count():
    """`reproduce` exits 0 only when every row passes (riverswim above), 1 when one does not."""
    from typer.testing import CliRunner

    from offline_rl.cli import app
    from offline_rl.reproduce import _ENTRIES, register_entry, row

    @register_entry("test_half_fails", "one row in, one out of tolerance")
    def _entry(quick: bool):
        return [row("in", "x", 1.0, 1.0, 0.1), row("out", "x", 2.0, 1.0, 0.1)]

    try:
        result = CliRunner().invoke(app, ["reproduce", "test_half_fails", "--quick"])
        assert result.exit_code == 1, result.output
        assert "test_half_fails: 1/2 rows pass" in result.output
        assert [line.split()[-1] for line in result.output.splitlines()[1:3]] == ["yes", "NO"]
    finally:
        del _ENTRIES["test_half_fails"]


def test_unknown_entry_is_a_user_error():
    with pytest.raises(UserError, match="did you mean 'hdpo'"):
        run_entry("hdp0")


@pytest.mark.parametrize("name, rows", [("prdc", 7), ("odice", 6)])
def test_offline_entries_pass_every_row(name, rows):
    """The entries that check PRDC's search and O-DICE's projection against their definitions on real data: every
    row passes (PRDC: 3 searches × k = 1, 2, and the algorithm's own target against the float64 argmin)."""
    report = run_entry(name, quick=True)
    assert len(report["rows"]) == rows and all(r["passed"] for r in report["rows"]), report
