"""The ``emgkey`` command. Each top-level folder contributes its own subcommands.

A folder's ``cli.py`` exposes ``register(subparsers)``; it must import nothing
heavy at module level (torch, onnx) so that ``emgkey --help`` and the device-side
commands work in a torch-free install.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from emgkey import __version__

# Subcommand providers, in the order they appear in --help.
_PROVIDERS: tuple[str, ...] = (
    "emgkey.firmware_sim.cli",
    "emgkey.train.cli",
    "emgkey.edge_runtime.cli",
    "emgkey.edge_runtime.calibrate_cli",
    "emgkey.export.cli",
    "emgkey.benchmarks.cli",
    "emgkey.demo",
)


class CliError(Exception):
    """An error whose message is the whole story for the user (no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emgkey", description="sEMG keystroke decoding on edge devices")
    parser.add_argument("--version", action="version", version=f"emgkey {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _PROVIDERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A provider whose module is absent from this install (e.g. a device
            # bundle without training code) simply contributes no commands.
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        rc = args.func(args)
    except (CliError, ValueError, FileNotFoundError) as exc:
        print(f"emgkey: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emgkey: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
