"""Windowing: emg2qwerty's WindowedEmgDataset geometry and labels, on sessions whose key times are known."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emgkey.labels import LabelData
from emgkey.profiles import ARMBAND8, EMG2QWERTY
from emgkey.session import write_session
from emgkey.windows import WindowConfig, WindowedDataset, WindowedSession, WindowSamples

T0 = 1_600_000_000.0
RATE = ARMBAND8.sample_rate_hz  # 200 Hz: 1 s = 200 samples
N = 2000  # 10 s
TS = T0 + np.arange(N) / RATE  # (N,)

# One letter in the middle of every second, plus three keys placed on window edges (1 s windows):
# X on the first sample of window 2, Y on its last sample, Z on the first sample of window 3.
KEYSTROKES: list[dict[str, Any]] = sorted(
    [{"key": k, "start": T0 + i + 0.5, "end": T0 + i + 0.6} for i, k in enumerate("abcdefghij")]
    + [
        {"key": "X", "start": float(TS[400]), "end": float(TS[400]) + 0.05},
        {"key": "Y", "start": float(TS[599]), "end": float(TS[599]) + 0.05},
        {"key": "Z", "start": float(TS[600]), "end": float(TS[600]) + 0.05},
    ],
    key=lambda k: k["start"],
)


def write_indexed(path: Path, n: int = N, condition: str = "on_keyboard", keystrokes: Any = None) -> Path:
    """An armband8 session whose left band holds +row index and right band -row index (in counts)."""
    idx = np.arange(n, dtype=np.int16)  # (n,)
    emg = np.empty((n, 2, ARMBAND8.channels_per_band), np.int16)  # (n, 2, C)
    emg[:, 0, :] = idx[:, None]
    emg[:, 1, :] = -idx[:, None]
    ts = TS[:n]
    strokes = [k for k in KEYSTROKES if k["start"] <= ts[-1]] if keystrokes is None else keystrokes
    return write_session(
        path,
        profile=ARMBAND8,
        timestamps=ts,
        emg=emg,
        keystrokes=strokes,
        prompts=[],
        session_name=path.stem,
        user="u",
        condition=condition,
    )


def rows_of(emg: np.ndarray) -> np.ndarray:
    """Recover the row indices a window holds from the left band's encoding (µV = 0.5 x row)."""
    return (emg[:, 0, 0] / ARMBAND8.adc_scale_uv_per_count).astype(int)


def expected_labels(offset: int, window_length: int) -> np.ndarray:
    """Keys pressed between the un-padded window's first and last sample times, both included."""
    lo, hi = TS[offset], TS[offset + window_length - 1]
    return LabelData.from_str("".join(k["key"] for k in KEYSTROKES if lo <= k["start"] <= hi)).labels


@pytest.fixture(scope="module")
def session_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_indexed(tmp_path_factory.mktemp("windows") / "s.hdf5")


def test_window_config_matches_emg2qwerty_at_2khz() -> None:
    assert WindowConfig().in_samples(EMG2QWERTY.sample_rate_hz) == WindowSamples(8000, None, (1800, 200))
    assert WindowConfig().in_samples(ARMBAND8.sample_rate_hz) == WindowSamples(800, None, (180, 20))
    assert WindowConfig(1.0, 0.5, (0.0, 0.0)).in_samples(200.0) == WindowSamples(200, 100, (0, 0))
    assert WindowConfig(None).in_samples(200.0).window_length is None
    with pytest.raises(AssertionError):
        WindowConfig(window_s=0.0)


def test_hand_built_windows(session_path: Path) -> None:
    with WindowedSession(session_path, window_length=200, stride=200, padding=(40, 20)) as ws:
        assert len(ws) == 10
        emg, labels = ws[0]
        assert emg.dtype == np.float32 and emg.shape == (220, 2, 8)  # left padding clipped at the start
        np.testing.assert_array_equal(rows_of(emg), np.arange(0, 220))
        np.testing.assert_array_equal(emg[:, 1, 0], -emg[:, 0, 0])  # band order: left, right
        assert LabelData.from_labels(labels).label_str == "a"
        assert labels.dtype == np.int32

        emg, labels = ws[2]
        np.testing.assert_array_equal(rows_of(emg), np.arange(360, 620))
        assert LabelData.from_labels(labels).label_str == "XcY"  # both edges of the un-padded window count
        assert LabelData.from_labels(ws[3][1]).label_str == "Zd"  # padding context never adds labels

        emg, labels = ws[9]
        np.testing.assert_array_equal(rows_of(emg), np.arange(1760, 2000))  # right padding clipped at the end
        assert LabelData.from_labels(labels).label_str == "j"
        with pytest.raises(IndexError):
            ws[10]
        with pytest.raises(IndexError):
            ws[-1]


def test_overlapping_stride_and_partial_tail(session_path: Path) -> None:
    ws = WindowedSession(session_path, window_length=300, stride=170)
    assert len(ws) == (N - 300) // 170 + 1 == 11
    emg, labels = ws[10]
    np.testing.assert_array_equal(rows_of(emg), np.arange(1700, 2000))
    np.testing.assert_array_equal(labels, expected_labels(1700, 300))


