"""Training configuration: nested dataclasses loaded from YAML, unknown keys rejected.

One ``TrainConfig`` describes a run completely (nanoGPT style): the model to
build, the windows and augmentations, the optimiser and its schedule, and an
optional transfer-learning section. It is stored in every checkpoint, so a run
can be resumed or re-evaluated from the checkpoint alone.

Everything that depends on the device is given in device-free units (seconds,
fractions of the frequency axis); the pipeline converts to samples, frames and
bins with the run's ``DeviceProfile`` and ``FeatureConfig``. The same YAML then
trains on ``emg2qwerty`` (2 kHz) and ``armband8`` (200 Hz) data.

A typo is an error: ``TrainConfig.from_dict({"optim": {"lrr": 1}})`` raises
``ValueError`` naming the section and the unknown key, and so does
``--set optim.lrr=1`` on the command line.

This module imports no torch, so the CLI can parse and check configs cheaply.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from emgkey.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

SchedulerName = Literal["onecycle", "cosine", "constant"]
DeviceName = Literal["auto", "cpu", "cuda"]


@dataclass
class DataConfig:
    """Windows and batches. Defaults are emg2qwerty's (8000-sample windows at 2 kHz, padding 1800/200)."""

    window_s: float = 4.0  # training window (labels inside it)
    stride_s: float | None = None  # None: = window_s (non-overlapping windows, as emg2qwerty)
    padding_s: tuple[float, float] = (0.9, 0.1)  # context before/after the window; its labels are not targets
    jitter: bool = True  # random window offsets in training (emg2qwerty's jitter)
    # Validation/test windows; None means whole sessions (emg2qwerty's test protocol, batch size 1).
    val_window_s: float | None = 4.0
    test_window_s: float | None = None
    eval_padding_s: tuple[float, float] = (0.9, 0.1)  # padding of windowed validation/test (ignored for whole)
    batch_size: int = 32
    eval_batch_size: int = 8  # windowed validation/test; whole sessions always go one at a time
    num_workers: int = 0
    feature_kind: Literal["logspec", "logmel"] = "logspec"
    # Feature hop in samples; 0 keeps the profile's default (FeatureConfig.for_profile: 16 at 2 kHz,
    # 4 at 200 Hz). The checkpoint stores the front end it was trained with, and the bundle and the
    # edge runtime take it from there.
    feature_hop: int = 0
    # Validation/test features do not change between epochs: keep them in memory up to this size.
    cache_eval_features: bool = True
    cache_max_mb: float = 1024.0
    # Debug/CI knobs: cap the windows per epoch (None: all).
    max_train_windows: int | None = None
    max_eval_windows: int | None = None

    def __post_init__(self) -> None:
        self.padding_s = tuple(self.padding_s)  # type: ignore[assignment]  # YAML gives lists
        self.eval_padding_s = tuple(self.eval_padding_s)  # type: ignore[assignment]
        assert self.window_s > 0, "data.window_s must be positive"
        assert self.stride_s is None or self.stride_s > 0, "data.stride_s must be positive"
        assert len(self.padding_s) == 2 and min(self.padding_s) >= 0, "data.padding_s is (before, after) >= 0"
        assert len(self.eval_padding_s) == 2 and min(self.eval_padding_s) >= 0, "data.eval_padding_s is 2 values >= 0"
        for name in ("val_window_s", "test_window_s"):
            v = getattr(self, name)
            assert v is None or v > 0, f"data.{name} must be positive or null (whole sessions)"
        assert self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1"
        assert self.num_workers >= 0, "data.num_workers must be >= 0"
        assert self.feature_kind in ("logspec", "logmel"), f"unknown data.feature_kind {self.feature_kind!r}"
        assert self.feature_hop >= 0, "data.feature_hop must be >= 0 (0: the profile's default)"
        for name in ("max_train_windows", "max_eval_windows"):
            v = getattr(self, name)
            assert v is None or v >= 1, f"data.{name} must be >= 1 or null"


