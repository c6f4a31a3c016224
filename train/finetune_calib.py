"""On-device calibration, strategy 2 (torch): an input adapter and the last layers, then a re-exported bundle.

Where torch can be installed (Pi 4/5, Jetson), a minute of prompted typing can also train. What trains:

1. ``InputAdapter`` in front of the model, initialised from strategy 1 (band shift, AdaBN affine):
   a per-band channel-mixing matrix (``C x C``, from the identity: a fraction of a band rotation,
   cross-talk) and a per-(electrode, bin) scale and offset. It is the same map the edge runtime applies
   in numpy (``FeatureNormalization``: ``channel_shift``, ``channel_mix``, ``scale``, ``offset``), so
   it stays outside the graph and needs no re-export on its own.
2. gradual unfreezing (``emgkey.train.transfer.layer_groups``): the adapter alone first, then the
   output head, then body stages from the head down (``max_body_stages``), each group at
   ``lr * lr_decay ** depth`` (layer-wise rates). The input front end (``SpectrogramNorm`` and the
   per-band MLP) stays frozen: the adapter is its calibration.

Loss: CTC of the prompt (typos cost alike in every step), on all fit prompts at once (one full batch
per step: a minute of data is a few segments). The model runs in eval mode (BatchNorm statistics and
dropout frozen: there is too little data to re-estimate them). Early stopping on the held-out slice's
CTC loss per key, evaluated every ``eval_every`` steps, keeps the best state; a time budget bounds it.

When the best state changed the model's own weights, it is re-exported into a bundle of its own
(``export_calibrated_bundle``): streaming ONNX fp32, int8 with the base bundle's quantization method
calibrated on the **user's** adapted windows (states from running the fp32 model over them), TFLite
fp32 + int8 with the base bundle's recipe when litert-torch is installed, a verification reference
from the held-out slice, ``emgkey verify`` on every installed runtime. The profile then runs that
bundle behind the adapter.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from emgkey import charset
from emgkey.bundle import Bundle, Manifest, ModelFile, sha256_file, write_manifest
from emgkey.edge_runtime.calib_data import CalibrationSet, Segment
from emgkey.edge_runtime.calib_run import resolve_checkpoint
from emgkey.edge_runtime.recognizer import FeatureNormalization
from emgkey.errors import ConfigError
from emgkey.train.augment import Compose, build_feature_pipeline
from emgkey.train.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from emgkey.train.config import AugmentConfig
from emgkey.train.models.common import StreamingModel
from emgkey.train.transfer import layer_groups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    max_steps: int = 60  # one step = every fit prompt once (a minute of data is one small batch)
    eval_every: int = 2  # steps between held-out evaluations
    patience: int = 6  # evaluations without improvement before stopping
    unfreeze_every: int = 8  # steps per stage: adapter, + head, + body stage 1, ...
    max_body_stages: int = 1  # how deep unfreezing goes below the head (0: adapter and head only)
    body_stages: int = 3  # the body is split into at most this many stages (transfer.layer_groups)
    lr_adapter: float = 1e-2
    lr: float = 3e-3  # the head; body stages get lr * lr_decay ** depth
    lr_decay: float = 0.5
    mix_l2: float = 1e-2  # pull of the mixing matrix towards the identity
    grad_clip: float = 1.0
    time_budget_s: float = 40.0  # training; export comes after
    specaugment: bool = False  # fresh SpecAugment masks on the fit prompts every step (training's settings)
    seed: int = 0
    threads: int = 1
    formats: tuple[str, ...] | None = None  # re-export formats; None: the base bundle's that can be made here

    def __post_init__(self) -> None:
        assert self.max_steps >= 1 and self.eval_every >= 1 and self.patience >= 1, "steps must be positive"
        assert self.unfreeze_every >= 1 and self.max_body_stages >= 0, "bad unfreezing schedule"
        assert 0 < self.lr_decay <= 1 and self.lr > 0 and self.lr_adapter > 0, "bad learning rates"


# ---------------------------------------------------------------------------------------------------------------------
# The adapter


class InputAdapter(nn.Module):
    """features (T, N, n_bands, C, n_freq) -> the same, through roll, channel mixing, scale and offset.

    Exactly ``FeatureNormalization``'s map (``to_manifest`` writes it in that form), initialised from one.
    """

    def __init__(self, init: FeatureNormalization, n_bands: int, channels: int, n_freq: int) -> None:
        super().__init__()
        shift = init.channel_shift if init.channel_shift is not None else (0,) * n_bands
        self.shift = tuple(int(s) for s in shift)
        src = (torch.arange(channels)[None, :] - torch.tensor(self.shift)[:, None]) % channels  # (n_bands, C)
        self.src: Tensor
        self.register_buffer("src", src, persistent=False)
        mix = (
            init.channel_mix
            if init.channel_mix is not None
            else np.broadcast_to(np.eye(channels), (n_bands,) + (channels,) * 2)
        )
        shape = (n_bands, channels, n_freq)
        scale = np.broadcast_to(init.scale if init.scale is not None else 1.0, shape)
        offset = np.broadcast_to(init.offset if init.offset is not None else 0.0, shape)
        self.mix = nn.Parameter(torch.tensor(np.array(mix), dtype=torch.float32))
        self.scale = nn.Parameter(torch.tensor(np.array(scale), dtype=torch.float32))
        self.offset = nn.Parameter(torch.tensor(np.array(offset), dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        bands = torch.arange(x.shape[2], device=x.device)[:, None]
        x = x[:, :, bands, self.src]  # (T, N, n_bands, C, n_freq): model electrode c <- arm electrode c - shift
        x = torch.einsum("bcd,tnbdf->tnbcf", self.mix, x)
        return x * self.scale + self.offset

    def mix_penalty(self) -> Tensor:
        eye = torch.eye(self.mix.shape[-1], device=self.mix.device)
        return ((self.mix - eye) ** 2).sum()

    def to_manifest(self) -> dict[str, Any]:
        norm = FeatureNormalization(
            scale=self.scale.detach().cpu().numpy(),
            offset=self.offset.detach().cpu().numpy(),
            channel_shift=self.shift,
            channel_mix=self.mix.detach().cpu().numpy(),
        )
        return norm.to_manifest()


# ---------------------------------------------------------------------------------------------------------------------
# Data


def _batch(
    features: np.ndarray,
    segments: list[Segment],
    augment: Compose | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Padded (T_max, N, n_bands, C, n_freq) inputs, (N,) lengths, (N, L_max) targets, (N,) target lengths.

    ``augment`` (with ``rng``): the training pipeline's feature augmentations, drawn anew for each segment."""
    cut = [np.ascontiguousarray(features[s.start : s.stop], dtype=np.float32) for s in segments]
    if augment is not None:
        assert rng is not None, "augmenting needs a random generator"
        cut = [np.ascontiguousarray(augment(x, rng), dtype=np.float32) for x in cut]
    xs = [torch.from_numpy(x) for x in cut]
    ys = [torch.from_numpy(s.targets.astype(np.int64)) for s in segments]
    inputs = nn.utils.rnn.pad_sequence(xs)  # (T_max, N, ...)
    targets = nn.utils.rnn.pad_sequence(ys, batch_first=True, padding_value=charset.BLANK)
    return (
        inputs,
        torch.tensor([len(x) for x in xs]),
        targets,
        torch.tensor([len(y) for y in ys]),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Fine-tuning


@dataclass
class FinetuneResult:
    normalization: dict[str, Any]  # the adapter in manifest form
    model: StreamingModel  # the best model (base weights unless a model layer was trained)
    model_changed: bool
    info: dict[str, Any] = field(default_factory=dict)
    bundle_dir: Path | None = None


def finetune(
    bundle: Bundle,
    cal: CalibrationSet,
    init: FeatureNormalization,
    checkpoint: str | Path | None = None,
    config: FinetuneConfig | None = None,
) -> FinetuneResult:
    """Train the adapter (and, gradually, the last layers) on the fit prompts; early stopping on the held-out ones."""
    cfg = config or FinetuneConfig()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = load_checkpoint(resolve_checkpoint(bundle, checkpoint))
    model = build_from_checkpoint(ckpt)
    if not isinstance(model, StreamingModel):
        raise ConfigError("the checkpoint's model does not stream")
    model.eval()  # BatchNorm statistics and dropout stay frozen (see the module docstring)
    n_bands, channels, n_freq = cal.features.shape[1:]
    adapter = InputAdapter(init, n_bands, channels, n_freq)
    for p in model.parameters():
        p.requires_grad_(False)

    groups = layer_groups(model, cfg.body_stages)
    head = next(g for g in groups if g.kind == "head")
    body = sorted((g for g in groups if g.kind == "body"), key=lambda g: g.depth)[: cfg.max_body_stages]
    stages = [head, *body]  # unfrozen in this order after the adapter-only stage
    params = dict(model.named_parameters())
    opt_groups: list[dict[str, Any]] = [{"params": list(adapter.parameters()), "lr": cfg.lr_adapter, "name": "adapter"}]
    for g in stages:
        opt_groups.append(
            {"params": [params[n] for n in g.param_names], "lr": cfg.lr * cfg.lr_decay**g.depth, "name": g.name}
        )
    optimizer = torch.optim.Adam(opt_groups)
    ctc = nn.CTCLoss(blank=charset.BLANK, reduction="sum", zero_infinity=True)
    fit = _batch(cal.features, cal.fit)
    held = _batch(cal.features, cal.heldout)
    rng = np.random.default_rng(cfg.seed)
    augment = build_feature_pipeline(AugmentConfig(time_warp=False), cal.feature_config, train=cfg.specaugment)

    def loss_of(batch: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        x, xl, y, yl = batch
        lp = model(adapter(x), xl)  # (T_out, N, classes)
        out_len = model.output_lengths(xl).clamp(max=lp.shape[0])
        return ctc(lp.float(), y, out_len, yl) / yl.sum().clamp(min=1)  # nats per key

    def snapshot() -> dict[str, Any]:
        return {"adapter": copy.deepcopy(adapter.state_dict()), "model": copy.deepcopy(model.state_dict())}

    with torch.no_grad():
        best_loss = float(loss_of(held))
    start_loss = best_loss
    best, best_step, best_stage = snapshot(), 0, 0
    curve: list[dict[str, float]] = [{"step": 0, "heldout": round(best_loss, 4)}]
    stage, bad, step = 0, 0, 0
    stopped = "max_steps"
    for step in range(1, cfg.max_steps + 1):
        want = min(len(stages), (step - 1) // cfg.unfreeze_every)
        while stage < want:  # unfreeze the next group (head first, then down the body)
            for n in stages[stage].param_names:
                params[n].requires_grad_(True)
            stage += 1
        optimizer.zero_grad(set_to_none=True)
        batch = _batch(cal.features, cal.fit, augment, rng) if cfg.specaugment else fit
        loss = loss_of(batch) + cfg.mix_l2 * adapter.mix_penalty()
        loss.backward()
        nn.utils.clip_grad_norm_([p for g in opt_groups for p in g["params"] if p.requires_grad], cfg.grad_clip)
        optimizer.step()
        if step % cfg.eval_every == 0:
            with torch.no_grad():
                h = float(loss_of(held))
            curve.append({"step": step, "fit": round(loss.item(), 4), "heldout": round(h, 4), "stage": stage})
            if h < best_loss:
                best_loss, best, best_step, best_stage, bad = h, snapshot(), step, stage, 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    stopped = "early_stopping"
                    break
        if time.perf_counter() - t0 > cfg.time_budget_s:
            stopped = "time_budget"
            break
    adapter.load_state_dict(best["adapter"])
    model.load_state_dict(best["model"])
    info = {
        "strategy": "finetune",
        "steps": step,
        "best_step": best_step,
        "stopped": stopped,
        "heldout_loss_start": round(start_loss, 4),
        "heldout_loss_best": round(best_loss, 4),
        "stages": ["adapter", *(g.name for g in stages)],
        "stage_at_best": best_stage,
        "trained_params": {
            "adapter": sum(p.numel() for p in adapter.parameters()),
            **{g.name: sum(params[n].numel() for n in g.param_names) for g in stages},
        },
        "curve": curve,
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    return FinetuneResult(adapter.to_manifest(), model, best_stage > 0, info)


# ---------------------------------------------------------------------------------------------------------------------
# Re-export


class _TorchEngine:
    """The StreamingEngine protocol over a torch model (the fp32 reference), recording its calls' inputs."""

    runtime = "torch"
    fixed_chunk = True

    def __init__(self, model: StreamingModel, record: bool = False) -> None:
        from emgkey.export.onnx_export import streaming_signature

        self.model = model.eval()
        self.signature = streaming_signature(model)
        self.feeds: list[dict[str, np.ndarray]] | None = [] if record else None

    def init_state(self) -> dict[str, np.ndarray]:
        return {s.name: np.zeros(s.shape, dtype=np.float32) for s in self.signature.states}

    def run(self, features: np.ndarray, state: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if self.feeds is not None:
            self.feeds.append({"features": np.array(features, np.float32), **{k: v.copy() for k, v in state.items()}})
        with torch.no_grad():
            lp, new = self.model.forward_chunk(
                torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
                {k: torch.from_numpy(v) for k, v in state.items()},
            )
        return lp.numpy().reshape(features.shape[0], -1), {k: v.numpy() for k, v in new.items()}


def _base_int8(manifest: Manifest, fmt: str) -> str | None:
    for f in manifest.files:
        if f.format == fmt and f.precision == "int8" and f.graph == "streaming":
            return str(f.quantization.get("method") or "") or None
    return None


def export_calibrated_bundle(
    result: FinetuneResult,
    base: Bundle,
    cal: CalibrationSet,
    out: Path,
    config: FinetuneConfig | None = None,
    checkpoint: str | Path | None = None,
) -> Path:
    """Write ``out``: the fine-tuned model as a verified bundle of its own (see the module docstring).

    ``out`` must not exist; the caller's profile staging folder makes the write atomic with the profile.
    """
    from emgkey.edge_runtime.engines import OnnxStreamingEngine, run_streaming
    from emgkey.export import onnx_export, quantize
    from emgkey.export.verify import REFERENCE_NAME, Reference, Tolerances, compare, judge, verify_bundle

    cfg = config or FinetuneConfig()
    t0 = time.perf_counter()
    m = base.manifest
    prepared = onnx_export.prepare_for_export(result.model)
    sig = onnx_export.streaming_signature(prepared)
    if sig != m.streaming:
        raise ConfigError("the fine-tuned model's streaming signature differs from the base bundle's")
    out.mkdir(parents=True)
    prof = m.profile
    norm = FeatureNormalization.from_manifest(
        result.normalization, (prof.n_bands, prof.channels_per_band, m.features.n_freq)
    )
    fit_x = [norm(cal.features[s.start : s.stop])[:, None] for s in cal.fit]  # (T, 1, ...) as the graph sees them
    held_x = [Reference.round_features(norm(cal.features[s.start : s.stop])[:, None]) for s in cal.heldout]
    held_y = [s.targets for s in cal.heldout]

    torch_ref = _TorchEngine(prepared)
    reference = [run_streaming(torch_ref, x) for x in held_x]
    recorder = _TorchEngine(prepared, record=True)
    for x in fit_x:
        run_streaming(recorder, x)
    feeds = recorder.feeds or []
    feeds = feeds[:: max(1, len(feeds) // 64)][:64]
    tol = Tolerances()
    formats = cfg.formats
    if formats is None:
        have = {f.format for f in m.files if f.graph == "streaming"}
        formats = tuple(f for f in ("onnx", "tflite") if f in have and (f != "tflite" or _litert_torch()))
    files: list[ModelFile] = []
    notes: dict[str, Any] = {}

    def add(path: Path, fmt: str, precision: str, quant: dict[str, Any] | None = None) -> None:
        files.append(
            ModelFile(path.name, sha256_file(path), path.stat().st_size, fmt, precision, "streaming", quant or {})
        )

    meta = dict(profile=prof.to_dict(), feature_config=m.features.to_dict())
    if "onnx" in formats:
        fp32 = out / "model_fp32.onnx"
        onnx_export.export_streaming(
            prepared, fp32, meta=onnx_export.metadata(prepared, graph="streaming", precision="fp32", **meta)
        )
        add(fp32, "onnx", "fp32")
        method = _base_int8(m, "onnx") or "ort_dynamic"
        q8 = out / "model_int8.onnx"
        try:
            recipe = quantize.quantize_onnx(fp32, q8, method, feeds)
            report = quantize.int8_report(q8)
            got = [run_streaming(OnnxStreamingEngine(q8, sig), x) for x in held_x]
            ok, why = judge(compare(got, reference, held_y, tol.relevant_prob), tol.int8)
            if not report["weights_8bit"] or not ok:
                raise ValueError(why or "weights left in float")
            add(q8, "onnx", "int8", {**recipe, "calibration": "the user's calibration windows"})
        except Exception as exc:  # the quantizers raise anything; the bundle ships fp32 and says why
            q8.unlink(missing_ok=True)
            notes["onnx_int8_error"] = f"{type(exc).__name__}: {exc}"[:300]
    if "tflite" in formats:
        from emgkey.export import tflite_export

        t32 = out / "model_fp32.tflite"
        try:
            tflite_export.convert_streaming(prepared, t32)
            add(t32, "tflite", "fp32")
            recipe_name = _base_int8(m, "tflite") or "dynamic_wi8_afp32"
            t8 = out / "model_int8.tflite"
            rec = tflite_export.quantize_tflite(t32, t8, recipe_name, feeds)
            add(t8, "tflite", "int8", {**rec, "method": recipe_name, "calibration": "the user's calibration windows"})
        except Exception as exc:
            notes["tflite_error"] = f"{type(exc).__name__}: {exc}"[:300]
    if not files:
        raise ConfigError(f"no model file could be exported ({notes})")
    ref_path = out / REFERENCE_NAME
    Reference(features=held_x, targets=held_y, streaming=reference).save(ref_path)
    ckpt_path = out / "model.pt"
    base_ckpt = load_checkpoint(resolve_checkpoint(base, checkpoint))
    save_checkpoint(
        ckpt_path,
        model=result.model,
        model_config=base_ckpt["model_config"],
        feature_config=m.features,
        profile=prof,
        train_config=base_ckpt["train_config"],
        epoch=int(base_ckpt.get("epoch") or 0),
        best_val_cer=None,
        best_epoch=None,
        extra={"calibration": {k: v for k, v in result.info.items() if k != "curve"}},
    )
    manifest = replace(
        m,
        model={
            **m.model,
            "checkpoint": "model.pt",
            "checkpoint_sha256": sha256_file(ckpt_path),
            "calibrated_from": {"bundle": str(base.root), "checkpoint_sha256": m.model.get("checkpoint_sha256")},
            "offline_graph": None,
        },
        files=files,
        accuracy={
            "data": m.accuracy.get("data", "unknown"),
            "subset": "the user's held-out calibration prompts",
            "windows": len(held_x),
            "verification": {
                "reference": {"path": REFERENCE_NAME, "sha256": sha256_file(ref_path), "windows": len(held_x)},
                "tolerances": tol.to_dict(),
            },
        },
        tool={**m.tool, "calibration_export": notes, "seconds": None},
    )
    manifest.tool["seconds"] = round(time.perf_counter() - t0, 1)
    write_manifest(out, manifest)
    verify_bundle(out)
    log.info("calibrated bundle written to %s in %.1f s", out, time.perf_counter() - t0)
    return out


def _litert_torch() -> bool:
    return importlib.util.find_spec("litert_torch") is not None


# ---------------------------------------------------------------------------------------------------------------------
# The comparison: a personalized model trained from scratch on the same calibration data


def train_from_scratch(
    model_config: dict[str, Any], cal: CalibrationSet, config: FinetuneConfig | None = None
) -> tuple[StreamingModel, dict[str, Any]]:
    """A fresh model of the same architecture trained on the fit prompts only (every layer from the first step),
    with the same loss, early stopping on the held-out prompts and the same time budget as ``finetune``.

    What strategy 2 must beat: a personalized model that never saw the population.
    """
    from emgkey.train.models.registry import build_model

    cfg = config or FinetuneConfig()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = build_model(model_config)
    if not isinstance(model, StreamingModel):
        raise ConfigError("the architecture does not stream")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    ctc = nn.CTCLoss(blank=charset.BLANK, reduction="sum", zero_infinity=True)
    fit = _batch(cal.features, cal.fit)
    held = _batch(cal.features, cal.heldout)

    def loss_of(batch: tuple[Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        x, xl, y, yl = batch
        lp = model(x, xl)
        out_len = model.output_lengths(xl).clamp(max=lp.shape[0])
        return ctc(lp.float(), y, out_len, yl) / yl.sum().clamp(min=1)

    def held_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss_of(held))

    best_loss, best, best_step, bad, step = held_loss(), copy.deepcopy(model.state_dict()), 0, 0, 0
    stopped = "max_steps"
    for step in range(1, cfg.max_steps + 1):
        model.train()  # BatchNorm learns this user's statistics; dropout regularizes
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(fit)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if step % cfg.eval_every == 0:
            h = held_loss()
            if h < best_loss:
                best_loss, best, best_step, bad = h, copy.deepcopy(model.state_dict()), step, 0
            else:
                bad += 1
                if bad >= cfg.patience:
                    stopped = "early_stopping"
                    break
        if time.perf_counter() - t0 > cfg.time_budget_s:
            stopped = "time_budget"
            break
    model.load_state_dict(best)
    model.eval()
    info = {
        "strategy": "scratch",
        "steps": step,
        "best_step": best_step,
        "stopped": stopped,
        "heldout_loss_best": round(best_loss, 4),
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(time.perf_counter() - t0, 2),
    }
    return model, info
