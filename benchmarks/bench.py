"""``emgkey bench``: the model x precision x runtime x threads matrix, measured side by side.

    emgkey bench --bundle BUNDLE [--bundle B2 ...] --out runs/bench            # torch-free, on the device
    emgkey bench --bundles runs/export_bench/bundles/armband8 --out runs/bench    # every bundle under a folder
    emgkey bench --checkpoints RUN/best.pt TEACHER/best.pt --data DIR --split S --out runs/bench   # export first

A *model* is a bundle (a streaming student: GRU, residual BiLSTM, TCN) or a teacher checkpoint
(TDS-Conv: offline, the reference baseline, PyTorch only). A *cell* is one model on one runtime at one
precision and thread count:

- ``onnxruntime`` and ``ai-edge-litert`` (or ``tflite-runtime``) run the bundle's streaming files
  through the edge runtime's own engines, only where ``emgkey verify`` passed the pair;
- ``torch`` is PyTorch eager on the fp32 checkpoint ("what people do today"), when torch is
  installed and the checkpoint is found (``--checkpoints``, or the manifest's path with a matching sha256).

Every cell runs in a fresh subprocess holding only that runtime (so its peak RSS is honest), ``--repeats``
times, the cells interleaved round-robin so slow drift on a shared machine hits every cell alike. Each run
warms up, then times ``--calls`` chunk calls with the state carried; a cell reports the median over runs of
p50/p95/p99, and ratios between cells (e.g. ORT int8 vs PyTorch fp32) are taken per run, then the median.

CER is measured on held-out data: the bundle's reference windows (``reference.npz``: test sessions, held
out at export) or ``--eval-data`` session files, greedy and beam search (+ character LM), on the emissions
of each (model, runtime, precision) at 1 thread. Whether that data is simulated is recorded from the
manifest / the session files; simulated CER is never reported as real-data CER.

Writes ``OUT/results.json`` (schema in docs/benchmarks.md; ``SCHEMA`` / ``SCHEMA_VERSION`` here) and the
report (``emgkey.benchmarks.report``: report.md and PNGs). Nothing here imports torch except the torch
cells' subprocesses and the export of ``--checkpoints``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from emgkey import __version__
from emgkey.bundle import MANIFEST_NAME, Manifest, load_bundle, read_manifest, sha256_file
from emgkey.errors import ConfigError

log = logging.getLogger("emgkey.bench")

SCHEMA = "emgkey.bench.results"
SCHEMA_VERSION = 1

TORCH = "torch"
ORT = "onnxruntime"
LITERT_RUNTIMES = ("ai-edge-litert", "tflite-runtime")
# --runtimes names -> what they select
RUNTIME_CHOICES = ("torch", "onnxruntime", "litert")


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and how hard. ``threads`` 0 means every core this process may use."""

    threads: tuple[int, ...] = (1, 0)
    precisions: tuple[str, ...] = ("fp32", "int8")
    runtimes: tuple[str, ...] = RUNTIME_CHOICES
    warmup: int = 20  # calls before timing, per run
    calls: int = 200  # timed calls per run
    repeats: int = 3  # runs per cell (separate processes, interleaved)
    decoders: tuple[str, ...] = ("greedy", "beam")
    lm: str | None = None  # ARPA file for the beam decoder; None: beam without LM
    beam_size: int | None = None
    eval_data: tuple[str, ...] = ()  # session files or folders; empty: the bundles' reference windows
    eval_window_s: float | None = None  # cut --eval-data sessions into windows of this length
    max_eval_windows: int | None = None
    calibration: str | None = None  # benchmarks/calibration_bench.py result JSON
    device_label: str | None = None
    cell_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if not self.threads or any(t < 0 for t in self.threads):
            raise ConfigError(f"threads must be positive counts or 0 (= all cores), got {self.threads}")
        for p in self.precisions:
            if p not in ("fp32", "int8"):
                raise ConfigError(f"unknown precision {p!r}: fp32 or int8")
        for r in self.runtimes:
            if r not in RUNTIME_CHOICES:
                raise ConfigError(f"unknown runtime {r!r}: one of {list(RUNTIME_CHOICES)}")
        for d in self.decoders:
            if d not in ("greedy", "beam"):
                raise ConfigError(f"unknown decoder {d!r}: greedy or beam")
        if self.warmup < 0 or self.calls < 1 or self.repeats < 1:
            raise ConfigError("need warmup >= 0, calls >= 1, repeats >= 1")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_threads(spec: str) -> tuple[int, ...]:
    """``"1,all"`` -> ``(1, 0)``; 0 stands for all usable cores and is resolved at run time."""
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip().lower()
        if not part:
            continue
        n = 0 if part == "all" else int(part)
        if n < 0:
            raise ConfigError(f"--threads: {part!r} is not a thread count")
        out.append(n)
    if not out:
        raise ConfigError("--threads: give at least one count, e.g. 1,all")
    return tuple(out)


def resolve_threads(threads: Iterable[int], cores: int) -> tuple[int, ...]:
    """Concrete, de-duplicated thread counts in the order given (``all`` on a 1-core machine is just 1)."""
    seen: list[int] = []
    for t in threads:
        n = cores if t == 0 else t
        if n not in seen:
            seen.append(n)
    return tuple(seen)


# ---------------------------------------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def board_of(cpu_model: str, dt_model: str, arch: str) -> str:
    """A coarse board id the report keys estimates on: rpi4, rpi5, jetson, or generic-<arch>."""
    text = f"{dt_model} {cpu_model}".lower()
    if "raspberry pi 4" in text or "raspberry pi compute module 4" in text:
        return "rpi4"
    if "raspberry pi 5" in text:
        return "rpi5"
    if "raspberry pi" in text:
        return "rpi"
    if "jetson" in text or ("nvidia" in text and arch == "aarch64"):
        return "jetson"
    return f"generic-{arch}"