@dataclass
class AugmentConfig:
    """Training-time augmentations; each has its own switch. Validation and test use none.

    Raw-signal augmentations (µV, before features): band rotation, temporal
    jitter between bands, amplitude scaling, Gaussian noise. Feature
    augmentations: SpecAugment masks and time warping.
    """

    band_rotation: bool = True
    band_rotation_offsets: tuple[int, ...] = (-1, 0, 1)  # electrode shifts, drawn per band (emg2qwerty)
    band_jitter: bool = True
    band_jitter_max_s: float = 0.06  # emg2qwerty's 120 samples at 2 kHz
    amplitude_scale: bool = False
    amplitude_scale_range: tuple[float, float] = (0.8, 1.25)  # log-uniform, per band
    noise: bool = False
    noise_std_uv: float = 2.0  # additive white noise, microvolts
    specaugment: bool = True
    n_time_masks: int = 3  # emg2qwerty: 3 masks of up to 25 frames (0.2 s at 125 Hz)
    time_mask_max_s: float = 0.2
    n_freq_masks: int = 2  # emg2qwerty: 2 masks of up to 4 of 33 bins
    freq_mask_max_frac: float = 0.125
    time_warp: bool = False  # helped CNNs in one report, not recurrent models: off by default
    time_warp_range: tuple[float, float] = (0.8, 1.25)  # log-uniform speed factor

    def __post_init__(self) -> None:
        self.band_rotation_offsets = tuple(int(x) for x in self.band_rotation_offsets)
        self.amplitude_scale_range = tuple(self.amplitude_scale_range)  # type: ignore[assignment]
        self.time_warp_range = tuple(self.time_warp_range)  # type: ignore[assignment]
        assert len(self.band_rotation_offsets) >= 1, "augment.band_rotation_offsets needs at least one offset"
        assert self.band_jitter_max_s >= 0, "augment.band_jitter_max_s must be >= 0"
        lo, hi = self.amplitude_scale_range
        assert 0 < lo <= hi, "augment.amplitude_scale_range must be 0 < lo <= hi"
        assert self.noise_std_uv >= 0, "augment.noise_std_uv must be >= 0"
        assert self.n_time_masks >= 0 and self.n_freq_masks >= 0, "mask counts must be >= 0"
        assert self.time_mask_max_s >= 0, "augment.time_mask_max_s must be >= 0"
        assert 0 <= self.freq_mask_max_frac <= 1, "augment.freq_mask_max_frac must be in [0, 1]"
        lo, hi = self.time_warp_range
        assert 0 < lo <= hi, "augment.time_warp_range must be 0 < lo <= hi"


