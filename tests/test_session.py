"""Session files: round trips, emg2qwerty interoperability both ways, every bad-file case, lazy reads."""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emgkey.errors import SessionFileError
from emgkey.labels import LabelData
from emgkey.profiles import ARMBAND8, EMG2QWERTY, DeviceProfile
from emgkey.session import FORMAT_VERSION, SessionFile, timeseries_dtype, write_session

T0 = 1_600_000_000.0
# The compound row type of a published emg2qwerty file, spelled out independently of our code.
EMG2QWERTY_DTYPE = np.dtype([("emg_right", "<f4", (16,)), ("emg_left", "<f4", (16,)), ("time", "<f8")])


# ---- builders ------------------------------------------------------------------------------------


def make_signals(profile: DeviceProfile, seconds: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(T,) float64 unix times and (T, 2, C) samples in the profile's storage dtype."""
    n = round(seconds * profile.sample_rate_hz)
    ts = T0 + np.arange(n) / profile.sample_rate_hz  # (T,)
    rng = np.random.default_rng(seed)
    shape = (n, profile.n_bands, profile.channels_per_band)
    if profile.sample_format == "float32":
        emg = rng.normal(0, 20, size=shape).astype(np.float32)  # (T, 2, C) µV
    else:
        emg = rng.integers(-3000, 3000, size=shape).astype(np.int16)  # (T, 2, C) counts
    return ts, emg


def keystrokes_for(text_keys: list[str], first: float, step: float) -> list[dict[str, Any]]:
    return [
        {"key": k, "start": T0 + first + i * step, "end": T0 + first + i * step + 0.05} for i, k in enumerate(text_keys)
    ]


KEYS = ["h", "i", "Key.space", "Key.shift", "T", "Key.ctrl", "Key.backspace", "Key.enter"]
PROMPTS: list[dict[str, Any]] = [
    {"start": T0 + 0.1, "end": T0 + 1.5, "payload": {"text": "hi There"}},
    {"start": T0 + 1.5, "end": T0 + 1.9, "payload": None},
]


def write_ok(path: Path, profile: DeviceProfile = EMG2QWERTY, seconds: float = 2.0, **overrides: Any) -> Path:
    ts, emg = make_signals(profile, seconds)
    kw: dict[str, Any] = dict(
        profile=profile,
        timestamps=ts,
        emg=emg,
        keystrokes=keystrokes_for(KEYS, 0.05 * seconds, 0.1 * seconds),
        prompts=PROMPTS if seconds >= 2.0 else [],
        session_name=path.stem,
        user="user-7",
    )
    kw.update(overrides)
    return write_session(path, **kw)


def emg2qwerty_attrs(ts: np.ndarray, keystrokes: list[dict[str, Any]], prompts: list[dict[str, Any]]) -> dict[str, Any]:
    """Group attributes as emg2qwerty's files carry them (no emgkey device attributes)."""
    return {
        "session_name": "2021-01-01-1600000000-keystrokes-test",
        "user": "00000001",
        "condition": "on_keyboard",
        "duration_mins": float(ts[-1] - ts[0]) / 60.0,
        "keystrokes": json.dumps(keystrokes),
        "prompts": json.dumps(prompts),
    }


def write_plain(path: Path, rows: np.ndarray, attrs: dict[str, Any]) -> Path:
    """Write a file with bare h5py, the way emg2qwerty's data pipeline lays it out."""
    with h5py.File(path, "w") as f:
        group = f.create_group("emg2qwerty")
        group.create_dataset("timeseries", data=rows, chunks=True)
        for k, v in attrs.items():
            group.attrs[k] = v
    return path


def emg2qwerty_rows(seconds: float = 2.0, rate: float = 2000.0, channels: int = 16, seed: int = 0) -> np.ndarray:
    n = round(seconds * rate)
    dtype = np.dtype([("emg_right", "<f4", (channels,)), ("emg_left", "<f4", (channels,)), ("time", "<f8")])
    rows = np.zeros(n, dtype=dtype)
    rng = np.random.default_rng(seed)
    rows["time"] = T0 + np.arange(n) / rate
    rows["emg_left"] = rng.normal(size=(n, channels))
    rows["emg_right"] = rng.normal(size=(n, channels))
    return rows


def plain_file(tmp_path: Path, name: str = "plain.hdf5", **attr_overrides: Any) -> tuple[Path, np.ndarray]:
    rows = emg2qwerty_rows()
    attrs = emg2qwerty_attrs(rows["time"], keystrokes_for(KEYS, 0.2, 0.2), PROMPTS)
    attrs.update(attr_overrides)
    return write_plain(tmp_path / name, rows, attrs), rows


def emg2qwerty_style_window(path: Path, window_start: int, window_end: int, offset: int, window_length: int) -> dict:
    """Read a window the way emg2qwerty's Emg2QwertySessionData + WindowedEmgDataset do (written here from
    their documented behaviour): open group ``emg2qwerty``, require the three fields in ``dtype.fields``,
    ``json.loads`` the keystrokes and prompts attributes and keep the others as they are, slice
    ``timeseries[start:end]``, stack left then right, and label the un-padded window with the keys pressed
    between its first and last timestamps."""
    with h5py.File(path, "r") as f:
        group = f["emg2qwerty"]
        timeseries = group["timeseries"]
        assert timeseries.dtype.fields is not None
        for field in ("emg_left", "emg_right", "time"):
            assert field in timeseries.dtype.fields
        metadata = {k: json.loads(v) if k in ("keystrokes", "prompts") else v for k, v in group.attrs.items()}
        assert metadata["condition"] == "on_keyboard"
        window = timeseries[window_start:window_end]
        emg = np.stack([window["emg_left"], window["emg_right"]], axis=1)  # (T, 2, C)
        times = window["time"]
        start_t = times[offset - window_start]
        end_t = times[offset + window_length - 1 - window_start]
        label = LabelData.from_keystrokes(metadata["keystrokes"], start_t, end_t)
        all_times = timeseries["time"]
        assert (np.diff(all_times) >= 0).all()
        a, b = all_times.searchsorted([start_t, end_t])
        return {"emg": emg, "labels": label.labels, "len": len(timeseries), "metadata": metadata, "range": (a, b)}


# ---- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [EMG2QWERTY, ARMBAND8], ids=lambda p: p.name)
def test_round_trip(tmp_path: Path, profile: DeviceProfile) -> None:
    ts, emg = make_signals(profile, 3.0, seed=1)
    strokes = keystrokes_for(KEYS, 0.2, 0.3)
    path = write_session(
        tmp_path / "s.hdf5",
        profile=profile,
        timestamps=ts,
        emg=emg,
        keystrokes=strokes,
        prompts=PROMPTS,
        session_name="s",
        user="u1",
        extra_attrs={"note": "simulated"},
    )
    with SessionFile(path) as s:
        assert s.profile == profile
        assert len(s) == s.n_samples == len(ts)
        assert s.sample_rate_hz == profile.sample_rate_hz
        assert (s.session_name, s.user, s.condition) == ("s", "u1", "on_keyboard")
        assert s.duration_mins == pytest.approx((ts[-1] - ts[0]) / 60)
        assert s.keystrokes == strokes and s.prompts == PROMPTS
        assert s.metadata["note"] == "simulated"
        assert s.metadata[SessionFile.FORMAT_VERSION] == FORMAT_VERSION
        assert s.metadata[SessionFile.SAMPLE_FORMAT] == profile.sample_format
        np.testing.assert_array_equal(s.timestamps, ts)
        got = s.read()
        assert got.dtype == np.float32 and got.shape == emg.shape
        np.testing.assert_array_equal(got, emg.astype(np.float32) * np.float32(profile.adc_scale_uv_per_count))
        np.testing.assert_array_equal(s.read(5, 9), got[5:9])
        raw = s.read_raw(5, 9)
        assert raw.dtype == timeseries_dtype(profile)
        np.testing.assert_array_equal(raw["emg_left"], emg[5:9, 0])
        np.testing.assert_array_equal(raw["emg_right"], emg[5:9, 1])
        assert s.ground_truth().label_str == LabelData.from_keystrokes(strokes).label_str == "hi ⇧T⌫⏎"
        s.validate()
        s.validate(full=False)


def test_armband8_stores_counts_and_reads_microvolts(tmp_path: Path) -> None:
    ts, _ = make_signals(ARMBAND8, 1.0)
    emg = np.zeros((len(ts), 2, 8), np.int16)
    emg[:, 0, 3] = 1000
    emg[:, 1, 0] = -32768
    path = write_ok(tmp_path / "a.hdf5", ARMBAND8, 1.0, timestamps=ts, emg=emg)
    with h5py.File(path, "r") as f:
        ds = f["emg2qwerty/timeseries"]
        assert ds.dtype.fields is not None
        assert ds.dtype.fields["emg_left"][0] == np.dtype(("<i2", (8,)))
        assert list(ds.dtype.names) == ["emg_right", "emg_left", "time"]
        assert ds.compression is None and ds.chunks is not None
        attrs = f["emg2qwerty"].attrs
        assert attrs["sample_rate_hz"] == 200.0 and attrs["channels_per_band"] == 8
        assert attrs["sample_format"] == "int16" and attrs["adc_scale_uv_per_count"] == 0.5
        assert DeviceProfile.from_dict(json.loads(attrs["profile"])) == ARMBAND8
    with SessionFile(path) as s:
        uv = s.read(0, 2)
        assert uv[0, 0, 3] == 500.0 and uv[0, 1, 0] == -16384.0


def test_emg2qwerty_file_layout_and_gzip(tmp_path: Path) -> None:
    path = write_ok(tmp_path / "e.hdf5", compress=True)
    with h5py.File(path, "r") as f:
        ds = f["emg2qwerty/timeseries"]
        assert ds.dtype == EMG2QWERTY_DTYPE
        assert ds.compression == "gzip"
    with SessionFile(path) as s:
        s.validate()


def test_large_keystroke_attribute(tmp_path: Path) -> None:
    # Real sessions log thousands of keys: far beyond HDF5's 64 KiB compact-attribute limit.
    strokes = keystrokes_for(["a"] * 6000, 0.0, 0.001)
    path = write_ok(tmp_path / "big.hdf5", ARMBAND8, 10.0, keystrokes=strokes)
    with SessionFile(path) as s:
        assert len(s.keystrokes) == 6000 and len(s.ground_truth()) == 6000


def test_prompt_ground_truth_when_not_on_keyboard(tmp_path: Path) -> None:
    path = write_ok(tmp_path / "p.hdf5", condition="in_air")
    with SessionFile(path) as s:
        assert s.ground_truth().label_str == "hi There⏎"
        assert s.ground_truth(start_t=T0 + 1.0).label_str == ""


def test_index_range_and_slice_time_follow_searchsorted(tmp_path: Path) -> None:
    path = write_ok(tmp_path / "t.hdf5", ARMBAND8, 2.0)
    with SessionFile(path) as s:
        ts = s.timestamps
        a, b = s.index_range(ts[10], ts[20])
        assert (a, b) == (10, 20)  # start inclusive, end exclusive
        np.testing.assert_array_equal(s.slice_time(ts[10], ts[20])["time"], ts[10:20])
        assert s.index_range() == (0, len(s))
        assert s.read(len(s) - 2, len(s) + 100).shape[0] == 2  # slice semantics clip, like timeseries[a:b]


def test_context_manager_closes(tmp_path: Path) -> None:
    path = write_ok(tmp_path / "c.hdf5")
    with SessionFile(path) as s:
        assert not s.closed
    assert s.closed
    with pytest.raises(ValueError, match="closed"):
        s.read(0, 2)


@pytest.fixture(scope="module")
def dense_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Keys every 50 ms with repeated press times, so windows cut through runs of equal starts.
    times = np.round(np.arange(0.0, 4.9, 0.05), 3).repeat(2)
    strokes = [{"key": "ab"[i % 2], "start": T0 + t, "end": T0 + t + 0.01} for i, t in enumerate(times)]
    prompts = [{"start": T0 + t, "end": T0 + t + 0.5, "payload": {"text": f"p{i}"}} for i, t in enumerate(times[::10])]
    d = tmp_path_factory.mktemp("dense")
    write_ok(d / "k.hdf5", ARMBAND8, 5.0, keystrokes=strokes, prompts=prompts)
    write_ok(d / "p.hdf5", ARMBAND8, 5.0, keystrokes=strokes, prompts=prompts, condition="in_air")
    return d


@settings(max_examples=50, deadline=None)
@given(a=st.integers(-10, 110), b=st.integers(-10, 110), nudge=st.sampled_from([-1e-6, 0.0, 1e-6]))
def test_ground_truth_equals_emg2qwertys_linear_scan(dense_session: Path, a: int, b: int, nudge: float) -> None:
    start_t, end_t = T0 + a * 0.05 + nudge, T0 + b * 0.05
    with SessionFile(dense_session / "k.hdf5") as s:
        want = LabelData.from_keystrokes(s.keystrokes, start_t, end_t)
        got = s.ground_truth(start_t, end_t)
        assert got.label_str == want.label_str
        assert got.timestamps is not None and want.timestamps is not None
        np.testing.assert_array_equal(got.timestamps, want.timestamps)
    with SessionFile(dense_session / "p.hdf5") as s:
        assert s.ground_truth(start_t, end_t) == LabelData.from_prompts(s.prompts, start_t=start_t, end_t=end_t)


# ---- interoperability with emg2qwerty --------------------------------------------------------------


def test_reads_a_file_in_emg2qwertys_own_layout(tmp_path: Path) -> None:
    path, rows = plain_file(tmp_path, timezone="UTC", extra_list=json.dumps([1, 2]))
    with SessionFile(path) as s:
        assert s.profile == EMG2QWERTY
        assert s.user == "00000001" and s.condition == "on_keyboard"
        assert s.metadata["timezone"] == "UTC"
        emg = s.read()
        np.testing.assert_array_equal(emg[:, 0], rows["emg_left"])
        np.testing.assert_array_equal(emg[:, 1], rows["emg_right"])
        np.testing.assert_array_equal(s.timestamps, rows["time"])
        assert s.ground_truth().label_str == "hi ⇧T⌫⏎"
        s.validate()


@pytest.mark.parametrize("profile", [EMG2QWERTY, ARMBAND8], ids=lambda p: p.name)
def test_our_files_read_the_emg2qwerty_way(tmp_path: Path, profile: DeviceProfile) -> None:
    path = write_ok(tmp_path / "ours.hdf5", profile, 3.0)
    w = round(1.0 * profile.sample_rate_hz)
    offset, left, right = w // 2, w // 4, w // 8
    theirs = emg2qwerty_style_window(path, offset - left, offset + w + right, offset, w)
    with SessionFile(path) as s:
        mine_raw = s.read_raw(offset - left, offset + w + right)
        np.testing.assert_array_equal(theirs["emg"], np.stack([mine_raw["emg_left"], mine_raw["emg_right"]], axis=1))
        np.testing.assert_array_equal(
            theirs["emg"].astype(np.float32) * np.float32(profile.adc_scale_uv_per_count),
            s.read(offset - left, offset + w + right),
        )
        ts = s.timestamps
        np.testing.assert_array_equal(theirs["labels"], s.ground_truth(ts[offset], ts[offset + w - 1]).labels)
        assert len(theirs["labels"]) > 0
        assert theirs["range"] == s.index_range(ts[offset], ts[offset + w - 1])
        assert theirs["len"] == len(s)
        assert theirs["metadata"]["duration_mins"] == pytest.approx(s.duration_mins)
        assert theirs["metadata"]["profile"] == json.dumps(profile.to_dict())  # extra attrs ride along harmlessly


# ---- bad files ---------------------------------------------------------------------------------


def assert_bad(path: Path, match: str, action: Callable[[SessionFile], object] | None = None) -> None:
    """Opening (or, given ``action``, using) ``path`` raises SessionFileError naming it and the problem."""
    with pytest.raises(SessionFileError, match=match) as info:
        if action is None:
            SessionFile(path).close()
        else:
            with SessionFile(path) as s:
                action(s)
    assert info.value.path == path
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    assert_bad(tmp_path / "nope.hdf5", "no such file")


def test_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "text.hdf5"
    path.write_text("user,session\n")
    assert_bad(path, "not a readable HDF5 file")


@pytest.mark.parametrize("keep", [0.5, 0.99, 0.01])
def test_truncated(tmp_path: Path, keep: float) -> None:
    path = write_ok(tmp_path / "t.hdf5")
    os.truncate(path, int(path.stat().st_size * keep))
    assert_bad(path, "HDF5")


def test_corrupt_signature(tmp_path: Path) -> None:
    path = write_ok(tmp_path / "c.hdf5")
    with open(path, "r+b") as f:
        f.write(b"\x00" * 8)
    assert_bad(path, "not a readable HDF5 file")


def test_corrupt_header_bytes_never_escape_as_other_errors(tmp_path: Path) -> None:
    # Scribble over the metadata region (superblock, object headers, heaps): whatever breaks
    # must break as SessionFileError, never as a raw h5py/UnicodeDecodeError.
    good = write_ok(tmp_path / "g.hdf5", ARMBAND8, 1.0).read_bytes()
    rng = np.random.default_rng(0)
    failures = 0
    for off in range(0, 4096, 13):
        blob = bytearray(good)
        blob[off : off + 3] = rng.integers(0, 256, 3, dtype=np.uint8).tobytes()
        path = tmp_path / "x.hdf5"
        path.write_bytes(bytes(blob))
        try:
            with SessionFile(path) as s:
                s.validate()
                s.ground_truth()
        except SessionFileError as exc:
            assert exc.path == path
            failures += 1
    assert failures > 10  # the scribbles did hit structures that matter


def test_corrupt_compressed_chunk_fails_on_read(tmp_path: Path) -> None:
    path = write_ok(tmp_path / "z.hdf5", EMG2QWERTY, 5.0, compress=True)
    with h5py.File(path, "r") as f:
        chunk = f["emg2qwerty/timeseries"].id.get_chunk_info(3)  # rows 6000..7999
    with open(path, "r+b") as f:
        f.seek(chunk.byte_offset + chunk.size // 2)
        f.write(b"\xff" * 64)
    with SessionFile(path) as s:
        s.read(0, 2000)  # other chunks still read
    assert_bad(path, "HDF5 error while reading rows 6000:6100", lambda s: s.read(6000, 6100))
    assert_bad(path, "HDF5 error", lambda s: s.validate())


def test_missing_group_and_dataset(tmp_path: Path) -> None:
    path = tmp_path / "g.hdf5"
    with h5py.File(path, "w") as f:
        f.create_group("other")
    assert_bad(path, "no 'emg2qwerty' group")
    with h5py.File(path, "w") as f:
        f.create_group("emg2qwerty")
    assert_bad(path, "no emg2qwerty/timeseries dataset")


def test_not_compound(tmp_path: Path) -> None:
    path = tmp_path / "n.hdf5"
    with h5py.File(path, "w") as f:
        f.create_group("emg2qwerty").create_dataset("timeseries", data=np.zeros((10, 33)))
    assert_bad(path, "1-D compound")


@pytest.mark.parametrize("field", ["emg_left", "emg_right", "time"])
def test_missing_field(tmp_path: Path, field: str) -> None:
    rows = emg2qwerty_rows()
    keep = [n for n in EMG2QWERTY_DTYPE.names or () if n != field]
    pruned = np.zeros(len(rows), dtype=[(n, EMG2QWERTY_DTYPE.fields[n][0]) for n in keep])  # type: ignore[index]
    for n in keep:
        pruned[n] = rows[n]
    attrs = emg2qwerty_attrs(rows["time"], [], [])
    assert_bad(write_plain(tmp_path / "f.hdf5", pruned, attrs), f"no '{field}' field")


def test_channel_count_must_match_profile(tmp_path: Path) -> None:
    rows = emg2qwerty_rows(channels=8)
    path = write_plain(tmp_path / "c8.hdf5", rows, emg2qwerty_attrs(rows["time"], [], []))
    assert_bad(path, "16 channels per band")


def test_profile_attrs_disagree_with_fields(tmp_path: Path) -> None:
    path = write_ok(tmp_path / "p.hdf5")  # 16-channel float32 data...
    with h5py.File(path, "r+") as f:  # ...relabelled as an armband8 file
        attrs = f["emg2qwerty"].attrs
        attrs["profile"] = json.dumps(ARMBAND8.to_dict())
        for key in ("sample_rate_hz", "channels_per_band", "sample_format", "adc_scale_uv_per_count"):
            attrs[key] = getattr(ARMBAND8, key)
    assert_bad(path, "8 channels per band")


def test_wrong_storage_dtype(tmp_path: Path) -> None:
    rows = emg2qwerty_rows()
    dtype = np.dtype([("emg_right", "<f8", (16,)), ("emg_left", "<f8", (16,)), ("time", "<f8")])
    wide = rows.astype(dtype)
    assert_bad(write_plain(tmp_path / "f8.hdf5", wide, emg2qwerty_attrs(rows["time"], [], [])), "stores float64")


def test_sample_rate_must_fit_profile(tmp_path: Path) -> None:
    rows = emg2qwerty_rows(rate=1000.0)
    assert_bad(
        write_plain(tmp_path / "r.hdf5", rows, emg2qwerty_attrs(rows["time"], [], [])),
        "advance at 1000.* Hz but profile 'emg2qwerty' samples at 2000 Hz",
    )


def test_flat_attr_disagreeing_with_profile(tmp_path: Path) -> None:
    path = write_ok(tmp_path / "a.hdf5")
    with h5py.File(path, "r+") as f:
        f["emg2qwerty"].attrs["sample_rate_hz"] = 1000.0
    assert_bad(path, "sample_rate_hz=1000.0 disagrees")


def test_incomplete_or_future_device_attrs(tmp_path: Path) -> None:
    path = write_ok(tmp_path / "a.hdf5")
    with h5py.File(path, "r+") as f:
        f["emg2qwerty"].attrs["emgkey_format_version"] = 2
    assert_bad(path, "version 1")
    with h5py.File(path, "r+") as f:
        del f["emg2qwerty"].attrs["profile"]
    assert_bad(path, "incomplete emgkey device attributes")


def test_non_monotonic_timestamps_near_start(tmp_path: Path) -> None:
    rows = emg2qwerty_rows()
    rows["time"][100], rows["time"][101] = rows["time"][101], rows["time"][100]
    assert_bad(
        write_plain(tmp_path / "m.hdf5", rows, emg2qwerty_attrs(rows["time"], [], [])), "not monotonic at row 101"
    )


def test_non_monotonic_timestamps_deep_in_the_file(tmp_path: Path) -> None:
    rows = emg2qwerty_rows(seconds=5.0)  # 10000 rows: the glitch is past the rows probed at open
    rows["time"][8000] = rows["time"][7000]
    path = write_plain(tmp_path / "m.hdf5", rows, emg2qwerty_attrs(rows["time"], [], []))
    with SessionFile(path) as s:
        s.read(0, 7000)  # untouched region reads fine
    assert_bad(path, "not monotonic at row 8000", lambda s: s.read(7990, 8010))
    assert_bad(path, "not monotonic", lambda s: s.timestamps)
    assert_bad(path, "not monotonic", lambda s: s.validate(full=False))


def test_monotonic_across_validate_blocks(tmp_path: Path) -> None:
    rows = emg2qwerty_rows(seconds=40.0)  # 80000 rows: more than one validate block
    rows["time"][1 << 16] = rows["time"][(1 << 16) - 5]
    path = write_plain(tmp_path / "b.hdf5", rows, emg2qwerty_attrs(rows["time"], [], []))
    assert_bad(path, f"not monotonic at row {1 << 16}", lambda s: s.validate())


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    rows = emg2qwerty_rows()
    rows["emg_right"][3000, 5] = bad
    path = write_plain(tmp_path / "nan.hdf5", rows, emg2qwerty_attrs(rows["time"], [], []))
    with SessionFile(path) as s:  # opening does not scan samples...
        s.read(0, 2000)  # ...and clean rows read fine
        s.validate(full=False)
    assert_bad(path, "non-finite EMG sample .* emg_right at row 3000", lambda s: s.read(2990, 3010))
    assert_bad(path, "non-finite", lambda s: s.validate())


def test_non_finite_timestamp(tmp_path: Path) -> None:
    rows = emg2qwerty_rows()
    rows["time"][-1] = np.nan
    assert_bad(
        write_plain(tmp_path / "t.hdf5", rows, emg2qwerty_attrs(rows["time"][:-1], [], [])),
        "last timestamp nan is not finite",
    )


def test_keystroke_outside_recording(tmp_path: Path) -> None:
    strokes = [*keystrokes_for(["a"], 0.5, 0.0), {"key": "b", "start": T0 + 60.0, "end": T0 + 60.1}]
    path, _ = plain_file(tmp_path, keystrokes=json.dumps(strokes))
    assert_bad(path, "keystroke 1 starts at .* outside the recording")


def test_prompt_outside_recording(tmp_path: Path) -> None:
    prompts = [{"start": T0 - 30.0, "end": T0 + 0.5, "payload": {"text": "x"}}]
    path, _ = plain_file(tmp_path, prompts=json.dumps(prompts))
    assert_bad(path, "prompt 0 starts at .* outside the recording")


def test_keystrokes_out_of_order(tmp_path: Path) -> None:
    strokes = keystrokes_for(["a", "b"], 0.5, 0.5)[::-1]
    path, _ = plain_file(tmp_path, keystrokes=json.dumps(strokes))
    assert_bad(path, "not in start order")


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        ("keystrokes", "[{'key': 'a'", "'keystrokes' is not valid JSON"),
        ("prompts", "not json", "'prompts' is not valid JSON"),
        ("keystrokes", json.dumps({"key": "a"}), "must be a JSON list"),
        ("keystrokes", json.dumps([{"key": "a", "start": T0 + 1}]), "needs finite numeric 'start' and 'end'"),
        ("keystrokes", json.dumps([{"key": 5, "start": T0 + 1, "end": T0 + 1.1}]), "needs a string 'key'"),
        ("prompts", json.dumps([{"start": T0 + 1, "end": T0 + 1.1}]), "has no 'payload'"),
        ("prompts", json.dumps([{"start": T0 + 1, "end": T0 + 1.1, "payload": {"txt": 1}}]), "payload must be"),
        ("profile", "{", "'profile' is not valid JSON"),
        ("user", 17, "'user' must be a string"),
        ("duration_mins", "long", "finite non-negative number"),
    ],
)
def test_malformed_attributes(tmp_path: Path, attr: str, value: Any, match: str) -> None:
    path = write_ok(tmp_path / "m.hdf5")
    with h5py.File(path, "r+") as f:
        f["emg2qwerty"].attrs[attr] = value
    assert_bad(path, match)


