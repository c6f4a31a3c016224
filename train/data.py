"""Torch datasets over the numpy windows: raw window -> augment -> features -> augment -> tensors.

The feature front end is ``emgkey.features.compute_features``, the very function
the device runs (through ``StreamingFeaturizer``), so training sees exactly the
features the edge runtime will compute. Nothing here re-implements it.

Randomness: every window draws its jitter and augmentations from a generator
seeded by ``(seed, epoch, index)``. A run is reproducible whatever the number
of DataLoader workers or processes, and a resumed run continues exactly.

Shapes (time first, as emg2qwerty):
- one item: features ``(T, n_bands, C, n_freq)`` float32, labels ``(L,)`` int64;
- a ``Batch``: inputs ``(T_max, N, n_bands, C, n_freq)``, ``input_lengths (N,)``,
  targets ``(N, L_max)`` padded with the blank, ``target_lengths (N,)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, Sampler

from emgkey import charset
from emgkey.errors import ConfigError
from emgkey.features import FeatureConfig, compute_features
from emgkey.profiles import DeviceProfile
from emgkey.session import SessionFile
from emgkey.splits import SPLIT_NAMES, load_split, session_path
from emgkey.train.augment import Compose, build_feature_pipeline, build_raw_pipeline
from emgkey.train.config import DataConfig, TrainConfig
from emgkey.windows import WindowConfig, WindowedDataset, WindowedSession

log = logging.getLogger(__name__)


# ---- splits ------------------------------------------------------------------------------------


@dataclass
class SplitPaths:
    """Session files of a split file, resolved against a dataset root, and their common device."""

    profile: DeviceProfile
    paths: dict[str, list[Path]]  # "train" | "val" | "test" -> session files

    @classmethod
    def resolve(cls, data_root: str | Path, split_file: str | Path) -> SplitPaths:
        """Read an emg2qwerty split YAML; every listed file must exist and share one device profile.

        Works unchanged on a real emg2qwerty folder (``<root>/<session>.hdf5``
        with emg2qwerty's ``config/user/*.yaml``) and on simulated datasets.
        """
        split = load_split(split_file)
        paths = {name: [session_path(data_root, ref) for ref in split[name]] for name in SPLIT_NAMES}
        profiles: dict[str, Path] = {}
        profile: DeviceProfile | None = None
        for name in SPLIT_NAMES:
            for p in paths[name]:
                with SessionFile(p) as s:
                    if profile is None:
                        profile = s.profile
                    profiles.setdefault(s.profile.name, p)
        if profile is None:
            raise ConfigError(f"{split_file}: the split lists no sessions")
        if len(profiles) > 1:
            raise ConfigError(
                f"{split_file}: sessions from several devices ({profiles}); train on one profile at a time"
            )
        return cls(profile=profile, paths=paths)


def eval_batch_size(data: DataConfig, subset: str) -> int:
    """Whole sessions go one at a time (emg2qwerty's test protocol): padding a batch of them costs GBs."""
    window_s = data.val_window_s if subset == "val" else data.test_window_s
    return 1 if window_s is None else data.eval_batch_size


def window_config(data: DataConfig, subset: str) -> WindowConfig:
    """Training windows for ``train``; validation/test windows (or whole sessions, ``None``) otherwise."""
    if subset == "train":
        return WindowConfig(window_s=data.window_s, stride_s=data.stride_s, padding_s=data.padding_s)
    window_s = data.val_window_s if subset == "val" else data.test_window_s
    if window_s is None:  # whole sessions: nothing to pad
        return WindowConfig(window_s=None, stride_s=None, padding_s=(0.0, 0.0))
    return WindowConfig(window_s=window_s, stride_s=None, padding_s=data.eval_padding_s)


# ---- datasets ----------------------------------------------------------------------------------


class EmgFeatureDataset(Dataset):
    """Windows of sessions as model inputs: ``ds[i] -> (features (T, n_bands, C, n_freq), labels (L,), frames (L,))``.

    ``raw_transform`` runs on microvolts before ``compute_features`` and
    ``feature_transform`` after; both are identity for evaluation. With
    ``cache=True`` (evaluation only: no randomness allowed) features are
    computed once by ``precompute()`` and served from memory.
    """

    def __init__(
        self,
        windows: WindowedDataset,
        feature_cfg: FeatureConfig,
        raw_transform: Compose | None = None,
        feature_transform: Compose | None = None,
        jitter: bool = False,
        seed: int = 0,
        indices: Sequence[int] | None = None,
        label_delay_s: float = 0.0,
    ) -> None:
        self.windows = windows
        self.label_delay = round(label_delay_s * feature_cfg.sample_rate_hz)  # samples past each press
        self.feature_cfg = feature_cfg
        self.raw_transform = raw_transform or Compose()
        self.feature_transform = feature_transform or Compose()
        self.jitter = jitter
        self.seed = seed
        self.epoch = 0
        self.indices = list(range(len(windows))) if indices is None else list(indices)
        self._cache: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None

    @property
    def random(self) -> bool:
        return self.jitter or len(self.raw_transform) > 0 or len(self.feature_transform) > 0

    def set_epoch(self, epoch: int) -> None:
        """New jitter and augmentations per epoch (call before iterating; workers get a fresh copy)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(features (F, n_bands, C, n_freq), labels (L,), label_frames (L,))``.

        ``label_frames[i]``: the first feature frame whose window holds key ``i``'s press plus
        ``label_delay_s`` (-1: unknown). Augmentations that change the length (band jitter's crop, time warp)
        rescale the positions, so they are exact without them and within the crop with them.
        """
        if self._cache is not None:
            return self._cache[i]
        idx = self.indices[i]
        rng = np.random.default_rng([self.seed, self.epoch, idx])
        k, j = self.windows.locate(idx)
        session: WindowedSession = self.windows.sessions[k]
        if self.jitter:
            session.set_rng(rng)  # the window offset is drawn from this window's own generator
        emg, labels, label_samples = session.item(j)  # (T, n_bands, C) µV, (L,) int32, (L,) int64
        n_raw = emg.shape[0]
        emg = self.raw_transform(emg, rng)  # (T', n_bands, C)
        scale = emg.shape[0] / max(n_raw, 1)
        feats = compute_features(emg, self.feature_cfg)  # (F, n_bands, C, n_freq)
        n_feat = feats.shape[0]
        feats = self.feature_transform(feats, rng)  # (F', n_bands, C, n_freq)
        scale *= feats.shape[0] / max(n_feat, 1)
        frames = label_frames(label_samples, self.feature_cfg, scale, feats.shape[0], self.label_delay)  # (L,)
        return (
            torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)),
            torch.from_numpy(labels.astype(np.int64)),
            torch.from_numpy(frames),
        )

    def precompute(self, max_mb: float) -> bool:
        """Fill the cache if the features fit in ``max_mb``; returns whether they did."""
        assert not self.random, "only deterministic (evaluation) datasets can be cached"
        items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        total = 0.0
        for i in range(len(self)):
            item = self[i]
            total += item[0].numel() * 4 / 2**20
            if total > max_mb:
                log.info("evaluation features exceed %.0f MB; computing them on the fly", max_mb)
                return False
            items.append(item)
        self._cache = items
        return True

    def close(self) -> None:
        self.windows.close()


