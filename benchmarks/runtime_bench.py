"""Edge runtime benchmark: compute per chunk, algorithmic latency, memory, streamed vs offline CER, per bundle.

    python -m emgkey.benchmarks.runtime_bench --out runs/bench_runtime.json
        # no --bundle: builds an untrained armband8 bundle of every student (gru, bilstm, tcn) with
        # emgkey.export.bundle_writer (needs the export extras: torch), then benchmarks them
    python -m emgkey.benchmarks.runtime_bench --bundle B1 [B2 ...] --out OUT.json \
        [--format onnx] [--precision int8] [--lm auto|none|LM.arpa] [--data SESSION.hdf5 ...] [--minutes 1]
    python -m emgkey.benchmarks.runtime_bench --toy --out OUT.json                  # torch-free pipeline check
    python -m emgkey.benchmarks.runtime_bench --bundle B --soak-hours 1 --out OUT.json  # bounded memory

Writes ``OUT.json`` and ``OUT.md``. What it measures, per bundle, at ``--threads`` (1 by default, as on a device):

- ``model_ms_per_chunk``: wall time of one engine call on one chunk of real features, p50/p99, for every
  streaming file of the bundle verified on this machine's runtimes (ONNX / TFLite, fp32 / int8);
- ``latency``: how late an emission can be, by construction, for the selected file: the chunk's oldest
  sample waits ``(chunk_frames - 1) * hop + n_fft`` samples for the chunk to fill, plus the model's look-ahead
  (``output_delay_frames``), plus the measured p99 of one model call and the decode time of one chunk;
- ``runtime_process``: ``emgkey run`` itself (a fresh process: bundle, engine, LM, decoder, source, sinks)
  replaying the first recording as fast as possible: its resident memory (sampled ``VmRSS`` and the kernel's
  peak ``VmHWM``), real-time factor, and whether any torch library was mapped into it;
- ``decoding``: streamed CER (the recognizer fed uneven sample blocks, as a serial link gives) against the
  offline CER of the same bundle (the offline graph over the whole recording when it has a dynamic time axis,
  else the streaming graph over offline features), greedy and beam(+LM); they should agree within 0.5 point;
- ``soak`` (``--soak-hours``): RSS of ``emgkey run`` sampled over hours of replayed signal, without pacing.

EMG comes from ``--data`` session files (emg2qwerty-format HDF5 with ground truth) or, by default, from the
simulator for the bundle's device profile: **simulated data**; the report says which. Untrained bundles emit
garbage (CER >= 100 %): their CERs show streamed == offline, not accuracy. Compute and memory are real.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from emgkey import charset
from emgkey.bundle import Bundle, load_bundle
from emgkey.features import compute_features
from emgkey.metrics import EditCounts, edit_counts
from emgkey.profiles import DeviceProfile

log = logging.getLogger("emgkey.runtime_bench")

STUDENTS = ("gru", "bilstm", "tcn")
SIMULATED = "simulated (emgkey.firmware_sim): not real-data CER"

# ---------------------------------------------------------------------------------------------------------------------
# Recordings
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Recording:
    name: str
    emg: np.ndarray  # (T, n_bands, C) float32 microvolts
    target: str  # keys as typed, ⌫ included (emg2qwerty's CER target)
    path: Path | None = None  # a session file holding it, for replay:// (None: written on demand)


def _sim_recordings(profile: DeviceProfile, minutes: float, users: int, seed: int, work: Path) -> list[Recording]:
    from emgkey.firmware_sim.simulate import simulate_session
    from emgkey.labels import LabelData
    from emgkey.session import write_session

    out = []
    work.mkdir(parents=True, exist_ok=True)
    for user in range(users):
        s = simulate_session(profile, user_id=user, session_idx=0, minutes=minutes, seed=seed)
        path = work / f"sim_user{user}_{profile.name}.hdf5"
        write_session(
            path,
            profile=profile,
            timestamps=s.timestamps,
            emg=s.emg,
            keystrokes=s.keystrokes,
            prompts=s.prompts,
            session_name=s.session_name,
            user=s.user,
            extra_attrs={"simulated": True},
        )
        target = LabelData.from_keystrokes(s.keystrokes).label_str
        out.append(Recording(f"sim_user{user}", s.emg_uv(), target, path))
    return out


def _file_recordings(paths: Sequence[str], profile: DeviceProfile) -> list[Recording]:
    from emgkey.session import SessionFile

    out = []
    for p in paths:
        with SessionFile(p) as f:
            if f.profile.name != profile.name:
                raise SystemExit(f"{p} was recorded with {f.profile.name!r}, the bundle is for {profile.name!r}")
            out.append(Recording(Path(p).stem, f.read(), f.ground_truth().label_str, Path(p)))
    return out


def write_replay(path: Path, profile: DeviceProfile, emg_uv: np.ndarray, start_unix: float = 1.7e9) -> Path:
    """``emg_uv`` (T, n_bands, C) as a session file ``replay://`` can read (no keystrokes)."""
    from emgkey.session import write_session

    emg: np.ndarray = emg_uv.astype(np.float32)
    if profile.sample_format == "int16":
        emg = np.clip(np.rint(emg_uv / profile.adc_scale_uv_per_count), -32767, 32767).astype(np.int16)
    ts = start_unix + np.arange(len(emg), dtype=np.float64) / profile.sample_rate_hz
    return write_session(
        path,
        profile=profile,
        timestamps=ts,
        emg=emg,
        keystrokes=[],
        prompts=[],
        session_name=path.stem,
        user="bench",
        chunk_rows=int(profile.sample_rate_hz),
    )


