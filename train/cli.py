"""``emgkey train`` and ``emgkey eval``: training runs and checkpoint evaluation.

    emgkey train --config tiny --data DIR --split DIR/splits/generic.yaml --out runs/tiny
    emgkey train --config bench --model tcn --set optim.lr=3e-4 --data ... --split ... --out ...
    emgkey train --out runs/tiny --data ... --split ... --resume          # continue from last.pt
    emgkey train --config transfer8 --init-from runs/e2q/best.pt --data ARMBAND8_DIR --split ... --out ...
    emgkey train --nproc 2 ...                                            # DDP, same as torchrun
    emgkey eval --checkpoint runs/tiny/best.pt --data DIR --split ... [--subset test]

Handlers import torch lazily: ``emgkey --help`` and the device-side commands
work without it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from emgkey.atomic import atomic_write_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a CTC model on session files (see docs/training.md)")
    p.add_argument("--config", default=None, help="YAML config: a path, or a shipped name (tiny, bench, ...)")
    p.add_argument("--data", required=True, help="dataset folder holding <session>.hdf5 files")
    p.add_argument("--split", required=True, help="split YAML (emg2qwerty form): generic.yaml or user{i}.yaml")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.csv/json, results.json")
    p.add_argument("--model", default=None, help="model name (gru, bilstm, tcn, tds_conv, transformer)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=3e-4 --set data.batch_size=16 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CKPT",
        help="transfer: start from a checkpoint of another device (sets transfer.init_from)",
    )
    p.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="override the config's device")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes (re-launches under torchrun)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="CER (ins/del/sub) of a checkpoint on a split's sessions")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by emgkey train (best.pt, last.pt)")
    p.add_argument("--data", required=True, help="dataset folder holding <session>.hdf5 files")
    p.add_argument("--split", required=True, help="split YAML (emg2qwerty form)")
    p.add_argument("--subset", default="test", choices=("train", "val", "test"))
    p.add_argument(
        "--window-s",
        default="config",
        help="'config' (the run's val/test windows), 'whole' (whole sessions) or seconds",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--out", default=None, help="JSON file to write (default: eval_<subset>.json next to the checkpoint)"
    )
    p.set_defaults(func=_eval)


def _config_args(args: argparse.Namespace) -> list[str]:
    """Command-line choices as ``--set`` assignments, applied after the config file's."""
    sets = list(args.overrides)
    if args.model is not None:
        sets.append(f"model={args.model}")
    if args.init_from is not None:
        sets.append(f"transfer.init_from={args.init_from}")
    return sets


def _train(args: argparse.Namespace) -> int:
    from emgkey.train.config import load_config

    sets = _config_args(args)
    # On --resume the run's stored config is authoritative; one given as well must agree with it.
    given = args.config is not None or bool(sets)
    cfg = load_config(args.config, sets) if (given or not args.resume) else None
    if args.print_config:
        print((cfg or load_config(None, sets)).to_yaml(), end="")
        return 0
    if args.nproc > 1:
        from emgkey.train.distributed import env_world_size, launch

        if env_world_size() > 1:
            raise ValueError("--nproc inside a torchrun job: use one or the other")
        return launch(args.nproc, _argv_without_nproc(args))

    from emgkey.train.loop import train

    summary = train(cfg, args.data, args.split, args.out, resume=args.resume, device=args.device)
    if os.environ.get("RANK", "0") == "0":  # under torchrun every rank returns the summary; one prints it
        print(json.dumps(summary, indent=2))
    return 0


def _argv_without_nproc(args: argparse.Namespace) -> list[str]:
    """This ``emgkey train`` command as each torchrun worker runs it."""
    argv = ["-v"] if getattr(args, "verbose", False) else []
    argv += ["train", "--data", str(args.data), "--split", str(args.split), "--out", str(args.out)]
    if args.config is not None:
        argv += ["--config", str(args.config)]
    if args.model is not None:
        argv += ["--model", args.model]
    for s in args.overrides:
        argv += ["--set", s]
    if args.resume:
        argv.append("--resume")
    if args.init_from is not None:
        argv += ["--init-from", args.init_from]
    if args.device is not None:
        argv += ["--device", args.device]
    return argv


def _eval(args: argparse.Namespace) -> int:
    from emgkey.train.loop import evaluate_checkpoint

    if args.window_s == "config":
        window: float | str | None = "config"
    elif args.window_s == "whole":
        window = None
    else:
        window = float(args.window_s)
    result = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.split,
        subset=args.subset,
        window_s=window,
        device_name=args.device,
        batch_size=args.batch_size,
    )
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name(f"eval_{args.subset}.json")
    text = json.dumps(result, indent=2) + "\n"
    atomic_write_text(out, text)
    print(text, end="")
    print(
        f"{args.subset}: CER {result['cer']:.2f}% (ins {result['ins']:.2f} del {result['del']:.2f} "
        f"sub {result['sub']:.2f}) over {result['target_len']:.0f} characters -> {out}",
        file=sys.stderr,
    )
    return 0
