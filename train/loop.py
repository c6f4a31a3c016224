"""The training loop: CTC on windows, greedy-decoded CER on validation, best-on-val checkpoints.

``train(cfg, data_root, split_file, out_dir)`` reads top to bottom:

1. resolve the split's session files and their device; the feature front end
   is ``FeatureConfig.for_profile`` of that device (``data.feature_hop`` may change its
   hop), stored in the checkpoint, which is where the bundle and edge runtime take it from;
2. build the model (fresh from the registry, from ``last.pt`` when resuming,
   or from a checkpoint of another device via ``transfer``);
3. AdamW with OneCycle (or warm-up + cosine) stepped per batch, CTC loss
   (blank 98, ``zero_infinity``), gradient clipping;
4. each epoch: train on jittered, augmented windows; validate with the online
   greedy decoder (``emgkey.decoding``) and CER split into ins/del/sub
   (``emgkey.metrics``); write ``last.pt``, ``best.pt`` (lowest val CER),
   ``metrics.csv`` and ``metrics.json``;
5. at the end, evaluate ``best.pt`` on the split's test sessions (whole
   sessions by default, emg2qwerty's protocol) into ``results.json``.

Reproducibility: the model is initialised from ``seed``; each epoch reseeds
torch from ``(seed, epoch, rank)`` and draws its shuffling and augmentation
from ``(seed, epoch, window)``, so resuming from ``last.pt`` continues exactly
as if the run had never stopped.

Under ``torchrun`` (or ``emgkey train --nproc N``) the same function runs in
every process; see ``emgkey.train.distributed``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from emgkey import charset
from emgkey.atomic import atomic_write_text
from emgkey.decoding import greedy_decode
from emgkey.errors import ConfigError
from emgkey.features import FeatureConfig
from emgkey.metrics import EditCounts, align
from emgkey.profiles import DeviceProfile
from emgkey.train import distributed
from emgkey.train.checkpoint import build_from_checkpoint, load_checkpoint, save_checkpoint, unwrap
from emgkey.train.config import DataConfig, OptimConfig, TrainConfig
from emgkey.train.data import Batch, EmgFeatureDataset, SplitPaths, build_dataset, eval_batch_size, make_loader
from emgkey.train.distributed import DistInfo
from emgkey.train.models.registry import build_model, default_config

log = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
RESULTS_JSON = "results.json"
MAX_CONFUSIONS = 50  # substitution pairs kept in eval results
CONFIG_YAML = "config.yaml"

# Settings that may differ when resuming: they change where and how fast the run goes, not what it computes.
_RESUMABLE_CHANGES = {"device", "progress", "data.num_workers", "time_budget_s"}


# ---- model and optimisation --------------------------------------------------------------------


def feature_config_for(data: DataConfig, profile: DeviceProfile) -> FeatureConfig:
    """The profile's front end (``FeatureConfig.for_profile``), with ``data.feature_hop`` when set."""
    fc = FeatureConfig.for_profile(profile, data.feature_kind)
    if data.feature_hop and data.feature_hop != fc.hop:
        if data.feature_hop > fc.n_fft:
            raise ConfigError(
                f"data.feature_hop={data.feature_hop} exceeds the window (n_fft={fc.n_fft}): samples would be skipped"
            )
        fc = replace(fc, hop=data.feature_hop)
    return fc


def model_config_for(cfg: TrainConfig, profile: DeviceProfile, feature_cfg: FeatureConfig) -> dict[str, Any]:
    """The registry's preset for (model, device, front end, size), with ``model_overrides`` on top."""
    d = default_config(cfg.model, profile.name, feature_cfg, size=cfg.model_size).to_dict()
    d.update(cfg.model_overrides)
    return d