def describe_device(label: str | None = None) -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and runtime versions (read without importing any runtime)."""
    cpuinfo = _read("/proc/cpuinfo")
    cpu_model = ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in cpuinfo.splitlines():
            if line.split(":")[0].strip() == key and ":" in line:
                cpu_model = line.split(":", 1)[1].strip()
                break
        if cpu_model:
            break
    dt_model = _read("/proc/device-tree/model").strip("\x00\n ")
    cpu_model = cpu_model or platform.processor() or "unknown"
    mem_mb = None
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_mb = round(int(line.split()[1]) / 1024)
    os_name = ""
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip().strip('"')
    arch = platform.machine()
    board = board_of(cpu_model, dt_model, arch)
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    versions = {
        name: v
        for name in ("numpy", "scipy", "onnxruntime", "ai-edge-litert", "tflite-runtime", "torch")
        if (v := _dist_version(name)) is not None
    }
    return {
        "label": label or (dt_model or f"{cpu_model} x{usable_cores()}"),
        "board": board,
        "cpu_model": cpu_model,
        "board_model": dt_model or None,
        "arch": arch,
        "cores_logical": os.cpu_count(),
        "cores_usable": usable_cores(),
        "memory_mb": mem_mb,
        "os": os_name or platform.system(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "emgkey": __version__,
        "versions": versions,
        "loadavg_at_start": load,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Models and cells
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """One row group of the matrix: a bundle (student) or a teacher checkpoint."""

    key: str
    name: str  # architecture (gru, bilstm, tcn, tds_conv)
    role: str  # "student" | "teacher"
    profile: str
    bundle: str | None = None
    checkpoint: str | None = None
    checkpoint_note: str = ""
    params: int | None = None
    macs_per_s: int | None = None
    distilled: bool = False
    chunk_frames: int = 0
    output_delay_frames: int = 0
    hop: int = 1
    n_fft: int = 1
    sample_rate_hz: float = 1.0
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def frame_ms(self) -> float:
        return 1e3 * self.hop / self.sample_rate_hz

    @property
    def chunk_ms(self) -> float:
        """Signal per model call."""
        return self.chunk_frames * self.frame_ms

    def latency(self) -> dict[str, float]:
        """Algorithmic latency: how long the oldest sample of a chunk waits for the chunk to fill (its window
        included), plus the look-ahead the model needs before it emits. Compute time comes on top (cells)."""
        wait = 1e3 * ((self.chunk_frames - 1) * self.hop + self.n_fft) / self.sample_rate_hz
        ahead = self.output_delay_frames * self.frame_ms
        return {"chunk_wait_ms": wait, "lookahead_ms": ahead, "algorithmic_ms": wait + ahead}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.role == "student":
            d.update(chunk_ms=self.chunk_ms, **self.latency())
        else:  # offline: it needs a whole window, whose length is a property of its cells
            d.update(chunk_ms=None, chunk_wait_ms=None, lookahead_ms=None, algorithmic_ms=None)
        return d


@dataclass(frozen=True)
class CellSpec:
    model: str  # ModelSpec.key
    runtime: str  # torch | onnxruntime | ai-edge-litert | tflite-runtime
    format: str  # onnx | tflite | torch
    precision: str
    threads: int
    artifact: str | None = None
    artifact_bytes: int | None = None
    skip: str = ""  # why the cell is not measured ("" = measured)

    @property
    def id(self) -> str:
        return f"{self.model}|{self.runtime}|{self.precision}|{self.threads}"

    @property
    def engine_id(self) -> str:
        """Cells that compute the same emissions (threads do not change the numbers)."""
        return f"{self.model}|{self.runtime}|{self.precision}"


def discover_bundles(paths: Iterable[str | Path]) -> list[Path]:
    """Bundle folders: each path that holds a manifest.json, else every folder under it that does."""
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / MANIFEST_NAME).is_file():
            found.append(p)
            continue
        if not p.is_dir():
            raise ConfigError(f"{p}: not a bundle folder (no {MANIFEST_NAME}) and not a folder of bundles")
        sub = sorted(m.parent for m in p.rglob(MANIFEST_NAME) if not any(s.startswith(".") for s in m.parts))
        if not sub:
            raise ConfigError(f"{p}: no bundle ({MANIFEST_NAME}) found under it")
        found.extend(sub)
    unique: list[Path] = []
    for b in found:
        if b.resolve() not in {u.resolve() for u in unique}:
            unique.append(b)
    return unique


def checkpoint_name(path: Path) -> str:
    """A model's name from its checkpoint path: ``RUN/best.pt`` -> ``RUN``; a training benchmark's
    ``.../tds_conv/generic/best.pt`` -> ``tds_conv`` (its run folder only says which split)."""
    if path.stem not in ("best", "last"):
        return path.stem
    run = path.parent
    return run.parent.name if run.name == "generic" and run.parent.name else run.name


def model_keys(paths: Sequence[Path], names: Sequence[str]) -> list[str]:
    """Short unique keys: the name, or ``<first differing folder>/<name>`` for names that repeat
    (``export_bench/gru`` vs ``export_bench_default/gru``)."""
    keys = list(names)
    for name in set(names):
        group = [i for i, n in enumerate(names) if n == name]
        if len(group) < 2:
            continue
        parts = [Path(paths[i]).resolve().parts[:-1] for i in group]
        for i, g in enumerate(group):
            others = [p for j, p in enumerate(parts) if j != i]
            mine = parts[i]
            k = next(
                (k for k in range(len(mine)) if any(k >= len(o) or o[k] != mine[k] for o in others)),
                len(mine) - 1,
            )
            keys[g] = f"{mine[k]}/{name}" if k < len(mine) else f"{name}#{i + 1}"
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):  # still equal (same folder names at different depths): number them
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            keys[i] = f"{key}#{seen[key]}"
    return keys


def data_kind_of_manifest(m: Manifest) -> dict[str, Any]:
    """``simulated`` / ``real`` / ``none`` from the bundle's accuracy record (never guessed as real)."""
    raw = str(m.accuracy.get("data", "unknown"))
    if raw == "simulated":
        kind = "simulated"
    elif raw in ("emg2qwerty", "recorded", "real"):
        kind = "real"
    elif raw in ("none", ""):
        kind = "none"
    else:
        kind = "unknown"
    return {"kind": kind, "label": raw, "note": m.accuracy.get("dataset_note", m.accuracy.get("note", ""))}


