"""Distillation: a streaming student learns from an offline teacher's frame posteriors.

    emgkey export distill --teacher runs/tds/best.pt --student gru --data DIR --split S --out runs/gru-kd

Loss per batch: ``(1 - alpha) * CTC(student) + alpha * T^2 * KL(teacher_T || student_T)``,
where ``_T`` is the softmax at temperature ``T`` (Hinton et al.) and the KL is averaged
over the frames where both models emit.

**Frame alignment is explicit.** Teacher and student do not emit on the same grid:

- TDS-Conv's unpadded convolutions drop ``receptive_field - 1`` frames: its output ``i``
  sees input frames ``i .. i + RF - 1``;
- the transformer's strided conv front end emits at half rate: output ``i`` sees
  ``2i .. 2i + RF - 1`` (RF from its kernels and strides);
- a student with look-ahead ``L`` (the BiLSTM) emits frame ``t`` for input ``t - L``.

``TeacherAlignment`` describes a teacher's grid as ``(offset, stride)``: output ``i`` is
anchored at input frame ``offset + stride * i``. The anchor is the *last* input frame
the output has seen (``anchor="end"``, the default: a causal student at that frame has
seen the same latest input) or the centre of its window (``anchor="center"``). Student
frame ``t`` (input frame ``u = t - L``) takes teacher output ``floor((u - offset) / stride)``
(each half-rate transformer frame serves two student frames); frames without a valid
teacher output are masked out of the KL.

The data pipeline, optimiser, schedule, validation (greedy CER) and checkpoints are
``emgkey.train``'s own; only the loss differs. ``train.loop`` has no hook for an extra
loss term, so this module has a small epoch loop of its own (see docs/export.md for the
hook that would let it share ``train.loop.train``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from emgkey.atomic import atomic_write_text
from emgkey.errors import ConfigError
from emgkey.features import FeatureConfig
from emgkey.train.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint
from emgkey.train.config import TrainConfig
from emgkey.train.data import Batch, SplitPaths, build_dataset, eval_batch_size, make_loader
from emgkey.train.distributed import DistInfo
from emgkey.train.loop import (
    BEST,
    LAST,
    RESULTS_JSON,
    align_guard_frames,
    align_weight_at,
    batch_alignment_loss,
    ctc_loss_fn,
    evaluate,
    make_optimizer,
    make_scheduler,
    model_config_for,
    resolve_device,
    val_fields,
)
from emgkey.train.models.common import CTCModel, StreamingModel
from emgkey.train.models.registry import build_model
from emgkey.train.models.tds_conv import TDSConvModel
from emgkey.train.models.transformer import TransformerModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    alpha: float = 0.5  # weight of the KL term; CTC gets 1 - alpha
    temperature: float = 2.0
    anchor: Literal["end", "center"] = "end"

    def __post_init__(self) -> None:
        assert 0.0 <= self.alpha <= 1.0, "alpha must be in [0, 1]"
        assert self.temperature > 0, "temperature must be positive"
        assert self.anchor in ("end", "center"), "anchor is 'end' or 'center'"


@dataclass(frozen=True)
class TeacherAlignment:
    """Teacher output ``i`` is anchored at input frame ``offset + stride * i``."""

    offset: float
    stride: int


def _conv_receptive_field(kernels: tuple[int, ...], strides: tuple[int, ...]) -> tuple[int, int]:
    rf, jump = 1, 1
    for k, s in zip(kernels, strides, strict=True):
        rf += (k - 1) * jump
        jump *= s
    return rf, jump


def teacher_alignment(teacher: nn.Module, anchor: str = "end") -> TeacherAlignment:
    """Where each teacher output sits on the input frame grid (see the module docstring)."""
    if isinstance(teacher, TDSConvModel):
        rf, stride = teacher.config.receptive_field, 1
    elif isinstance(teacher, TransformerModel):
        rf, stride = _conv_receptive_field(teacher.config.conv_kernels, teacher.config.conv_strides)
    elif isinstance(teacher, StreamingModel):  # a streaming teacher emits frame t for input t - L
        return TeacherAlignment(offset=-float(teacher.lookahead_frames), stride=1)
    else:
        rf, stride = (teacher.receptive_field or 1), getattr(teacher, "stride", 1)
    offset = (rf - 1) if anchor == "end" else (rf - 1) / 2
    return TeacherAlignment(offset=float(offset), stride=int(stride))


def align_teacher(
    teacher_lp: Tensor,
    teacher_lengths: Tensor,
    student_frames: int,
    student_lengths: Tensor,
    alignment: TeacherAlignment,
    student_lookahead: int = 0,
) -> tuple[Tensor, Tensor]:
    """Teacher log-probs resampled onto the student's frames, and where they are valid.

    teacher_lp (T_t, N, K), lengths (N,) -> (aligned (T_s, N, K), mask (T_s, N) bool).
    """
    T_t = teacher_lp.shape[0]
    device = teacher_lp.device
    u = torch.arange(student_frames, device=device, dtype=torch.float64) - student_lookahead  # input frame per t
    idx = torch.floor((u - alignment.offset) / alignment.stride).long()  # (T_s,)
    valid_t = (idx >= 0)[:, None] & (idx[:, None] < teacher_lengths.to(device)[None, :])  # (T_s, N)
    valid_s = torch.arange(student_frames, device=device)[:, None] < student_lengths.to(device)[None, :]
    mask = valid_t & valid_s & (idx < T_t)[:, None]
    gathered = teacher_lp[idx.clamp(0, max(T_t - 1, 0))]  # (T_s, N, K)
    return gathered, mask


def kd_loss(student_lp: Tensor, teacher_lp: Tensor, mask: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over masked frames (0 when none)."""
    t = F.log_softmax(teacher_lp.float() / temperature, dim=-1)
    s = F.log_softmax(student_lp.float() / temperature, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (T_s, N)
    n = mask.sum()
    if n == 0:
        return student_lp.sum() * 0.0
    return (kl * mask).sum() / n * temperature**2


def distill_loss(
    student: CTCModel,
    teacher: CTCModel,
    batch: Batch,
    dcfg: DistillConfig,
    alignment: TeacherAlignment,
    ctc: nn.CTCLoss,
    align_weight: float = 0.0,
    align_guard: int = 2,
    align_near_weight: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """``(1 - alpha) * task + alpha * KD``; the task term is CTC, crossfaded with the press-time alignment
    loss while ``align_weight`` > 0 (the trainer's warm-up, ``optim.align_weight``)."""
    log_probs = student(batch.inputs, batch.input_lengths)  # (T_s, N, K)
    s_len = student.output_lengths(batch.input_lengths).clamp(max=log_probs.shape[0])
    ctc_items = ctc(log_probs.float(), batch.targets, s_len, batch.target_lengths) / batch.target_lengths.clamp(min=1)
    ctc_term = ctc_items.mean()
    task = ctc_term
    if align_weight > 0 and batch.label_frames is not None:
        align = batch_alignment_loss(student, log_probs, s_len, batch, align_guard, align_near_weight)
        task = (1.0 - align_weight) * ctc_term + align_weight * align
    with torch.no_grad():
        t_lp = teacher(batch.inputs, batch.input_lengths)
        t_len = teacher.output_lengths(batch.input_lengths).clamp(max=t_lp.shape[0])
    lookahead = student.lookahead_frames if isinstance(student, StreamingModel) else 0
    aligned, mask = align_teacher(t_lp, t_len, log_probs.shape[0], s_len, alignment, lookahead)
    kd = kd_loss(log_probs, aligned, mask, dcfg.temperature)
    loss = (1.0 - dcfg.alpha) * task + dcfg.alpha * kd
    return loss, {"ctc": float(ctc_term.detach()), "kd": float(kd.detach()), "kd_frames": float(mask.sum())}


def distill(
    teacher_ckpt: str | Path,
    cfg: TrainConfig,
    data_root: str | Path,
    split_file: str | Path,
    out_dir: str | Path,
    dcfg: DistillConfig | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train ``cfg.model`` (a student) with the teacher's posteriors; writes best.pt/last.pt/results.json."""
    dcfg = dcfg or DistillConfig()
    out_dir = Path(out_dir)
    if (out_dir / LAST).is_file():
        raise ConfigError(f"{out_dir} already holds a run; choose another --out")
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # as the trainer: OpenMP spinning on a shared 2-core box costs 10x
    tk = load_checkpoint(teacher_ckpt)
    split = SplitPaths.resolve(data_root, split_file)
    profile = split.profile
    if tk["profile"]["name"] != profile.name:
        raise ConfigError(f"the teacher was trained on {tk['profile']['name']!r} data; this split is {profile.name!r}")
    feature_cfg = FeatureConfig.from_dict(tk["feature_config"])
    if cfg.data.feature_hop and cfg.data.feature_hop != feature_cfg.hop:
        raise ConfigError(
            f"data.feature_hop={cfg.data.feature_hop}, but the teacher was trained with hop {feature_cfg.hop}: "
            "the student sees the teacher's features (leave data.feature_hop at 0)"
        )
    if feature_cfg.kind != cfg.data.feature_kind:
        cfg.data.feature_kind = feature_cfg.kind  # the student must see the teacher's features
    dev = resolve_device(device or cfg.device, DistInfo())
    teacher = build_from_checkpoint(tk).to(dev).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    alignment = teacher_alignment(teacher, dcfg.anchor)

    torch.manual_seed(cfg.seed)
    model_cfg = model_config_for(cfg, profile, feature_cfg)
    student = build_model(model_cfg).to(dev)
    train_ds = build_dataset(split.paths["train"], "train", cfg, profile, feature_cfg)
    val_ds = build_dataset(split.paths["val"], "val", cfg, profile, feature_cfg) if split.paths["val"] else None
    probe = make_loader(train_ds, cfg.data.batch_size, True, 0, 0)
    steps = min(len(probe), cfg.max_steps_per_epoch or len(probe))
    optimizer = make_optimizer([{"params": list(student.parameters()), "lr": cfg.optim.lr}], cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, steps, cfg.epochs)
    ctc = ctc_loss_fn()
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "teacher": str(teacher_ckpt),
        "teacher_model": tk["model_config"]["name"],
        "alignment": asdict(alignment),
        **asdict(dcfg),
    }
    best_cer: float | None = None
    best_epoch: int | None = None
    rows: list[dict[str, Any]] = []
    log.info("distilling %s -> %s on %s: %s", info["teacher_model"], cfg.model, profile.name, info)

    guard = align_guard_frames(cfg.optim, feature_cfg.frame_rate_hz, student.stride)
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        student.train()
        sums = {"loss": 0.0, "ctc": 0.0, "kd": 0.0}
        n = 0
        for step, batch in enumerate(make_loader(train_ds, cfg.data.batch_size, True, cfg.data.num_workers, epoch)):
            if step >= steps:
                break
            batch = batch.to(dev)
            w_align = align_weight_at(cfg.optim, epoch * steps + step, steps * cfg.epochs)
            loss, parts = distill_loss(
                student, teacher, batch, dcfg, alignment, ctc, w_align, guard, cfg.optim.align_near_weight
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip is not None:
                gn = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.grad_clip)
            else:
                gn = torch.tensor(0.0)
            if torch.isfinite(gn):
                optimizer.step()
            scheduler.step()
            sums["loss"] += float(loss.detach())
            sums["ctc"] += parts["ctc"]
            sums["kd"] += parts["kd"]
            n += 1
        row: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v / max(n, 1) for k, v in sums.items()}}
        if val_ds is not None:
            val = evaluate(student, make_loader(val_ds, eval_batch_size(cfg.data, "val"), False, 0), dev)
            row.update(val_fields(val))
        row["epoch_time_s"] = time.perf_counter() - t0
        improved = val_ds is None or best_cer is None or row["val_cer"] < best_cer
        if improved:
            best_cer, best_epoch = row.get("val_cer"), epoch
        for path in ([out_dir / BEST] if improved else []) + [out_dir / LAST]:
            save_checkpoint(
                path,
                model=student,
                model_config=model_cfg,
                feature_config=feature_cfg,
                profile=profile,
                train_config=cfg.to_dict(),
                epoch=epoch + 1,
                best_val_cer=best_cer,
                best_epoch=best_epoch,
                metrics=row,
                extra={"distillation": info},
            )
        rows.append(row)
        log.info(
            "epoch %d: loss %.3f (ctc %.3f kd %.3f) | val CER %s | %.1f s",
            epoch,
            row["train_loss"],
            row["train_ctc"],
            row["train_kd"],
            f"{row['val_cer']:.2f}" if "val_cer" in row else "-",
            row["epoch_time_s"],
        )
    train_ds.close()
    if val_ds is not None:
        val_ds.close()
    summary: dict[str, Any] = {
        "best_epoch": best_epoch,
        "best_val_cer": best_cer,
        "model": cfg.model,
        "profile": profile.name,
        "n_params": sum(p.numel() for p in student.parameters()),
        "distillation": info,
        "epochs": rows,
    }
    if cfg.eval_test and split.paths["test"]:
        best = load_checkpoint(out_dir / BEST, map_location=dev)
        student.load_state_dict(best["model_state"])
        test_ds = build_dataset(split.paths["test"], "test", cfg, profile, feature_cfg)
        test = evaluate(student, make_loader(test_ds, eval_batch_size(cfg.data, "test"), False, 0), dev)
        test_ds.close()
        summary["test"] = {k: v for k, v in test.items() if k != "example"}
    summary["wall_time_s"] = time.perf_counter() - t_start
    atomic_write_text(out_dir / RESULTS_JSON, json.dumps(_finite(summary), indent=2) + "\n")
    return summary


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x