def make_optimizer(param_groups: list[dict[str, Any]], optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; each group may carry its own ``lr`` (layer-wise rates in transfer)."""
    return torch.optim.AdamW(param_groups, lr=optim.lr, betas=optim.betas, weight_decay=optim.weight_decay)


def make_scheduler(
    optimizer: torch.optim.Optimizer, optim: OptimConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule. OneCycle peaks at each group's own ``lr`` (so layer-wise ratios hold throughout)."""
    total = max(1, steps_per_epoch * epochs)
    peaks = [g["lr"] for g in optimizer.param_groups]
    if optim.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=peaks,
            total_steps=total,
            pct_start=optim.pct_start,
            div_factor=optim.div_factor,
            final_div_factor=optim.final_div_factor,
            anneal_strategy="cos",
        )
    if optim.scheduler == "cosine":
        warmup = round(optim.warmup_epochs * steps_per_epoch)
        floor = optim.min_lr / optim.lr

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def ctc_loss_fn() -> nn.CTCLoss:
    return nn.CTCLoss(blank=charset.BLANK, reduction="none", zero_infinity=True)


def _per_item_loss(model: nn.Module, batch: Batch, ctc: nn.CTCLoss) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per window / target length (N,), log-probs (T_out, N, classes), emission lengths (N,))."""
    log_probs = model(batch.inputs, batch.input_lengths)  # (T_out, N, classes)
    emission_lengths = unwrap(model).output_lengths(batch.input_lengths).clamp(max=log_probs.shape[0])  # (N,)
    loss = ctc(log_probs.float(), batch.targets, emission_lengths, batch.target_lengths)  # (N,)
    return loss / batch.target_lengths.clamp(min=1), log_probs, emission_lengths


def alignment_loss(
    log_probs: torch.Tensor,
    emission_lengths: torch.Tensor,
    input_lengths: torch.Tensor,
    label_frames: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    stride: int,
    guard: int = 2,
    near_weight: float = 0.0,
) -> torch.Tensor:
    """Frame-wise CE from press times: (T_out, N, C) log-probs -> scalar.

    Each known press puts its key on the first output frame that sees the press frame
    (a valid convolution's context and the stride are derived from the lengths); frames
    more than ``guard`` frames from any press should be blank. Key frames and blank frames
    are averaged separately and summed, so a window's few keys weigh as much as its blanks.
    With ``near_weight`` > 0, frames within ``guard`` of a press add ``near_weight`` times the
    mean of ``-log(p(blank) + p(keys pressed within guard))``: what CTC allows there, so a model
    warmed up this way does not emit stray symbols next to its keys.
    """
    T_out, N, _ = log_probs.shape
    dev = log_probs.device
    context = (input_lengths - (emission_lengths - 1) * stride - 1).clamp(min=0)  # (N,) input frames before out 0
    L = targets.shape[1]
    valid = (label_frames >= 0) & (torch.arange(L, device=dev)[None, :] < target_lengths[:, None])  # (N, L)
    out_idx = torch.div(label_frames - context[:, None] + stride - 1, stride, rounding_mode="floor")  # (N, L)
    out_idx = torch.minimum(out_idx.clamp(min=0), (emission_lengths - 1).clamp(min=0)[:, None])
    frame_ok = torch.arange(T_out, device=dev)[:, None] < emission_lengths[None, :]  # (T_out, N)
    lp = log_probs.float()
    n_idx = torch.arange(N, device=dev)[:, None].expand(N, L)
    key_terms = -lp[out_idx[valid], n_idx[valid], targets[valid]]  # (K,)
    # blank where no press is within `guard` output frames
    near = torch.zeros(T_out + 2 * guard + 1, N, dtype=torch.bool, device=dev)
    for d in range(2 * guard + 1):
        near[out_idx[valid] + d, n_idx[valid]] = True
    far = frame_ok & ~near[guard : guard + T_out]  # (T_out, N)
    has_known = valid.any(dim=1) | (target_lengths == 0)  # windows whose presses are all known (or none)
    far = far & has_known[None, :]
    blank_terms = -lp[..., charset.BLANK][far]  # (B,)
    key = key_terms.mean() if key_terms.numel() else lp.new_zeros(())
    blank = blank_terms.mean() if blank_terms.numel() else lp.new_zeros(())
    if near_weight <= 0:
        return key + blank
    allowed = torch.zeros(T_out + 2 * guard + 1, N, lp.shape[-1], dtype=torch.bool, device=dev)
    for d in range(2 * guard + 1):
        allowed[out_idx[valid] + d, n_idx[valid], targets[valid]] = True
    allowed = allowed[guard : guard + T_out]  # (T_out, N, C)
    allowed[..., charset.BLANK] = True
    close = frame_ok & near[guard : guard + T_out] & has_known[None, :]  # (T_out, N)
    near_terms = -lp.masked_fill(~allowed, float("-inf")).logsumexp(dim=-1)[close]  # (M,)
    near_term = near_terms.mean() if near_terms.numel() else lp.new_zeros(())
    return key + blank + near_weight * near_term


def batch_alignment_loss(
    model: nn.Module,
    log_probs: torch.Tensor,
    emission_lengths: torch.Tensor,
    batch: Batch,
    guard: int = 2,
    near_weight: float = 0.0,
) -> torch.Tensor:
    """``alignment_loss`` of a batch that carries press frames (``Batch.label_frames``)."""
    assert batch.label_frames is not None, "the batch has no press times (label_frames)"
    return alignment_loss(
        log_probs,
        emission_lengths,
        batch.input_lengths,
        batch.label_frames,
        batch.targets,
        batch.target_lengths,
        unwrap(model).stride,
        guard,
        near_weight,
    )


def align_guard_frames(cfg: OptimConfig, frame_rate_hz: float, stride: int = 1) -> int:
    """``optim.align_guard_s`` in output frames (input frames / ``stride``), at least 1."""
    return max(1, round(cfg.align_guard_s * frame_rate_hz / stride))


def align_weight_at(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """``align_weight`` held for ``align_hold`` of the run, then annealed linearly to 0 at ``align_until``."""
    if cfg.align_weight <= 0:
        return 0.0
    hold = cfg.align_hold * total_steps
    end = max(hold + 1.0, cfg.align_until * total_steps)
    return cfg.align_weight * min(1.0, max(0.0, (end - step) / (end - hold)))


def resolve_device(name: str, info: DistInfo) -> torch.device:
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but torch sees no GPU")
    return torch.device("cuda", info.local_rank) if use_cuda else torch.device("cpu")


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


# ---- one epoch -----------------------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    device: torch.device,
    info: DistInfo,
    epoch: int,
    max_steps: int,
    total_steps: int | None = None,
    align_guard: int = 2,
) -> dict[str, float]:
    """One epoch of CTC (+ the annealed alignment warm-up, ``optim.align_weight``; ``align_guard``:
    ``align_guard_frames`` of the run)."""
    model.train()
    ctc = ctc_loss_fn()
    total_steps = total_steps if total_steps is not None else max_steps * cfg.epochs
    align_sum = 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum, items, skipped, steps = 0.0, 0, 0, 0
    bar = tqdm(total=max_steps, desc=f"epoch {epoch}", disable=not (cfg.progress and info.is_main), leave=False)
    for batch in loader:
        if steps >= max_steps:
            break
        batch = batch.to(device, non_blocking=True)
        loss_items, log_probs, emission_lengths = _per_item_loss(model, batch, ctc)  # (N,)
        loss = loss_items.mean()  # as CTCLoss(reduction="mean")
        w_align = align_weight_at(cfg.optim, epoch * max_steps + steps, total_steps)
        if w_align > 0 and batch.label_frames is not None:
            align = batch_alignment_loss(
                model, log_probs, emission_lengths, batch, align_guard, cfg.optim.align_near_weight
            )
            loss = (1.0 - w_align) * loss + w_align * align  # crossfade: CTC alone collapses to blank first
            align_sum += float(align.detach()) * len(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        # DDP has averaged the gradients, so every rank sees the same norm and skips together.
        if torch.isfinite(grad_norm):
            optimizer.step()
        else:
            skipped += 1
        scheduler.step()  # the schedule follows steps taken or not, so it ends where planned
        loss_sum += float(loss_items.detach().sum())
        items += len(batch)
        steps += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    bar.close()
    totals = distributed.all_reduce_sum([loss_sum, items, skipped, align_sum], info, device)
    loss_sum, items, skipped, align_sum = totals
    if skipped:
        log.warning("epoch %d: %d steps skipped for non-finite gradients", epoch, int(skipped))
    return {
        "train_loss": loss_sum / max(items, 1),
        "train_windows": int(items),
        "steps": steps,
        "skipped_steps": int(skipped),
        "align_loss": align_sum / max(items, 1),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    info: DistInfo | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, Any]:
    """CTC loss and greedy-decoded CER (ins/del/sub) over a loader, summed over ranks.

    Decoding uses ``emgkey.decoding.greedy_decode`` on each window's valid
    emissions, the same decoder the device runs. ``substitutions`` lists the
    most frequent ``[target, predicted, count]`` of this rank's alignments
    (which keys the model confuses).
    """
    info = info or DistInfo()
    model.eval()
    ctc = ctc_loss_fn()
    counts = EditCounts()
    confusions: Counter[tuple[str, str]] = Counter()
    loss_sum, items = 0.0, 0
    example: dict[str, str] = {}
    for batch in tqdm(loader, desc=desc, disable=not (progress and info.is_main), leave=False):
        batch = batch.to(device, non_blocking=True)
        loss_items, log_probs, lengths = _per_item_loss(model, batch, ctc)
        loss_sum += float(loss_items.sum())
        items += len(batch)
        emissions = log_probs.float().cpu().numpy()  # (T_out, N, classes)
        for n in range(len(batch)):
            pred = charset.labels_to_str(greedy_decode(emissions[:, n], int(lengths[n])))
            target = charset.labels_to_str(batch.targets[n, : int(batch.target_lengths[n])].tolist())
            item_counts, subs = align(pred, target)
            counts = counts + item_counts
            confusions.update(subs)
            if not example and target:
                example = {"prediction": pred, "target": target}
    sums = distributed.all_reduce_sum(
        [loss_sum, items, counts.insertions, counts.deletions, counts.substitutions, counts.target_len], info, device
    )
    total = EditCounts(*(round(x) for x in sums[2:]))
    out: dict[str, Any] = {"loss": sums[0] / max(sums[1], 1), "windows": int(sums[1]), **total.as_dict()}
    out["example"] = example
    out["substitutions"] = [[a, b, n] for (a, b), n in confusions.most_common(MAX_CONFUSIONS)]
    return out


def val_fields(val: dict[str, Any]) -> dict[str, Any]:
    """``evaluate``'s scalars as ``val_*`` columns of an epoch row (its example and confusion list stay out)."""
    return {f"val_{k}": v for k, v in val.items() if k not in ("example", "substitutions")}


# ---- metrics files -------------------------------------------------------------------------------


@dataclass
class MetricsLog:
    """Per-epoch rows, rewritten atomically as ``metrics.csv`` and ``metrics.json`` after every epoch."""

    out_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def resume(cls, out_dir: Path, start_epoch: int) -> MetricsLog:
        path = out_dir / METRICS_JSON
        rows = []
        if path.is_file():
            rows = [r for r in json.loads(path.read_text())["epochs"] if r["epoch"] < start_epoch]
        return cls(out_dir, rows)

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        buf = io.StringIO()
        if self.rows:
            cols = list(self.rows[0])
            writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        atomic_write_text(self.out_dir / METRICS_CSV, buf.getvalue())
        doc = {"epochs": self.rows, **self.summary}
        atomic_write_text(self.out_dir / METRICS_JSON, json.dumps(doc, indent=2) + "\n")


# ---- the run -------------------------------------------------------------------------------------


@dataclass
class RunState:
    start_epoch: int = 0
    best_val_cer: float | None = None
    best_epoch: int | None = None
    wall_time_s: float = 0.0  # training time of earlier sessions of this run (resume)


def _check_resume_config(stored: TrainConfig, given: TrainConfig | None) -> TrainConfig:
    """The run's own config wins; a given config may only differ in where/how fast it runs."""
    if given is None:
        return stored
    a, b = _flatten(stored.to_dict()), _flatten(given.to_dict())
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _RESUMABLE_CHANGES)
    if diff:
        raise ConfigError(
            f"--resume: the config differs from the run's in {diff}; resume without --config/--set, "
            "or start a new run in another --out"
        )
    for k in _RESUMABLE_CHANGES:
        section, _, leaf = k.rpartition(".")
        src = getattr(given, section) if section else given
        dst = getattr(stored, section) if section else stored
        setattr(dst, leaf, getattr(src, leaf))
    return stored


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "model_overrides":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def train(
    cfg: TrainConfig | None,
    data_root: str | Path,
    split_file: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    device: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) a run in ``out_dir``; returns the summary also written to ``results.json``.

    ``resume``: continue from ``out_dir/last.pt`` if there is one (else start
    afresh), with the run's stored config; ``device`` overrides ``cfg.device``.
    """
    out_dir = Path(out_dir)
    last_path = out_dir / LAST
    ckpt = None
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        cfg = _check_resume_config(TrainConfig.from_dict(ckpt["train_config"]), cfg)
    elif last_path.is_file():
        raise ConfigError(
            f"{out_dir} already holds a run ({LAST}); pass --resume to continue it or choose another --out"
        )
    elif cfg is None:
        raise ConfigError("a config is needed to start a run")
    assert cfg is not None
    if device is not None:
        cfg.device = device
    torch_device = resolve_device(cfg.device, DistInfo(local_rank=int(os.environ.get("LOCAL_RANK", "0"))))
    info = distributed.setup(use_cuda=torch_device.type == "cuda")
    try:
        return _train(cfg, Path(data_root), Path(split_file), out_dir, ckpt, torch_device, info)
    finally:
        distributed.teardown()


def _train(
    cfg: TrainConfig,
    data_root: Path,
    split_file: Path,
    out_dir: Path,
    ckpt: dict[str, Any] | None,
    device: torch.device,
    info: DistInfo,
) -> dict[str, Any]:
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    split = SplitPaths.resolve(data_root, split_file)
    profile = split.profile
    feature_cfg = feature_config_for(cfg.data, profile)
    if ckpt is not None:  # resuming: the front end the run started with
        feature_cfg = FeatureConfig.from_dict(ckpt["feature_config"])
    elif cfg.transfer.init_from and not cfg.data.feature_hop:
        # Fine-tuning on the same device (personalisation) keeps the hop the checkpoint was trained with.
        src = load_checkpoint(cfg.transfer.init_from)
        if src["profile"]["name"] == profile.name:
            feature_cfg = replace(feature_cfg, hop=FeatureConfig.from_dict(src["feature_config"]).hop)
    if not split.paths["train"]:
        raise ConfigError(f"{split_file}: no training sessions")

    # -- model
    from emgkey.train import transfer

    torch.manual_seed(cfg.seed)
    state = RunState()
    plan: transfer.TransferPlan | None = None
    if ckpt is not None:
        if ckpt["profile"]["name"] != profile.name:
            raise ConfigError(
                f"--resume: the run was on {ckpt['profile']['name']!r} data, this split is {profile.name!r}"
            )
        model_cfg = ckpt["model_config"]
        model = build_from_checkpoint(ckpt)
        state = RunState(
            start_epoch=ckpt["epoch"],
            best_val_cer=ckpt["best_val_cer"],
            best_epoch=ckpt["best_epoch"],
            wall_time_s=ckpt["extra"].get("wall_time_s", 0.0),
        )
        if cfg.transfer.init_from:
            plan = transfer.plan_for(model, cfg.transfer, ckpt["extra"].get("input_pretrained", False))
    elif cfg.transfer.init_from:
        model, model_cfg, plan = transfer.from_checkpoint(cfg.transfer, profile, feature_cfg, cfg.model_overrides)
    else:
        model_cfg = model_config_for(cfg, profile, feature_cfg)
        model = build_model(model_cfg)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())

    # -- data
    train_ds = build_dataset(split.paths["train"], "train", cfg, profile, feature_cfg)
    val_ds = build_dataset(split.paths["val"], "val", cfg, profile, feature_cfg) if split.paths["val"] else None
    pin = device.type == "cuda"
    probe = make_loader(train_ds, cfg.data.batch_size, True, 0, 0, info.rank, info.world_size)
    steps_per_epoch = min(len(probe), cfg.max_steps_per_epoch or len(probe))
    assert steps_per_epoch >= 1, "the training split has no windows (sessions shorter than data.window_s?)"

    # -- optimisation
    groups = plan.param_groups(cfg.optim.lr) if plan else [{"params": list(model.parameters()), "lr": cfg.optim.lr}]
    optimizer = make_optimizer(groups, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, steps_per_epoch, cfg.epochs)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])

    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / CONFIG_YAML, cfg.to_yaml())
        log.info(
            "%s on %s (%s x %d, %d train / %d val / %d test sessions): %d parameters, %d steps/epoch",
            cfg.model if not cfg.transfer.init_from else f"transfer from {cfg.transfer.init_from}",
            profile.name,
            device,
            info.world_size,
            len(split.paths["train"]),
            len(split.paths["val"]),
            len(split.paths["test"]),
            n_params,
            steps_per_epoch,
        )
    metrics = MetricsLog.resume(out_dir, state.start_epoch)
    metrics.summary = {"model_config": model_cfg, "n_params": n_params, "profile": profile.name}

    def save(path: Path, epoch: int, row: dict[str, Any], elapsed: float) -> None:
        save_checkpoint(
            path,
            model=model,
            model_config=model_cfg,
            feature_config=feature_cfg,
            profile=profile,
            train_config=cfg.to_dict(),
            epoch=epoch,
            best_val_cer=state.best_val_cer,
            best_epoch=state.best_epoch,
            metrics=row,
            optimizer=optimizer,
            scheduler=scheduler,
            extra={"wall_time_s": elapsed, "input_pretrained": plan.input_pretrained if plan else False},
        )

    # -- epochs
    wrapped: nn.Module = model
    trainable: tuple[bool, ...] | None = None
    session_start = time.perf_counter()
    stopped_after: int | None = None  # epochs run when the time budget stopped training
    guard = align_guard_frames(cfg.optim, feature_cfg.frame_rate_hz, model.stride)  # alignment warm-up, frames
    for epoch in range(state.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))  # dropout etc.; resume lands on the same draws
        if plan is not None:
            plan.apply(epoch)
        now = tuple(p.requires_grad for p in model.parameters())
        if now != trainable:  # DDP must be rebuilt when the set of trained parameters changes
            wrapped, trainable = distributed.wrap(model, info, device), now
        loader = make_loader(
            train_ds, cfg.data.batch_size, True, cfg.data.num_workers, epoch, info.rank, info.world_size, pin
        )
        row: dict[str, Any] = {"epoch": epoch}
        row.update(
            train_one_epoch(
                wrapped, loader, optimizer, scheduler, cfg, device, info, epoch, steps_per_epoch, align_guard=guard
            )
        )
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if val_ds is not None:
            val = evaluate(
                model,
                make_loader(
                    val_ds, eval_batch_size(cfg.data, "val"), False, cfg.data.num_workers, 0, info.rank, info.world_size
                ),
                device,
                info,
                cfg.progress,
                "val",
            )
            row.update(val_fields(val))
        row["epoch_time_s"] = time.perf_counter() - t0
        elapsed = state.wall_time_s + time.perf_counter() - session_start
        row["wall_time_s"] = elapsed
        improved = val_ds is not None and (state.best_val_cer is None or row["val_cer"] < state.best_val_cer)
        if val_ds is None:  # nothing to select on: the latest model is the best we know
            improved = True
        if improved:
            state.best_val_cer, state.best_epoch = row.get("val_cer"), epoch
        if info.is_main:
            if improved:
                save(out_dir / BEST, epoch + 1, row, elapsed)
            save(out_dir / LAST, epoch + 1, row, elapsed)
            metrics.summary.update({"best_epoch": state.best_epoch, "best_val_cer": state.best_val_cer})
            metrics.append(row)
            log.info(
                "epoch %d: train loss %.3f | val loss %s CER %s (ins %s del %s sub %s) | %.1f s%s",
                epoch,
                row["train_loss"],
                _fmt(row.get("val_loss")),
                _fmt(row.get("val_cer")),
                _fmt(row.get("val_ins")),
                _fmt(row.get("val_del")),
                _fmt(row.get("val_sub")),
                row["epoch_time_s"],
                "  *best*" if improved else "",
            )
            if val_ds is not None and val["example"]:
                log.debug("  target: %r\n  decoded: %r", val["example"]["target"], val["example"]["prediction"])
        distributed.barrier(info)
        if cfg.time_budget_s is not None:
            # every rank must stop after the same epoch: stop when any rank is past the budget
            over = time.perf_counter() - session_start > cfg.time_budget_s
            if distributed.all_reduce_sum([float(over)], info, device)[0] > 0 and epoch + 1 < cfg.epochs:
                stopped_after = epoch + 1
                if info.is_main:
                    log.info("time budget %.0f s spent: stopping after %d of %d epochs", cfg.time_budget_s,
                             stopped_after, cfg.epochs)  # fmt: skip
                break
    train_ds.close()

    # -- test the selected model
    summary: dict[str, Any] = {
        "best_epoch": state.best_epoch,
        "best_val_cer": state.best_val_cer,
        "epochs_planned": cfg.epochs,
        "n_params": n_params,
        "profile": profile.name,
        "model": model_cfg.get("name"),
        "steps_per_epoch": steps_per_epoch,
        "world_size": info.world_size,
        "device": str(device),
    }
    if stopped_after is not None:
        summary["stopped_by_time_budget"] = {"epochs_run": stopped_after, "time_budget_s": cfg.time_budget_s}
    epoch_times = [r["epoch_time_s"] for r in metrics.rows]
    if epoch_times:
        summary["seconds_per_epoch"] = float(np.median(epoch_times))
    if val_ds is not None:
        val_ds.close()
    if cfg.eval_test and split.paths["test"] and (out_dir / BEST).is_file():
        best = load_checkpoint(out_dir / BEST, map_location=device)
        unwrap(model).load_state_dict(best["model_state"])
        test_ds = build_dataset(split.paths["test"], "test", cfg, profile, feature_cfg)
        loader = make_loader(
            test_ds, eval_batch_size(cfg.data, "test"), False, cfg.data.num_workers, 0, info.rank, info.world_size
        )
        test = evaluate(model, loader, device, info, cfg.progress, "test")
        test_ds.close()
        summary["test"] = {k: v for k, v in test.items() if k != "example"}
        if info.is_main:
            log.info(
                "test (best epoch %s): CER %.2f (ins %.2f del %.2f sub %.2f)",
                state.best_epoch,
                test["cer"],
                test["ins"],
                test["del"],
                test["sub"],
            )
    summary["wall_time_s"] = state.wall_time_s + time.perf_counter() - t_start
    if info.is_main:
        metrics.summary.update(summary)
        metrics.write()
        atomic_write_text(out_dir / RESULTS_JSON, json.dumps(summary, indent=2) + "\n")
    return summary


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


# ---- evaluation of a saved model -----------------------------------------------------------------


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_root: str | Path,
    split_file: str | Path,
    subset: str = "test",
    window_s: float | str | None = "config",
    device_name: str = "auto",
    batch_size: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """CER (ins/del/sub) of a checkpoint on one subset of a split, windows as the run's config says.

    ``window_s``: ``"config"`` keeps the run's val/test window, ``None`` evaluates
    whole sessions, a number uses windows of that many seconds.
    """
    ckpt = load_checkpoint(checkpoint)
    cfg = TrainConfig.from_dict(ckpt["train_config"])
    split = SplitPaths.resolve(data_root, split_file)
    if split.profile.name != ckpt["profile"]["name"]:
        raise ConfigError(
            f"{checkpoint} was trained on {ckpt['profile']['name']!r} data; {split_file} lists {split.profile.name!r} "
            "sessions (use transfer to move a model between devices)"
        )
    if subset not in split.paths or not split.paths[subset]:
        raise ConfigError(f"{split_file}: no {subset!r} sessions")
    if window_s != "config":
        if subset == "val":
            cfg.data.val_window_s = window_s
        else:
            cfg.data.test_window_s = window_s
    feature_cfg = FeatureConfig.from_dict(ckpt["feature_config"])
    device = resolve_device(device_name, DistInfo())
    model = build_from_checkpoint(ckpt).to(device)
    ds: EmgFeatureDataset = build_dataset(
        split.paths[subset], subset if subset != "train" else "test", cfg, split.profile, feature_cfg
    )
    t0 = time.perf_counter()
    result = evaluate(
        model,
        make_loader(ds, batch_size or eval_batch_size(cfg.data, subset), False, 0),
        device,
        progress=progress,
        desc=subset,
    )
    ds.close()
    result.update(
        {
            "checkpoint": str(checkpoint),
            "subset": subset,
            "sessions": len(split.paths[subset]),
            "epoch": ckpt["epoch"],
            "profile": split.profile.name,
            "model": ckpt["model_config"].get("name"),
            "eval_time_s": time.perf_counter() - t0,
        }
    )
    return result