def _find_checkpoint(m: Manifest, bundle: Path, explicit: dict[str, Path]) -> tuple[str | None, str]:
    """The fp32 checkpoint a bundle was exported from, by sha256: given on the command line, or the
    manifest's recorded path (relative to the working folder or any folder above the bundle)."""
    want = m.model.get("checkpoint_sha256")
    if not want:
        return None, "the manifest records no checkpoint"
    if want in explicit:
        return str(explicit[want]), "given (sha256 matches the manifest)"
    rec = m.model.get("checkpoint")
    if not rec:
        return None, "the manifest records no checkpoint path"
    cands = [Path(rec)] if Path(rec).is_absolute() else [Path.cwd() / rec, *(a / rec for a in bundle.resolve().parents)]
    for c in cands:
        if c.is_file():
            if sha256_file(c) == want:
                return str(c), "found by the manifest's path (sha256 matches)"
            return None, f"{c} does not match the manifest's sha256 (retrained since export?)"
    return None, f"checkpoint {rec} not found"


def student_from_bundle(path: Path, key: str, checkpoints: dict[str, Path]) -> ModelSpec:
    m = read_manifest(path)
    ckpt, note = _find_checkpoint(m, path, checkpoints)
    fc = m.features
    return ModelSpec(
        key=key,
        name=str(m.model.get("name", "?")),
        role="student",
        profile=m.profile.name,
        bundle=str(path),
        checkpoint=ckpt,
        checkpoint_note=note,
        params=m.model.get("params"),
        macs_per_s=m.model.get("macs_per_s"),
        distilled=bool(m.model.get("distillation")),
        chunk_frames=m.streaming.chunk_frames,
        output_delay_frames=m.streaming.output_delay_frames,
        hop=fc.hop,
        n_fft=fc.n_fft,
        sample_rate_hz=fc.sample_rate_hz,
        data=data_kind_of_manifest(m),
    )


def torch_available() -> bool:
    """Whether torch could be imported, without importing it (a blocked or broken install counts as absent)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def plan_cells(
    models: Sequence[ModelSpec], cfg: BenchConfig, installed: dict[str, str], threads: Sequence[int], has_torch: bool
) -> list[CellSpec]:
    """Every cell of the matrix, the ones that cannot run here included with the reason."""
    cells: list[CellSpec] = []
    litert = next((r for r in LITERT_RUNTIMES if r in installed), None)
    for model in models:
        for precision in cfg.precisions:
            for t in threads:
                if TORCH in cfg.runtimes:
                    cells.append(_torch_cell(model, precision, t, has_torch))
                if model.role == "teacher" or model.bundle is None:
                    continue
                m = read_manifest(model.bundle)
                for fmt, runtime, wanted in (
                    ("onnx", ORT if ORT in installed else None, ORT in cfg.runtimes),
                    ("tflite", litert, "litert" in cfg.runtimes),
                ):
                    if not wanted:
                        continue
                    name = runtime or (ORT if fmt == "onnx" else LITERT_RUNTIMES[0])
                    f = next(
                        (x for x in m.files if (x.format, x.precision, x.graph) == (fmt, precision, "streaming")), None
                    )
                    base = CellSpec(model.key, name, fmt, precision, t)
                    if f is None:
                        why = _missing_file_reason(m, fmt, precision)
                        cells.append(replace(base, skip=why))
                        continue
                    base = replace(base, artifact=str(Path(model.bundle) / f.path), artifact_bytes=f.bytes)
                    if runtime is None:
                        cells.append(replace(base, skip=f"{name} is not installed"))
                    elif not f.supported_on(runtime):
                        note = next((r.note for r in f.runtimes if r.runtime == runtime), "not verified")
                        cells.append(replace(base, skip=f"not verified on {runtime}: {note or 'failed'}"[:300]))
                    else:
                        cells.append(base)
    return cells


def _missing_file_reason(m: Manifest, fmt: str, precision: str) -> str:
    tool = m.tool.get(fmt, {}) if isinstance(m.tool, dict) else {}
    for key in ("int8_error", "errors"):
        v = tool.get(key)
        if isinstance(v, dict):
            v = v.get(precision)
        if v:
            return f"no {fmt} {precision} file in the bundle: {v}"[:300]
    return f"no {fmt} {precision} file in the bundle"


def _torch_cell(model: ModelSpec, precision: str, threads: int, has_torch: bool) -> CellSpec:
    base = CellSpec(model.key, TORCH, "torch", precision, threads, artifact=model.checkpoint)
    if precision != "fp32":
        return replace(base, skip="PyTorch eager is measured on the fp32 checkpoint; int8 is the exported files'")
    if not has_torch:
        return replace(base, skip="torch is not installed (device install)")
    if model.checkpoint is None:
        return replace(base, skip=f"no checkpoint: {model.checkpoint_note}")
    # A deployable artifact would be the fp32 state_dict: params x 4 bytes (the .pt also holds optimizer state).
    size = 4 * model.params if model.params else None
    return replace(base, artifact_bytes=size)


# ---------------------------------------------------------------------------------------------------------------------
# Held-out evaluation data
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """Feature windows a model's graph takes (T, 1, n_bands, C, n_freq) and their key strings (⌫ kept)."""

    features: list[np.ndarray]
    targets: list[str]
    source: str
    data: dict[str, Any]

    @property
    def characters(self) -> int:
        return sum(len(t) for t in self.targets)

    @property
    def frames(self) -> int:
        return sum(len(x) for x in self.features)

    def save(self, path: Path) -> Path:
        with open(path, "wb") as f:
            arrays: dict[str, Any] = {f"features_{i}": x.astype(np.float32) for i, x in enumerate(self.features)}
            np.savez(f, **arrays)
        return path

    def describe(self) -> dict[str, Any]:
        return {
            **self.data,
            "source": self.source,
            "windows": len(self.features),
            "frames": self.frames,
            "characters": self.characters,
        }


def eval_from_reference(bundle_dir: str | Path, max_windows: int | None = None) -> EvalSet:
    """The bundle's own held-out windows (reference.npz, hash-checked): what export measured accuracy on."""
    from emgkey import charset
    from emgkey.export.verify import reference_of

    b = load_bundle(bundle_dir)
    ref, _ = reference_of(b)
    n = len(ref.features) if max_windows is None else min(max_windows, len(ref.features))
    info = b.manifest.accuracy.get("verification", {}).get("reference", {})
    subset = info.get("subset", "test")
    return EvalSet(
        features=ref.features[:n],
        targets=[charset.labels_to_str([int(v) for v in y]) for y in ref.targets[:n]],
        source=f"bundle reference windows ({subset} sessions held out at export)",
        data=data_kind_of_manifest(b.manifest),
    )


