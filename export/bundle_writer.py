"""``emgkey export bundle``: a checkpoint in, a verified bundle a device can trust out.

    emgkey export bundle --checkpoint RUN/best.pt --data DIR --split DIR/splits/generic.yaml --out BUNDLE/
                         [--precisions fp32,int8] [--formats onnx,tflite]

Steps (all in a temporary folder next to ``--out``; the manifest is written last and
the folder renamed into place, so a bundle that exists is complete):

1. the checkpoint rebuilds the model, its device profile and feature front end;
2. ONNX: the fixed-chunk streaming graph (RNNs as matrix products) and an offline
   graph (dynamic time axis when ``check_time_axis`` confirms it, else fixed);
3. int8 ONNX: every method of ``quantize.METHODS`` is tried on calibration windows
   drawn from the split's *training* sessions (states included: they come from running
   the fp32 model through the windows); candidates that fail, load wrongly or leave a
   weight in float are dropped; the rest are scored on held-out selection windows
   (validation sessions, or test when there are none) and the lowest CER wins (ties
   within 0.25 points go to the smaller file, then the faster one). Every candidate's numbers go to the manifest;
4. TFLite through litert-torch, fp32 and the best ai-edge-quantizer int8 recipe, chosen
   the same way; a conversion that fails is recorded (``tool.tflite.errors``), not faked;
5. accuracy at export on the split's test sessions: CER of the torch fp32 model and of
   every streaming file on the runtime it was built for, ``"data": "simulated"`` when the
   dataset's ``dataset.json`` says so;
6. ``reference.npz``: held-out windows and fp32 log-probs for ``emgkey verify``, which
   then runs every file on every installed runtime and records the results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emgkey import __version__, charset
from emgkey.bundle import MANIFEST_NAME, Manifest, ModelFile, sha256_file, write_manifest
from emgkey.decoding import greedy_decode
from emgkey.errors import ConfigError
from emgkey.export import onnx_export, quantize, tflite_export
from emgkey.export.verify import REFERENCE_NAME, Reference, Tolerances, compare, judge, verify_bundle
from emgkey.features import FeatureConfig
from emgkey.metrics import EditCounts, edit_counts
from emgkey.profiles import DeviceProfile
from emgkey.train.checkpoint import load_checkpoint
from emgkey.train.config import TrainConfig
from emgkey.train.data import SplitPaths, build_dataset
from emgkey.train.models.common import StreamingModel

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8")
FORMATS = ("onnx", "tflite")


# ---- a torch model as an edge_runtime engine (the fp32 reference) -----------------------------


class TorchStreamingEngine:
    """The StreamingEngine protocol over a torch model, so the reference streams exactly like a device."""

    runtime = "torch"
    fixed_chunk = True

    def __init__(self, model: StreamingModel) -> None:
        self.model = model.eval()
        self.signature = onnx_export.streaming_signature(model)

    def init_state(self) -> dict[str, np.ndarray]:
        return {s.name: np.zeros(s.shape, dtype=np.float32) for s in self.signature.states}

    def run(self, features: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with torch.no_grad():
            lp, new = self.model.forward_chunk(
                torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
                {k: torch.from_numpy(v) for k, v in state.items()},
            )
        return lp.numpy().reshape(features.shape[0], -1), {k: v.numpy() for k, v in new.items()}


class _Recorder:
    """Wraps an engine and keeps the inputs of its calls: calibration feeds with realistic states."""

    def __init__(self, engine: Any, every: int = 1) -> None:
        self.engine, self.every, self._n = engine, every, 0
        self.feeds: list[dict[str, np.ndarray]] = []
        self.signature, self.fixed_chunk, self.runtime = engine.signature, engine.fixed_chunk, engine.runtime

    def init_state(self) -> dict[str, np.ndarray]:
        return self.engine.init_state()

    def run(self, features: np.ndarray, state: dict[str, np.ndarray]) -> Any:
        if self._n % self.every == 0:
            self.feeds.append(
                {"features": np.array(features, dtype=np.float32), **{k: v.copy() for k, v in state.items()}}
            )
        self._n += 1
        return self.engine.run(features, state)


class _Timed:
    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.times: list[float] = []
        self.signature, self.fixed_chunk, self.runtime = engine.signature, engine.fixed_chunk, engine.runtime

    def init_state(self) -> dict[str, np.ndarray]:
        return self.engine.init_state()

    def run(self, features: np.ndarray, state: dict[str, np.ndarray]) -> Any:
        t0 = time.perf_counter()
        out = self.engine.run(features, state)
        self.times.append(time.perf_counter() - t0)
        return out


def stream(engine: Any, features: np.ndarray) -> np.ndarray:
    from emgkey.edge_runtime.engines import run_streaming

    return run_streaming(engine, features)


# ---- held-out data ----------------------------------------------------------------------------------


@dataclass
class Windows:
    """Feature windows (T, 1, bands, C, freq) and their labels, from one subset of a split."""

    features: list[np.ndarray]
    targets: list[np.ndarray]
    subset: str
    sessions: int

    @property
    def characters(self) -> int:
        return int(sum(len(t) for t in self.targets))


def load_windows(
    paths: Sequence[Path],
    cfg: TrainConfig,
    profile: DeviceProfile,
    feature_cfg: FeatureConfig,
    *,
    window_s: float | None,
    max_windows: int | None,
    subset: str,
) -> Windows:
    """Deterministic windows (no jitter, no augmentation) of ``window_s`` seconds (None: whole sessions)."""
    c = TrainConfig.from_dict(cfg.to_dict())
    c.data.test_window_s = window_s
    c.data.max_eval_windows = max_windows
    c.data.cache_eval_features = False
    ds = build_dataset(list(paths), "test", c, profile, feature_cfg)
    feats, targets = [], []
    try:
        for i in range(len(ds)):
            x, y = ds[i][:2]
            if x.shape[0] == 0:
                continue
            feats.append(x.numpy()[:, None])  # (T, 1, bands, C, freq)
            targets.append(y.numpy())
    finally:
        ds.close()
    return Windows(feats, targets, subset, len(paths))


def cer_of(emissions: Sequence[np.ndarray], targets: Sequence[np.ndarray]) -> dict[str, float]:
    counts = EditCounts()
    for lp, y in zip(emissions, targets, strict=True):
        counts = counts + edit_counts(charset.labels_to_str(greedy_decode(lp)), charset.labels_to_str(y.tolist()))
    return {k: round(v, 4) for k, v in counts.as_dict().items()}


def score(
    engine: Any, windows: Windows, reference: Sequence[np.ndarray] | None = None, relevant_prob: float = 1e-3
) -> dict[str, Any]:
    """CER of an engine over windows, per-chunk latency, and (given the fp32 emissions) the same
    agreement metrics ``emgkey verify`` judges: max |dlogp| over relevant classes, argmax agreement,
    CER delta."""
    timed = _Timed(engine)
    outs = [stream(timed, x) for x in windows.features]
    res: dict[str, Any] = cer_of(outs, windows.targets)
    if timed.times:
        res["chunk_ms_median"] = round(1e3 * float(np.median(timed.times)), 4)
    if reference is not None:
        metrics = compare(outs, reference, windows.targets, relevant_prob)
        res.update({k: (round(v, 5) if np.isfinite(v) else None) for k, v in metrics.items()})
        res["_metrics"] = metrics
    res["_outs"] = outs
    return res


def _public(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if not k.startswith("_")}


# ---- the bundle -----------------------------------------------------------------------------------


@dataclass
class BundleOptions:
    precisions: tuple[str, ...] = PRECISIONS
    formats: tuple[str, ...] = FORMATS
    onnx_methods: tuple[str, ...] = quantize.METHODS
    tflite_recipes: tuple[str, ...] = tflite_export.RECIPES
    calibration_windows: int = 16  # training windows streamed for calibration
    calibration_feeds: int = 64  # chunk feeds kept from them
    # Held-out windows scoring the int8 candidates. 64 x 4 s hold ~700 characters of simulated typing, so the
    # 1-point CER tolerance is ~7 characters; 16 held ~170 and a 1-2 character flip decided whether a bundle
    # shipped int8 at all (docs/export.md).
    selection_windows: int = 64
    reference_windows: int = 6  # windows stored in reference.npz for `emgkey verify`
    window_s: float | None = None  # evaluation windows; None: the run's val_window_s (4 s by default)
    test_window_s: float | str | None = "config"  # accuracy at export: "config" = the run's test windows
    max_test_windows: int | None = None
    force: bool = False
    verify: bool = True
    tolerances: Tolerances = field(default_factory=Tolerances)


def _dataset_kind(data_root: Path) -> dict[str, Any]:
    p = data_root / "dataset.json"
    if p.is_file():
        with contextlib.suppress(json.JSONDecodeError, OSError):
            d = json.loads(p.read_text())
            if d.get("simulated"):
                return {"data": "simulated", "dataset_note": d.get("note", "")}
            return {"data": str(d.get("kind", "recorded"))}
    return {"data": "emg2qwerty"}


def _tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"emgkey": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for dist in (
        "torch",
        "onnx",
        "onnxruntime",
        "nncf",
        "litert-torch",
        "ai-edge-quantizer",
        "ai-edge-litert",
        "numpy",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


@contextlib.contextmanager
def staging_dir(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder next to ``out``, renamed onto it on success (the old bundle removed)."""
    out = Path(out)
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _judge_candidate(c: dict[str, Any], res: dict[str, Any], tolerances: Tolerances) -> None:
    """A candidate is eligible only within verification's int8 tolerances of the fp32 model on the
    selection windows: a lower CER reached by disagreeing with fp32 is noise, not a better model."""
    ok, why = judge(res["_metrics"], tolerances.int8)
    c["selection"] = _public(res)
    c["eligible"] = ok
    if not ok:
        c["error"] = f"outside int8 tolerance vs fp32 on selection windows: {why}"