def _percentiles_ms(xs: Sequence[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "p99": float("nan"), "mean": float("nan"), "n": 0}
    a = np.asarray(xs, dtype=np.float64) * 1e3
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "n": len(a),
    }


# ---------------------------------------------------------------------------------------------------------------------
# `emgkey run` as a separate process, its memory sampled from outside
# ---------------------------------------------------------------------------------------------------------------------


def emgkey_command() -> list[str]:
    """``emgkey`` of this interpreter's install, as its console script runs it.

    Not ``python -m emgkey.cli``: that runs the module as ``__main__``, a second copy whose ``CliError`` is not
    the one the subcommands raise, so their clean error messages would come out as tracebacks.
    """
    return [sys.executable, "-c", "import sys; from emgkey.cli import main; sys.exit(main())"]


def _proc_status_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a live process in MB, NaN when it is gone."""
    rss = hwm = float("nan")
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return rss, hwm


def _maps_torch(pid: int) -> bool | None:
    """Whether a torch shared library is mapped into the process (None when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return any("libtorch" in line or "/torch/" in line for line in f)
    except OSError:
        return None


@dataclass
class RunOutput:
    """What an ``emgkey run`` process did: exit code, outputs, JSON-lines events, memory over time."""

    returncode: int
    stdout: str
    stderr: str
    events: list[dict[str, Any]]
    rss: list[tuple[float, float]]  # (seconds since start, VmRSS MB)
    peak_mb: float  # VmHWM, the last value seen while it ran
    torch_loaded: bool | None
    wall_s: float

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind]

    @property
    def final_status(self) -> dict[str, Any] | None:
        st = [e for e in self.of_type("status") if e.get("final")]
        return st[-1] if st else None

    @property
    def decoded(self) -> list[tuple[str, float]]:
        """Every decoded key (raw, ⌫ kept) with its time on the stream clock, over all final segments."""
        out: list[tuple[str, float]] = []
        for e in self.of_type("final"):
            out.extend(zip(e["raw"], e["label_times_s"]))
        return out