def _session_paths(paths: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.rglob("*.hdf5")))
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError(f"--eval-data {p}: no such file or folder")
    if not out:
        raise ConfigError(f"--eval-data {list(paths)}: no .hdf5 session files")
    return out


def sessions_by_profile(paths: Sequence[str]) -> dict[str, list[str]]:
    """Session files (or folders of them) grouped by the device profile they were recorded with."""
    from emgkey.session import SessionFile

    out: dict[str, list[str]] = {}
    for p in _session_paths(paths):
        with SessionFile(p) as f:
            out.setdefault(f.profile.name, []).append(str(p))
    return out


def eval_from_sessions(
    manifest: Manifest, paths: Sequence[str], window_s: float | None = None, max_windows: int | None = None
) -> EvalSet:
    """Session files -> features exactly as the device computes them (``emgkey.features`` + the manifest's
    normalization), cut into ``window_s`` windows (None: whole sessions) with their ground truth."""
    from emgkey.edge_runtime.recognizer import FeatureNormalization
    from emgkey.features import compute_features
    from emgkey.session import SessionFile

    prof = manifest.profile
    frame_shape = (prof.n_bands, prof.channels_per_band, manifest.features.n_freq)
    norm = FeatureNormalization.from_manifest(manifest.normalization, frame_shape, prof.adc_scale_uv_per_count)
    feats, targets, kinds = [], [], set()
    files = _session_paths(paths)
    for p in files:
        with SessionFile(p) as f:
            if f.profile.name != prof.name:
                raise ConfigError(f"{p} was recorded with {f.profile.name!r}; the bundle is for {prof.name!r}")
            kinds.add("simulated" if f.metadata.get("simulated") else "real")
            ts = f.timestamps
            step = len(ts) if window_s is None else max(int(window_s * f.sample_rate_hz), manifest.features.n_fft)
            for a in range(0, len(ts), step):
                b = min(a + step, len(ts))
                if b - a < manifest.features.n_fft:
                    continue
                target = f.ground_truth(float(ts[a]), float(ts[b - 1])).label_str
                x = norm(compute_features(f.read(a, b), manifest.features))[:, None]
                feats.append(x)
                targets.append(target)
                if max_windows is not None and len(feats) >= max_windows:
                    break
        if max_windows is not None and len(feats) >= max_windows:
            break
    kind = "simulated" if "simulated" in kinds else "real"
    if len(kinds) > 1:
        kind = "simulated"  # mixed: the weaker claim
    return EvalSet(
        feats,
        targets,
        source=f"{len(files)} session file(s) ({'whole sessions' if window_s is None else f'{window_s:g} s windows'})",
        data={"kind": kind, "label": "/".join(sorted(kinds)), "note": ", ".join(str(p) for p in files[:5])},
    )


# ---------------------------------------------------------------------------------------------------------------------
# One cell in a fresh process
# ---------------------------------------------------------------------------------------------------------------------


