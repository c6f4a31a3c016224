"""Export benchmark: fp32 vs int8 size, per-chunk latency (ORT and LiteRT, 1 thread), held-out CER,
with and without distillation, for every student (gru, bilstm, tcn) on every profile.

    python -m emgkey.benchmarks.export_bench --out runs/export_bench            # small: minutes on 2 cores
    python -m emgkey.benchmarks.export_bench --out runs/export_bench --big      # default-size models, more data
    python -m emgkey.benchmarks.export_bench --out DIR --profiles armband8 --students gru --no-distill
    python -m emgkey.benchmarks.export_bench --out DIR --size default --epochs 1 --max-steps 3   # real sizes
    python -m emgkey.benchmarks.export_bench --out DIR --reuse-runs runs/tb --data armband8=runs/tb/data/armband8 \
        --profiles armband8 --config demo --size default --epochs 24 --max-steps 0 --teacher-size small

Per profile: simulate a dataset (``emgkey sim dataset``; ``--data PROFILE=DIR`` uses an existing one),
train a teacher (``--teacher``, TDS-Conv by default; ``emgkey.train.loop.train``), then per student
train it plainly and by distillation (``emgkey.export.distill``) with the same config, and bundle each
checkpoint. With ``--reuse-runs TB`` (a training benchmark's ``--out``), a model that
``TB/runs/PROFILE/MODEL/generic/best.pt`` already holds is taken from there instead of retrained, so the
trained students and teacher of ``benchmarks/train_bench.py`` are what gets distilled and exported
(``emgkey.export.bundle_writer.write_bundle``: int8 method chosen on validation windows, every
file verified on every installed runtime). From each bundle it reports:

- ``bytes``: fp32 and int8 files (ONNX streaming graph, TFLite), and their ratio;
- ``chunk_ms``: median wall time of one streaming call at 1 thread (onnxruntime, ai-edge-litert),
  over the reference windows after a warm-up;
- ``cer``: test CER of the torch fp32 model and of each file on its runtime, and int8 - fp32
  (target: within +1.0 point absolute);
- ``int8``: the method chosen and every candidate's selection CER / error.

Writes ``DIR/export_bench.json`` and ``DIR/export_bench.md``. The data is simulated; the small
default trains tiny models for a few steps, so its CERs describe the pipeline, not the models.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("emgkey.export_bench")

SMALL = {
    "users": 3,
    "sessions": 2,
    "minutes": 1.0,
    "size": "tiny",
    "epochs": 2,
    "max_steps": 15,
    "config": "tiny",
}
BIG = {
    "users": 6,
    "sessions": 3,
    "minutes": 2.0,
    "size": "default",
    "epochs": 15,
    "max_steps": None,
    "config": "bench",
}


def _simulate(profile: str, out: Path, scale: dict[str, Any], seed: int) -> Path:
    if (out / "splits" / "generic.yaml").is_file():
        return out
    cmd = [
        sys.executable,
        "-m",
        "emgkey.cli",
        "sim",
        "dataset",
        "--profile",
        profile,
        "--users",
        str(scale["users"]),
        "--sessions-per-user",
        str(scale["sessions"]),
        "--minutes",
        str(scale["minutes"]),
        "--seed",
        str(seed),
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return out


def _overrides(scale: dict[str, Any], model: str) -> list[str]:
    sets = [f"model={model}", f"model_size={scale['size']}", f"epochs={scale['epochs']}", "progress=false"]
    sets += ["device=cpu", "data.num_workers=0"]
    if scale["max_steps"]:
        sets.append(f"max_steps_per_epoch={scale['max_steps']}")
    if scale["config"] == "tiny":
        sets += ["data.test_window_s=4.0", "data.max_eval_windows=8"]
    return sets + list(scale.get("train_set", ()))


def _train(
    data: Path, model: str, out: Path, scale: dict[str, Any], reuse: Path | None = None, size: str | None = None
) -> Path:
    """``out/best.pt``, trained unless it exists or ``reuse`` (a training benchmark's run of the same
    profile: ``TB/runs/PROFILE``) already holds ``MODEL/generic/best.pt``."""
    from emgkey.train.config import load_config
    from emgkey.train.loop import train

    if reuse is not None and (reuse / model / "generic" / "best.pt").is_file():
        log.info("reusing %s", reuse / model / "generic" / "best.pt")
        return reuse / model / "generic" / "best.pt"
    if not (out / "best.pt").is_file():
        sets = _overrides(scale | ({"size": size} if size else {}), model)
        train(load_config(scale["config"], sets), data, data / "splits" / "generic.yaml", out)
    return out / "best.pt"


def _distill(teacher: Path, data: Path, model: str, out: Path, scale: dict[str, Any]) -> Path:
    from emgkey.export.distill import DistillConfig, distill
    from emgkey.train.config import load_config

    if not (out / "best.pt").is_file():
        cfg = load_config(scale["config"], _overrides(scale, model))
        distill(teacher, cfg, data, data / "splits" / "generic.yaml", out, DistillConfig())
    return out / "best.pt"


def _latency(bundle: Path, repeats: int = 200) -> dict[str, float]:
    """Median ms per streaming call, 1 thread, per (format, precision) verified on its runtime."""
    import numpy as np

    from emgkey.bundle import load_bundle
    from emgkey.edge_runtime import engines
    from emgkey.export.verify import Reference

    b = load_bundle(bundle)
    ref = Reference.load(bundle / "reference.npz")
    x = ref.features[0]
    m = b.manifest.streaming.chunk_frames
    chunks = [x[t : t + m] for t in range(0, len(x) - m + 1, m)] or [x[:m]]
    out: dict[str, float] = {}
    for f in b.manifest.files:
        if f.graph != "streaming":
            continue
        try:
            eng = engines.open_engine(b, precision=f.precision, format=f.format, threads=1)
        except Exception as exc:  # unsupported on this runtime: no latency to report
            log.info("%s: %s", f.path, exc)
            continue
        state = eng.init_state()
        times = []
        for i in range(repeats + 10):
            t0 = time.perf_counter()
            _, state = eng.run(chunks[i % len(chunks)], state)
            if i >= 10:
                times.append(time.perf_counter() - t0)
        out[f"{f.format}_{f.precision}"] = round(1e3 * float(np.median(times)), 4)
    return out


def _row(bundle: Path, profile: str, student: str, distilled: bool, seconds: dict[str, float]) -> dict[str, Any]:
    from emgkey.bundle import load_bundle

    m = load_bundle(bundle).manifest
    acc = m.accuracy
    files = {f"{f.format}_{f.precision}_{f.graph}": f for f in m.files}
    row: dict[str, Any] = {
        "profile": profile,
        "student": student,
        "distilled": distilled,
        "params": m.model["params"],
        "data": acc["data"],
        "test_characters": acc["characters"],
        "cer": {"torch_fp32": acc["torch_fp32"]["cer"], **{k: v["cer"] for k, v in acc["files"].items()}},
        "int8_cer_minus_fp32": acc["int8_cer_minus_fp32"],
        "bytes": {k: f.bytes for k, f in files.items()},
        "chunk_ms": _latency(bundle),
        "chunk_frames": m.streaming.chunk_frames,
        "chunk_ms_of_signal": round(1e3 * m.streaming.chunk_frames / m.features.frame_rate_hz, 1),
        "verified": {f.path: {r.runtime: r.supported for r in f.runtimes} for f in m.files},
        "int8": {
            f.format: {
                "method": f.quantization.get("method"),
                "size_ratio": f.quantization.get("report", {}).get("size_ratio"),
                "weights_8bit": f.quantization.get("report", {}).get("weights_8bit"),
                "candidates": [
                    {
                        "method": c["method"],
                        "error": c["error"][:120],
                        "selection_cer": (c["selection"] or {}).get("cer"),
                    }
                    for c in f.quantization.get("candidates", [])
                ],
            }
            for f in m.files
            if f.precision == "int8"
        },
        "tflite_errors": m.tool.get("tflite", {}).get("errors", {}),
        "seconds": seconds,
    }
    for fmt in ("onnx", "tflite"):
        a, b = files.get(f"{fmt}_fp32_streaming"), files.get(f"{fmt}_int8_streaming")
        if a and b:
            row[f"{fmt}_int8_size_ratio"] = round(b.bytes / a.bytes, 3)
    return row


def _markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Export benchmark",
        "",
        f"{meta['scale_name']} scale, {meta['data']} data, {meta['cpu']} CPU cores; latency = median ms per "
        "streaming call at 1 thread. CER in % on the test users (greedy). int8 target: within +1.0 point.",
        "",
        "| profile | student | KD | params | test chars | ONNX fp32 KB | ONNX int8 KB (ratio, method) "
        "| TFLite fp32 KB | TFLite int8 KB (ratio, recipe) | ORT fp32/int8 ms | LiteRT fp32/int8 ms | CER torch "
        "| CER ONNX fp32/int8 | CER TFLite fp32/int8 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def kb(v: Any) -> str:
        return "-" if v is None else f"{v / 1024:.0f}"

    def f2(v: Any) -> str:
        return "-" if v is None else f"{v:.2f}"

    for r in rows:
        b, c, ms = r["bytes"], r["cer"], r["chunk_ms"]
        on8 = r["int8"].get("onnx", {})
        tf8 = r["int8"].get("tflite", {})
        lines.append(
            f"| {r['profile']} | {r['student']} | {'yes' if r['distilled'] else 'no'} | {r['params']} "
            f"| {r.get('test_characters', '-')} "
            f"| {kb(b.get('onnx_fp32_streaming'))} "
            f"| {kb(b.get('onnx_int8_streaming'))} ({r.get('onnx_int8_size_ratio', '-')}, {on8.get('method', '-')}) "
            f"| {kb(b.get('tflite_fp32_streaming'))} "
            f"| {kb(b.get('tflite_int8_streaming'))} "
            f"({r.get('tflite_int8_size_ratio', '-')}, {tf8.get('method', '-')}) "
            f"| {f2(ms.get('onnx_fp32'))}/{f2(ms.get('onnx_int8'))} "
            f"| {f2(ms.get('tflite_fp32'))}/{f2(ms.get('tflite_int8'))} "
            f"| {f2(c.get('torch_fp32'))} "
            f"| {f2(c.get('model_fp32.onnx'))}/{f2(c.get('model_int8.onnx'))} "
            f"| {f2(c.get('model_fp32.tflite'))}/{f2(c.get('model_int8.tflite'))} |"
        )
    errs = [(r["profile"], r["student"], r["tflite_errors"]) for r in rows if r["tflite_errors"]]
    if errs:
        lines += ["", "TFLite conversion/quantization failures (recorded in the manifests, no file shipped):", ""]
        lines += [f"- {p} {s}: {e}" for p, s, e in errs]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for datasets, runs, bundles and the report")
    parser.add_argument("--big", action="store_true", help="default-size models, more data and epochs (hours)")
    parser.add_argument("--profiles", default="emg2qwerty,armband8")
    parser.add_argument("--students", default="gru,bilstm,tcn")
    parser.add_argument("--no-distill", action="store_true", help="skip the distilled students (and the teacher)")
    parser.add_argument("--formats", default="onnx,tflite")
    parser.add_argument("--data", action="append", default=[], metavar="PROFILE=DIR", help="use an existing dataset")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--size", choices=("tiny", "default"), default=None, help="student size preset")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps per epoch (0: all)")
    parser.add_argument("--config", default=None, help="training config (default: tiny, or bench with --big)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher", choices=("tds_conv", "transformer"), default="tds_conv")
    parser.add_argument("--teacher-size", choices=("tiny", "small", "default"), default=None, help="default: --size")
    parser.add_argument(
        "--train-set", action="append", default=[], metavar="KEY=VALUE",
        help="config override for every training and distillation run (repeatable), as train_bench's",
    )  # fmt: skip
    parser.add_argument("--reuse-runs", default=None, metavar="TB", help="a training benchmark's --out to take "
                        "trained checkpoints from (TB/runs/PROFILE/MODEL/generic/best.pt)")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import torch

    from emgkey.export.bundle_writer import BundleOptions, write_bundle

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    scale = dict(BIG if args.big else SMALL)
    if args.epochs:
        scale["epochs"] = args.epochs
    if args.size:
        scale["size"] = args.size
    if args.max_steps is not None:
        scale["max_steps"] = args.max_steps or None
    if args.config:
        scale["config"] = args.config
    if args.train_set:
        scale["train_set"] = list(args.train_set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = dict(d.split("=", 1) for d in args.data)
    rows: list[dict[str, Any]] = []
    kinds = set()
    for profile in args.profiles.split(","):
        data = Path(datasets[profile]) if profile in datasets else out / "data" / profile
        t0 = time.perf_counter()
        _simulate(profile, data, scale, args.seed)
        t_sim = time.perf_counter() - t0
        teacher = None
        reuse = Path(args.reuse_runs) / "runs" / profile if args.reuse_runs else None
        if not args.no_distill:
            t0 = time.perf_counter()
            t_run = out / "runs" / profile / f"teacher_{args.teacher}"
            teacher = _train(data, args.teacher, t_run, scale, reuse, args.teacher_size)
            log.info("%s teacher %s ready in %.0f s", profile, args.teacher, time.perf_counter() - t0)
        for student in args.students.split(","):
            for distilled in [False] + ([True] if teacher is not None else []):
                tag = f"{student}{'_kd' if distilled else ''}"
                t0 = time.perf_counter()
                run = out / "runs" / profile / tag
                ckpt = (
                    _distill(teacher, data, student, run, scale)  # type: ignore[arg-type]
                    if distilled
                    else _train(data, student, run, scale, reuse)
                )
                t_train = time.perf_counter() - t0
                t0 = time.perf_counter()
                bundle = out / "bundles" / profile / tag
                write_bundle(
                    ckpt,
                    data,
                    data / "splits" / "generic.yaml",
                    bundle,
                    BundleOptions(formats=tuple(args.formats.split(",")), force=True, window_s=4.0),
                )
                t_bundle = time.perf_counter() - t0
                row = _row(bundle, profile, student, distilled, {"train": t_train, "bundle": t_bundle, "sim": t_sim})
                kinds.add(row["data"])
                rows.append(row)
                log.info("%s %s: %s", profile, tag, json.dumps({k: row[k] for k in ("cer", "bytes", "chunk_ms")}))
                _write(out, rows, scale, args, kinds)
    _write(out, rows, scale, args, kinds)
    print((out / "export_bench.md").read_text())
    return 0


def _write(out: Path, rows: list[dict[str, Any]], scale: dict[str, Any], args: argparse.Namespace, kinds: set) -> None:
    from emgkey.atomic import atomic_write_text
    from emgkey.export.bundle_writer import _tool_versions

    meta = {
        "scale_name": ("big" if args.big else "small")
        + f" ({scale['size']} models, {scale['epochs']} epochs"
        + (f"; trained checkpoints reused from {args.reuse_runs}" if args.reuse_runs else "")
        + ")",
        "scale": scale,
        "data": "/".join(sorted(kinds)) or "?",
        "cpu": os.cpu_count(),
        "versions": _tool_versions(),
    }
    atomic_write_text(out / "export_bench.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    atomic_write_text(out / "export_bench.md", _markdown(rows, meta))


if __name__ == "__main__":
    sys.exit(main())