def _pick(cands: list[dict[str, Any]], fp32_cer: float | None = None) -> dict[str, Any] | None:
    """Among candidates within tolerance of fp32: those within 0.25 point of the lowest selection CER
    (or of the fp32 model's, when a candidate beats fp32: quantization cannot really improve on the
    model it approximates, so that is noise) tie; the smallest file wins, then the fastest per chunk.

    Size before speed: latency measured here is an x86 CPU's, the file size is the device's too.
    None eligible: no int8 file of that format ships (the candidates and why are in the manifest).
    """
    ok = [c for c in cands if c.get("eligible")]
    if not ok:
        return None
    best = min(c["selection"]["cer"] for c in ok)
    if fp32_cer is not None:
        best = max(best, fp32_cer)
    near = [c for c in ok if c["selection"]["cer"] <= best + 0.25]
    return min(near, key=lambda c: (c["report"].get("bytes", 0), c["selection"].get("chunk_ms_median", 0.0)))


def write_bundle(
    checkpoint: str | Path,
    data_root: str | Path,
    split_file: str | Path,
    out: str | Path,
    options: BundleOptions | None = None,
) -> dict[str, Any]:
    """Export, quantize, convert, evaluate, verify; returns the manifest dict written to ``out``."""
    opt = options or BundleOptions()
    for p in opt.precisions:
        if p not in PRECISIONS:
            raise ConfigError(f"unknown precision {p!r} (known: {list(PRECISIONS)})")
    for f in opt.formats:
        if f not in FORMATS:
            raise ConfigError(f"unknown format {f!r} (known: {list(FORMATS)})")
    if "fp32" not in opt.precisions:
        raise ConfigError("fp32 is the reference every other file is verified against: include it in --precisions")
    t_start = time.perf_counter()
    data_root, out = Path(data_root), Path(out)
    ckpt = load_checkpoint(checkpoint)
    from emgkey.train.checkpoint import build_from_checkpoint

    model = build_from_checkpoint(ckpt)
    if not isinstance(model, StreamingModel):
        raise ConfigError(
            f"{checkpoint} holds a {ckpt['model_config']['name']!r} model, which does not stream; "
            "bundle a student (gru, bilstm, tcn), e.g. one distilled with `emgkey export distill`"
        )
    profile = DeviceProfile.from_dict(ckpt["profile"])
    feature_cfg = FeatureConfig.from_dict(ckpt["feature_config"])
    cfg = TrainConfig.from_dict(ckpt["train_config"])
    split = SplitPaths.resolve(data_root, split_file)
    if split.profile.name != profile.name:
        raise ConfigError(
            f"{checkpoint} is a {profile.name!r} model; {split_file} lists {split.profile.name!r} sessions"
        )
    if not split.paths["train"] or not split.paths["test"]:
        raise ConfigError(f"{split_file}: needs train sessions (calibration) and test sessions (accuracy)")
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    window_s = opt.window_s if opt.window_s is not None else (cfg.data.val_window_s or 4.0)
    prepared = onnx_export.prepare_for_export(model)
    sig = onnx_export.streaming_signature(prepared)
    torch_engine = TorchStreamingEngine(prepared)

    # -- data: calibration (train sessions), selection (val, else test), accuracy + reference (test)
    calib_w = load_windows(
        split.paths["train"],
        cfg,
        profile,
        feature_cfg,
        window_s=window_s,
        max_windows=opt.calibration_windows,
        subset="train",
    )
    sel_subset = "val" if split.paths["val"] else "test"
    sel_w = load_windows(
        split.paths[sel_subset],
        cfg,
        profile,
        feature_cfg,
        window_s=window_s,
        max_windows=opt.selection_windows,
        subset=sel_subset,
    )
    test_window = cfg.data.test_window_s if opt.test_window_s == "config" else opt.test_window_s
    test_w = load_windows(
        split.paths["test"],
        cfg,
        profile,
        feature_cfg,
        window_s=test_window,  # type: ignore[arg-type]
        max_windows=opt.max_test_windows,
        subset="test",
    )
    ref_w = load_windows(
        split.paths["test"],
        cfg,
        profile,
        feature_cfg,
        window_s=window_s,
        max_windows=opt.reference_windows,
        subset="test",
    )
    if not calib_w.features or not sel_w.features or not test_w.features or not ref_w.features:
        raise ConfigError(f"{split_file}: sessions too short for {window_s} s windows")
    # One length for every reference window (a session's last window may be short): the offline
    # graph may be fixed-length, and verification compares like with like.
    lengths = [len(x) for x in ref_w.features]
    common = max(set(lengths), key=lengths.count)
    keep = [i for i, n in enumerate(lengths) if n == common]
    ref_w.features = [Reference.round_features(ref_w.features[i]) for i in keep]
    ref_w.targets = [ref_w.targets[i] for i in keep]
    window_frames = int(ref_w.features[0].shape[0])

    rec = _Recorder(torch_engine)
    for x in calib_w.features:
        stream(rec, x)
    step = max(1, len(rec.feeds) // opt.calibration_feeds)
    calibration = rec.feeds[::step][: opt.calibration_feeds]

    sel_ref = score(torch_engine, sel_w)
    test_ref = score(torch_engine, test_w)

    meta_base = dict(profile=profile.to_dict(), feature_config=feature_cfg.to_dict())
    files: list[ModelFile] = []
    tool: dict[str, Any] = {"versions": _tool_versions(), "onnx": {}, "tflite": {}}
    accuracy_files: dict[str, Any] = {}
    offline_info: dict[str, Any] | None = None

    with staging_dir(out, opt.force) as tmp:

        def add(path: Path, fmt: str, precision: str, graph: str, quant: dict[str, Any] | None = None) -> ModelFile:
            mf = ModelFile(
                path=path.name,
                sha256=sha256_file(path),
                bytes=path.stat().st_size,
                format=fmt,
                precision=precision,
                graph=graph,
                quantization=quant or {},
            )
            files.append(mf)
            return mf

        def meta(graph: str, precision: str, **extra: Any) -> dict[str, Any]:
            return onnx_export.metadata(prepared, graph=graph, precision=precision, extra=extra, **meta_base)

        # -- ONNX
        if "onnx" in opt.formats:
            fp32 = tmp / "model_fp32.onnx"
            onnx_export.export_streaming(prepared, fp32, meta=meta("streaming", "fp32"))
            add(fp32, "onnx", "fp32", "streaming")
            from emgkey.edge_runtime.engines import OnnxStreamingEngine

            res = score(OnnxStreamingEngine(fp32, sig), test_w, test_ref["_outs"])
            accuracy_files["model_fp32.onnx"] = {"runtime": "onnxruntime", **_public(res)}

            offline = tmp / "model_fp32_offline.onnx"
            offline_model = model.eval()  # as trained: nn.GRU/nn.LSTM keep the time axis dynamic
            offline_info = onnx_export.export_offline_checked(
                offline_model, offline, trace_frames=window_frames, meta=meta("offline", "fp32")
            )
            add(offline, "onnx", "fp32", "offline")

            if "int8" in opt.precisions:
                cands = quantize.quantize_candidates(fp32, tmp / "candidates", calibration, opt.onnx_methods, "int8")
                for c in cands:
                    c["eligible"] = False
                    if c["path"] is None:
                        continue
                    try:
                        res = score(OnnxStreamingEngine(c["path"], sig), sel_w, sel_ref["_outs"])
                    except Exception as exc:
                        c["error"] = f"does not run: {exc}"[:300]
                        continue
                    _judge_candidate(c, res, opt.tolerances)
                best = _pick(cands, sel_ref["cer"])
                summary = [
                    {
                        "method": c["method"],
                        "error": c["error"],
                        "bytes": c["report"].get("bytes"),
                        "weights_8bit": c["report"].get("weights_8bit"),
                        "selection": c.get("selection"),
                    }
                    for c in cands
                ]
                tool["onnx"]["int8_candidates"] = summary
                if best is None:
                    tool["onnx"]["int8_error"] = (
                        "no quantization method gave an all-8-bit graph within tolerance of fp32 (see int8_candidates)"
                    )
                else:
                    q8 = tmp / "model_int8.onnx"
                    quantize.copy_with_metadata(
                        best["path"], q8, meta("streaming", "int8", quantization=best["recipe"])
                    )
                    report = {k: v for k, v in best["report"].items() if k != "float_weights"}
                    report["fp32_bytes"] = fp32.stat().st_size
                    report["size_ratio"] = round(q8.stat().st_size / fp32.stat().st_size, 4)
                    add(
                        q8,
                        "onnx",
                        "int8",
                        "streaming",
                        {
                            **best["recipe"],
                            "report": report,
                            "selected_on": f"{sel_w.subset} ({len(sel_w.features)} windows)",
                            "candidates": summary,
                        },
                    )
                    res = score(OnnxStreamingEngine(q8, sig), test_w, test_ref["_outs"])
                    accuracy_files["model_int8.onnx"] = {"runtime": "onnxruntime", **_public(res)}
                shutil.rmtree(tmp / "candidates", ignore_errors=True)

        # -- TFLite
        if "tflite" in opt.formats:
            from emgkey.edge_runtime.engines import LiteRTStreamingEngine

            errors: dict[str, str] = {}
            t32 = tmp / "model_fp32.tflite"
            try:
                tool["tflite"]["conversion"] = tflite_export.convert_streaming(prepared, t32)
            except tflite_export.TFLiteExportError as exc:
                errors["fp32"] = str(exc)
                t32.unlink(missing_ok=True)
            if t32.is_file():
                add(t32, "tflite", "fp32", "streaming")
                res = score(LiteRTStreamingEngine(t32, sig), test_w, test_ref["_outs"])
                accuracy_files["model_fp32.tflite"] = {"runtime": "ai-edge-litert", **_public(res)}
                if "int8" in opt.precisions:
                    cands = []
                    for recipe in opt.tflite_recipes:
                        cand_path = tmp / f"cand_{recipe}.tflite"
                        c = {"method": recipe, "error": "", "eligible": False, "report": {}, "path": None}
                        try:
                            c["recipe"] = tflite_export.quantize_tflite(t32, cand_path, recipe, calibration)
                            c["report"] = tflite_export.tflite_int8_report(cand_path)
                            if not c["report"]["weights_8bit"]:
                                c["error"] = f"weights left in float: {c['report']['float_weights'][:3]}"
                            else:
                                res = score(LiteRTStreamingEngine(cand_path, sig), sel_w, sel_ref["_outs"])
                                _judge_candidate(c, res, opt.tolerances)
                                c["path"] = str(cand_path)
                        except Exception as exc:  # conversion/quantization/runtime errors all disqualify
                            c["error"] = f"{type(exc).__name__}: {exc}"[:300]
                        cands.append(c)
                    best = _pick(cands, sel_ref["cer"])
                    summary = [
                        {
                            "method": c["method"],
                            "error": c["error"],
                            "bytes": c["report"].get("bytes"),
                            "weights_8bit": c["report"].get("weights_8bit"),
                            "selection": c.get("selection"),
                        }
                        for c in cands
                    ]
                    tool["tflite"]["int8_candidates"] = summary
                    if best is None:
                        errors["int8"] = (
                            "no ai-edge-quantizer recipe gave an all-8-bit model within tolerance of fp32 "
                            "(see int8_candidates)"
                        )
                    else:
                        t8 = tmp / "model_int8.tflite"
                        shutil.copyfile(best["path"], t8)
                        report = {k: v for k, v in best["report"].items() if k != "float_weights"}
                        report["fp32_bytes"] = t32.stat().st_size
                        report["size_ratio"] = round(t8.stat().st_size / t32.stat().st_size, 4)
                        add(
                            t8,
                            "tflite",
                            "int8",
                            "streaming",
                            {
                                **best["recipe"],
                                "method": best["method"],
                                "report": report,
                                "candidates": summary,
                                "selected_on": f"{sel_w.subset} ({len(sel_w.features)} windows)",
                            },
                        )
                        res = score(LiteRTStreamingEngine(t8, sig), test_w, test_ref["_outs"])
                        accuracy_files["model_int8.tflite"] = {"runtime": "ai-edge-litert", **_public(res)}
                    for recipe in opt.tflite_recipes:  # every candidate file, chosen or not
                        (tmp / f"cand_{recipe}.tflite").unlink(missing_ok=True)
            if errors:
                tool["tflite"]["errors"] = errors

        # -- the verification reference (held-out windows, fp32 torch log-probs)
        reference = Reference(
            features=ref_w.features,
            targets=ref_w.targets,
            streaming=[stream(torch_engine, x) for x in ref_w.features],
        )
        with torch.no_grad():
            reference.offline = [model(torch.from_numpy(x)).numpy()[:, 0] for x in ref_w.features]
        ref_path = tmp / REFERENCE_NAME
        reference.save(ref_path)

        fp32_cer = test_ref["cer"]
        int8_delta = {k: round(v["cer"] - fp32_cer, 4) for k, v in accuracy_files.items() if "int8" in k}
        accuracy = {
            **_dataset_kind(data_root),
            "split": str(split_file),
            "subset": "test",
            "sessions": test_w.sessions,
            "windows": len(test_w.features),
            "window_s": test_window,
            "characters": test_w.characters,
            "decoder": "greedy (emgkey.decoding)",
            "torch_fp32": _public(test_ref),
            "files": accuracy_files,
            "int8_cer_minus_fp32": int8_delta,
            "int8_target_points": 1.0,
            "verification": {
                "reference": {
                    "path": REFERENCE_NAME,
                    "sha256": sha256_file(ref_path),
                    "windows": len(ref_w.features),
                    "frames_per_window": window_frames,
                    "subset": "test",
                    "features_dtype": "float16 (references computed on the rounded features)",
                },
                "tolerances": opt.tolerances.to_dict(),
            },
        }
        n_params = sum(p.numel() for p in model.parameters())
        try:
            from emgkey.train.models.complexity import macs_per_second

            macs = int(macs_per_second(model, feature_cfg.frame_rate_hz))
        except Exception:  # complexity counting is informative only
            macs = None
        manifest = Manifest(
            model={
                "name": model.config.name,
                "config": model.config.to_dict(),
                "export_config": prepared.config.to_dict(),
                "params": int(n_params),
                "macs_per_s": macs,
                "checkpoint": str(checkpoint),
                "checkpoint_sha256": sha256_file(checkpoint),
                "epoch": ckpt.get("epoch"),
                "distillation": ckpt.get("extra", {}).get("distillation"),
                "offline_graph": offline_info,
            },
            profile=profile,
            features=feature_cfg,
            streaming=sig,
            files=files,
            charset={"num_classes": charset.NUM_CLASSES, "blank": charset.BLANK, "keys": charset.charset_summary()},
            normalization={
                "raw_to_uv": profile.adc_scale_uv_per_count,
                "features": "log10 power spectrogram (emgkey.features, computed on the device)",
                "in_graph": "SpectrogramNorm: BatchNorm per electrode with the training statistics, inside every graph",
            },
            accuracy=accuracy,
            tool={**tool, "seconds": None},
        )
        manifest.tool["seconds"] = round(time.perf_counter() - t_start, 1)
        write_manifest(tmp, manifest)
        if opt.verify:
            verify_bundle(tmp)
        result = json.loads((tmp / MANIFEST_NAME).read_text())
    log.info("bundle written to %s in %.1f s", out, time.perf_counter() - t_start)
    return result