@pytest.mark.parametrize("attr", ["session_name", "user", "condition", "duration_mins", "keystrokes", "prompts"])
def test_missing_attribute(tmp_path: Path, attr: str) -> None:
    path = write_ok(tmp_path / "m.hdf5")
    with h5py.File(path, "r+") as f:
        del f["emg2qwerty"].attrs[attr]
    assert_bad(path, f"missing attribute.*{attr}")


def test_duration_inconsistent_with_data(tmp_path: Path) -> None:
    path, _ = plain_file(tmp_path, duration_mins=15.0)
    assert_bad(path, "duration_mins=15.0000 but the timestamps span 0.0333 minutes")


def test_too_few_rows(tmp_path: Path) -> None:
    rows = emg2qwerty_rows()[:1]
    assert_bad(write_plain(tmp_path / "one.hdf5", rows, emg2qwerty_attrs(rows["time"], [], [])), "at least 2")


# ---- writer validation and atomicity -------------------------------------------------------------


def _bad_write(tmp_path: Path, match: str, **overrides: Any) -> None:
    with pytest.raises(ValueError, match=match):
        write_ok(tmp_path / "w.hdf5", **overrides)
    assert not (tmp_path / "w.hdf5").exists()


def test_writer_rejects_bad_inputs(tmp_path: Path) -> None:
    ts, emg = make_signals(EMG2QWERTY, 2.0)
    _bad_write(tmp_path, "float64", timestamps=ts.astype(np.float32))
    _bad_write(tmp_path, "shape", emg=emg[:, :, :8])
    _bad_write(tmp_path, "must be float32", emg=emg.astype(np.float64))
    ts8, emg8 = make_signals(ARMBAND8, 2.0)
    _bad_write(tmp_path, "must be int16", profile=ARMBAND8, timestamps=ts8, emg=emg8.astype(np.float32))
    nan = emg.copy()
    nan[7, 1, 2] = np.nan
    _bad_write(tmp_path, "NaN", emg=nan)
    back = ts.copy()
    back[50] = back[40]
    _bad_write(tmp_path, "not monotonic", timestamps=back)
    _bad_write(tmp_path, "2000 Hz", timestamps=T0 + np.arange(len(ts)) / 1000.0)
    _bad_write(tmp_path, "outside the recording", keystrokes=keystrokes_for(["a"], 2.5, 0.0))
    _bad_write(tmp_path, "outside the recording", keystrokes=keystrokes_for(["a"], -0.001, 0.0))
    _bad_write(tmp_path, "not in start order", keystrokes=keystrokes_for(["a", "b"], 0.5, 0.5)[::-1])
    _bad_write(tmp_path, "reserved", extra_attrs={"user": "x"})
    _bad_write(tmp_path, "non-empty string", user="")


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path: Path) -> None:
    path = write_ok(tmp_path / "s.hdf5")
    before = path.read_bytes()
    with pytest.raises(TypeError):  # h5py cannot store an arbitrary object: fails mid-write
        write_ok(path, extra_attrs={"oops": object()})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.hdf5"]


# ---- laziness ------------------------------------------------------------------------------------


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_reading_a_slice_touches_only_that_slice(tmp_path: Path) -> None:
    path = write_ok(tmp_path / "big.hdf5", EMG2QWERTY, 60.0)  # 120k rows, ~16 MB
    size = path.stat().st_size
    assert size > 15e6
    tracemalloc.start()
    try:
        have_io = os.path.exists("/proc/self/io")
        before = _bytes_read() if have_io else 0
        with SessionFile(path) as s:
            window = s.read(50_000, 58_000)  # a 4 s training window
            _, peak = tracemalloc.get_traced_memory()
        read = _bytes_read() - before if have_io else 0
    finally:
        tracemalloc.stop()
    assert window.shape == (8000, 2, 16)
    # A window's worth (the raw rows plus their float32 copy, ~2 MB), not the file's.
    assert peak < size / 4, f"peak Python memory {peak} B for a {size} B file"
    if have_io:
        assert read < size / 8, f"read {read} B of a {size} B file for one window"
