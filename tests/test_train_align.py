"""The alignment warm-up: press rows -> feature frames -> output frames, and the frame-wise loss.

Hand-made cases: where a press lands, what the loss rewards, how the weight anneals, and that a
training run with it on learns through the real trainer (tiny dataset).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_train_common import make_dataset

from emgkey import charset
from emgkey.features import FeatureConfig, compute_features
from emgkey.profiles import EMG2QWERTY
from emgkey.train.config import OptimConfig, load_config
from emgkey.train.data import collate, label_frames
from emgkey.train.loop import align_guard_frames, align_weight_at, alignment_loss, train
from emgkey.windows import WindowedSession

CFG = FeatureConfig(kind="logspec", n_fft=16, hop=2, sample_rate_hz=200.0)


def test_a_press_maps_to_the_first_frame_whose_window_holds_it():
    # frame f covers samples [2f, 2f + 16): sample 15 is first seen by frame 0, sample 16 by frame 1
    rows = np.array([0, 15, 16, 17, 18, 99, -1])
    assert label_frames(rows, CFG, 1.0, 100).tolist() == [0, 0, 1, 1, 2, 42, -1]
    # clipped to the frames there are; unknown stays unknown
    assert label_frames(np.array([10_000]), CFG, 1.0, 5).tolist() == [4]
    assert label_frames(np.array([3]), CFG, 1.0, 0).tolist() == [-1]
    # a length-changing augmentation rescales the rows
    assert label_frames(np.array([99]), CFG, 0.5, 100).tolist() == label_frames(np.array([50]), CFG, 1.0, 100).tolist()


def test_a_delay_moves_the_key_to_the_first_frame_that_sees_that_much_past_the_press():
    rows = np.array([0, 15, 99, -1])
    delayed = label_frames(rows, CFG, 1.0, 100, delay_samples=4).tolist()
    assert delayed[:3] == label_frames(rows[:3] + 4, CFG, 1.0, 100).tolist() == [0, 2, 44]
    assert label_frames(rows, CFG, 1.0, 100, delay_samples=4)[-1] == -1, "unknown presses stay unknown"
    assert OptimConfig().align_delay_s == 0.0
    with pytest.raises(AssertionError, match="align_delay_s"):
        OptimConfig(align_delay_s=-0.01)


def test_the_trainers_datasets_take_the_delay_from_the_config(tmp_path):
    from emgkey.train.data import SplitPaths, build_dataset

    root, split_file = make_dataset(tmp_path, EMG2QWERTY, seconds=8.0)
    split = SplitPaths.resolve(root, split_file)
    fc = FeatureConfig.for_profile(EMG2QWERTY)
    frames = {}
    for delay in (0.0, 0.064):  # 128 samples at 2 kHz = 8 hops of 16
        cfg = load_config("tiny", [f"optim.align_delay_s={delay}"])
        ds = build_dataset(split.paths["val"], "val", cfg, EMG2QWERTY, fc)
        frames[delay] = np.concatenate([ds[i][2].numpy() for i in range(len(ds))])
    known = frames[0.0] >= 0
    assert known.any()
    n = ds[0][0].shape[0]
    inside = known & (frames[0.0] + 8 < n - 1)  # away from the clip at the window end
    assert inside.any() and np.all(frames[0.064][inside] == frames[0.0][inside] + 8)


def test_label_frames_agree_with_compute_features():
    # a lone impulse at a press row must first show up in the frame label_frames names
    x = np.zeros((400, 1, 1), dtype=np.float32)
    press = 123
    x[press] = 1000.0
    f = compute_features(x, CFG)[:, 0, 0].sum(axis=1)  # (F,)
    first = int(np.argmax(f > f.min() + 1.0))
    assert first == label_frames(np.array([press]), CFG, 1.0, len(f))[0]


def test_windows_report_press_rows(tmp_path):
    root, _ = make_dataset(tmp_path, EMG2QWERTY, seconds=8.0)
    path = sorted(root.glob("*.hdf5"))[0]
    ws = WindowedSession(path, window_length=4000, padding=(500, 100))
    emg, labels, rows = ws.item(1)
    assert len(rows) == len(labels) > 0
    assert np.all((rows >= 500) & (rows < emg.shape[0] - 100)), "presses lie inside the un-padded window"
    assert np.all(np.diff(rows) >= 0)
    np.testing.assert_array_equal(ws[1][1], labels)


def _log_probs(T: int, hot: dict[int, int]) -> torch.Tensor:
    """(T, 1, C): blank everywhere but class hot[t] at frame t."""
    lp = torch.full((T, 1, charset.NUM_CLASSES), -20.0)
    for t in range(T):
        lp[t, 0, hot.get(t, charset.BLANK)] = 0.0
    return lp


def _loss(
    lp: torch.Tensor, frames: list[int], labels: list[int], in_len: int, stride: int = 1, near_weight: float = 0.0
) -> float:
    T = lp.shape[0]
    return float(
        alignment_loss(
            lp,
            torch.tensor([T]),
            torch.tensor([in_len]),
            torch.tensor([frames]),
            torch.tensor([labels]),
            torch.tensor([len(labels)]),
            stride,
            2,
            near_weight,
        )
    )


def test_the_loss_rewards_keys_at_their_press_frames_and_blank_elsewhere():
    a, b = charset.str_to_labels("ab")
    right = _log_probs(50, {10: a, 30: b})
    late = _log_probs(50, {20: a, 40: b})
    swapped = _log_probs(50, {10: b, 30: a})
    all_blank = _log_probs(50, {})
    assert _loss(right, [10, 30], [a, b], 50) == pytest.approx(0.0, abs=1e-6)
    for wrong in (late, swapped, all_blank):
        assert _loss(wrong, [10, 30], [a, b], 50) > 10.0
    # a valid convolution's context shifts the output frames: 4 input frames before output 0
    assert _loss(right, [14, 34], [a, b], 54) == pytest.approx(0.0, abs=1e-6)
    # stride 2, 50 -> 25 frames: output j ends at input 2j + 1, so input 21 is first seen by output 10
    assert _loss(_log_probs(25, {10: a}), [21], [a], 50, stride=2) == pytest.approx(0.0, abs=1e-6)


def test_the_near_term_penalises_stray_symbols_next_to_a_key_but_not_repeats_or_blanks():
    a, b, c = charset.str_to_labels("abc")
    clean = _log_probs(50, {10: a, 30: b})
    repeated = _log_probs(50, {9: a, 10: a, 11: a, 30: b})  # CTC collapses aaa -> a
    stray = _log_probs(50, {9: c, 10: a, 30: b})  # a 'c' one frame before the 'a'
    for lp in (clean, repeated):
        assert _loss(lp, [10, 30], [a, b], 50, near_weight=1.0) == pytest.approx(0.0, abs=1e-6)
    assert _loss(stray, [10, 30], [a, b], 50) == pytest.approx(0.0, abs=1e-6), "the guard leaves it free..."
    # one stray frame of the 10 near ones: -log(2 e^-20) / 10
    assert _loss(stray, [10, 30], [a, b], 50, near_weight=1.0) == pytest.approx(1.93, abs=0.01), "...not with it"


def test_unknown_press_times_contribute_nothing():
    a = charset.str_to_labels("a")[0]
    lp = _log_probs(20, {5: a}).requires_grad_(True)
    loss = alignment_loss(
        lp, torch.tensor([20]), torch.tensor([20]), torch.tensor([[-1]]), torch.tensor([[a]]), torch.tensor([1]), 1
    )
    assert float(loss) == 0.0


def test_collate_pads_label_frames_with_minus_one():
    items = [
        (torch.zeros(5, 1, 1, 1), torch.tensor([1, 2]), torch.tensor([0, 3])),
        (torch.zeros(3, 1, 1, 1), torch.tensor([4]), torch.tensor([1])),
    ]
    batch = collate(items)
    assert batch.label_frames is not None and batch.label_frames.tolist() == [[0, 3], [1, -1]]
    assert collate([(torch.zeros(2, 1, 1, 1), torch.tensor([1]))]).label_frames is None


def test_the_weight_anneals_linearly_to_zero():
    cfg = OptimConfig(align_weight=1.0, align_until=0.5)
    assert align_weight_at(cfg, 0, 100) == 1.0
    assert align_weight_at(cfg, 25, 100) == pytest.approx(0.5)
    assert align_weight_at(cfg, 50, 100) == 0.0 and align_weight_at(cfg, 99, 100) == 0.0
    assert align_weight_at(OptimConfig(), 0, 100) == 0.0
    with pytest.raises(AssertionError, match="align_weight"):
        OptimConfig(align_weight=1.5)


def test_the_weight_can_hold_before_it_anneals():
    cfg = OptimConfig(align_weight=0.8, align_until=0.5, align_hold=0.2)
    assert align_weight_at(cfg, 0, 100) == align_weight_at(cfg, 20, 100) == pytest.approx(0.8)
    assert align_weight_at(cfg, 35, 100) == pytest.approx(0.4)  # halfway between step 20 and 50
    assert align_weight_at(cfg, 50, 100) == 0.0
    with pytest.raises(AssertionError, match="align_hold"):
        OptimConfig(align_weight=1.0, align_until=0.3, align_hold=0.3)


def test_the_guard_is_a_duration_in_output_frames():
    cfg = OptimConfig(align_guard_s=0.04)
    assert align_guard_frames(cfg, 50.0) == 2  # armband8: the former fixed 2 frames
    assert align_guard_frames(cfg, 125.0) == 5  # emg2qwerty
    assert align_guard_frames(cfg, 125.0, stride=2) == 2  # a model emitting every other frame
    assert align_guard_frames(OptimConfig(align_guard_s=0.0), 50.0) == 1, "at least the neighbouring frame"


def test_a_run_with_the_warm_up_records_its_loss(tmp_path):
    root, split = make_dataset(tmp_path / "data", EMG2QWERTY, seconds=8.0)
    over = ["epochs=2", "device=cpu", "data.max_train_windows=4", "data.max_eval_windows=2"]
    over += ["optim.align_weight=1.0", "optim.align_until=1.0"]
    train(load_config("tiny", over), root, split, tmp_path / "run")
    epochs = json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 2
    assert all(math.isfinite(r["align_loss"]) and r["align_loss"] > 0 for r in epochs), epochs
