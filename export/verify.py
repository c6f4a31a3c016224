"""``emgkey verify BUNDLE``: run every model file on every installed runtime against the fp32 reference.

Torch-free on purpose (numpy, onnxruntime, LiteRT only): it runs on the device,
where the question is "does *this* runtime compute what was evaluated?". The
graphs are driven by the edge runtime's own engines (``emgkey.edge_runtime.engines``),
so what is verified is exactly what ``emgkey run`` executes.

The bundle carries its reference (``reference.npz``, hashed in the manifest under
``accuracy.verification.reference``): held-out feature windows, their labels,
and the fp32 torch model's log-probabilities for the streaming protocol
(``engines.run_streaming``: fixed chunks, last chunk padded by repeating its last
frame) and for the offline graph. For each (file, runtime) it measures:

- ``max_abs_logprob_diff``: max |log p_runtime - log p_ref| over frames and over the
  classes that matter (reference or runtime probability >= ``relevant_prob``; a class at
  1e-9 moving to 1e-11 is 4.6 nats of nothing);
- ``argmax_agreement``: fraction of frames with the same best class;
- ``cer_delta``: greedy-decoded CER on the reference windows minus the reference's, in points.
  Errors are whole characters, so the tolerance is read as the smallest whole number of
  characters not below it (``cer_limit``): on a 61-character reference a 1-point tolerance
  allows one extra error (1.6 points), not none; on 700 characters, eight.

A pair within the tolerances for its precision is ``supported``; any other is
recorded as unsupported with the reason, and ``require_runtime`` (hence
``open_engine``) refuses it. The manifest is rewritten atomically. A runtime
that is not installed is not recorded (a device runs ``emgkey verify`` itself).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emgkey import charset
from emgkey.bundle import (
    Bundle,
    BundleError,
    Manifest,
    ModelFile,
    RuntimeCheck,
    load_bundle,
    sha256_file,
    write_manifest,
)
from emgkey.decoding import greedy_decode
from emgkey.metrics import EditCounts, edit_counts

log = logging.getLogger(__name__)

REFERENCE_NAME = "reference.npz"
RUNTIMES: tuple[str, ...] = ("onnxruntime", "ai-edge-litert", "tflite-runtime")
_FORMAT_RUNTIMES = {"onnx": ("onnxruntime",), "tflite": ("ai-edge-litert", "tflite-runtime")}
_MODULES = {
    "onnxruntime": "onnxruntime",
    "ai-edge-litert": "ai_edge_litert.interpreter",
    "tflite-runtime": "tflite_runtime.interpreter",
}


@dataclass(frozen=True)
class Tolerance:
    max_abs_logprob_diff: float
    min_argmax_agreement: float
    max_cer_delta: float  # points, runtime CER - reference CER


@dataclass(frozen=True)
class Tolerances:
    """Per precision. fp32 must match the reference to float rounding; int8 within the export target."""

    fp32: Tolerance = Tolerance(max_abs_logprob_diff=1e-3, min_argmax_agreement=0.995, max_cer_delta=0.5)
    int8: Tolerance = Tolerance(max_abs_logprob_diff=3.0, min_argmax_agreement=0.90, max_cer_delta=1.0)
    relevant_prob: float = 1e-3

    def for_precision(self, precision: str) -> Tolerance:
        return self.fp32 if precision == "fp32" else self.int8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> Tolerances:
        if not d:
            return cls()
        return cls(
            fp32=Tolerance(**d.get("fp32", asdict(cls().fp32))),
            int8=Tolerance(**d.get("int8", asdict(cls().int8))),
            relevant_prob=float(d.get("relevant_prob", cls().relevant_prob)),
        )


# ---- runtimes ------------------------------------------------------------------------------------


def runtime_version(runtime: str) -> str | None:
    """The installed version, or None when the runtime cannot be imported here."""
    try:
        mod = importlib.import_module(_MODULES[runtime])
    except Exception:  # ImportError, or a wheel built for another numpy failing at import
        return None
    dist = runtime  # the distribution names are the runtime names
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(mod, "__version__", "unknown"))


def installed_runtimes() -> dict[str, str]:
    return {r: v for r in RUNTIMES if (v := runtime_version(r)) is not None}


def open_streaming(path: Path, manifest: Manifest, runtime: str, threads: int = 1) -> Any:
    """An ``edge_runtime.engines`` streaming engine for ``path`` on exactly ``runtime``."""
    from emgkey.edge_runtime import engines

    sig = manifest.streaming
    if runtime == "onnxruntime":
        return engines.OnnxStreamingEngine(path, sig, threads)
    module = importlib.import_module(_MODULES[runtime])
    interpreter_cls = module.Interpreter
    # The engine picks its interpreter through engines.litert_interpreter_class (ai-edge-litert first);
    # verification needs each installed LiteRT runtime in turn, so it names the class for this one call.
    original = engines.litert_interpreter_class
    engines.litert_interpreter_class = lambda: (interpreter_cls, runtime)
    try:
        return engines.LiteRTStreamingEngine(path, sig, threads)
    finally:
        engines.litert_interpreter_class = original


def open_offline(path: Path, threads: int = 1) -> Any:
    from emgkey.edge_runtime import engines

    return engines.OnnxOfflineEngine(path, threads)


def run_streaming(engine: Any, features: np.ndarray) -> np.ndarray:
    from emgkey.edge_runtime import engines

    return engines.run_streaming(engine, features)


# ---- the reference ------------------------------------------------------------------------------


@dataclass
class Reference:
    """Held-out windows with fp32 reference log-probs (what every file/runtime is compared with)."""

    features: list[np.ndarray]  # (T, 1, n_bands, C, n_freq) float32
    targets: list[np.ndarray]  # (L,) int labels
    streaming: list[np.ndarray]  # (T, num_classes) fp32 log-probs through the streaming protocol
    offline: list[np.ndarray] = field(default_factory=list)  # (T_out, num_classes) offline graph reference

    def save(self, path: str | Path) -> None:
        arrays: dict[str, np.ndarray] = {"n": np.array(len(self.features))}
        for i, (x, y, s) in enumerate(zip(self.features, self.targets, self.streaming, strict=True)):
            arrays[f"features_{i}"] = x.astype(np.float16)
            arrays[f"targets_{i}"] = np.asarray(y, dtype=np.int16)
            arrays[f"streaming_{i}"] = s.astype(np.float32)
        for i, o in enumerate(self.offline):
            arrays[f"offline_{i}"] = o.astype(np.float32)
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        with np.load(path) as z:
            n = int(z["n"])
            return cls(
                features=[z[f"features_{i}"].astype(np.float32) for i in range(n)],
                targets=[z[f"targets_{i}"].astype(np.int64) for i in range(n)],
                streaming=[z[f"streaming_{i}"] for i in range(n)],
                offline=[z[f"offline_{i}"] for i in range(n) if f"offline_{i}" in z],
            )

    @staticmethod
    def round_features(x: np.ndarray) -> np.ndarray:
        """Features as stored (float16) and read back: references are computed on exactly these."""
        return x.astype(np.float16).astype(np.float32)


def reference_of(bundle: Bundle) -> tuple[Reference, Tolerances]:
    info = bundle.manifest.accuracy.get("verification", {})
    ref = info.get("reference")
    if not ref:
        raise BundleError("no_reference", "the manifest names no verification reference; re-export the bundle")
    path = bundle.root / ref["path"]
    if not path.is_file():
        raise BundleError("missing_file", f"{path} (the verification reference) is missing")
    if sha256_file(path) != ref["sha256"]:
        raise BundleError("hash_mismatch", f"{path}: the verification reference was modified; re-copy the bundle")
    return Reference.load(path), Tolerances.from_dict(info.get("tolerances"))


# ---- comparison ---------------------------------------------------------------------------------


def _cer(emissions: Sequence[np.ndarray], targets: Sequence[np.ndarray], skip: int = 0) -> tuple[float, int]:
    counts = EditCounts()
    for lp, y in zip(emissions, targets, strict=True):
        pred = charset.labels_to_str(greedy_decode(lp[skip:]))
        counts = counts + edit_counts(pred, charset.labels_to_str([int(v) for v in y]))
    return counts.cer, counts.target_len


def compare(
    got: Sequence[np.ndarray], ref: Sequence[np.ndarray], targets: Sequence[np.ndarray], relevant_prob: float
) -> dict[str, float]:
    """max |diff| over relevant classes, argmax agreement, CER(got) - CER(ref) in points."""
    floor = math.log(relevant_prob)
    max_abs, agree, frames = 0.0, 0, 0
    for g, r in zip(got, ref, strict=True):
        if g.shape != r.shape:
            return {"max_abs_logprob_diff": math.inf, "argmax_agreement": 0.0, "cer_delta": math.inf}
        if not np.all(np.isfinite(g)):
            return {"max_abs_logprob_diff": math.inf, "argmax_agreement": 0.0, "cer_delta": math.inf}
        mask = (r >= floor) | (g >= floor)
        if mask.any():
            max_abs = max(max_abs, float(np.abs(g - r)[mask].max()))
        agree += int((g.argmax(-1) == r.argmax(-1)).sum())
        frames += len(g)
    cer_got, n = _cer(got, targets)
    cer_ref, _ = _cer(ref, targets)
    return {
        "max_abs_logprob_diff": max_abs,
        "argmax_agreement": agree / max(frames, 1),
        "cer_delta": cer_got - cer_ref,
        "target_chars": float(n),
    }


def cer_limit(max_cer_delta: float, target_chars: float | None) -> float:
    """The CER-delta tolerance in points that whole characters can meet: the smallest whole number of
    characters not below ``max_cer_delta`` points of ``target_chars`` (unknown count: the tolerance as given)."""
    if not target_chars:
        return max_cer_delta
    chars = math.ceil(max_cer_delta * target_chars / 100.0 - 1e-9)
    return 100.0 * chars / target_chars


def judge(metrics: Mapping[str, float], tol: Tolerance) -> tuple[bool, str]:
    problems = []
    if not metrics["max_abs_logprob_diff"] <= tol.max_abs_logprob_diff:
        problems.append(f"max |dlogp| {metrics['max_abs_logprob_diff']:.3g} > {tol.max_abs_logprob_diff:g}")
    if not metrics["argmax_agreement"] >= tol.min_argmax_agreement:
        problems.append(f"argmax agreement {metrics['argmax_agreement']:.3f} < {tol.min_argmax_agreement:g}")
    n = metrics.get("target_chars")
    limit = cer_limit(tol.max_cer_delta, n)
    if not metrics["cer_delta"] <= limit + 1e-9:
        of = f" ({round(limit * n / 100)} of {n:.0f} characters)" if n else ""
        problems.append(f"CER +{metrics['cer_delta']:.2f} points > {tol.max_cer_delta:g}{of}")
    return not problems, "; ".join(problems)


def run_file(bundle: Bundle, f: ModelFile, runtime: str, ref: Reference) -> list[np.ndarray]:
    """The file's log-probs on every reference window, on ``runtime``."""
    path = bundle.path_of(f)
    if f.graph == "streaming":
        engine = open_streaming(path, bundle.manifest, runtime)
        return [run_streaming(engine, x) for x in ref.features]
    engine = open_offline(path)
    return [engine.run(x) for x in ref.features]


