"""The demo's model stages: train -> distill -> export + verify -> stream over a pty -> calibrate -> bench.

Each stage runs the documented command (``emgkey train``, ``emgkey export ...``, ``emgkey sim stream`` +
``emgkey run``, ``emgkey calibrate``, ``emgkey bench``) as a subprocess of this interpreter, so the demo
exercises exactly what a user types, and a stage's failure names the command and its log
(``OUT/logs/<stage>.log``). Stage results land in ``DemoContext.results``; everything is simulated data.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emgkey.atomic import atomic_write_text
from emgkey.metrics import edit_counts

if TYPE_CHECKING:
    from emgkey.demo import DemoContext

DEVICE_PROFILE = "armband8"  # the demo's device: what the runtime, calibration and bench use
NEW_USER = 900  # a simulated user id far from the training population (0..users-1)


class StageError(RuntimeError):
    """A demo command failed; the message names it and its log."""


def emgkey_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "emgkey.cli", *args]


def run_cmd(ctx: DemoContext, stage: str, args: list[str], timeout_s: float = 900.0) -> str:
    """Run ``emgkey ARGS`` with its stderr (progress bars) on the terminal; stdout is logged and returned."""
    logs = ctx.path("logs")
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{stage}.log"
    cmd = emgkey_cmd(*args)
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout_s, env=env)
    with open(log, "a") as f:
        f.write(proc.stdout)
    if proc.returncode != 0:
        raise StageError(f"{stage}: `emgkey {' '.join(args)}` exited {proc.returncode}; see {log}")
    return proc.stdout


def _data(ctx: DemoContext) -> tuple[Path, Path]:
    root = ctx.path("data", DEVICE_PROFILE)
    return root, root / "splits" / "generic.yaml"


def _results(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "results.json").read_text())


def _train_summary(run_dir: Path) -> dict[str, Any]:
    r = _results(run_dir)
    test = r.get("test") or {}
    return {
        "run": str(run_dir),
        "best_val_cer": r.get("best_val_cer"),
        "test_cer": test.get("cer"),
        "params": r.get("params") or r.get("parameters"),
        "wall_s": r.get("wall_time_s"),
    }


def stage_train(ctx: DemoContext) -> None:
    """The student (``DemoConfig.student``) and a small teacher (TDS-Conv), both on the armband8 recordings."""
    data, split = _data(ctx)
    c = ctx.cfg
    for role, model, size, epochs in (
        ("student", c.student, "default", c.student_epochs),
        ("teacher", "tds_conv", "tiny", c.teacher_epochs),
    ):
        out = ctx.path("runs", role)
        args = ["train", "--config", "demo", "--model", model, "--data", str(data), "--split", str(split)]
        args += ["--out", str(out), "--resume", "--set", f"epochs={epochs}", "--set", f"model_size={size}"]
        run_cmd(ctx, f"train_{role}", args)
        ctx.results.setdefault("train", {})[role] = {"model": model, **_train_summary(out)}


def stage_distill(ctx: DemoContext) -> None:
    """Teacher -> student: CTC + temperature-scaled KL between frame posteriors."""
    data, split = _data(ctx)
    out = ctx.path("runs", "student_distilled")
    if out.exists():  # a rerun of the demo: `export distill` refuses a used --out, and the teacher may be new
        shutil.rmtree(out)
    teacher = ctx.path("runs", "teacher", "best.pt")
    args = ["export", "distill", "--teacher", str(teacher), "--student", ctx.cfg.student, "--data", str(data)]
    args += ["--split", str(split), "--out", str(out), "--config", "demo", "--set", f"epochs={ctx.cfg.distill_epochs}"]
    run_cmd(ctx, "distill", args)
    ctx.results["distill"] = _train_summary(out)


def _student_checkpoint(ctx: DemoContext) -> Path:
    """The distilled student when it validates at least as well as the plain one."""
    plain, dist = ctx.path("runs", "student"), ctx.path("runs", "student_distilled")
    if not (plain / "results.json").is_file():
        raise StageError(f"no trained student in {plain}: run the 'train' stage first")
    if (dist / "results.json").is_file():
        d, p = _results(dist).get("best_val_cer"), _results(plain).get("best_val_cer")
        if d is not None and (p is None or d <= p):
            return dist / "best.pt"
    return plain / "best.pt"


def stage_export(ctx: DemoContext) -> None:
    """ONNX + TFLite, fp32 + int8, verified on every installed runtime, into one bundle."""
    data, split = _data(ctx)
    ckpt = _student_checkpoint(ctx)
    bundle = ctx.path("bundle")
    args = ["export", "bundle", "--checkpoint", str(ckpt), "--data", str(data), "--split", str(split)]
    args += ["--out", str(bundle), "--force", "--max-test-windows", "16"]
    run_cmd(ctx, "export", args)
    manifest = json.loads((bundle / "manifest.json").read_text())
    files = []
    for f in manifest["files"]:
        ok = [r["runtime"] for r in f.get("runtimes", []) if r.get("supported")]
        files.append({"path": f["path"], "bytes": f["bytes"], "precision": f["precision"], "verified_on": ok})
    # The population's key classes, for calibration step 3 (key rescoring). The demo's data is small: a
    # character needs 10 aligned presses (20 by default); too little data skips the step, it does not stop the demo.
    try:
        out = run_cmd(ctx, "keyprior", ["export", "keyprior", str(bundle), "--data", str(data), "--split", str(split),
                                        "--min-count", "10"])  # fmt: skip
        key_prior: dict[str, Any] = json.loads(out)
    except (StageError, json.JSONDecodeError) as exc:
        key_prior = {"skipped": str(exc)}
    ctx.results["export"] = {
        "bundle": str(bundle),
        "checkpoint": str(ckpt),
        "files": files,
        "accuracy": manifest.get("accuracy"),
        "key_prior": key_prior,
    }


def _typed_text(profile: str, user: int, minutes: float, seed: int) -> str:
    """What the simulated user typed in the streamed session (keys, emg2qwerty's charset)."""
    from emgkey.firmware_sim.simulate import simulate_session
    from emgkey.labels import LabelData
    from emgkey.profiles import get_profile

    s = simulate_session(get_profile(profile), user_id=user, session_idx=0, minutes=minutes, seed=seed)
    return LabelData.from_keystrokes(s.keystrokes).label_str


def stage_stream(ctx: DemoContext) -> None:
    """A new simulated user's armband firmware on a pty, decoded live by ``emgkey run`` (int8 ONNX)."""
    c = ctx.cfg
    work = ctx.path("stream")
    work.mkdir(parents=True, exist_ok=True)
    link, events = work / "armband.path", work / "events.jsonl"
    link.unlink(missing_ok=True)
    events.unlink(missing_ok=True)
    sim_args = ["sim", "stream", "--profile", DEVICE_PROFILE, "--user", str(NEW_USER), "--seed", str(c.seed)]
    # 10x real time: the link carries it, and the runtime reads as it goes, as from a real armband
    sim_args += ["--minutes", str(c.stream_minutes), "--no-realtime", "--speed", "10", "--link-file", str(link)]
    logs = ctx.path("logs")
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stream_firmware.log", "w") as sim_log:
        sim = subprocess.Popen(emgkey_cmd(*sim_args), stdout=sim_log, stderr=sim_log)
        try:
            deadline = time.monotonic() + 60
            while not link.exists():
                if sim.poll() is not None:
                    raise StageError(f"stream: the simulated armband exited {sim.returncode}; see {sim_log.name}")
                if time.monotonic() > deadline:
                    raise StageError("stream: the simulated armband did not open its pty within 60 s")
                time.sleep(0.05)
            port = link.read_text().strip()
            args = ["run", "--bundle", str(ctx.path("bundle")), "--source", f"serial://{port}", "--no-endpoint"]
            args += ["--jsonl", str(events), "--status", "log", "--max-seconds", str(c.stream_minutes * 60)]
            run_cmd(ctx, "stream", args)
        finally:
            if sim.poll() is None:
                sim.send_signal(signal.SIGINT)
            try:
                sim.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sim.kill()
    ctx.results["stream"] = summarize_events(events, _typed_text(DEVICE_PROFILE, NEW_USER, c.stream_minutes, c.seed))
    ctx.results["stream"]["port"] = "pty (emgkey sim stream)"


def summarize_events(events: Path, truth: str) -> dict[str, Any]:
    """CER of the streamed text against what was typed, and the runtime's own latency/counter report."""
    from emgkey import charset

    finals: list[str] = []
    last_status: dict[str, Any] = {}
    for line in events.read_text().splitlines():
        ev = json.loads(line)
        if ev.get("type") == "final":
            finals.append(ev.get("raw", ""))  # keys as decoded, backspaces included, as the keylogger has them
        elif ev.get("type") == "status":
            last_status = ev
    text = "".join(finals)
    counts = edit_counts(prediction=text, target=truth)
    return {
        "typed_keys": len(truth),
        "decoded_keys": len(text),
        "cer": counts.cer,
        "decoded_head": charset.to_display(text)[:80],
        "typed_head": charset.to_display(truth)[:80],
        "status": {k: v for k, v in last_status.items() if k != "type"},
    }


def stage_calibrate(ctx: DemoContext) -> None:
    """60 s of prompted typing by the new user; the calibrated profile is activated only if it is better."""
    c = ctx.cfg
    args = ["calibrate", "--bundle", str(ctx.path("bundle")), "--user", "demo-user"]
    args += ["--source", f"sim://?user={NEW_USER}&profile={DEVICE_PROFILE}&seed={c.seed}"]
    args += ["--seconds", str(c.calibration_seconds), "--strategy", "auto", "--json"]
    out = run_cmd(ctx, "calibrate", args)
    start = out.find("\n{")  # the prompts come first on stdout, then the outcome as indented JSON
    if not out.startswith("{") and start < 0:
        raise StageError(f"calibrate: no JSON outcome on stdout; see {ctx.path('logs', 'calibrate.log')}")
    profile = json.loads(out if out.startswith("{") else out[start + 1 :])
    m = profile.get("metrics", {})
    chosen = m.get("candidates", {}).get(m.get("chosen"), {})
    ctx.results["calibrate"] = {
        "strategy": profile.get("strategy"),
        "accepted": profile.get("accepted"),
        "activated": profile.get("activated"),
        "reason": profile.get("reason"),
        "heldout_before": m.get("current"),
        "heldout_after": chosen.get("heldout"),
        "compute_s": chosen.get("seconds"),
        "peak_rss_mb": m.get("peak_rss_mb"),
        "profile": profile.get("id"),
        "keys": m.get("keys"),  # step 3: held-out CER with/without key rescoring, and whether it is enabled
    }
    atomic_write_text(ctx.path("calibration_profile.json"), json.dumps(profile, indent=2) + "\n")
    before, after = (m.get("current") or {}).get("cer"), (chosen.get("heldout") or {}).get("cer")
    if before is not None and after is not None:  # one point of the CER-vs-calibration-seconds curve, for bench
        point = {"model": c.student, "strategy": profile.get("strategy"), "seconds": c.calibration_seconds}
        point |= {"cer_before": before, "cer_after": after, "compute_s": chosen.get("seconds")}
        doc = {"data": "simulated", "points": [point]}
        atomic_write_text(ctx.path("calibration.json"), json.dumps(doc, indent=2) + "\n")


def stage_bench(ctx: DemoContext) -> None:
    """``emgkey bench`` on the bundle (+ the PyTorch checkpoint and the teacher): report.md and PNG plots."""
    out = ctx.path("report")
    data, split = _data(ctx)
    args = ["bench", "--bundle", str(ctx.path("bundle")), "--out", str(out), "--repeats", "1", "--calls", "60"]
    args += ["--warmup", "10", "--threads", "1", "--decoders", "greedy,beam", "--lm", "auto"]
    args += ["--checkpoints", str(ctx.path("runs", "teacher", "best.pt")), str(_student_checkpoint(ctx))]
    args += ["--data", str(data), "--split", str(split), "--max-eval-windows", "8"]
    if ctx.path("calibration.json").exists():
        args += ["--calibration", str(ctx.path("calibration.json"))]
    run_cmd(ctx, "bench", args, timeout_s=1200)
    ctx.results["bench"] = {"report": str(out / "report.md"), "plots": sorted(str(p) for p in out.glob("*.png"))}