def label_frames(
    label_samples: np.ndarray, feature_cfg: FeatureConfig, scale: float, n_frames: int, delay_samples: int = 0
) -> np.ndarray:
    """Press rows (L,) -> the first feature frame that sees each press (L,) int64; -1 stays -1.

    Frame ``f`` covers samples ``[f * hop, f * hop + n_fft)`` (``center=False``), so the first
    frame holding sample ``s`` ends there: ``f = ceil((s - n_fft + 1) / hop)``. With
    ``delay_samples`` it is the first frame that sees that many samples past the press.
    """
    known = label_samples >= 0
    s = np.round(label_samples.astype(np.float64) * scale) + delay_samples
    f = np.ceil((s - feature_cfg.n_fft + 1) / feature_cfg.hop)
    f = np.clip(f, 0, max(n_frames - 1, 0)).astype(np.int64)
    return np.where(known & (n_frames > 0), f, -1).astype(np.int64)


def build_dataset(
    paths: Sequence[Path],
    subset: str,
    cfg: TrainConfig,
    profile: DeviceProfile,
    feature_cfg: FeatureConfig,
) -> EmgFeatureDataset:
    """The dataset of one split subset; augmentations and jitter only for ``train``."""
    train = subset == "train"
    data = cfg.data
    windows = WindowedDataset.from_paths(
        paths, window_config(data, subset), jitter=train and data.jitter, rng=np.random.default_rng(cfg.seed)
    )
    limit = data.max_train_windows if train else data.max_eval_windows
    indices = None
    if limit is not None and limit < len(windows):
        # Evenly spread over all sessions, so a capped run still sees every user.
        indices = np.linspace(0, len(windows) - 1, limit).round().astype(int).tolist()
    ds = EmgFeatureDataset(
        windows,
        feature_cfg,
        raw_transform=build_raw_pipeline(cfg.augment, profile, train),
        feature_transform=build_feature_pipeline(cfg.augment, feature_cfg, train),
        jitter=train and data.jitter,
        seed=cfg.seed,
        indices=indices,
        label_delay_s=cfg.optim.align_delay_s,
    )
    if not train and data.cache_eval_features:
        ds.precompute(data.cache_max_mb)
    return ds


