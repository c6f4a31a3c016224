"""``emgkey calibrate``: a minute of prompted typing turns the generic bundle into a user's profile.

    emgkey calibrate --bundle B --user NAME --source URL [--seconds 60] [--strategy stats|finetune|auto]
    emgkey calibrate --bundle B --user NAME --source "sim://?user=3&speed=max"     # a simulated new user types
    emgkey calibrate --bundle B --user NAME --source serial:///dev/ttyUSB0
    emgkey calibrate --bundle B --user NAME --recording FILE.npz                    # re-run on saved data
    emgkey calibrate --bundle B --user NAME --list | --rollback | --activate ID

Prompts come from the prompt corpus (never the LM text) and are shown on the terminal; the prompted text
is the CTC target (typos tolerated). The profile is written next to the bundle
(``B/profiles/NAME/<id>/``) and activated only if it beats the current model on the held-out prompts;
``emgkey run --bundle B --user NAME`` then applies it. See docs/calibration.md. Nothing heavy is imported
here: strategy 2 imports torch only when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="calibrate a bundle to a new user with a minute of prompted typing")
    p.add_argument("--bundle", required=True, help="base bundle folder; profiles are stored in BUNDLE/profiles/")
    p.add_argument("--user", required=True, help="user name (letters, digits, '_', '.', '-')")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--source", default=None, help="serial://PORT, sim://?..., replay://FILE, brainflow://BOARD")
    what.add_argument("--recording", default=None, help="calibrate from a saved recording (recording.npz)")
    what.add_argument("--list", action="store_true", help="list the user's profiles and exit")
    what.add_argument("--rollback", action="store_true", help="re-activate the profile active before the current one")
    what.add_argument("--activate", default=None, metavar="ID", help="activate an accepted profile")
    p.add_argument("--seconds", type=float, default=60.0, help="prompted typing to record (default 60)")
    p.add_argument("--strategy", choices=("stats", "finetune", "auto"), default="auto")
    p.add_argument("--checkpoint", default=None, help="strategy 2: the base model's checkpoint (default: manifest's)")
    p.add_argument("--shifts", default=None, help="electrode shifts to try per band, e.g. --shifts=-2,-1,0,1,2")
    p.add_argument("--heldout", type=float, default=0.25, help="fraction of the prompts held out (default 0.25)")
    p.add_argument("--min-fit-seconds", type=float, default=4.0, help="refuse less prompted typing than this")
    p.add_argument("--format", choices=("onnx", "tflite"), default="onnx", help="engine for the held-out comparison")
    p.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--sim-typist",
        default=None,
        metavar="user=U&seed=S",
        help="the source is the simulator's firmware (e.g. on a pty) and this simulated user types the prompts",
    )
    p.add_argument("--prompt-seed", type=int, default=0, help="which prompts (with the user name)")
    p.add_argument("--no-activate", action="store_true", help="write the profile but do not activate it")
    p.add_argument(
        "--no-keys", action="store_true", help="skip step 3 (key prototypes) even when the bundle has a key prior"
    )
    p.add_argument("--no-keep-recording", action="store_true", help="do not store the recording in the profile")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from emgkey.cli import CliError
    from emgkey.errors import EmgkeyError

    try:
        return _calibrate(args)
    except EmgkeyError as exc:  # typed errors say what to do: a message, not a traceback
        raise CliError(str(exc)) from exc


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _calibrate(args: argparse.Namespace) -> int:
    from emgkey.bundle import load_bundle
    from emgkey.edge_runtime.profile_store import ProfileStore

    bundle = load_bundle(args.bundle)
    store = ProfileStore(bundle.root, args.user, manifest=bundle.manifest)
    if args.list:
        return _list(store, args.json)
    if args.rollback:
        prof = store.rollback()
        _say(f"user {args.user}: now running " + (f"profile {prof.id}" if prof else "the plain bundle"))
        return 0
    if args.activate:
        store.activate(args.activate)
        _say(f"user {args.user}: profile {args.activate} activated")
        return 0
    if args.source is None and args.recording is None:
        from emgkey.cli import CliError

        raise CliError("give --source URL (record now) or --recording FILE (saved data), or --list/--rollback")

    from emgkey.edge_runtime.calib_data import CalibrationRecording, DataLimits
    from emgkey.edge_runtime.calib_run import CalibrationOptions, calibrate_recording
    from emgkey.edge_runtime.calibrate import StatsConfig

    shifts = tuple(int(s) for s in args.shifts.split(",")) if args.shifts else None
    options = CalibrationOptions(
        strategy=args.strategy,
        stats=StatsConfig(shifts=shifts),
        limits=DataLimits(min_fit_s=args.min_fit_seconds, heldout_fraction=args.heldout),
        precision=args.precision,
        format=args.format,
        threads=args.threads,
        checkpoint=args.checkpoint,
        activate=not args.no_activate,
        keep_recording=not args.no_keep_recording,
        keys=not args.no_keys,
    )
    if args.strategy == "finetune":  # before asking anyone to type for a minute
        from emgkey.edge_runtime.calib_run import finetune_available

        ok, why = finetune_available(bundle, args.checkpoint)
        if not ok:
            from emgkey.cli import CliError

            raise CliError(f"strategy finetune cannot run: {why}")
    if args.recording:
        rec = CalibrationRecording.load(args.recording)
    else:
        rec = _record(args, bundle)
    _say(f"recorded {rec.seconds:.1f} s, {len(rec.spans)} complete prompts; calibrating ({args.strategy})...")
    out = calibrate_recording(bundle, args.user, rec, options)
    for line in out.summary_lines():
        _say(line)
    if args.json:
        print(json.dumps(out.profile.to_dict() | {"activated": out.activated}, indent=2))
    return 0


def _record(args: argparse.Namespace, bundle: Any) -> Any:
    from emgkey.edge_runtime.calib_data import PromptChoice
    from emgkey.edge_runtime.calib_record import (
        Prompter,
        TerminalPrompter,
        TimelinePrompter,
        record,
        sim_schedule,
        sim_url_with_prompts,
        typist_schedule,
    )
    from emgkey.edge_runtime.sources import SourceURL, open_source

    m = bundle.manifest
    choice = PromptChoice.for_session(args.seconds, seed=args.prompt_seed)  # phrases under 30 s
    prompts = choice.choose(choice.enough_for(args.seconds), salt=args.user)
    url = args.source
    is_sim = SourceURL.parse(url).scheme == "sim"
    if is_sim:
        url = sim_url_with_prompts(url, prompts, args.seconds)
    source = open_source(url, profile=m.profile)
    prompter: Prompter
    if is_sim:
        prompter = TimelinePrompter(sim_schedule(source), prompts)
        _say(f"simulated user {getattr(source, 'user', '?')} types the prompts ({args.seconds:.0f} s)")
    elif args.sim_typist:
        prompter = TimelinePrompter(typist_schedule(m.profile, args.sim_typist, prompts, args.seconds), prompts)
        _say(f"the simulated armband's user ({args.sim_typist}) types the prompts ({args.seconds:.0f} s)")
    else:
        prompter = TerminalPrompter(prompts, m.profile.sample_rate_hz)
        how = "press Enter after each one" if prompter.interactive else "the next one comes when the time is up"
        _say(f"type each prompt as it appears, then Enter ({how}); {args.seconds:.0f} s in all")

    def display(i: int, text: str) -> None:
        print(f"[{i:2d}] {text}", flush=True)

    return record(source, prompter, args.seconds, display=display, expect_profile=m.profile)


def _list(store: Any, as_json: bool) -> int:
    nan = float("nan")
    active = store.active_id()
    profiles = store.profiles()
    if as_json:
        print(json.dumps([p.to_dict() | {"active": p.id == active} for p in profiles], indent=2))
        return 0
    if not profiles:
        print(f"user {store.user}: no profiles (running the plain bundle)")
        return 0
    for p in profiles:
        h = p.metrics.get("candidates", {}).get(p.strategy, {}).get("heldout", {})
        cur = p.metrics.get("current", {})
        state = "ACTIVE" if p.id == active else ("accepted" if p.accepted else "rejected")
        print(
            f"{p.id}  {state:<8}  {p.strategy:<8}  held-out NLL/key {cur.get('nll', nan):.3f} -> "
            f"{h.get('nll', nan):.3f}, CER {cur.get('cer', nan):.1f} -> {h.get('cer', nan):.1f}"
        )
    if active is None:
        print("(no profile active: the plain bundle runs)")
    return 0
