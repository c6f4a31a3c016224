"""``emgkey demo``: configuration, the stream summary, and (slow) the whole pipeline end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emgkey.demo import STAGES, DemoConfig, run_demo
from emgkey.demo_pipeline import summarize_events


def test_unknown_stages_are_refused(tmp_path):
    with pytest.raises(AssertionError, match="unknown demo stages"):
        DemoConfig(out=tmp_path, stages=("simulate", "trian"))
    names = [n for n, _ in STAGES]
    assert names == ["simulate", "realism", "train", "distill", "export", "stream", "calibrate", "bench"]


def test_stream_summary_scores_the_raw_keys_of_final_events(tmp_path):
    events = tmp_path / "events.jsonl"
    lines = [
        {"type": "partial", "segment": 0, "text": "hel", "raw": "hel"},
        {"type": "status", "samples": 1000, "crc_errors": 2},
        {"type": "final", "segment": 0, "text": "he", "raw": "hex⌫"},
        {"type": "final", "segment": 1, "text": "lo", "raw": "lo"},
    ]
    events.write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = summarize_events(events, "hex⌫lo")
    assert s["cer"] == 0.0 and s["typed_keys"] == s["decoded_keys"] == 6
    assert s["status"] == {"samples": 1000, "crc_errors": 2}
    s = summarize_events(events, "hexxlo")  # one substitution in six keys
    assert s["cer"] == pytest.approx(100 / 6)


@pytest.mark.slow
def test_the_demo_runs_end_to_end(tmp_path: Path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    cfg = DemoConfig(
        out=tmp_path / "demo",
        users=4,
        sessions_per_user=2,
        minutes=0.5,
        student_epochs=1,
        teacher_epochs=1,
        stream_minutes=0.25,
        calibration_seconds=60.0,  # 30 s can leave too few complete prompts to hold one out
    )
    ctx = run_demo(cfg)
    summary = json.loads((cfg.out / "demo_summary.json").read_text())
    assert summary["simulated"] is True
    assert set(ctx.timings_s) == {n for n, _ in STAGES}
    assert (cfg.out / "bundle" / "manifest.json").is_file()
    assert summary["results"]["stream"]["typed_keys"] > 0
    assert (cfg.out / "report" / "report.md").is_file()
    assert list((cfg.out / "report").glob("*.png")), "the report has plots"


def test_a_rerun_distills_afresh_instead_of_refusing_the_used_folder(tmp_path: Path, monkeypatch) -> None:
    """`export distill` refuses an --out that holds a run; a second `make demo` must not stop there."""
    import emgkey.demo_pipeline as dp
    from emgkey.demo import DemoContext

    old = tmp_path / "runs" / "student_distilled"
    old.mkdir(parents=True)
    (old / "results.json").write_text("{}")
    seen = []

    def fake_run(ctx, stage, args):
        out = Path(args[args.index("--out") + 1])
        seen.append(out.exists())

    monkeypatch.setattr(dp, "run_cmd", fake_run)
    monkeypatch.setattr(dp, "_data", lambda ctx: (tmp_path / "data", tmp_path / "split.yaml"))
    monkeypatch.setattr(dp, "_train_summary", lambda out: {})
    dp.stage_distill(DemoContext(DemoConfig(out=tmp_path)))
    assert seen == [False]