def _statm_mb() -> float:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def _peak_mb() -> float:
    """VmHWM: this process's own peak (``ru_maxrss`` would include the parent's, inherited at fork)."""
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _TorchStudent:
    """PyTorch eager ``forward_chunk`` with the state kept as tensors between calls (as an app would)."""

    fixed_chunk = True
    runtime = TORCH

    def __init__(self, model: Any, signature: Any) -> None:
        self.model = model
        self.signature = signature

    def init_state(self) -> dict[str, Any]:
        return dict(self.model.init_state(1))

    def run(self, features: np.ndarray, state: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        import torch

        with torch.inference_mode():
            lp, new = self.model.forward_chunk(torch.from_numpy(np.ascontiguousarray(features)), state)
        return lp.numpy().reshape(features.shape[0], -1), new


class _TorchTeacher:
    """A whole-window forward: the teacher has no streaming form."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def run(self, features: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(np.ascontiguousarray(features)))
        return out.numpy()[:, 0]


def _open_cell_engine(spec: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    info: dict[str, Any] = {}
    if spec["runtime"] == TORCH:
        import torch

        torch.set_num_threads(int(spec["threads"]))
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        from emgkey.train.checkpoint import load_model

        model, meta = load_model(spec["artifact"])
        info["params"] = int(sum(p.numel() for p in model.parameters()))
        if spec.get("want_macs"):
            from emgkey.features import FeatureConfig
            from emgkey.train.models.complexity import macs_per_second

            fc = FeatureConfig.from_dict(meta["feature_config"])
            info["macs_per_s"] = int(macs_per_second(model, fc.frame_rate_hz))
        if spec["role"] == "teacher":
            return _TorchTeacher(model), info
        from emgkey.bundle import StreamingSignature

        sig = StreamingSignature.from_dict(spec["signature"])
        if int(getattr(model, "chunk_frames", sig.chunk_frames)) != sig.chunk_frames:
            raise ConfigError(f"checkpoint chunk {model.chunk_frames} != bundle chunk {sig.chunk_frames}")
        return _TorchStudent(model, sig), info
    from emgkey.edge_runtime.engines import open_engine

    bundle = load_bundle(spec["bundle"], verify_hashes=False)  # the parent checked the hashes
    engine = open_engine(bundle, precision=spec["precision"], format=spec["format"], threads=int(spec["threads"]))
    info["runtime"] = engine.runtime
    return engine, info


def _child_main(argv: Sequence[str] | None = None) -> None:
    """Entry of a cell's subprocess: open one engine, time it, optionally write its emissions."""
    spec = json.loads((argv or sys.argv)[1])
    base_mb = _statm_mb()  # python + numpy + emgkey.bundle: what every cell pays
    engine, info = _open_cell_engine(spec)
    loaded_mb = _statm_mb()
    evalset = np.load(spec["evalset"])
    x = evalset["features_0"].astype(np.float32)  # (T, 1, nb, C, F)
    times: list[float] = []
    if spec["role"] == "teacher":
        window = x[: min(len(x), int(spec["teacher_frames"]))]
        warm, calls = max(1, spec["warmup"] // 10), max(3, spec["calls"] // 10)  # a window costs ~10 chunks
        for i in range(warm + calls):
            t0 = time.perf_counter()
            engine.run(window)
            if i >= warm:
                times.append(time.perf_counter() - t0)
    else:
        m = engine.signature.chunk_frames
        chunks = [x[t : t + m] for t in range(0, len(x) - m + 1, m)] or [np.resize(x, (m, *x.shape[1:]))]
        state = engine.init_state()
        for i in range(spec["warmup"] + spec["calls"]):
            chunk = chunks[i % len(chunks)]
            t0 = time.perf_counter()
            _, state = engine.run(chunk, state)
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t0)
    peak_mb = _peak_mb()  # the runtime's peak: before the evaluation data is loaded
    after_mb = _statm_mb()
    if spec.get("emissions"):
        from emgkey.edge_runtime.engines import run_streaming

        n_windows = sum(1 for k in evalset.files if k.startswith("features_"))
        out = {}
        for i in range(n_windows):
            feats = evalset[f"features_{i}"].astype(np.float32)
            out[f"e{i}"] = engine.run(feats) if spec["role"] == "teacher" else run_streaming(engine, feats)
        with open(spec["emissions"], "wb") as f:
            np.savez(f, **out)
    print(
        json.dumps(
            {
                "times_s": times,
                "rss_mb": {"baseline": base_mb, "loaded": loaded_mb, "after_run": after_mb, "peak": peak_mb},
                "torch_imported": "torch" in sys.modules,
                **info,
            }
        )
    )


_CHILD_CODE = "import sys; from emgkey.benchmarks.bench import _child_main; _child_main(sys.argv)"


def run_cell(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One run of one cell in a fresh interpreter; ``{"error": ...}`` when it fails."""
    env = dict(os.environ)
    env.setdefault("PYTHONHASHSEED", "0")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": (tail[-1] if tail else f"exit code {proc.returncode}")[:400]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------------------------------


def latency_stats(times_s: Sequence[float]) -> dict[str, float]:
    a = np.asarray(times_s, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "mean": float("nan"), "n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "mean": float(a.mean()), "n": int(a.size)}


def median_of(runs: Sequence[dict[str, float]], key: str) -> float:
    vals = [r[key] for r in runs if r.get(key) is not None and np.isfinite(r[key])]
    return float(np.median(vals)) if vals else float("nan")


def cdf_points(times_s: Sequence[float], n: int = 101) -> list[float]:
    """Latency (ms) at n evenly spaced quantiles 0..1 of every timed call of every run."""
    if not times_s:
        return []
    q = np.linspace(0, 100, n)
    return [round(float(v), 5) for v in np.percentile(np.asarray(times_s) * 1e3, q)]


def _round(x: Any, digits: int = 6) -> Any:
    """Floats to ``digits`` significant digits (NaN/inf -> None), recursively: plain, stable JSON."""
    if isinstance(x, float | np.floating):
        return float(f"{float(x):.{digits}g}") if np.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _round(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_round(v, digits) for v in x]
    return x


def decode_cer(emissions: Sequence[np.ndarray], targets: Sequence[str], factory: Callable[[], Any]) -> dict[str, float]:
    """CER (emg2qwerty's: keys as typed, ⌫ kept) of fresh decoders over each window, and decode time per frame."""
    from emgkey import charset
    from emgkey.metrics import EditCounts, edit_counts

    counts = EditCounts()
    t_total, frames = 0.0, 0
    for em, target in zip(emissions, targets, strict=True):
        dec = factory()
        dec.reset()
        t0 = time.perf_counter()
        labels = dec.decode(np.ascontiguousarray(em, dtype=np.float32), finish=True)
        t_total += time.perf_counter() - t0
        frames += len(em)
        counts = counts + edit_counts(charset.labels_to_str(labels), target)
    return {**counts.as_dict(), "decode_ms_per_frame": 1e3 * t_total / max(frames, 1)}


def paired_ratios(cells: Sequence[dict[str, Any]], runs: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """Per model and thread count, every measured cell against the baseline (PyTorch fp32 eager when measured,
    else onnxruntime fp32) and against its own runtime's fp32: ratios per run (same round of the
    interleaved schedule), then the median, so drift between rounds cancels."""
    ok = {c["id"]: c for c in cells if c["status"] == "ok"}
    out: list[dict[str, Any]] = []
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in ok.values():
        groups.setdefault((c["model"], c["threads"]), []).append(c)
    for (model, threads), group in sorted(groups.items()):
        by = {(c["runtime"], c["precision"]): c for c in group}
        base = by.get((TORCH, "fp32")) or by.get((ORT, "fp32"))
        for c in group:
            pairs = []
            if base is not None and c is not base:
                pairs.append(("baseline", base))
            same = by.get((c["runtime"], "fp32"))
            if c["precision"] == "int8" and same is not None and same is not base:
                pairs.append(("fp32_same_runtime", same))
            for kind, ref in pairs:
                a, b = runs[c["id"]], runs[ref["id"]]
                n = min(len(a), len(b))
                speed50 = [b[i]["p50"] / a[i]["p50"] for i in range(n) if a[i]["p50"] > 0]
                speed99 = [b[i]["p99"] / a[i]["p99"] for i in range(n) if a[i]["p99"] > 0]
                rss = [a[i]["peak_mb"] / b[i]["peak_mb"] for i in range(n) if b[i]["peak_mb"] > 0]
                size = (
                    c["artifact_bytes"] / ref["artifact_bytes"]
                    if c.get("artifact_bytes") and ref.get("artifact_bytes")
                    else None
                )
                out.append(
                    {
                        "model": model,
                        "threads": threads,
                        "kind": kind,
                        "cell": f"{c['runtime']} {c['precision']}",
                        "versus": f"{ref['runtime']} {ref['precision']}",
                        "speedup_p50": float(np.median(speed50)) if speed50 else None,
                        "speedup_p99": float(np.median(speed99)) if speed99 else None,
                        "rss_ratio": float(np.median(rss)) if rss else None,
                        "size_ratio": size,
                        "paired_runs": n,
                    }
                )
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Calibration results (benchmarks/calibration_bench.py)
# ---------------------------------------------------------------------------------------------------------------------

_CURVE_KEYS = ("summary", "curve", "points", "results", "budgets", "rows")
_SECONDS_KEYS = ("seconds", "calibration_s", "calibration_seconds", "calib_seconds", "budget_s")
_AFTER_KEYS = ("cer_after", "cer_calibrated", "calibrated_cer", "cer")
_BEFORE_KEYS = ("cer_before", "cer_generic", "generic_cer", "baseline_cer", "uncalibrated_cer")


def _first(d: dict[str, Any], keys: Sequence[str]) -> float | None:
    for k in keys:
        v = d.get(k)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    return None


def load_calibration(path: str | Path) -> dict[str, Any]:
    """Normalize a calibration result file to ``{curve: [{model, seconds, cer_before, cer_after, gain_points, n}]}``.

    Reads ``benchmarks/calibration_bench.py``'s ``calibration_bench.json`` (its ``summary``: one entry per
    student, strategy and seconds, averaged over users) and simpler files: a list of points under one of
    ``summary``, ``curve``, ``points``, ``results``, ``budgets``, ``rows`` (or a bare list), each with the
    calibration seconds (``seconds`` / ``calibration_s``...) and the CER after (``cer_after`` / ``cer``...); the
    CER before (``cer_before`` / ``generic_cer``...) per point or once at the top level; optional ``model`` or
    ``student`` (+ ``strategy``), ``cer_deployed`` and ``compute_s_median``; ``data`` (``"simulated"``...) at the
    top level. Points with the same model and seconds are averaged (e.g. over users); points without a CER
    (a failed calibration) are counted and left out.
    """
    raw = json.loads(Path(path).read_text())
    top: dict[str, Any] = raw if isinstance(raw, dict) else {}
    points = raw if isinstance(raw, list) else next((raw[k] for k in _CURVE_KEYS if isinstance(raw.get(k), list)), None)
    if points is None:
        raise ConfigError(f"{path}: no list of points under any of {list(_CURVE_KEYS)}")
    before_top = _first(top, _BEFORE_KEYS)
    groups: dict[tuple[str, float], list[dict[str, float | None]]] = {}
    missing = 0
    for p in points:
        if not isinstance(p, dict):
            raise ConfigError(f"{path}: calibration points must be objects, got {p!r}")
        secs = _first(p, _SECONDS_KEYS)
        if secs is None or not any(k in p for k in _AFTER_KEYS):
            raise ConfigError(
                f"{path}: a point needs seconds ({'/'.join(_SECONDS_KEYS)}) and CER after ({'/'.join(_AFTER_KEYS)}); "
                f"got keys {sorted(p)}"
            )
        after = _first(p, _AFTER_KEYS)
        before = _first(p, _BEFORE_KEYS) if any(k in p for k in _BEFORE_KEYS) else before_top
        if after is None or before is None:
            if before is None and after is not None:
                raise ConfigError(f"{path}: no CER before ({'/'.join(_BEFORE_KEYS)}) per point or at the top level")
            missing += 1
            continue
        model = str(p.get("model") or p.get("student") or top.get("model") or "")
        if p.get("strategy"):
            model = f"{model} / {p['strategy']}" if model else str(p["strategy"])
        groups.setdefault((model, secs), []).append(
            {
                "before": before,
                "after": after,
                "deployed": _first(p, ("cer_deployed",)),
                "compute_s": _first(p, ("compute_s_median", "compute_s")),
            }
        )
    if not groups:
        raise ConfigError(f"{path}: no calibration point has a CER ({missing} without one)")

    def mean(vals: list[dict[str, float | None]], key: str) -> float | None:
        xs = [x for v in vals if (x := v[key]) is not None]
        return float(np.mean(xs)) if xs else None

    curve = []
    for (model, secs), vals in sorted(groups.items()):
        b, a = mean(vals, "before"), mean(vals, "after")
        assert a is not None and b is not None
        point = {"model": model, "seconds": secs, "cer_before": b, "cer_after": a, "gain_points": b - a}
        point.update(cer_deployed=mean(vals, "deployed"), compute_s=mean(vals, "compute_s"), n=len(vals))
        curve.append(point)
    data = str(top.get("data", top.get("data_kind", "unknown")))
    kind = "simulated" if "sim" in data.lower() else ("real" if data in ("real", "emg2qwerty") else data)
    return {"source": str(path), "data": {"kind": kind}, "curve": curve, "points_without_cer": missing}


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------


def _teacher_spec(path: Path, key: str) -> ModelSpec:
    """A teacher checkpoint's model row (needs torch: its config is inside the .pt)."""
    from emgkey.features import FeatureConfig
    from emgkey.train.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    fc = FeatureConfig.from_dict(ck["feature_config"])
    return ModelSpec(
        key=key,
        name=str(ck["model_config"]["name"]),
        role="teacher",
        profile=str(ck["profile"]["name"]),
        checkpoint=str(path),
        checkpoint_note="given",
        hop=fc.hop,
        n_fft=fc.n_fft,
        sample_rate_hz=fc.sample_rate_hz,
        distilled=False,
    )


def _is_streaming_checkpoint(path: Path) -> bool:
    from emgkey.train.checkpoint import load_checkpoint
    from emgkey.train.models.registry import STREAMING_MODELS

    return str(load_checkpoint(path)["model_config"]["name"]) in STREAMING_MODELS


def _model_name(bundle: Path) -> str:
    return str(read_manifest(bundle).model.get("name", bundle.name))


def export_checkpoint(ckpt: Path, data: str, split: str, out: Path) -> Path:
    """A streaming checkpoint -> a verified bundle (reused when one from the same checkpoint exists)."""
    if (out / MANIFEST_NAME).is_file():
        with contextlib.suppress(Exception):
            if read_manifest(out).model.get("checkpoint_sha256") == sha256_file(ckpt):
                log.info("reusing %s (exported from %s)", out, ckpt)
                return out
    from emgkey.export.bundle_writer import BundleOptions, write_bundle

    log.info("exporting %s -> %s", ckpt, out)
    write_bundle(ckpt, data, split, out, BundleOptions(force=True))
    return out


def collect_models(
    bundles: Sequence[str],
    checkpoints: Sequence[str],
    *,
    data: str | None = None,
    split: str | None = None,
    out: Path,
) -> list[ModelSpec]:
    """Bundles as given; checkpoints matched to a bundle by sha256 (its PyTorch eager source), exported first
    when they stream and match none (needs ``data`` and ``split``), or taken as teachers."""
    bundle_paths = discover_bundles(bundles) if bundles else []
    ck_paths = [Path(c) for c in checkpoints]
    by_sha = {sha256_file(c): c for c in ck_paths}
    known = {read_manifest(b).model.get("checkpoint_sha256") for b in bundle_paths}
    teachers: list[Path] = []
    for sha, c in by_sha.items():
        if sha in known:
            continue
        if not torch_available():
            raise ConfigError(f"{c}: reading a checkpoint needs torch (pip install 'emgkey[export]')")
        if _is_streaming_checkpoint(c):
            if not (data and split):
                raise ConfigError(f"{c} has no bundle yet: pass --data DIR --split SPLIT to export it first")
            name = checkpoint_name(c)
            bundle_paths.append(export_checkpoint(c, data, split, out / "bundles" / name))
        else:
            teachers.append(c)
    # an installed copy lives in a folder called "bundle": name it after its model instead
    names = [b.name if b.name not in ("bundle", "model") else _model_name(b) for b in bundle_paths] + [
        checkpoint_name(t) for t in teachers
    ]
    keys = model_keys([*bundle_paths, *teachers], names)
    models = [student_from_bundle(b, k, by_sha) for b, k in zip(bundle_paths, keys)]
    models += [_teacher_spec(t, k) for t, k in zip(teachers, keys[len(bundle_paths) :])]
    if not models:
        raise ConfigError("nothing to benchmark: give --bundle/--bundles or --checkpoints")
    return models


def _evalsets(models: Sequence[ModelSpec], cfg: BenchConfig) -> dict[str, EvalSet]:
    """Per model; a teacher shares the held-out windows of the first student of its profile and front end."""
    out: dict[str, EvalSet] = {}
    by_profile = sessions_by_profile(cfg.eval_data) if cfg.eval_data else {}
    for m in models:
        if m.role != "student" or m.bundle is None:
            continue
        files = by_profile.get(m.profile, []) if cfg.eval_data else []
        if files:
            out[m.key] = eval_from_sessions(read_manifest(m.bundle), files, cfg.eval_window_s, cfg.max_eval_windows)
        else:
            out[m.key] = eval_from_reference(m.bundle, cfg.max_eval_windows)
            if cfg.eval_data:  # said in the data record, not hidden: this model's CER is on its own windows
                out[m.key].source += f" (no --eval-data session is a {m.profile!r} recording)"
    for m in models:
        if m.role == "teacher":
            peer = next(
                (
                    s
                    for s in models
                    if s.role == "student"
                    and s.profile == m.profile
                    and (s.hop, s.n_fft, s.sample_rate_hz) == (m.hop, m.n_fft, m.sample_rate_hz)
                    and s.key in out
                ),
                None,
            )
            if peer is not None:
                out[m.key] = out[peer.key]
                m.data = {**out[peer.key].data, "shared_with": peer.key}
    for m in models:
        if m.key in out:
            m.data = {**m.data, **out[m.key].describe()}
    return out


def run(
    models: Sequence[ModelSpec],
    cfg: BenchConfig,
    work: Path,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every cell; return the results document (``SCHEMA`` v``SCHEMA_VERSION``)."""
    from emgkey.export.verify import installed_runtimes

    say = progress or (lambda s: log.info("%s", s))
    t_start = time.perf_counter()
    device = describe_device(cfg.device_label)
    installed = installed_runtimes()
    has_torch = torch_available() and TORCH in cfg.runtimes
    threads = resolve_threads(cfg.threads, usable_cores())
    for m in models:  # hashes once, here; the cells open the files without re-hashing
        if m.bundle is not None:
            load_bundle(m.bundle)
    evalsets = _evalsets(models, cfg)
    cells = plan_cells(models, cfg, installed, threads, has_torch)
    by_key = {m.key: m for m in models}
    work.mkdir(parents=True, exist_ok=True)
    eval_paths = {k: e.save(work / f"eval_{i}.npz") for i, (k, e) in enumerate(evalsets.items())}

    runnable = [c for c in cells if not c.skip and c.model in eval_paths]
    for c in cells:
        if not c.skip and c.model not in eval_paths:
            log.warning("%s: no evaluation data (a teacher needs a student bundle of its profile)", c.id)
    emit_threads = min(threads)
    first_of_engine: dict[str, str] = {}
    for c in runnable:
        if c.threads == emit_threads:
            first_of_engine.setdefault(c.engine_id, c.id)
    runs: dict[str, list[dict[str, Any]]] = {c.id: [] for c in runnable}
    times_all: dict[str, list[float]] = {c.id: [] for c in runnable}
    errors: dict[str, str] = {}
    extra: dict[str, dict[str, Any]] = {}
    total = len(runnable) * cfg.repeats
    done = 0
    for r in range(cfg.repeats):
        order = runnable[r % max(len(runnable), 1) :] + runnable[: r % max(len(runnable), 1)]
        for c in order:
            done += 1
            if c.id in errors:
                continue
            m = by_key[c.model]
            spec = {
                "runtime": c.runtime,
                "format": c.format,
                "precision": c.precision,
                "threads": c.threads,
                "role": m.role,
                "bundle": m.bundle,
                "artifact": c.artifact,
                "evalset": str(eval_paths[c.model]),
                "warmup": cfg.warmup,
                "calls": cfg.calls,
                "teacher_frames": max(len(x) for x in evalsets[c.model].features),
                "want_macs": m.role == "teacher" and r == 0,
                "signature": read_manifest(m.bundle).streaming.to_dict() if m.bundle else None,
            }
            if r == 0 and first_of_engine.get(c.engine_id) == c.id:
                spec["emissions"] = str(work / f"em_{len(extra)}.npz")
            say(f"[{done}/{total}] {c.model} {c.runtime} {c.precision} x{c.threads} (run {r + 1}/{cfg.repeats})")
            res = run_cell(spec, cfg.cell_timeout_s)
            if "error" in res:
                errors[c.id] = res["error"]
                log.warning("%s failed: %s", c.id, res["error"])
                continue
            stats = latency_stats(res["times_s"])
            runs[c.id].append(
                {**stats, "peak_mb": res["rss_mb"]["peak"], **{f"rss_{k}": v for k, v in res["rss_mb"].items()}}
            )
            times_all[c.id].extend(res["times_s"])
            x = extra.setdefault(c.id, {})
            x.update({k: v for k, v in res.items() if k in ("params", "macs_per_s", "runtime", "torch_imported")})
            if "emissions" in spec:
                x["emissions"] = spec["emissions"]
    for m in models:  # a teacher's size comes from its checkpoint
        for c in runnable:
            if c.model == m.key and c.id in extra:
                m.params = m.params or extra[c.id].get("params")
                m.macs_per_s = m.macs_per_s or extra[c.id].get("macs_per_s")

    # CER: decode each engine's emissions once (threads do not change them).
    decoders = _decoder_factories(cfg)
    cer_by_engine: dict[str, dict[str, Any]] = {}
    for c in runnable:
        path = extra.get(c.id, {}).get("emissions")
        if not path:
            continue
        with np.load(path) as z:
            ems = [z[f"e{i}"] for i in range(len(z.files))]
        ev = evalsets[c.model]
        res_cer = {}
        for name, factory in decoders.items():
            say(f"decoding {c.engine_id} ({name})")
            res_cer[name] = _round(decode_cer(ems, ev.targets, factory))
        cer_by_engine[c.engine_id] = res_cer

    out_cells = []
    for c in cells:
        m = by_key[c.model]
        d: dict[str, Any] = {
            "id": c.id,
            "model": c.model,
            "runtime": c.runtime,
            "format": c.format,
            "precision": c.precision,
            "threads": c.threads,
            "artifact": c.artifact,
            "artifact_bytes": c.artifact_bytes or (4 * m.params if c.runtime == TORCH and m.params else None),
        }
        if c.skip:
            d.update(status="skipped", reason=c.skip)
        elif c.id in errors:
            d.update(status="failed", reason=errors[c.id])
        elif c.id not in runs or not runs[c.id]:
            d.update(status="skipped", reason="no evaluation data for this model")
        else:
            rr = runs[c.id]
            lat = {k: median_of(rr, k) for k in ("p50", "p95", "p99", "mean")}
            unit_ms = m.chunk_ms if m.role == "student" else _teacher_window_ms(m, evalsets[c.model])
            d.update(
                status="ok",
                unit="chunk" if m.role == "student" else "window",
                unit_signal_ms=unit_ms,
                latency_ms=lat,
                latency_runs_ms=[{k: r[k] for k in ("p50", "p95", "p99")} for r in rr],
                calls_per_run=cfg.calls if m.role == "student" else max(3, cfg.calls // 10),
                runs=len(rr),
                cdf_ms=cdf_points(times_all[c.id]),
                rtf=lat["mean"] / unit_ms if unit_ms else None,
                rss_mb={
                    "baseline": median_of(rr, "rss_baseline"),
                    "loaded": median_of(rr, "rss_loaded"),
                    "peak": median_of(rr, "rss_peak"),
                },
                torch_imported=extra.get(c.id, {}).get("torch_imported"),
                cer=cer_by_engine.get(c.engine_id, {}),
                cer_from_threads=emit_threads,
            )
            if m.role == "teacher":
                d["algorithmic_ms"] = unit_ms + 1e3 * m.n_fft / m.sample_rate_hz
        out_cells.append(_round(d))
    ratios = paired_ratios(out_cells, {k: v for k, v in runs.items()})
    model_rows = [_round(m.to_dict()) for m in models]
    calibration = load_calibration(cfg.calibration) if cfg.calibration else None
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "settings": {
            "threads": list(threads),
            "precisions": list(cfg.precisions),
            "runtimes": list(cfg.runtimes),
            "warmup": cfg.warmup,
            "calls": cfg.calls,
            "repeats": cfg.repeats,
            "decoders": list(decoders),
            "lm": _lm_info(cfg.lm),
            "beam_size": cfg.beam_size,
            "eval_data": list(cfg.eval_data) or "bundle reference windows",
            "runtimes_installed": installed,
            "torch_available": torch_available(),
        },
        "models": model_rows,
        "cells": out_cells,
        "ratios": [_round(r) for r in ratios],
        "calibration": _round(calibration) if calibration else None,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }


def _teacher_window_ms(m: ModelSpec, ev: EvalSet) -> float:
    frames = max(len(x) for x in ev.features)
    return 1e3 * ((frames - 1) * m.hop + m.n_fft) / m.sample_rate_hz


def _lm_info(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    p = Path(path)
    return {"path": str(p), "bytes": p.stat().st_size, "sha256": sha256_file(p)}


def _decoder_factories(cfg: BenchConfig) -> dict[str, Callable[[], Any]]:
    from emgkey.edge_runtime.recognizer import make_decoder_factory

    out: dict[str, Callable[[], Any]] = {}
    if "greedy" in cfg.decoders:
        out["greedy"] = make_decoder_factory("greedy")
    if "beam" in cfg.decoders:
        out["beam_lm" if cfg.lm else "beam"] = make_decoder_factory("beam", lm_path=cfg.lm, beam_size=cfg.beam_size)
    return out


def build_default_lm(out: Path, order: int = 5) -> Path:
    """A pruned character n-gram LM (the runtime's own builder, numpy only), reused when present."""
    from emgkey.corpus import load_lm_text
    from emgkey.edge_runtime.cli import lm_extra_chars
    from emgkey.edge_runtime.lm import LMBuildConfig, build_arpa

    path = out / f"lm{order}.arpa"
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        prune = tuple([0] * (order - 2) + [1, 1]) if order >= 3 else ()
        build_arpa(path, list(load_lm_text()), LMBuildConfig(order=order, prune=prune, extra_chars=lm_extra_chars()))
    return path


def write_results(results: dict[str, Any], out: Path) -> Path:
    from emgkey.atomic import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")


def bench(
    bundles: Sequence[str],
    checkpoints: Sequence[str],
    out: Path,
    cfg: BenchConfig,
    *,
    data: str | None = None,
    split: str | None = None,
) -> dict[str, Any]:
    """Collect models, measure, write ``out/results.json``; the scratch files go to a temporary folder."""
    models = collect_models(bundles, checkpoints, data=data, split=split, out=out)
    with tempfile.TemporaryDirectory(prefix="emgkey-bench-") as tmp:
        results = run(models, cfg, Path(tmp))
    write_results(results, out)
    return results
