"""``emgkey sim ...``: the simulated population, its datasets and its serial link.

Handlers import their modules lazily so ``emgkey --help`` stays fast and light.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser("sim", help="simulated armband: datasets, realism report, serial stream")
    simsub = sim.add_subparsers(dest="sim_command", metavar="SIM_COMMAND")
    simsub.required = True

    p = simsub.add_parser("dataset", help="simulate users typing and write emg2qwerty-format sessions + splits")
    p.add_argument("--profile", default="emg2qwerty", help="device profile (emg2qwerty | armband8)")
    p.add_argument("--users", type=int, default=8, help="number of simulated users")
    p.add_argument(
        "--first-user",
        type=int,
        default=0,
        help="population id of the first user (default 0); e.g. 3000 for people no model was trained on",
    )
    p.add_argument("--sessions-per-user", type=int, default=4)
    p.add_argument("--minutes", type=float, default=1.0, help="minutes of typing per session")
    p.add_argument("--seed", type=int, default=0, help="population seed (users, sessions and prompts follow from it)")
    p.add_argument("--test-users", type=int, default=None, help="held-out users for the generic split (default: ~25%%)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_dataset)

    p = simsub.add_parser("report", help="realism report of simulated data (text + JSON + plots)")
    p.add_argument("--profile", default="emg2qwerty")
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder for report.md, report.json and PNGs")
    p.set_defaults(func=_report)

    p = simsub.add_parser("stream", help="run the armband firmware on a pseudo-terminal (or a given device path)")
    p.add_argument("--profile", default="armband8")
    p.add_argument("--user", type=int, default=0, help="simulated user id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=True, help="pace at the sample rate")
    p.add_argument(
        "--speed", type=float, default=None, help="with --no-realtime: acquire at most this many x real time"
    )
    p.add_argument("--faults", default="", help="fault spec, e.g. 'bitflip=1e-4,drop=1e-4,stall=0.01'")
    p.add_argument("--link-file", default=None, help="write the pty path here once it is open")
    p.set_defaults(func=_stream)


def _dataset(args: argparse.Namespace) -> int:
    from emgkey.firmware_sim.dataset import run_dataset_cli

    return run_dataset_cli(args)


def _report(args: argparse.Namespace) -> int:
    from emgkey.firmware_sim.report import run_report_cli

    return run_report_cli(args)


def _stream(args: argparse.Namespace) -> int:
    from emgkey.firmware_sim.link import run_stream_cli

    return run_stream_cli(args)