def test_whole_session_window(session_path: Path) -> None:
    ws = WindowedSession(session_path)
    assert len(ws) == 1
    emg, labels = ws[0]
    assert emg.shape[0] == N
    assert LabelData.from_labels(labels).label_str == "abXcYZdefghij"


def test_session_shorter_than_window(tmp_path: Path) -> None:
    ws = WindowedSession(write_indexed(tmp_path / "short.hdf5", n=150), window_length=200, stride=50)
    assert len(ws) == 0
    with pytest.raises(IndexError):
        ws[0]


def test_jitter_is_seeded_and_stays_in_bounds(session_path: Path) -> None:
    with pytest.raises(ValueError, match="rng"):
        WindowedSession(session_path, 200, 200, jitter=True)
    kw: dict[str, Any] = dict(window_length=200, stride=150, padding=(0, 0), jitter=True)
    a = WindowedSession(session_path, **kw, rng=np.random.default_rng(5))
    b = WindowedSession(session_path, **kw, rng=np.random.default_rng(5))
    moved = 0
    for i in range(len(a)):
        emg_a, lab_a = a[i]
        emg_b, lab_b = b[i]
        np.testing.assert_array_equal(emg_a, emg_b)
        np.testing.assert_array_equal(lab_a, lab_b)
        offset = int(rows_of(emg_a)[0])
        leftover = N - (i * 150 + 200)
        assert i * 150 <= offset < i * 150 + max(1, min(150, leftover))
        assert emg_a.shape[0] == 200
        np.testing.assert_array_equal(lab_a, expected_labels(offset, 200))
        moved += offset != i * 150
    assert moved > len(a) // 2


def test_picklable_for_worker_processes(session_path: Path) -> None:
    ws = WindowedSession(session_path, 200, 200, (40, 20))
    before = ws[3]  # opens the file; the open handle must not travel
    clone = pickle.loads(pickle.dumps(ws))
    ws.close()
    emg, labels = clone[3]
    np.testing.assert_array_equal(emg, before[0])
    assert LabelData.from_labels(labels).label_str == "Zd"
    clone.close()

    jittered = WindowedSession(session_path, 200, 150, jitter=True, rng=np.random.default_rng(0))
    twin = pickle.loads(pickle.dumps(jittered))  # same generator state: same draws, hence set_rng per worker
    np.testing.assert_array_equal(jittered[2][0], twin[2][0])
    twin.set_rng(np.random.default_rng(1))
    assert any(not np.array_equal(jittered[i][0], twin[i][0]) for i in range(len(twin)))


def test_from_config_uses_the_files_rate(session_path: Path) -> None:
    ws = WindowedSession.from_config(session_path, WindowConfig(window_s=1.0, padding_s=(0.2, 0.1)))
    assert (ws.window_length, ws.stride, ws.left_padding, ws.right_padding) == (200, 200, 40, 20)


def test_needs_keystroke_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="condition"):
        WindowedSession(write_indexed(tmp_path / "air.hdf5", condition="in_air"))


def test_dataset_concatenates_sessions(tmp_path: Path, session_path: Path) -> None:
    short = write_indexed(tmp_path / "short.hdf5", n=1000)
    config = WindowConfig(window_s=1.0, stride_s=None, padding_s=(0.2, 0.1))
    with WindowedDataset.from_paths([session_path, short], config) as ds:
        assert len(ds) == 10 + 5
        assert ds.locate(0) == (0, 0) and ds.locate(9) == (0, 9) and ds.locate(10) == (1, 0) and ds.locate(14) == (1, 4)
        for idx in (0, 9, 10, 14):
            k, i = ds.locate(idx)
            emg, labels = ds[idx]
            ref_emg, ref_labels = ds.sessions[k][i]
            np.testing.assert_array_equal(emg, ref_emg)
            np.testing.assert_array_equal(labels, ref_labels)
        with pytest.raises(IndexError):
            ds[15]
        ds.set_rng(np.random.default_rng(0))
    assert len(WindowedDataset([])) == 0


@settings(max_examples=60, deadline=None)
@given(
    window=st.integers(1, 2300),
    stride=st.integers(1, 700),
    left=st.integers(0, 400),
    right=st.integers(0, 400),
    pick=st.floats(0, 1),
)
def test_geometry_property(session_path: Path, window: int, stride: int, left: int, right: int, pick: float) -> None:
    ws = WindowedSession(session_path, window, stride, (left, right))
    assert len(ws) == max(0, (N - window) // stride + 1)
    if len(ws) == 0:
        return
    idx = min(len(ws) - 1, int(pick * len(ws)))
    emg, labels = ws[idx]
    offset = idx * stride
    np.testing.assert_array_equal(rows_of(emg), np.arange(max(offset - left, 0), min(offset + window + right, N)))
    np.testing.assert_array_equal(labels, expected_labels(offset, window))
    ws.close()


def test_data_layer_never_imports_torch() -> None:
    # The device side installs without torch; these modules must not pull it in, even indirectly.
    code = "import sys, emgkey.labels, emgkey.session, emgkey.windows, emgkey.splits; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
