"""The torch dataset: the device's feature front end, untouched labels, seeded randomness, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_train_common import make_dataset

from emgkey import charset
from emgkey.features import FeatureConfig, compute_features
from emgkey.profiles import ARMBAND8, EMG2QWERTY
from emgkey.train.config import TrainConfig
from emgkey.train.data import ShardSampler, SplitPaths, build_dataset, collate, make_loader, window_config
from emgkey.windows import WindowedDataset


@pytest.fixture(scope="module", params=[EMG2QWERTY, ARMBAND8], ids=lambda p: p.name)
def dataset(request, tmp_path_factory):
    profile = request.param
    return make_dataset(tmp_path_factory.mktemp(profile.name), profile, seconds=8.0)


def _cfg(**sets: object) -> TrainConfig:
    return TrainConfig().with_overrides([f"{k}={v}" for k, v in sets.items()])


def test_split_resolves_files_and_device(dataset):
    root, split = dataset
    sp = SplitPaths.resolve(root, split)
    assert sp.profile.name in ("emg2qwerty", "armband8")
    assert [len(sp.paths[k]) for k in ("train", "val", "test")] == [2, 2, 2]
    assert all(p.parent == root and p.suffix == ".hdf5" for ps in sp.paths.values() for p in ps)


def test_items_are_the_device_features_of_the_windows(dataset):
    root, split = dataset
    sp = SplitPaths.resolve(root, split)
    fcfg = FeatureConfig.for_profile(sp.profile)
    cfg = _cfg(**{"data.window_s": 2.0})
    ds = build_dataset(sp.paths["val"], "val", cfg, sp.profile, fcfg)
    raw = WindowedDataset.from_paths(sp.paths["val"], window_config(cfg.data, "val"))
    assert len(ds) == len(raw) > 0
    for i in (0, len(ds) - 1):
        feats, labels = ds[i][:2]
        emg, want_labels = raw[i]
        assert feats.dtype == torch.float32 and labels.dtype == torch.int64
        np.testing.assert_array_equal(feats.numpy(), compute_features(emg, fcfg))  # the very device front end
        np.testing.assert_array_equal(labels.numpy(), want_labels)
        assert tuple(feats.shape[1:]) == (sp.profile.n_bands, sp.profile.channels_per_band, fcfg.n_freq)


def test_whole_session_evaluation(dataset):
    root, split = dataset
    sp = SplitPaths.resolve(root, split)
    fcfg = FeatureConfig.for_profile(sp.profile)
    ds = build_dataset(sp.paths["test"], "test", _cfg(**{"data.test_window_s": "null"}), sp.profile, fcfg)
    assert len(ds) == len(sp.paths["test"])  # one item per session
    feats, labels = ds[0][:2]
    assert feats.shape[0] == fcfg.n_frames(int(8.0 * sp.profile.sample_rate_hz))
    assert len(labels) > 10


def test_augmented_training_items_keep_their_labels_and_are_seeded(dataset):
    root, split = dataset
    sp = SplitPaths.resolve(root, split)
    fcfg = FeatureConfig.for_profile(sp.profile)
    cfg = _cfg(**{"data.window_s": 2.0, "data.jitter": "false", "augment.noise": "true", "augment.time_warp": "true"})
    aug = build_dataset(sp.paths["train"], "train", cfg, sp.profile, fcfg)
    # Validation windows of the same length and padding are the same windows, without augmentation.
    plain_cfg = cfg.with_overrides(["data.val_window_s=2.0", f"data.eval_padding_s={list(cfg.data.padding_s)}"])
    plain = build_dataset(sp.paths["train"], "val", plain_cfg, sp.profile, fcfg)
    assert len(aug) == len(plain) > 0
    for i in range(len(aug)):
        fa, la = aug[i][:2]
        fp, lp = plain[i][:2]
        torch.testing.assert_close(la, lp)  # augmentation never touches the targets
        assert fa.shape[1:] == fp.shape[1:]
        assert fa.shape != fp.shape or not torch.equal(fa, fp)  # but it does change the inputs
    first = aug[0][0]
    torch.testing.assert_close(aug[0][0], first)  # same (seed, epoch, index): same draw
    aug.set_epoch(1)
    again = aug[0][0]
    assert again.shape != first.shape or not torch.equal(again, first)  # a new epoch: new draws


def test_jittered_windows_follow_seed_and_epoch(dataset):
    root, split = dataset
    sp = SplitPaths.resolve(root, split)
    fcfg = FeatureConfig.for_profile(sp.profile)
    cfg = _cfg(**{"data.window_s": 2.0, "augment.band_rotation": "false", "augment.specaugment": "false"})
    a = build_dataset(sp.paths["train"], "train", cfg, sp.profile, fcfg)
    b = build_dataset(sp.paths["train"], "train", cfg, sp.profile, fcfg)
    for i in range(len(a)):
        torch.testing.assert_close(a[i][0], b[i][0])
        torch.testing.assert_close(a[i][1], b[i][1])
    draws = {tuple(a[0][0][0, 0, 0].tolist())}
    for epoch in range(1, 6):
        a.set_epoch(epoch)
        draws.add(tuple(a[0][0][0, 0, 0].tolist()))
    assert len(draws) > 1


def test_collate_pads_time_first_and_targets_with_blank():
    items = [
        (torch.ones(5, 2, 3, 4), torch.tensor([1, 2, 3])),
        (torch.ones(7, 2, 3, 4), torch.tensor([4])),
        (torch.ones(2, 2, 3, 4), torch.tensor([], dtype=torch.int64)),
    ]
    b = collate(items)
    assert tuple(b.inputs.shape) == (7, 3, 2, 3, 4)
    assert b.input_lengths.tolist() == [5, 7, 2]
    assert b.target_lengths.tolist() == [3, 1, 0]
    assert tuple(b.targets.shape) == (3, 3)
    assert b.targets[1].tolist() == [4, charset.BLANK, charset.BLANK]
    assert float(b.inputs[5:, 0].abs().sum()) == 0.0  # zero padding beyond each length
    assert len(b) == 3 and b.to("cpu").inputs.shape == b.inputs.shape


def test_shard_sampler_partitions_without_repeats():
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(10))
    assert [len(ShardSampler(10, r, 3)) for r in range(3)] == [4, 3, 3]


def test_loader_batches_and_caps(dataset):
    root, split = dataset
    sp = SplitPaths.resolve(root, split)
    fcfg = FeatureConfig.for_profile(sp.profile)
    cfg = _cfg(**{"data.window_s": 1.0, "data.max_train_windows": 5})
    ds = build_dataset(sp.paths["train"], "train", cfg, sp.profile, fcfg)
    assert len(ds) == 5
    batches = list(make_loader(ds, 2, True, 0, epoch=0))
    assert sum(len(b) for b in batches) == 5
    assert batches[0].inputs.ndim == 5
