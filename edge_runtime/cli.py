"""``emgkey run`` (live decoding on the device) and ``emgkey lm`` (character LM build / eval).

    emgkey run --bundle BUNDLE --source serial:///dev/ttyUSB0 [--decoder greedy|beam --lm LM.arpa]
               [--threads 1] [--format onnx|tflite] [--precision int8|fp32] [--jsonl events.jsonl]
               [--keyboard final|partial] [--endpoint rules.json] [--max-seconds S]
    emgkey run --bundle BUNDLE --source "sim://?minutes=1&speed=max" --decoder beam --lm lm6.arpa
    emgkey run --bundle BUNDLE --user NAME --source ...     # with NAME's calibration profile (emgkey calibrate)
    emgkey lm build --order 6 --out lm6.arpa [--prune 0 0 0 0 1 1] [--text corpus.txt]
    emgkey lm eval --lm lm6.arpa [--backend auto|kenlm|python]         # per-character perplexity on the prompts

``run`` prints final text on stdout (and the partial line when stdout is a terminal), JSON-lines events
with ``--jsonl``, and a status line on stderr (samples/s, dropped packets, gaps, latency p50/p99).
SIGINT / SIGTERM stop it cleanly: the source stops, queued frames are decoded, the last segment is
finalised and every output is flushed. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from emgkey import charset

log = logging.getLogger("emgkey.run")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="decode a live sEMG stream to text with a model bundle (device side)")
    p.add_argument("--bundle", required=True, help="bundle folder (manifest.json + model files)")
    p.add_argument("--source", required=True, help="serial://PORT, sim://?..., replay://FILE, brainflow://BOARD")
    p.add_argument("--decoder", choices=("greedy", "beam"), default="greedy")
    p.add_argument("--lm", default=None, help="character n-gram LM (ARPA) for --decoder beam")
    p.add_argument("--lm-backend", choices=("auto", "kenlm", "python"), default="auto")
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--lm-weight", type=float, default=None)
    p.add_argument("--insertion-bonus", type=float, default=None)
    p.add_argument("--format", choices=("onnx", "tflite"), default="onnx")
    p.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads for the model (default 1)")
    p.add_argument("--jsonl", default=None, help="append JSON-lines events (partial/final/status) to this file")
    p.add_argument("--keyboard", choices=("final", "partial"), default=None, help="type into a uinput keyboard")
    p.add_argument("--endpoint", default=None, help='endpoint rules JSON file: {"rules": [...]} (see docs/runtime.md)')
    p.add_argument("--no-endpoint", action="store_true", help="never end a segment on silence")
    p.add_argument("--block-ms", type=float, default=20.0, help="samples read per loop iteration (ms)")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this much stream time")
    p.add_argument(
        "--status",
        choices=("auto", "line", "log", "off"),
        default="auto",
        help="status on stderr: live line (terminal), periodic log lines, or none",
    )
    p.add_argument("--no-verify-hashes", action="store_true", help="skip sha256 checks of the bundle's files")
    p.add_argument("--user", default=None, help="apply this user's active calibration profile (emgkey calibrate)")
    p.add_argument("--profile", default=None, help="with --user: this profile id instead of the active one, or 'base'")
    p.add_argument("--no-keys", action="store_true", help="with --user: do not apply the profile's key rescoring")
    p.add_argument(
        "--learn-keys",
        action="store_true",
        help="with --user: the profile's keys learn from the presses they name while you type (experimental)",
    )
    p.set_defaults(func=_run)

    lm = sub.add_parser("lm", help="character n-gram language model: build an ARPA file, evaluate it")
    lsub = lm.add_subparsers(dest="lm_command", metavar="LM_COMMAND")
    lsub.required = True
    b = lsub.add_parser("build", help="count the LM text and write an interpolated modified Kneser-Ney ARPA")
    b.add_argument("--order", type=int, default=6)
    b.add_argument("--out", required=True, help="ARPA file to write")
    b.add_argument(
        "--prune",
        type=int,
        nargs="*",
        default=[],
        help="per order n: drop n-grams seen at most this often (non-decreasing; unigrams 0)",
    )
    b.add_argument("--text", default=None, help="one sentence per line (default: emgkey's LM text corpus)")
    b.add_argument("--no-eval", action="store_true", help="skip the perplexity on the typing prompts")
    b.set_defaults(func=_lm_build)
    e = lsub.add_parser("eval", help="per-character perplexity of an ARPA LM on the typing prompts (held out)")
    e.add_argument("--lm", required=True)
    e.add_argument("--backend", choices=("auto", "kenlm", "python"), default="auto")
    e.add_argument("--text", default=None, help="one sentence per line (default: the typing prompts)")
    e.set_defaults(func=_lm_eval)


# ---------------------------------------------------------------------------------------------------------------------
# emgkey lm
# ---------------------------------------------------------------------------------------------------------------------


def lm_extra_chars() -> str:
    """Every key that types a character (not ⌫ or ⇧), so each has a smoothed probability of its own."""
    skip = {charset.BACKSPACE, charset.SHIFT}
    return "".join(c for c in (chr(u) for u in charset.UNICODES) if c not in skip)


def _read_lines(path: str) -> list[str]:
    return [line.rstrip("\n") for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _lm_build(args: argparse.Namespace) -> int:
    from emgkey.corpus import load_lm_text, load_prompts
    from emgkey.edge_runtime.lm import ArpaLM, LMBuildConfig, build_arpa, perplexity

    cfg = LMBuildConfig(order=args.order, prune=tuple(args.prune), extra_chars=lm_extra_chars())
    t0 = time.perf_counter()
    sentences = _read_lines(args.text) if args.text else list(load_lm_text())  # already canonical (corpus.py)
    tables = build_arpa(args.out, sentences, cfg)
    took = time.perf_counter() - t0
    size = Path(args.out).stat().st_size
    counts = " ".join(f"{n}:{len(k)}" for n, k in enumerate(tables.keys, start=1))
    print(f"wrote {args.out}: order {cfg.order}, n-grams {counts}, {size / 1e6:.1f} MB, {took:.1f} s")
    if not args.no_eval:
        ppl = perplexity(ArpaLM(tables), load_prompts())
        print(f"per-character perplexity on the typing prompts (disjoint from the LM text): {ppl:.3f}")
    return 0


def _lm_eval(args: argparse.Namespace) -> int:
    from emgkey.corpus import load_prompts
    from emgkey.edge_runtime.lm import load_lm, perplexity

    lm = load_lm(args.lm, args.backend)
    texts = _read_lines(args.text) if args.text else list(load_prompts())
    t0 = time.perf_counter()
    ppl = perplexity(lm, texts)
    n = sum(len(t) + 1 for t in texts)
    took = time.perf_counter() - t0
    print(
        f"{args.lm} ({type(lm).__name__}, order {lm.order}): per-character perplexity {ppl:.3f} on {len(texts)} "
        f"sentences; {n / took:,.0f} queries/s"
    )
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# emgkey run
# ---------------------------------------------------------------------------------------------------------------------


def make_decoder_factory(decoder: str, **kw: Any) -> Callable[[], Any]:
    """See ``emgkey.edge_runtime.recognizer.make_decoder_factory`` (imported lazily: --help stays light)."""
    from emgkey.edge_runtime.recognizer import make_decoder_factory as factory

    return factory(decoder, **kw)


class _StatusLine:
    """Samples/s, dropped packets, gaps and latency on stderr: a live line on a terminal, else log lines."""

    def __init__(self, mode: str, every_s: float = 0.5) -> None:
        if mode == "auto":
            mode = "line" if sys.stderr.isatty() else "log"
        self.mode = mode
        self.every_s = every_s if mode == "line" else 10.0
        self._last = time.monotonic()
        self._last_samples = 0
        self._width = 0

    def due(self) -> bool:
        return self.mode != "off" and time.monotonic() - self._last >= self.every_s

    def show(self, counters: dict[str, Any], samples: int) -> None:
        now = time.monotonic()
        rate = (samples - self._last_samples) / max(now - self._last, 1e-9)
        self._last, self._last_samples = now, samples
        c = counters
        text = (
            f"[{c['stream_time_s']:7.1f} s] {rate:6.0f} samples/s | dropped pkts {c.get('dropped_packets', 0)} "
            f"gaps {c.get('gaps', 0)} | model {c.get('model_ms_p50', math.nan):.2f}/"
            f"{c.get('model_ms_p99', math.nan):.2f} ms "
            f"e2e {c.get('e2e_ms_p50', math.nan):.0f}/{c.get('e2e_ms_p99', math.nan):.0f} ms (p50/p99) | "
            f"seg {c.get('segments', 0)}"
        )
        if self.mode == "line":
            sys.stderr.write("\r" + text.ljust(self._width))
            self._width = len(text)
            sys.stderr.flush()
        elif self.mode == "log":
            log.info(text)

    def close(self) -> None:
        if self.mode == "line" and self._width:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _counters(stream: Any, source: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"stream_time_s": stream.time_s, **stream.stats.as_dict()}
    st = source.stats
    c.update(
        dropped_packets=st.dropped_packets,
        gaps=st.gaps,
        samples_missing=st.samples_missing,
        buffer_dropped=st.buffer_dropped,
        crc_errors=st.crc_errors,
        reconnects=st.reconnects,
    )
    return c


def _run(args: argparse.Namespace) -> int:
    from emgkey.cli import CliError
    from emgkey.errors import EmgkeyError

    try:
        return _run_stream(args)
    except EmgkeyError as exc:  # typed errors say what to do: a message, not a traceback
        raise CliError(str(exc)) from exc


def _run_stream(args: argparse.Namespace) -> int:
    from emgkey.bundle import BundleError, load_bundle
    from emgkey.edge_runtime.endpoint import EndpointConfig
    from emgkey.edge_runtime.engines import open_engine
    from emgkey.edge_runtime.recognizer import Recognizer, RecognizerConfig
    from emgkey.edge_runtime.sinks import JsonlSink, KeyboardSink, MultiSink, Sink, StdoutSink, TextTracker
    from emgkey.edge_runtime.sources import GapEvent, RestartEvent, open_source
    from emgkey.errors import EmgkeyError

    bundle = load_bundle(args.bundle, verify_hashes=not args.no_verify_hashes)
    normalization = None
    key_profile = None
    if args.user is not None:  # the user's calibration: an input map, and for strategy 2 a bundle of its own
        from emgkey.edge_runtime.profile_store import load_key_profile, open_for_run

        bundle, calibration = open_for_run(bundle, args.user, args.profile)
        if calibration is not None:
            normalization = calibration.normalization
            key_profile = None if args.no_keys else load_key_profile(calibration)
            log.info(
                "user %s: calibration profile %s (%s%s)",
                args.user,
                calibration.id,
                calibration.strategy,
                ", key rescoring" if key_profile is not None else "",
            )
    elif args.profile is not None:
        raise BundleError("no_user", "--profile selects one of a user's profiles: give --user too")
    m = bundle.manifest
    endpoint = EndpointConfig()
    if args.endpoint:
        endpoint = EndpointConfig.from_dict(json.loads(Path(args.endpoint).read_text()))
    if args.no_endpoint:
        endpoint = EndpointConfig(rules=endpoint.rules, enabled=False)
    engine = open_engine(bundle, precision=args.precision, format=args.format, threads=args.threads)
    factory = make_decoder_factory(
        args.decoder,
        lm_path=args.lm,
        lm_backend=args.lm_backend,
        beam_size=args.beam_size,
        lm_weight=args.lm_weight,
        insertion_bonus=args.insertion_bonus,
        blank=int(m.charset.get("blank", charset.BLANK)),
        num_classes=int(m.streaming.log_probs.shape[-1]),
    )
    if key_profile is not None:
        if args.decoder != "greedy":
            log.warning("the profile's key rescoring runs with --decoder greedy only; decoding without it")
        else:
            from emgkey.edge_runtime.keyproto import key_decoder_factory

            factory = key_decoder_factory(key_profile, m, adapt=args.learn_keys)
    recognizer = Recognizer(engine, m.features, factory, m, RecognizerConfig(endpoint=endpoint), normalization)
    source = open_source(args.source, profile=m.profile)

    sinks: list[Sink] = [StdoutSink()]
    if args.jsonl:
        sinks.append(JsonlSink(args.jsonl))
    if args.keyboard:
        sinks.append(KeyboardSink(mode=args.keyboard))
    sink = MultiSink(sinks)
    status = _StatusLine(args.status)

    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()
        # A second signal is not ignored: the previous handler (default: end the process) takes it.
        sig = signal.Signals(signum)
        signal.signal(sig, previous.get(sig, signal.SIG_DFL))

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)

    stream = recognizer.create_stream()
    tracker = TextTracker()
    failure: EmgkeyError | None = None

    def latency() -> dict[str, float]:
        lat = {}
        for stage in ("features", "model", "decode", "e2e"):
            p50, p99 = stream.stats.percentiles_ms(stage)
            lat[f"{stage}_p50"], lat[f"{stage}_p99"] = p50, p99
        return lat

    def publish(final: bool) -> None:
        result = stream.finalize() if final else stream.result()
        event = tracker.update(result, stream.time_s, latency)  # percentiles only when there is an event
        if event is not None:
            sink.emit(event)
        if final:
            stream.reset()

    try:
        source.start()
        if source.profile.name != m.profile.name:
            raise BundleError(
                "profile_mismatch",
                f"the source is a {source.profile.name!r} device, the bundle is for {m.profile.name!r}",
            )
        block = max(1, round(args.block_ms / 1000.0 * source.sample_rate_hz))
        while not stop.is_set() and not source.ended:
            try:
                chunk = source.read_chunk(block, timeout=0.25)
            except EmgkeyError as exc:  # the device is gone: keep what was decoded, then report
                failure = exc
                break
            for ev in chunk.events:
                if isinstance(ev, GapEvent):
                    stream.accept_gap(ev.n_missing)
                elif isinstance(ev, RestartEvent):
                    stream.accept_restart()
                sink.source_event(ev, source.sample_rate_hz)
            if chunk.n:
                stream.accept(chunk.samples)
            while stream.ready():
                recognizer.step(stream)
                if stream.is_endpoint():
                    publish(final=True)
            publish(final=False)
            if status.due():
                counters = _counters(stream, source)
                status.show(counters, stream.stats.samples)
                sink.status(counters)
            if args.max_seconds is not None and stream.time_s >= args.max_seconds:
                break
        # Shut down: stop acquisition, decode what is queued, finalise the last segment, flush outputs.
        if failure is None:
            source.stop()
        stream.input_finished()
        while stream.ready():
            recognizer.step(stream)
        publish(final=True)
        counters = _counters(stream, source)
        sink.status({**counters, "final": True})
        status.show(counters, stream.stats.samples)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        status.close()
        try:
            source.close()
        finally:
            sink.close()
    if failure is not None:
        raise failure
    return 0