def check_file(
    bundle: Bundle, f: ModelFile, runtime: str, version: str, ref: Reference, tols: Tolerances
) -> RuntimeCheck:
    expected = ref.streaming if f.graph == "streaming" else ref.offline
    if f.graph == "offline":
        fixed = bundle.manifest.model.get("offline_graph", {}).get("frames")
        if fixed is not None and any(len(x) != fixed for x in ref.features):
            return RuntimeCheck(runtime, version, False, note=f"offline graph is fixed at {fixed} frames; not verified")
    try:
        got = run_file(bundle, f, runtime, ref)
    except Exception as exc:  # a runtime that cannot load or run the file does not support it
        first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        return RuntimeCheck(runtime, version, False, note=f"fails to run: {first}")
    metrics = compare(got, expected, ref.targets, tols.relevant_prob)
    ok, why = judge(metrics, tols.for_precision(f.precision))
    clean = {k: (None if not math.isfinite(v) else round(float(v), 6)) for k, v in metrics.items()}
    return RuntimeCheck(
        runtime,
        version,
        ok,
        max_abs_logprob_diff=clean["max_abs_logprob_diff"],
        argmax_agreement=clean["argmax_agreement"],
        cer_delta=clean["cer_delta"],
        note=f"{why} ({len(ref.features)} reference windows)" if why else f"{len(ref.features)} reference windows",
    )


