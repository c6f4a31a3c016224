"""``emgkey export ...`` and ``emgkey verify``: distillation, bundles, and runtime verification.

    emgkey export distill --teacher T.pt --student gru --data DIR --split S --out RUN [--config tiny]
    emgkey export bundle  --checkpoint RUN/best.pt --data DIR --split S --out BUNDLE/
                          [--precisions fp32,int8] [--formats onnx,tflite]
    emgkey export keyprior BUNDLE --data DIR --split S [--sessions 16]
    emgkey verify BUNDLE [--runtimes onnxruntime,ai-edge-litert,tflite-runtime] [--no-write]

Handlers import torch (and onnx, litert-torch) lazily; ``emgkey verify`` never imports
torch, so it runs on a device with only the ``[device]`` extras.
"""

from __future__ import annotations

import argparse
import json
import sys


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="distill, quantize and export verified model bundles (see docs/export.md)")
    esub = p.add_subparsers(dest="export_command", metavar="STEP")
    esub.required = True

    d = esub.add_parser("distill", help="train a streaming student from a teacher checkpoint (CTC + KL)")
    d.add_argument("--teacher", required=True, help="teacher checkpoint (tds_conv, transformer, or any model)")
    d.add_argument("--student", required=True, help="student model name: gru, bilstm or tcn")
    d.add_argument("--data", required=True)
    d.add_argument("--split", required=True)
    d.add_argument("--out", required=True, help="run folder (best.pt, last.pt, metrics.json, results.json)")
    d.add_argument("--config", default=None, help="training YAML (a path or a shipped name: tiny, bench, ...)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    d.add_argument("--alpha", type=float, default=0.5, help="weight of the KL term (CTC gets 1 - alpha)")
    d.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the KL term")
    d.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"))
    d.set_defaults(func=_distill)

    b = esub.add_parser("bundle", help="ONNX/TFLite fp32+int8 files, manifest.json and runtime verification")
    b.add_argument("--checkpoint", required=True, help="a streaming student's checkpoint (best.pt)")
    b.add_argument("--data", required=True, help="dataset folder (calibration from train, accuracy on test)")
    b.add_argument("--split", required=True, help="split YAML")
    b.add_argument("--out", required=True, help="bundle folder to create (atomically)")
    b.add_argument("--precisions", type=_csv, default=("fp32", "int8"), help="comma list: fp32,int8")
    b.add_argument("--formats", type=_csv, default=("onnx", "tflite"), help="comma list: onnx,tflite")
    b.add_argument(
        "--onnx-methods", type=_csv, default=None, help="int8 ONNX methods to try (ort_static,ort_dynamic,nncf)"
    )
    b.add_argument(
        "--tflite-recipes",
        type=_csv,
        default=None,
        help="int8 TFLite recipes to try (dynamic_wi8_afp32,weight_only_wi8_afp32,static_wi8_ai8)",
    )
    b.add_argument("--window-s", type=float, default=None, help="calibration/selection/reference window length")
    b.add_argument("--max-test-windows", type=int, default=None, help="cap the test windows scored at export")
    b.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    b.add_argument("--no-verify", action="store_true", help="skip runtime verification (files stay unverified)")
    b.set_defaults(func=_bundle)

    r = esub.add_parser("reproduce", help="re-measure a bundle's recorded test CER from its files (needs the data)")
    r.add_argument("bundle", help="bundle folder")
    r.add_argument("--data", required=True, help="the dataset folder the bundle was scored on")
    r.add_argument("--split", default=None, help="split YAML (default: the one in the manifest)")
    r.set_defaults(func=_reproduce)

    k = esub.add_parser(
        "keyprior", help="add the population's key classes to a bundle (key rescoring after calibration; no torch)"
    )
    k.add_argument("bundle", help="bundle folder (gets keyprior.npz and manifest model.key_prior)")
    k.add_argument("--data", required=True, help="dataset folder with the training sessions")
    k.add_argument("--split", required=True, help="split YAML (its train sessions are used)")
    k.add_argument("--sessions", type=int, default=16, help="training sessions to align (spread over the list)")
    k.add_argument("--shrinkage", type=float, default=0.3, help="covariance shrinkage towards the identity")
    k.add_argument("--min-count", type=int, default=20, help="aligned presses a character needs to be a class")
    k.add_argument("--threads", type=int, default=1)
    k.add_argument(
        "--align-bands",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="roll each session's bands onto one electrode frame first (keyalign; default: on)",
    )
    k.set_defaults(func=_keyprior)

    v = sub.add_parser("verify", help="run a bundle's files on every installed runtime against its fp32 reference")
    v.add_argument("bundle", help="bundle folder")
    v.add_argument("--runtimes", type=_csv, default=None, help="only these (onnxruntime,ai-edge-litert,tflite-runtime)")
    v.add_argument("--no-write", action="store_true", help="report only; leave manifest.json as it is")
    v.add_argument("--json", action="store_true", help="print the full report as JSON")
    v.set_defaults(func=_verify)


def _keyprior(args: argparse.Namespace) -> int:
    from emgkey.bundle import load_bundle
    from emgkey.export.key_prior import add_key_prior, fit_key_prior

    prior = fit_key_prior(
        load_bundle(args.bundle),
        args.data,
        args.split,
        sessions=args.sessions,
        shrinkage=args.shrinkage,
        min_count=args.min_count,
        threads=args.threads,
        align_bands=args.align_bands,
    )
    print(json.dumps(add_key_prior(args.bundle, prior), indent=2))
    return 0


def _distill(args: argparse.Namespace) -> int:
    from emgkey.export.distill import DistillConfig, distill
    from emgkey.train.config import load_config

    cfg = load_config(args.config, [*args.overrides, f"model={args.student}"])
    summary = distill(
        args.teacher,
        cfg,
        args.data,
        args.split,
        args.out,
        DistillConfig(alpha=args.alpha, temperature=args.temperature),
        device=args.device,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from emgkey.export.bundle_writer import BundleOptions, write_bundle

    opt = BundleOptions(
        precisions=tuple(args.precisions),
        formats=tuple(args.formats),
        window_s=args.window_s,
        max_test_windows=args.max_test_windows,
        force=args.force,
        verify=not args.no_verify,
    )
    if args.onnx_methods:
        opt.onnx_methods = tuple(args.onnx_methods)
    if args.tflite_recipes:
        opt.tflite_recipes = tuple(args.tflite_recipes)
    manifest = write_bundle(args.checkpoint, args.data, args.split, args.out, opt)
    _print_files(manifest)
    acc = manifest["accuracy"]
    print(
        f"{acc['data']} test CER: torch fp32 {acc['torch_fp32']['cer']:.2f}%; "
        + ", ".join(f"{k} {v['cer']:.2f}%" for k, v in acc["files"].items()),
        file=sys.stderr,
    )
    return 0


def _print_files(manifest: dict) -> None:
    for f in manifest["files"]:
        checks = ", ".join(f"{r['runtime']} {'ok' if r['supported'] else 'UNSUPPORTED'}" for r in f.get("runtimes", []))
        print(f"{f['path']:28s} {f['format']:6s} {f['precision']:4s} {f['graph']:9s} {f['bytes']:>10d} B  {checks}")


def _reproduce(args: argparse.Namespace) -> int:
    from emgkey.export.reproduce import reproduce

    rows = reproduce(args.bundle, args.data, args.split)
    for r in rows:
        state = "refused" if r["match"] is None else ("same" if r["match"] else "DIFFERS")
        now = "-" if r["cer"] is None else f"{r['cer']:.4f}"
        print(
            f"{r['file']:22s} {r['runtime'] or '-':15s} recorded {r['recorded_cer']:.4f} now {now} {state} {r['note']}"
        )
    return 0 if all(r["match"] is not False for r in rows) else 1


def _verify(args: argparse.Namespace) -> int:
    from emgkey.export.verify import verify_bundle

    report = verify_bundle(args.bundle, runtimes=args.runtimes, write=not args.no_write)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"runtimes installed: {report['runtimes']}")
        for r in report["results"]:
            state = "supported" if r["supported"] else "UNSUPPORTED"
            print(
                f"{r['file']:28s} {r['runtime']:15s} {state:12s} max|dlogp| {r['max_abs_logprob_diff']} "
                f"argmax {r['argmax_agreement']} dCER {r['cer_delta']} {r['note']}"
            )
    return 0 if all(r["supported"] for r in report["results"]) else 1