@dataclass
class OptimConfig:
    """AdamW with OneCycle by default (two reports: faster and better than warm-up + cosine)."""

    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: SchedulerName = "onecycle"
    pct_start: float = 0.3  # onecycle: fraction of steps spent rising
    div_factor: float = 25.0  # onecycle: initial lr = lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final lr = initial lr / final_div_factor
    warmup_epochs: float = 1.0  # cosine: linear warm-up length
    min_lr: float = 1e-6  # cosine: floor
    grad_clip: float | None = 1.0  # max global grad norm (0.7-1.0 in the 8-channel report); None: off
    # Alignment warm-up: loss = (1 - a) * CTC + a * frame-wise cross-entropy at the keylogger's press times
    # (key on the first frame that sees `align_delay_s` past the press, blank away from presses), a = align_weight
    # annealed linearly to 0 by `align_until` (fraction of all steps). On small CPU budgets CTC alone sits on its
    # all-blank plateau for thousands of steps; press times are in every emg2qwerty session file, so this
    # costs no extra data. 0: plain CTC (the default; emg2qwerty's recipe).
    align_weight: float = 0.0
    align_until: float = 0.5
    # The press's burst peaks at key-down and decays over tens of ms, so the frame whose window ends at the
    # press has seen only its lead-in. Measured (armband8 GRU, alignment loss alone, 125 steps of batch 8):
    # frame-wise loss 3.76 with the key on that frame, 3.24 / 3.32 with it 60 / 120 ms later; but in full
    # CTC runs the demo's GRU (30 epochs, armband8) ended at 72 % validation CER with 0 and 84-88 % with
    # 0.06, so the default stays 0 (the training benchmark's committed results used 0.06).
    align_delay_s: float = 0.0
    # Frames within `align_guard_s` of a press are left free (not pushed to blank): a burst lasts ~100 ms,
    # so a fixed frame count would free most of it at 50 Hz but force blank onto most of it at 125 Hz.
    # 0.04 s = 2 frames at armband8's 50 Hz (the earlier fixed guard), 5 at emg2qwerty's 125 Hz.
    align_guard_s: float = 0.04
    # Pure alignment loss (a = align_weight) for the first `align_hold` of the steps, then the linear
    # anneal to 0 at `align_until`. 0: anneal from the first step.
    align_hold: float = 0.0
    # Weight of -log(p(blank) + p(nearby keys)) on the frames within the guard (train.loop.alignment_loss):
    # keeps the warmed-up model CTC-compatible next to its keys. 0: those frames are unconstrained.
    align_near_weight: float = 0.0

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # type: ignore[assignment]
        assert self.lr > 0, "optim.lr must be positive"
        assert self.weight_decay >= 0, "optim.weight_decay must be >= 0"
        assert self.scheduler in ("onecycle", "cosine", "constant"), f"unknown optim.scheduler {self.scheduler!r}"
        assert 0 < self.pct_start < 1, "optim.pct_start must be in (0, 1)"
        assert self.div_factor >= 1 and self.final_div_factor >= 1, "onecycle div factors must be >= 1"
        assert self.warmup_epochs >= 0 and self.min_lr >= 0, "optim.warmup_epochs and min_lr must be >= 0"
        assert self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip must be positive or null"
        assert 0 <= self.align_weight <= 1, "optim.align_weight must be in [0, 1]"
        assert 0 < self.align_until <= 1, "optim.align_until must be in (0, 1]"
        assert 0 <= self.align_delay_s <= 0.5, "optim.align_delay_s must be in [0, 0.5] s"
        assert 0 <= self.align_guard_s <= 0.5, "optim.align_guard_s must be in [0, 0.5] s"
        assert 0 <= self.align_hold < self.align_until, "optim.align_hold must be in [0, align_until)"
        assert self.align_near_weight >= 0, "optim.align_near_weight must be >= 0"


@dataclass
class TransferConfig:
    """Lower-channel transfer (``emgkey.train.transfer``).

    ``init_from`` names a checkpoint trained on another device profile. Its
    input layers (normalisation + per-band MLP) are rebuilt for this run's
    profile and trained from the start together with the output head; the
    layers between them, in at most ``body_stages`` stages, are unfrozen one
    stage per ``unfreeze_every`` epochs, from the head downwards (gradual
    unfreezing). Each stage's learning rate is ``optim.lr * lr_decay ** depth``
    where depth counts stages from the head (layer-wise learning rates); the new
    input layers use ``optim.lr * input_lr_mult``.
    """

    init_from: str | None = None
    unfreeze_every: int = 1  # epochs between unfreezing one more body stage; 0: everything trainable at once
    body_stages: int = 3  # the pretrained body's layers are unfrozen in at most this many stages
    lr_decay: float = 0.5
    input_lr_mult: float = 1.0
    strict_body: bool = True  # every non-input parameter must be found in the checkpoint with the same shape

    def __post_init__(self) -> None:
        assert self.unfreeze_every >= 0, "transfer.unfreeze_every must be >= 0"
        assert self.body_stages >= 1, "transfer.body_stages must be >= 1"
        assert 0 < self.lr_decay <= 1, "transfer.lr_decay must be in (0, 1]"
        assert self.input_lr_mult > 0, "transfer.input_lr_mult must be positive"