def verify_bundle(
    bundle_dir: str | Path,
    *,
    runtimes: Iterable[str] | None = None,
    write: bool = True,
    tolerances: Tolerances | None = None,
) -> dict[str, Any]:
    """Verify every file on every installed runtime (or those named); rewrite the manifest's results.

    Returns ``{"bundle", "runtimes": {name: version}, "results": [{file, runtime, supported, ...}]}``.
    """
    bundle = load_bundle(bundle_dir)  # hashes first: a modified file is refused before it is run
    ref, stored_tols = reference_of(bundle)
    tols = tolerances or stored_tols
    available = installed_runtimes()
    wanted = list(runtimes) if runtimes is not None else list(RUNTIMES)
    unknown = set(wanted) - set(RUNTIMES)
    if unknown:
        raise ValueError(f"unknown runtimes {sorted(unknown)}; known: {list(RUNTIMES)}")
    results = []
    for f in bundle.manifest.files:
        for runtime in _FORMAT_RUNTIMES.get(f.format, ()):
            if runtime not in wanted or runtime not in available:
                continue
            check = check_file(bundle, f, runtime, available[runtime], ref, tols)
            f.runtimes = [r for r in f.runtimes if r.runtime != runtime] + [check]
            results.append({"file": f.path, "precision": f.precision, "graph": f.graph, **asdict(check)})
            (log.info if check.supported else log.warning)(
                "%s on %s %s: %s", f.path, runtime, check.version, "supported" if check.supported else check.note
            )
    if write:
        write_manifest(bundle.root, bundle.manifest)
    return {"bundle": str(bundle.root), "runtimes": available, "results": results}
