"""The on-policy family's `reproduce` entries: registered, and the exact one (policy smoothing) passes live."""

from __future__ import annotations

from offline_rl import reproduce


def test_onpolicy_entries_are_registered():
    names = {e.name for e in reproduce.entries()}
    assert {"npg_igt", "harpg", "props", "pmoe", "poly_ppo", "policy_smoothing"} <= names


def test_policy_smoothing_entry_meets_the_exact_tightness_values():
    report = reproduce.run_entry("policy-smoothing", quick=True)  # names resolve with - and _ alike
    rows = report["rows"]
    assert [r["case"].split("B=")[1] for r in rows] == ["0", "0.25", "0.5", "1"]
    assert all(r["passed"] for r in rows)
    assert all(r["ours"] <= r["reference"] + 1e-3 for r in rows)  # a lower bound: not above the exact value
    assert rows[0]["ours"] > rows[1]["ours"] > rows[2]["ours"] > rows[3]["ours"]