# ---- batches -----------------------------------------------------------------------------------


@dataclass
class Batch:
    inputs: torch.Tensor  # (T_max, N, n_bands, C, n_freq) float32, zero-padded
    input_lengths: torch.Tensor  # (N,) int64 frames
    targets: torch.Tensor  # (N, L_max) int64, padded with the blank
    target_lengths: torch.Tensor  # (N,) int64
    label_frames: torch.Tensor | None = None  # (N, L_max) int64 feature frame of each press, -1: unknown/padding

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(None if t is None else t.to(device, non_blocking=non_blocking) for t in self._tensors()))

    def pin_memory(self) -> Batch:
        return Batch(*(None if t is None else t.pin_memory() for t in self._tensors()))

    def _tensors(self) -> tuple[torch.Tensor | None, ...]:
        return (self.inputs, self.input_lengths, self.targets, self.target_lengths, self.label_frames)

    def __len__(self) -> int:
        return int(self.input_lengths.shape[0])


def collate(items: Sequence[tuple[torch.Tensor, ...]]) -> Batch:
    """Pad ``(features (T, ...), labels (L,)[, label_frames (L,)])`` items into one time-first ``Batch``."""
    feats = [it[0] for it in items]
    labels = [it[1] for it in items]
    frames: torch.Tensor | None = None
    if items and all(len(it) > 2 for it in items):
        frames = pad_sequence([it[2] for it in items], batch_first=True, padding_value=-1)  # (N, L_max)
        if frames.ndim == 1:
            frames = frames.reshape(len(items), 0)
        frames = frames.to(torch.int64)
    inputs = pad_sequence(feats, batch_first=False)  # (T_max, N, n_bands, C, n_freq)
    targets = pad_sequence(labels, batch_first=True, padding_value=charset.BLANK)  # (N, L_max)
    if targets.ndim == 1:  # every label sequence empty
        targets = targets.reshape(len(items), 0)
    return Batch(
        inputs=inputs,
        input_lengths=torch.tensor([f.shape[0] for f in feats], dtype=torch.int64),
        targets=targets.to(torch.int64),
        target_lengths=torch.tensor([y.shape[0] for y in labels], dtype=torch.int64),
        label_frames=frames,
    )


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, in order, without padding.

    For evaluation: unlike ``DistributedSampler`` it never repeats a window to
    even out the shards, so error counts summed over ranks are exact.
    """

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        assert 0 <= rank < world_size, f"rank {rank} outside world of {world_size}"
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def make_loader(
    ds: EmgFeatureDataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader for one epoch. Shuffling is seeded by ``(seed, epoch)`` and sharded over ranks."""
    ds.set_epoch(epoch)
    sampler: Sampler[int]
    if shuffle:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=True, seed=ds.seed)
        sampler.set_epoch(epoch)
    else:
        sampler = ShardSampler(len(ds), rank, world_size)
    cached = ds._cache is not None
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=0 if cached else num_workers,  # cached features are already in memory
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=False,
    )
