"""``emgkey bench``, ``emgkey report`` and ``emgkey bundle``: measure, report, package for a device.

    emgkey bench --bundle BUNDLE [--bundle B2] --out runs/bench          # torch-free: runs on a Pi / Jetson
    emgkey bench --bundles runs/export_bench/bundles/armband8 --checkpoints TEACHER.pt --out runs/bench
    emgkey report runs/bench/results.json pi4/results.json --out runs/report
    emgkey bundle --target rpi --bundle BUNDLE --out emgkey-rpi.tar.gz

Nothing heavy is imported here: ``emgkey --help`` and these commands work in a torch-free install.
See docs/benchmarks.md and docs/device_bundle.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("emgkey.bench")


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "bench",
        help="benchmark models x precision x runtime x threads: latency, memory, CER (see docs/benchmarks.md)",
        description="Measure every (model, runtime, precision, threads) cell in its own process and write "
        "OUT/results.json, OUT/report.md and PNG plots.",
    )
    b.add_argument("--bundle", action="append", default=[], metavar="BUNDLE", help="a bundle folder (repeatable)")
    b.add_argument("--bundles", nargs="+", default=[], metavar="DIR", help="bundle folders or folders of bundles")
    b.add_argument(
        "--checkpoints",
        nargs="+",
        default=[],
        metavar="CKPT",
        help="checkpoints (torch): a bundle's own checkpoint adds PyTorch eager cells; other students are "
        "exported first (needs --data/--split); a teacher (tds_conv) is the reference baseline",
    )
    b.add_argument("--data", default=None, help="dataset folder for exporting --checkpoints")
    b.add_argument("--split", default=None, help="split YAML for exporting --checkpoints")
    b.add_argument("--out", default="runs/bench", help="folder for results.json and the report")
    b.add_argument("--threads", default="1,all", help="comma list of thread counts; 'all' = every usable core")
    b.add_argument("--precisions", type=_csv, default=("fp32", "int8"))
    b.add_argument("--runtimes", type=_csv, default=("torch", "onnxruntime", "litert"), help="torch,onnxruntime,litert")
    b.add_argument("--repeats", type=int, default=3, help="runs per cell, each a fresh process (median reported)")
    b.add_argument("--warmup", type=int, default=20, help="untimed calls per run")
    b.add_argument("--calls", type=int, default=200, help="timed calls per run")
    b.add_argument("--decoders", type=_csv, default=("greedy", "beam"), help="greedy,beam")
    b.add_argument(
        "--lm",
        default="auto",
        help="ARPA LM for the beam decoder; 'auto' builds a pruned 5-gram into OUT (numpy, seconds); 'none'",
    )
    b.add_argument("--beam-size", type=int, default=None)
    b.add_argument("--eval-data", nargs="+", default=[], metavar="PATH", help="held-out session files/folders")
    b.add_argument("--eval-window-s", type=float, default=None, help="cut --eval-data sessions into windows")
    b.add_argument("--max-eval-windows", type=int, default=None)
    b.add_argument("--calibration", default=None, help="result JSON of benchmarks/calibration_bench.py")
    b.add_argument("--device-label", default=None, help="name of this machine in the report")
    b.add_argument("--pi4-factor", type=float, default=None, help="assumed Pi 4 slowdown for estimates (default 8)")
    b.add_argument("--no-report", action="store_true", help="write results.json only")
    b.add_argument("--no-plots", action="store_true")
    b.set_defaults(func=_bench)

    r = sub.add_parser("report", help="merge bench results.json files (one per device) into one report")
    r.add_argument("results", nargs="+", help="results.json files")
    r.add_argument("--out", required=True, help="folder for report.md and PNGs")
    r.add_argument("--pi4-factor", type=float, default=None, help="assumed Pi 4 slowdown for estimates (default 8)")
    r.add_argument("--no-plots", action="store_true")
    r.add_argument(
        "--calibration",
        default=None,
        help="result JSON of benchmarks/calibration_bench.py, when the results files carry none (as bench's option)",
    )
    r.set_defaults(func=_report)

    d = sub.add_parser(
        "bundle",
        help="package a verified bundle, the runtime wheel, pinned requirements, install.sh and a systemd unit",
        description="Write a self-contained archive to flash onto a Raspberry Pi or Jetson (docs/device_bundle.md).",
    )
    d.add_argument("--target", required=True, choices=("rpi", "jetson"))
    d.add_argument("--bundle", required=True, help="verified model bundle folder")
    d.add_argument("--out", required=True, help="archive to write (.tar.gz)")
    d.add_argument("--wheel", default=None, help="use this emgkey wheel instead of building one from the source tree")
    d.add_argument("--device-python", default=None, help="Python X.Y on the device (default: the target's)")
    d.add_argument("--serial-port", default=None, help="armband serial port for the service (default: the target's)")
    d.add_argument("--format", choices=("onnx", "tflite"), default=None, help="model file the service runs")
    d.add_argument("--precision", choices=("int8", "fp32"), default=None)
    d.add_argument("--lm", default=None, help="ARPA LM to ship (the service then decodes with beam + LM)")
    d.add_argument("--wheelhouse", action="store_true", help="download aarch64 wheels into the archive (offline)")
    d.add_argument("--force", action="store_true", help="overwrite --out")
    d.set_defaults(func=_bundle)


def _budget(factor: float | None) -> Any:
    from dataclasses import replace

    from emgkey.benchmarks.report import PI4

    return PI4 if factor is None else replace(PI4, factor=factor)


def _bench(args: argparse.Namespace) -> int:
    from emgkey.benchmarks import bench as B
    from emgkey.benchmarks.report import write_report

    out = Path(args.out)
    lm: str | None
    if "beam" not in args.decoders or args.lm == "none":
        lm = None
    elif args.lm == "auto":
        lm = str(B.build_default_lm(out))
    else:
        lm = args.lm
    cfg = B.BenchConfig(
        threads=B.parse_threads(args.threads),
        precisions=tuple(args.precisions),
        runtimes=tuple(args.runtimes),
        warmup=args.warmup,
        calls=args.calls,
        repeats=args.repeats,
        decoders=tuple(args.decoders),
        lm=lm,
        beam_size=args.beam_size,
        eval_data=tuple(args.eval_data),
        eval_window_s=args.eval_window_s,
        max_eval_windows=args.max_eval_windows,
        calibration=args.calibration,
        device_label=args.device_label,
    )
    results = B.bench([*args.bundle, *args.bundles], args.checkpoints, out, cfg, data=args.data, split=args.split)
    print(f"wrote {out / 'results.json'} ({len(results['cells'])} cells, {results['wall_s']:.0f} s)")
    if not args.no_report:
        from emgkey.benchmarks.report import load_results

        docs = load_results([out / "results.json"])
        path = write_report(docs, out, _budget(args.pi4_factor), plots=not args.no_plots)
        print(f"wrote {path}")
        _print_pick(out)
    return 0


def _print_pick(out: Path) -> None:
    import json

    rec = json.loads((out / "recommendation.json").read_text())
    print(rec["text"].replace("**", ""))


def _report(args: argparse.Namespace) -> int:
    from emgkey.benchmarks.report import load_results, write_report

    docs = load_results(args.results)
    if args.calibration:
        from emgkey.benchmarks.bench import load_calibration
        from emgkey.errors import ConfigError

        if any(d.get("calibration") for d in docs):
            raise ConfigError("--calibration: the results files already carry calibration results")
        docs[0]["calibration"] = load_calibration(args.calibration)  # one device's worth: shown once
    path = write_report(docs, args.out, _budget(args.pi4_factor), plots=not args.no_plots)
    print(f"wrote {path}")
    _print_pick(Path(args.out))
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from emgkey.export.device_bundle import DeviceBundleOptions, build_device_bundle

    opt = DeviceBundleOptions(
        target=args.target,
        device_python=args.device_python,
        serial_port=args.serial_port,
        format=args.format,
        precision=args.precision,
        lm=args.lm,
        wheel=args.wheel,
        wheelhouse=args.wheelhouse,
        force=args.force,
    )
    info = build_device_bundle(args.bundle, args.out, opt)
    print(
        f"wrote {args.out} ({info['archive_bytes'] / 1e6:.1f} MB, {len(info['files'])} files): "
        f"{info['target']['title']}, service runs {info['service']['format']} {info['service']['precision']}",
        file=sys.stderr,
    )
    print(args.out)
    return 0