@dataclass
class TrainConfig:
    model: str = "gru"  # registry name: gru | bilstm | tcn | tds_conv | transformer
    model_size: str = "default"  # registry size preset: default | small (CPU-sized teachers) | tiny
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields on top of the preset
    epochs: int = 30
    seed: int = 0
    device: DeviceName = "auto"
    max_steps_per_epoch: int | None = None  # CI/debug cap
    # Wall-clock budget for the epochs of this session (seconds; None: none). Checked after each epoch:
    # once past it, training stops there and best.pt is tested as usual (results.json says so). For leased
    # or preemptible machines; the schedule still spans `epochs`, so a stopped OneCycle run never annealed.
    time_budget_s: float | None = None
    eval_test: bool = True  # evaluate best.pt on the split's test sessions at the end
    progress: bool = True  # tqdm bars (rank 0 only)
    # Intra-op threads per process (0: torch's default). 1 by default: on a small shared CPU,
    # torch's spinning OpenMP workers fighting another busy process made a GRU step 50x slower
    # (0.3 s -> 20 s measured on this 2-core machine); small recurrent models gain little from 2.
    threads: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    def __post_init__(self) -> None:
        assert self.epochs >= 1, "epochs must be >= 1"
        assert self.device in ("auto", "cpu", "cuda"), f"unknown device {self.device!r}"
        assert self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1, "max_steps_per_epoch >= 1 or null"
        assert self.time_budget_s is None or self.time_budget_s > 0, "time_budget_s must be positive or null"
        assert isinstance(self.model_overrides, dict), "model_overrides must be a mapping"
        assert self.threads >= 0, "threads must be >= 0 (0 = torch default)"

    # ---- (de)serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, d, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(_read_yaml(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, assignments: list[str]) -> TrainConfig:
        """Apply ``key.sub=value`` strings (values parsed as YAML); unknown keys are errors."""
        d = self.to_dict()
        for item in assignments:
            apply_assignment(d, item)
        return TrainConfig.from_dict(d)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """A config file (a path, or a name under ``train/configs``) plus ``--set`` overrides."""
    cfg = TrainConfig() if path is None else TrainConfig.from_yaml(resolve_config_path(path))
    return cfg.with_overrides(list(overrides or []))


def resolve_config_path(path: str | Path) -> Path:
    """``tiny`` or ``tiny.yaml`` finds the shipped config; anything else is a file path."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(path)!r} not found (shipped configs: {shipped})")


def apply_assignment(d: dict[str, Any], item: str) -> None:
    """``optim.lr=3e-4`` -> ``d["optim"]["lr"] = 3e-4``; the path must exist except under model_overrides."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = d
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])!r} is not a config section")
        node = node[part]
    leaf = parts[-1]
    free_form = parts[0] == "model_overrides"  # checked later against ModelConfig by the registry
    if leaf not in node and not free_form:
        raise ConfigError(f"--set {key}: unknown key {leaf!r} (known: {sorted(node)})")
    node[leaf] = yaml.safe_load(raw)


# ---- helpers ---------------------------------------------------------------------------------


def _read_yaml(path: str | Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        d = yaml.safe_load(f) or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a training config must be a YAML mapping")
    return d


def _plain(x: Any) -> Any:
    """Tuples -> lists so the dict survives YAML and JSON round trips unchanged."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def _from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"config section {where or '<root>'!r} must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ConfigError(f"unknown config keys in {where or '<root>'}: {sorted(unknown)} (known: {sorted(fields)})")
    hints = typing.get_type_hints(cls)
    kw: dict[str, Any] = {}
    for name, value in d.items():
        key = f"{where}.{name}".lstrip(".")
        sub = _dataclass_type(hints[name])
        kw[name] = _from_dict(sub, value, key) if sub is not None else _coerce(hints[name], value, key)
    try:
        return cls(**kw)
    except AssertionError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check a leaf value against its annotation; numbers written as strings (YAML's ``3e-4``) become floats."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if isinstance(hint, types.UnionType) or origin is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is bool or hint is str:
        if not isinstance(value, hint):
            raise ConfigError(f"{key}: expected a {hint.__name__}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        inner = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if inner is None and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(
            _coerce(inner or a, v, key) for a, v in zip(args if inner is None else [inner] * len(value), value)
        )
    if origin is dict and not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return value


def _dataclass_type(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(arg, type):
                return arg
    return None