def run_emgkey(
    args: Sequence[str],
    *,
    command: Sequence[str] | None = None,
    jsonl: Path | None = None,
    timeout_s: float = 600.0,
    sample_every_s: float = 0.25,
    on_tick: Callable[[subprocess.Popen[bytes], float], None] | None = None,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
) -> RunOutput:
    """Run ``emgkey ARGS`` to its end, sampling its RSS; ``on_tick(proc, elapsed_s)`` runs at every sample.

    stdout/stderr go to temporary files (a pipe nobody reads would block a long run). ``jsonl``, if given,
    is read back as events. Raises ``TimeoutError`` (after killing it) when it outlives ``timeout_s``.
    """
    cmd = [*(command or emgkey_command()), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    rss: list[tuple[float, float]] = []
    peak = float("nan")
    torch_loaded: bool | None = None
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        last_maps = -1e9
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - t0
                if elapsed > timeout_s:
                    raise TimeoutError(f"{' '.join(cmd)} ran longer than {timeout_s} s")
                r, h = _proc_status_mb(proc.pid)
                if r == r:  # not NaN: still alive
                    rss.append((elapsed, r))
                    peak = h
                if elapsed - last_maps >= 2.0:
                    seen = _maps_torch(proc.pid)
                    if seen is not None:
                        torch_loaded = bool(torch_loaded) or seen
                    last_maps = elapsed
                if on_tick is not None:
                    on_tick(proc, elapsed)
                time.sleep(sample_every_s)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    events: list[dict[str, Any]] = []
    if jsonl is not None and jsonl.exists():
        events = [json.loads(line) for line in jsonl.read_text(encoding="utf-8").splitlines() if line.strip()]
    return RunOutput(proc.returncode, stdout, stderr, events, rss, peak, torch_loaded, wall)


# ---------------------------------------------------------------------------------------------------------------------
# Bundles of every student (torch; run in a child process so the benchmark itself never imports torch)
# ---------------------------------------------------------------------------------------------------------------------


def build_student_bundles(
    out_dir: Path,
    students: Sequence[str] = STUDENTS,
    profile: str = "armband8",
    size: str = "tiny",
    formats: Sequence[str] = ("onnx",),
    seed: int = 0,
) -> dict[str, Path]:
    """Untrained (random-weight) checkpoints of each student, exported with ``export.bundle_writer``.

    Returns ``{student: bundle}``; bundles already there are reused. Needs torch (the export extras).
    """
    import torch

    from emgkey.export.bundle_writer import BundleOptions, write_bundle
    from emgkey.firmware_sim.dataset import simulate_dataset
    from emgkey.profiles import get_profile
    from emgkey.train.checkpoint import save_untrained_checkpoint

    torch.set_num_threads(1)
    prof = get_profile(profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / f"data_{profile}"
    if not (data / "splits" / "generic.yaml").exists():
        simulate_dataset(data, prof, n_users=3, sessions_per_user=2, minutes=0.25, seed=seed, progress=False)
    split = data / "splits" / "generic.yaml"
    bundles: dict[str, Path] = {}
    for name in students:
        bundle = out_dir / f"{name}_{profile}_{size}"
        if not (bundle / "manifest.json").exists():
            ckpt = save_untrained_checkpoint(out_dir / f"{name}_{profile}_{size}.pt", name, prof, size, seed)
            opts = BundleOptions(
                formats=tuple(formats),
                onnx_methods=("ort_static", "ort_dynamic"),
                calibration_windows=4,
                calibration_feeds=16,
                selection_windows=3,
                reference_windows=3,
                window_s=2.0,
            )
            log.info("exporting %s (%s, untrained) -> %s", name, size, bundle)
            write_bundle(ckpt, data, split, bundle, opts)
        bundles[name] = bundle
    return bundles


_BUILD = """
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
from emgkey.benchmarks.runtime_bench import build_student_bundles
a = json.loads(sys.argv[1])
b = build_student_bundles(Path(a["out"]), a["students"], a["profile"], a["size"], a["formats"])
print(json.dumps({k: str(v) for k, v in b.items()}))
"""


def _build_bundles_in_child(args: argparse.Namespace, work: Path) -> list[str]:
    spec = {
        "out": str(work),
        "students": args.students,
        "profile": args.profile,
        "size": args.size,
        "formats": args.formats,
    }
    out = subprocess.run(
        [sys.executable, "-c", _BUILD, json.dumps(spec)], stdout=subprocess.PIPE, text=True, check=True
    )
    built: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    return [built[s] for s in args.students]


# ---------------------------------------------------------------------------------------------------------------------
# One bundle
# ---------------------------------------------------------------------------------------------------------------------


def _offline_emissions(
    bundle: Bundle, fmt: str, precision: str, threads: int, emg: np.ndarray
) -> tuple[np.ndarray, str]:
    """Whole-recording emissions: the offline graph if it takes any length, else the streaming graph chunked."""
    from emgkey.edge_runtime.engines import open_engine, open_offline_engine, run_streaming
    from emgkey.edge_runtime.recognizer import FeatureNormalization

    m = bundle.manifest
    feats = compute_features(emg, m.features)  # (F, nb, C, n_freq)
    frame_shape = (m.profile.n_bands, m.profile.channels_per_band, m.features.n_freq)
    norm = FeatureNormalization.from_manifest(m.normalization, frame_shape, m.profile.adc_scale_uv_per_count)
    feats = norm(feats)[:, None]  # (F, 1, nb, C, n_freq)
    offline = [f for f in m.files if f.graph == "offline" and (f.format, f.precision) == (fmt, precision)]
    axis = (m.model.get("offline_graph") or {}).get("time_axis", "dynamic")
    if offline and fmt == "onnx" and axis == "dynamic":
        engine = open_offline_engine(bundle, precision=precision, threads=threads)
        return engine.run(feats), f"offline graph ({precision})"
    why = f"the offline graph has a {axis} time axis" if offline else f"no offline {fmt} {precision} graph"
    stream_engine = open_engine(bundle, precision=precision, format=fmt, threads=threads)
    return run_streaming(stream_engine, feats), f"streaming graph over offline features ({why})"


def _time_files(bundle: Bundle, feats: np.ndarray, threads: int, chunks: int) -> dict[str, Any]:
    """Per-chunk wall time of every streaming file this machine can run, on real features, state carried."""
    from emgkey.bundle import BundleError
    from emgkey.edge_runtime.engines import open_engine

    m = bundle.manifest
    k = m.streaming.chunk_frames
    n = max(1, min(chunks, len(feats) // k))
    out: dict[str, Any] = {}
    for f in m.files:
        if f.graph != "streaming":
            continue
        key = f"{f.format}/{f.precision}"
        try:
            engine = open_engine(bundle, precision=f.precision, format=f.format, threads=threads)
        except (BundleError, ImportError) as exc:
            out[key] = {"skipped": str(exc)}
            continue
        state = engine.init_state()
        times = []
        for i in range(n + 20):  # 20 warm-up calls
            x = feats[(i % n) * k : (i % n + 1) * k]
            if len(x) < k:
                x = np.resize(feats[:k], (k, *feats.shape[1:]))
            t0 = time.perf_counter()
            _, state = engine.run(x, state)
            if i >= 20:
                times.append(time.perf_counter() - t0)
        out[key] = {**_percentiles_ms(times), "runtime": engine.runtime, "file": f.path, "bytes": f.bytes}
    return out


def _pick_file(bundle: Bundle, fmt: str, precision: str) -> tuple[str, str, str]:
    """The requested (format, precision), else fp32 of the format: (format, precision, note)."""
    have = {(f.format, f.precision) for f in bundle.manifest.files if f.graph == "streaming"}
    if (fmt, precision) in have:
        return fmt, precision, ""
    for alt in ((fmt, "fp32"), ("onnx", precision), ("onnx", "fp32")):
        if alt in have:
            return alt[0], alt[1], f"no {fmt} {precision} file in the bundle; used {alt[0]} {alt[1]}"
    raise SystemExit(f"{bundle.root}: no streaming model file to run (has {sorted(have)})")


def bench_bundle(path: str | Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from emgkey.edge_runtime.cli import make_decoder_factory
    from emgkey.edge_runtime.engines import open_engine

    bundle = load_bundle(path)
    m = bundle.manifest
    sig, fc = m.streaming, m.features
    fmt, precision, note = _pick_file(bundle, args.format, args.precision)
    engine = open_engine(bundle, precision=precision, format=fmt, threads=args.threads)
    name = str(m.model.get("name"))
    log.info("bundle %s (%s): %s %s on %s, %d thread(s)", path, name, fmt, precision, engine.runtime, args.threads)
    recs = (
        _file_recordings(args.data, m.profile)
        if args.data
        else _sim_recordings(m.profile, args.minutes, args.users, args.seed, work / "recordings")
    )
    log.info("%d recording(s), %.1f s of EMG", len(recs), sum(len(r.emg) for r in recs) / fc.sample_rate_hz)

    # 1. Model compute per chunk, on real features, state carried, after a warm-up: every file.
    feats = compute_features(recs[0].emg, fc)[:, None]  # (F, 1, nb, C, n_freq)
    per_file = _time_files(bundle, feats, args.threads, args.chunks)
    model_ms = per_file[f"{fmt}/{precision}"]

    # 2. Streamed vs offline decoding, greedy and beam (+LM), uneven sample blocks as a serial link gives.
    num_classes, blank = int(sig.log_probs.shape[-1]), int(m.charset.get("blank", charset.BLANK))
    decoders: dict[str, Any] = {"greedy": make_decoder_factory("greedy", blank=blank, num_classes=num_classes)}
    beam_name = "beam+lm" if args.lm else "beam"
    decoders[beam_name] = make_decoder_factory(
        "beam",
        lm_path=args.lm,
        lm_backend=args.lm_backend,
        beam_size=args.beam_size,
        blank=blank,
        num_classes=num_classes,
    )
    results, offline_cache = _streamed_vs_offline(bundle, engine, fmt, precision, decoders, recs, args.threads)
    # The int8 files have no offline graph of their own: also check fp32 streaming against the offline graph.
    fp32_offline: dict[str, Any] = {}
    offline_dynamic = (m.model.get("offline_graph") or {}).get("time_axis", "dynamic") == "dynamic"
    has = {(f.format, f.precision, f.graph) for f in m.files}
    if precision != "fp32" and (fmt, "fp32", "streaming") in has and ("onnx", "fp32", "offline") in has:
        if offline_dynamic:
            fp32_engine = open_engine(bundle, precision="fp32", format=fmt, threads=args.threads)
            fp32_offline, _ = _streamed_vs_offline(bundle, fp32_engine, fmt, "fp32", decoders, recs, args.threads)

    # 2b. Optional grid over the LM weight and insertion bonus, on the offline emissions (streamed == offline).
    tuning = _tune(args, recs, offline_cache, blank, num_classes) if args.tune and args.lm else []

    # 3. `emgkey run` itself, replaying the first recording as fast as it can: memory and speed.
    rec0 = recs[0]
    replay = rec0.path or write_replay(work / f"{rec0.name}.hdf5", m.profile, rec0.emg)
    process = {}
    for dname in decoders:
        extra = ["--decoder", "beam"] + (["--lm", args.lm] if args.lm else []) if dname != "greedy" else []
        if args.beam_size and dname != "greedy":
            extra += ["--beam-size", str(args.beam_size)]
        process[dname] = runtime_process(
            path, f"replay://{Path(replay).resolve()}?speed=max", work / f"run_{name}_{dname}.jsonl", fmt, precision,
            args.threads, extra, duration_s=len(rec0.emg) / fc.sample_rate_hz,
        )  # fmt: skip

    # 4. Latency by construction (+ measured compute).
    frame_s = fc.hop / fc.sample_rate_hz
    chunk_wait_s = (sig.chunk_frames - 1) * frame_s + fc.n_fft / fc.sample_rate_hz
    lookahead_s = sig.output_delay_frames * frame_s
    latency = {}
    for dname, r in results.items():
        latency[dname] = {
            "chunk_wait_ms": chunk_wait_s * 1e3,
            "lookahead_ms": lookahead_s * 1e3,
            "model_p99_ms": model_ms["p99"],
            "decode_per_chunk_ms": r["decode_ms_per_chunk"],
            "algorithmic_latency_ms": (chunk_wait_s + lookahead_s) * 1e3 + model_ms["p99"] + r["decode_ms_per_chunk"],
        }
    return {
        "bundle": str(path),
        "model": name,
        "params": m.model.get("params"),
        # A model that decodes at all (test CER at export below 90 %); untrained ones only show streamed == offline.
        "trained": float((m.accuracy.get("torch_fp32") or {}).get("cer", 100.0)) < 90.0,
        "profile": m.profile.name,
        "format": fmt,
        "precision": precision,
        "note": note,
        "runtime": engine.runtime,
        "threads": args.threads,
        "chunk_frames": sig.chunk_frames,
        "output_delay_frames": sig.output_delay_frames,
        "frame_rate_hz": fc.frame_rate_hz,
        "data": [r.name for r in recs] if args.data else f"{SIMULATED}: {args.users} user(s) x {args.minutes} min",
        "simulated": not args.data,
        "target_chars": sum(len(r.target) for r in recs),
        "model_ms_per_chunk": model_ms,
        "model_ms_per_chunk_all_files": per_file,
        "realtime_factor_model": model_ms["mean"] / (sig.chunk_frames * frame_s * 1e3),
        "latency": latency,
        "decoding": results,
        "decoding_fp32_vs_offline_graph": fp32_offline,
        "lm_tuning": tuning,
        "runtime_process": process,
    }


def _streamed_vs_offline(
    bundle: Bundle,
    engine: Any,
    fmt: str,
    precision: str,
    decoders: dict[str, Any],
    recs: list[Recording],
    threads: int,
) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, str]]]:
    """Per decoder: CER of the recognizer fed uneven sample blocks vs the same decoder on offline emissions."""
    from emgkey.edge_runtime.engines import TimedEngine
    from emgkey.edge_runtime.recognizer import Recognizer, RecognizerConfig, decode_samples

    m = bundle.manifest
    blocks = [7, 23, 40, 3, 100, 16, 1, 64]
    results: dict[str, Any] = {}
    offline_cache: dict[str, tuple[np.ndarray, str]] = {}
    for dname, factory in decoders.items():
        streamed, offline = EditCounts(), EditCounts()
        decode_times: list[float] = []
        diffs: list[float] = []
        for rec in recs:
            cfg = RecognizerConfig(max_buffered_s=3600.0)
            recognizer = Recognizer(TimedEngine(engine, []), m.features, factory, m, cfg)
            em, final = decode_samples(recognizer, rec.emg, blocks)
            streamed = streamed + edit_counts(final.raw, rec.target)
            if rec.name not in offline_cache:
                offline_cache[rec.name] = _offline_emissions(bundle, fmt, precision, threads, rec.emg)
            off_em, _ = offline_cache[rec.name]
            dec = factory()
            dec.reset()
            t0 = time.perf_counter()
            labels = dec.decode(off_em, finish=True)
            decode_times.append((time.perf_counter() - t0) / max(len(off_em), 1))
            offline = offline + edit_counts(charset.labels_to_str(labels), rec.target)
            n = min(len(em), len(off_em))
            diffs.append(float(np.max(np.abs(em[:n] - off_em[:n]))) if n else 0.0)
        results[dname] = {
            "precision": precision,
            "streamed": streamed.as_dict(),
            "offline": offline.as_dict(),
            "cer_gap_points": abs(streamed.cer - offline.cer),
            "decode_ms_per_frame": float(np.mean(decode_times) * 1e3),
            "decode_ms_per_chunk": float(np.mean(decode_times) * 1e3 * m.streaming.chunk_frames),
            "max_abs_emission_diff_streamed_vs_offline": max(diffs) if diffs else 0.0,
            "offline_emissions": offline_cache[recs[0].name][1],
        }
        log.info("%-8s %s CER streamed %.2f  offline %.2f", dname, precision, streamed.cer, offline.cer)
    return results, offline_cache


def runtime_process(
    bundle: str | Path,
    source: str,
    jsonl: Path,
    fmt: str,
    precision: str,
    threads: int,
    extra: Sequence[str] = (),
    duration_s: float | None = None,
    timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """``emgkey run`` on ``source`` to its end: RSS (max sampled, peak), wall time, counters, torch mapped."""
    jsonl.unlink(missing_ok=True)
    args = [
        "run", "--bundle", str(bundle), "--source", source, "--format", fmt, "--precision", precision,
        "--threads", str(threads), "--jsonl", str(jsonl), "--status", "off", *extra,
    ]  # fmt: skip
    r = run_emgkey(args, jsonl=jsonl, timeout_s=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(f"emgkey run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    st = r.final_status or {}
    stream_s = float(st.get("stream_time_s", duration_s or float("nan")))
    # Real-time factor while streaming (start-up excluded): between the first and the last event it wrote.
    timed = [e for e in r.events if "wall_time" in e and "stream_time_s" in e]
    rtf = r.wall_s / stream_s if stream_s else float("nan")
    if len(timed) >= 2 and timed[-1]["stream_time_s"] - timed[0]["stream_time_s"] > 0.5 * stream_s:
        rtf = (timed[-1]["wall_time"] - timed[0]["wall_time"]) / (
            timed[-1]["stream_time_s"] - timed[0]["stream_time_s"]
        )
    return {
        "rss_max_sampled_mb": max((x for _, x in r.rss), default=float("nan")),
        "peak_mb": r.peak_mb,
        "wall_s": r.wall_s,
        "stream_s": stream_s,
        "realtime_factor": rtf,
        "torch_loaded": r.torch_loaded,
        "samples": st.get("samples"),
        "chunks": st.get("chunks"),
    }


def _tune(
    args: argparse.Namespace,
    recs: list[Recording],
    offline_cache: dict[str, tuple[np.ndarray, str]],
    blank: int,
    num_classes: int,
) -> list[dict[str, Any]]:
    from emgkey.edge_runtime.cli import make_decoder_factory
    from emgkey.edge_runtime.lm import load_lm

    lm = load_lm(args.lm, args.lm_backend)
    tuning = []
    for w in args.tune_weights:
        for bonus in args.tune_bonuses:
            counts = EditCounts()
            for rec in recs:
                dec = make_decoder_factory(
                    "beam", lm_path=None, beam_size=args.beam_size, blank=blank, num_classes=num_classes
                )()
                dec.lm, dec.config = lm, replace(dec.config, lm_weight=w, insertion_bonus=bonus)
                dec.reset()
                labels = dec.decode(offline_cache[rec.name][0], finish=True)
                counts = counts + edit_counts(charset.labels_to_str(labels), rec.target)
            tuning.append({"lm_weight": w, "insertion_bonus": bonus, **counts.as_dict()})
            log.info("tune lm_weight %.2f bonus %.2f: CER %.2f", w, bonus, counts.cer)
    return tuning


# ---------------------------------------------------------------------------------------------------------------------
# Bounded memory: hours of signal through `emgkey run`, RSS sampled
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class SoakResult:
    stream_s: float
    wall_s: float
    rss: list[tuple[float, float]]  # (wall seconds, MB)
    baseline_mb: float  # median RSS over 10..20 % of the run (after warm-up: latency windows are full by then)
    end_mb: float  # max RSS over the last 10 %
    peak_mb: float
    status: dict[str, Any] = field(default_factory=dict)
    returncode: int = 0
    stderr: str = ""

    @property
    def growth_mb(self) -> float:
        return self.end_mb - self.baseline_mb

    def as_dict(self) -> dict[str, Any]:
        step = max(1, len(self.rss) // 200)
        return {
            "stream_s": self.stream_s,
            "stream_hours": self.stream_s / 3600.0,
            "wall_s": self.wall_s,
            "speed_x_realtime": self.stream_s / self.wall_s if self.wall_s else float("nan"),
            "baseline_mb": self.baseline_mb,
            "end_mb": self.end_mb,
            "growth_mb": self.growth_mb,
            "peak_mb": self.peak_mb,
            "rss_samples": [(round(t, 2), round(x, 2)) for t, x in self.rss[::step]],
            "final_status": self.status,
        }


def keyed_blocks(profile: DeviceProfile, hours: float, seed: int = 0, piece_s: float = 60.0) -> Iterator[np.ndarray]:
    """``hours`` of keyed test signal (``toy_bundle.keyed_emg``) a minute at a time, in the profile's storage
    units (int16 counts or float32 microvolts): an hour of any profile without holding it in memory."""
    from emgkey.benchmarks.toy_bundle import keyed_emg

    rate = profile.sample_rate_hz
    total, i = round(hours * 3600 * rate), 0
    while total > 0:
        n = min(round(piece_s * rate), total)
        rec = keyed_emg(profile, n / rate, seed=seed + i)
        yield rec.counts(profile.adc_scale_uv_per_count) if profile.sample_format == "int16" else rec.emg
        total, i = total - n, i + 1


def soak_signal(profile: DeviceProfile, hours: float, path: Path, seed: int = 0) -> Path:
    """``keyed_blocks`` as a session file for ``replay://`` (reused if it exists), made through a memory-mapped
    array on disk so that an hour of emg2qwerty's 32 channels at 2 kHz need not fit in memory."""
    from emgkey.session import storage_dtype, write_session

    if path.exists():
        return path
    rate = profile.sample_rate_hz
    n_total = round(hours * 3600 * rate)
    raw = path.with_suffix(".partial.npy")
    emg = np.lib.format.open_memmap(
        raw, mode="w+", dtype=storage_dtype(profile), shape=(n_total, profile.n_bands, profile.channels_per_band)
    )
    try:
        a = 0
        for block in keyed_blocks(profile, hours, seed):
            emg[a : a + len(block)] = block
            a += len(block)
        emg.flush()
        ts = 1.7e9 + np.arange(n_total, dtype=np.float64) / rate
        write_session(
            path, profile=profile, timestamps=ts, emg=emg, keystrokes=[], prompts=[], session_name=path.stem,
            user="soak", chunk_rows=int(rate),
        )  # fmt: skip
    finally:
        del emg
        raw.unlink(missing_ok=True)
    return path


def memory_soak(
    bundle: str | Path,
    source: str,
    jsonl: Path,
    *,
    extra: Sequence[str] = (),
    command: Sequence[str] | None = None,
    timeout_s: float = 3600.0,
    sample_every_s: float = 1.0,
    on_tick: Callable[[subprocess.Popen[bytes], float], None] | None = None,
) -> SoakResult:
    """``emgkey run`` on ``source`` to its end (default endpointing: segments end), RSS sampled from outside."""
    jsonl.unlink(missing_ok=True)
    args = ["run", "--bundle", str(bundle), "--source", source, "--jsonl", str(jsonl), "--status", "off", *extra]
    r = run_emgkey(
        args, command=command, jsonl=jsonl, timeout_s=timeout_s, sample_every_s=sample_every_s, on_tick=on_tick
    )
    xs = [x for _, x in r.rss]
    n = len(xs)
    base = float(np.median(xs[n // 10 : max(n // 5, n // 10 + 1)])) if n >= 10 else float("nan")
    end = float(max(xs[-max(1, n // 10) :])) if n else float("nan")
    st = r.final_status or {}
    return SoakResult(
        float(st.get("stream_time_s", float("nan"))), r.wall_s, r.rss, base, end, r.peak_mb, st, r.returncode, r.stderr
    )


def serial_soak(
    bundle: str | Path,
    hours: float,
    work: Path,
    *,
    speed: float = 20.0,
    extra: Sequence[str] = (),
    command: Sequence[str] | None = None,
    seed: int = 0,
) -> SoakResult:
    """The device path: the simulated armband's firmware on a pty streams ``hours`` of keyed signal at ``speed`` x
    real time (``PacedSource``), and ``emgkey run --source serial://`` decodes it; its RSS is sampled."""
    from emgkey.firmware_sim.firmware import ArmbandFirmware, BlockIteratorSource, PacedSource
    from emgkey.firmware_sim.link import FirmwareRunner, PtyLink

    profile = load_bundle(bundle).manifest.profile
    source = PacedSource(BlockIteratorSource(keyed_blocks(profile, hours, seed)), profile.sample_rate_hz, speed)
    fw = ArmbandFirmware(profile, source)
    with PtyLink() as link, FirmwareRunner(fw, link.master_fd, realtime=False):
        url = f"serial://{link.path}?buffer_s=60&stall_s=5"
        return memory_soak(bundle, url, work / "soak_serial.jsonl", extra=extra, command=command,
                           timeout_s=hours * 3600 / speed * 3 + 120)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------------------


def _summary(r: dict[str, Any]) -> str:
    mm = r["model_ms_per_chunk"]
    lines = [
        f"{r['model']} ({r['profile']}) {r['format']} {r['precision']} on {r['runtime']}, {r['threads']} thread(s)"
        + (f" [{r['note']}]" if r["note"] else ""),
        f"model per chunk ({r['chunk_frames']} frames): p50 {mm['p50']:.3f} ms, p99 {mm['p99']:.3f} ms "
        f"(real-time factor {r['realtime_factor_model']:.4f})",
    ]
    for dname, lat in r["latency"].items():
        lines.append(
            f"{dname:8s} algorithmic latency {lat['algorithmic_latency_ms']:.1f} ms = chunk wait "
            f"{lat['chunk_wait_ms']:.1f} + look-ahead {lat['lookahead_ms']:.1f} + model p99 {lat['model_p99_ms']:.2f}"
            f" + decode {lat['decode_per_chunk_ms']:.2f}"
        )
    for dname, proc in r["runtime_process"].items():
        lines.append(
            f"{dname:8s} emgkey run: RSS {proc['rss_max_sampled_mb']:.0f} MB (peak {proc['peak_mb']:.0f} MB), "
            f"real-time factor {proc['realtime_factor']:.3f}, torch mapped: {proc['torch_loaded']}"
        )
    for dname, d in [*r["decoding"].items(), *r["decoding_fp32_vs_offline_graph"].items()]:
        lines.append(
            f"{dname:8s} {d['precision']} CER streamed {d['streamed']['cer']:6.2f}  offline "
            f"{d['offline']['cer']:6.2f}  (gap {d['cer_gap_points']:.2f} pt)  "
            f"decode {d['decode_ms_per_frame']:.3f} ms/frame"
        )
    return "\n".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    data = f"Data: **{report['data']}**. " if report["bundles"] else "Data: keyed synthetic test signal. "
    out = [
        "# Edge runtime benchmark",
        "",
        data + f"Machine: {m['cpus']} CPUs ({m['platform']}), Python {m['python']}, "
        f"{report['threads']} model thread(s). LM: {report['lm'] or 'none'}.",
        "",
    ]
    if report["bundles"]:
        untrained = [b["model"] for b in report["bundles"] if not b["trained"]]
        if untrained:
            out += [
                f"Untrained bundles ({', '.join(untrained)}: test CER at export >= 90 %): their CERs (near or above "
                "100 %; the LM's insertion bonus makes beam text up on flat emissions) only show that streaming "
                "equals offline decoding. Compute, latency and memory are real.",
                "",
            ]
        out += [
            "| student | file | params | chunk | model p50 / p99 ms | algorithmic latency ms (greedy / beam) "
            "| RSS MB greedy / beam (peak) | RTF greedy / beam | CER greedy stream / offline | "
            "CER beam stream / offline |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for b in report["bundles"]:
            names = list(b["decoding"])
            g, bm = names[0], names[1]
            mm, lat, proc, dec = b["model_ms_per_chunk"], b["latency"], b["runtime_process"], b["decoding"]
            frame_ms = 1e3 / b["frame_rate_hz"]
            out.append(
                f"| {b['model']} ({b['profile']}) | {b['format']} {b['precision']} | {b['params'] or '-'} "
                f"| {b['chunk_frames']} fr = {b['chunk_frames'] * frame_ms:.0f} ms "
                f"| {mm['p50']:.3f} / {mm['p99']:.3f} "
                f"| {lat[g]['algorithmic_latency_ms']:.0f} / {lat[bm]['algorithmic_latency_ms']:.0f} "
                f"| {proc[g]['rss_max_sampled_mb']:.0f} / {proc[bm]['rss_max_sampled_mb']:.0f} "
                f"({max(proc[g]['peak_mb'], proc[bm]['peak_mb']):.0f}) "
                f"| {proc[g]['realtime_factor']:.3f} / {proc[bm]['realtime_factor']:.3f} "
                f"| {dec[g]['streamed']['cer']:.2f} / {dec[g]['offline']['cer']:.2f} "
                f"| {dec[bm]['streamed']['cer']:.2f} / {dec[bm]['offline']['cer']:.2f} |"
            )
        out += [
            "",
            "Algorithmic latency = chunk wait ((chunk - 1) x hop + n_fft samples) + look-ahead + model p99 + decode "
            "per chunk. RSS: `emgkey run` replaying the first recording at full speed (sampled VmRSS max; peak = "
            "VmHWM). RTF: wall time / signal time of that run while streaming (start-up excluded). "
            "beam = prefix beam search" + (" + the LM." if report["lm"] else " without LM."),
            "",
            "Per-chunk compute of every file (p50 / p99 ms, 1 thread):",
            "",
            "| student | "
            + " | ".join(sorted({k for b in report["bundles"] for k in b["model_ms_per_chunk_all_files"]}))
            + " |",
        ]
        keys = sorted({k for b in report["bundles"] for k in b["model_ms_per_chunk_all_files"]})
        out.append("|---|" + "---|" * len(keys))
        for b in report["bundles"]:
            cells = []
            for k in keys:
                t = b["model_ms_per_chunk_all_files"].get(k)
                cells.append("-" if not t or "p50" not in t else f"{t['p50']:.3f} / {t['p99']:.3f}")
            out.append(f"| {b['model']} | " + " | ".join(cells) + " |")
        out += ["", "Streamed vs offline:", ""]
        for b in report["bundles"]:
            for dname, d in [*b["decoding"].items(), *b["decoding_fp32_vs_offline_graph"].items()]:
                out.append(
                    f"- {b['model']} {d['precision']} {dname}: CER streamed {d['streamed']['cer']:.2f} / offline "
                    f"{d['offline']['cer']:.2f} (gap {d['cer_gap_points']:.2f} pt), max |emission diff| "
                    f"{d['max_abs_emission_diff_streamed_vs_offline']:.2e}; offline = {d['offline_emissions']}"
                )
    if report.get("soak"):
        s = report["soak"]
        out += [
            "",
            "## Bounded memory",
            "",
            f"`emgkey run` ({s['bundle_model']}, {s['decoder']}) over {s['stream_hours']:.2f} h of keyed test signal "
            f"({s['source']}; {s['speed_x_realtime']:.0f}x real time, {s['wall_s']:.0f} s): "
            f"RSS {s['baseline_mb']:.1f} MB after warm-up -> {s['end_mb']:.1f} MB at the end "
            f"(growth {s['growth_mb']:+.2f} MB; peak {s['peak_mb']:.1f} MB).",
        ]
    return "\n".join(out) + "\n"


def _build_lm(work: Path) -> str:
    from emgkey.edge_runtime.cli import lm_extra_chars
    from emgkey.edge_runtime.lm import LMBuildConfig, build_arpa

    path = work / "lm5.arpa"
    if not path.exists():
        log.info("building a 5-gram character LM -> %s", path)
        build_arpa(path, None, LMBuildConfig(order=5, prune=(0, 0, 0, 1, 1), extra_chars=lm_extra_chars()))
    return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", nargs="+", default=None, help="bundle folders (default: build untrained students)")
    p.add_argument("--toy", action="store_true", help="build and benchmark a toy bundle (pipeline check only)")
    p.add_argument("--out", required=True, help="JSON file to write (Markdown next to it, .md)")
    p.add_argument("--work", default=None, help="folder for built bundles, recordings, LM (default: OUT's stem)")
    p.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    p.add_argument("--profile", default="armband8", help="device profile of built bundles")
    p.add_argument("--size", choices=("tiny", "default"), default="tiny", help="size of built (untrained) students")
    p.add_argument("--formats", nargs="+", default=["onnx"], choices=("onnx", "tflite"), help="formats to export")
    p.add_argument("--format", choices=("onnx", "tflite"), default="onnx")
    p.add_argument("--precision", choices=("int8", "fp32"), default="int8")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lm", default="auto", help="ARPA LM for the beam decoder; 'auto' builds a 5-gram, 'none'")
    p.add_argument("--lm-backend", choices=("auto", "kenlm", "python"), default="auto")
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--data", nargs="*", default=None, help="session HDF5 files (default: simulate)")
    p.add_argument("--minutes", type=float, default=1.0, help="simulated minutes per user")
    p.add_argument("--users", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunks", type=int, default=500, help="model calls timed per file")
    p.add_argument("--tune", action="store_true", help="grid-search --lm weight and insertion bonus (offline)")
    p.add_argument("--tune-weights", type=float, nargs="+", default=[0.4, 0.6, 0.8, 1.0, 1.2])
    p.add_argument("--tune-bonuses", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0])
    p.add_argument("--soak-hours", type=float, default=0.0, help="also run the memory soak over this much signal")
    p.add_argument("--soak-source", choices=("serial", "replay"), default="serial", help="soak over a pty or a file")
    p.add_argument("--soak-speed", type=float, default=20.0, help="serial soak: x real time the firmware streams at")
    p.add_argument("--skip-bench", action="store_true", help="only the soak")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    work = Path(args.work) if args.work else out.with_name(out.stem + "_work")
    work.mkdir(parents=True, exist_ok=True)
    if args.toy:
        from emgkey.benchmarks.toy_bundle import build_toy_bundle

        args.bundle = [str(build_toy_bundle(work / "toy_bundle", args.profile, weight_scale=0.05))]
    elif not args.bundle:
        args.bundle = _build_bundles_in_child(args, work)
    if args.lm == "auto":
        args.lm = _build_lm(work)
    elif args.lm == "none":
        args.lm = None
    import platform

    report: dict[str, Any] = {
        "data": "session files " + ", ".join(args.data) if args.data else SIMULATED,
        "threads": args.threads,
        "lm": args.lm,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.machine()},
        "bundles": [],
    }
    if not args.skip_bench:
        for b in args.bundle:
            r = bench_bundle(b, args, work)
            report["bundles"].append(r)
            print(_summary(r))
    if args.soak_hours > 0:
        bundle = load_bundle(args.bundle[0])
        fmt, precision, _ = _pick_file(bundle, args.format, args.precision)
        extra = ["--format", fmt, "--precision", precision]
        if args.soak_source == "serial":
            soak = serial_soak(args.bundle[0], args.soak_hours, work, speed=args.soak_speed, extra=extra)
            how = f"serial:// over a pty, the firmware paced at {args.soak_speed:g}x real time"
        else:
            replay = soak_signal(bundle.manifest.profile, args.soak_hours, work / f"soak_{args.soak_hours:g}h.hdf5")
            soak = memory_soak(
                args.bundle[0], f"replay://{replay.resolve()}?speed=max", work / "soak.jsonl", extra=extra
            )
            how = "replay:// at full speed"
        if soak.returncode != 0:
            raise SystemExit(f"soak run failed:\n{soak.stderr[-3000:]}")
        report["soak"] = {
            "bundle": args.bundle[0],
            "bundle_model": bundle.manifest.model.get("name"),
            "decoder": "greedy",
            "source": how,
            **soak.as_dict(),
        }
        print(
            f"soak ({how}): {soak.stream_s / 3600:.2f} h in {soak.wall_s:.0f} s, RSS {soak.baseline_mb:.1f} -> "
            f"{soak.end_mb:.1f} MB (growth {soak.growth_mb:+.2f} MB, peak {soak.peak_mb:.1f} MB)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(_markdown(report))
    print(f"wrote {out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
