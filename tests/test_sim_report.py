"""The realism report and the speed benchmark, on smoke-sized runs (the numbers are checked in docs)."""

from __future__ import annotations

import json

from emgkey.cli import main as emgkey_main


def test_report_writes_markdown_json_and_figures(tmp_path, capsys):
    rc = emgkey_main(
        ["sim", "report", "--profile", "armband8", "--users", "2", "--minutes", "0.4", "--out", str(tmp_path)]
    )
    assert rc == 0
    md = (tmp_path / "report.md").read_text()
    report = json.loads((tmp_path / "report.json").read_text())
    assert md.count("SIMULATED DATA") >= 5
    assert report["simulated"] is True
    for png in ("psd", "spatial_correlation", "timing", "amplitude"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000
    assert report["amplitude"]["typing_over_rest"]["mean"] > 2
    assert report["corr_by_electrode_distance"][1] > report["corr_by_electrode_distance"][-1]
    assert 0 <= report["key_similarity"]["top_same_finger_fraction"] <= 1


def test_speed_benchmark_smoke(tmp_path):
    from emgkey.benchmarks import sim_speed

    out = tmp_path / "speed.json"
    sim_speed.main(["--out", str(out), "--minutes", "0.05", "--repeats", "1"])
    data = json.loads(out.read_text())
    assert {r["profile"] for r in data["results"]} == {"armband8", "emg2qwerty"}
    assert all(r["x_realtime"] > 0 for r in data["results"]) and data["threads"] == 1


def test_confusion_summary_counts_same_finger_pairs():
    from emgkey.firmware_sim.report import confusion_summary

    # e/d: left middle (same finger); e/r: middle vs index (same hand); a/l: other hands; e/E is one key;
    # space and what no key types are left out. Counts add up both ways.
    subs = [("d", "e", 3), ("e", "d", 2), ("e", "r", 3), ("a", "l", 2), ("e", "E", 9), (" ", "a", 9), ("a", "\x00", 9)]
    s = confusion_summary(subs, top=2)
    assert [(list(p["keys"]), p["count"]) for p in s["top"]] == [(["d", "e"], 5), (["e", "r"], 3)]
    assert s["same_finger_fraction"] == 0.5 and s["same_hand_fraction"] == 1.0
    assert s["n_errors"] == 10 and s["errors_same_finger_fraction"] == 0.5
    assert confusion_summary([])["n_errors"] == 0
