"""Shared fixtures of the training tests: tiny hand-written datasets (no simulator needed).

Sessions are a few seconds of noise with a key-specific burst at each press, written
with ``emgkey.session.write_session`` and listed in emg2qwerty-form split files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emgkey import charset
from emgkey.profiles import DeviceProfile
from emgkey.session import write_session
from emgkey.splits import SessionRef, write_split_yaml

KEYS = "abcdefgh "


def write_tiny_session(
    path: Path, profile: DeviceProfile, user: str, name: str, seconds: float, rng: np.random.Generator
) -> SessionRef:
    rate = profile.sample_rate_hz
    n = int(seconds * rate)
    t0 = 1.7e9 + float(rng.integers(0, 10**6))
    ts = t0 + np.arange(n, dtype=np.float64) / rate
    emg = rng.normal(0.0, 5.0, size=(n, profile.n_bands, profile.channels_per_band))  # (T, bands, C) µV
    keystrokes = []
    t = 0.3
    burst = max(2, int(0.04 * rate))
    while t < seconds - 0.3:
        key = KEYS[int(rng.integers(len(KEYS)))]
        label = charset.str_to_labels(key)[0]
        a = int(t * rate)
        band, ch = label % profile.n_bands, label % profile.channels_per_band
        emg[a : a + burst, band, ch] += 60.0 * np.sin(np.arange(burst) * (0.5 + 0.1 * (label % 5)))
        keystrokes.append({"key": "Key.space" if key == " " else key, "start": t0 + t, "end": t0 + t + 0.05})
        t += float(rng.uniform(0.15, 0.35))
    if profile.sample_format == "int16":
        emg = np.round(emg / profile.adc_scale_uv_per_count).astype(np.int16)
    else:
        emg = emg.astype(np.float32)
    write_session(
        path / f"{name}.hdf5",
        profile=profile,
        timestamps=ts,
        emg=emg,
        keystrokes=keystrokes,
        prompts=[],
        session_name=name,
        user=user,
        chunk_rows=int(rate),
    )
    return SessionRef(user, name)


def make_dataset(
    root: Path, profile: DeviceProfile, seconds: float = 10.0, users: int = 3, sessions: int = 2, seed: int = 0
) -> tuple[Path, Path]:
    """``root/<session>.hdf5`` + ``root/splits/generic.yaml`` (last user held out for test); returns both paths."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    refs = {
        u: [
            write_tiny_session(root, profile, f"u{u}", f"{profile.name}_u{u}_s{s}", seconds, rng)
            for s in range(sessions)
        ]
        for u in range(users)
    }
    train = [r for u in range(users - 1) for r in refs[u][:-1]]
    val = [refs[u][-1] for u in range(users - 1)]
    test = refs[users - 1]
    split = write_split_yaml(root / "splits" / "generic.yaml", train, val, test, user="generic")
    return root, split
