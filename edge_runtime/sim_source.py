"""``sim://``: the physiology simulator in-process, as a source, with its ground truth for evaluation.

    sim://?user=3&session=0&seed=0&profile=armband8&minutes=1&realtime=0
    sim://?user=3&minutes=0.5&speed=4&prompts=hello%20world|the%20quick%20brown%20fox

Samples are exactly ``simulate_session(profile, user, session, minutes, seed,
prompts).emg_uv()`` (the same generator, block by block, so memory stays flat
for long sessions). ``realtime=1`` (default) paces them at the profile's rate,
``speed=k`` at k x real time, ``realtime=0`` / ``speed=max`` as fast as they
are read. The keystrokes and prompts the simulated user types are known up
front: ``keystrokes``, ``prompts``, ``start_time`` (unix time of stream index 0)
and ``time_of(index)`` line decoder output up with the truth.

Simulated samples never hold NaN and never skip, so this source emits no
events unless the reader falls behind a real-time stream (buffer overflow).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from emgkey.edge_runtime.sources import BufferConfig, PacedSource, SourceURL, UrlParams, parse_bool, parse_speed
from emgkey.errors import ConfigError
from emgkey.profiles import ARMBAND8, DeviceProfile


class SimSource(PacedSource):
    scheme = "sim"

    def __init__(
        self,
        profile: DeviceProfile = ARMBAND8,
        user: int = 0,
        session: int = 0,
        seed: int = 0,
        minutes: float = 1.0,
        speed: float = 1.0,
        prompts: Sequence[str] | None = None,
        buffer: BufferConfig | None = None,
    ) -> None:
        if not minutes > 0:
            raise ConfigError(f"sim: minutes must be positive, got {minutes}")
        name = f"sim://?user={user}&session={session}&seed={seed}&profile={profile.name}"
        super().__init__(name, profile, buffer, speed)
        from emgkey.firmware_sim.simulate import stream_session  # the simulator is only needed by this source

        self.user_id = user
        self.session_idx = session
        self.seed = seed
        self.minutes = minutes
        # Builds the typing timeline now (ground truth is known before any sample); EMG comes on demand.
        self._stream = stream_session(profile, user, session, minutes, seed, list(prompts) if prompts else None)
        self._blocks: Any = None  # the stream's block iterator, made on open
        self._pending: np.ndarray | None = None  # (k, n_bands, C) float32 uV not yet handed out
        self._scale = np.float32(profile.adc_scale_uv_per_count)

    @classmethod
    def from_url(cls, url: SourceURL, profile: DeviceProfile | str | None = None) -> SimSource:
        if url.target:
            raise ConfigError(f"sim URL {url.url!r} takes no target; use sim://?user=...&session=...")
        p = UrlParams(url)
        prof = p.profile(profile) or ARMBAND8
        user = p.get("user", int, 0)
        session = p.get("session", int, 0)
        seed = p.get("seed", int, 0)
        minutes = p.get("minutes", float, 1.0)
        realtime = p.get("realtime", parse_bool, None)
        speed = p.get("speed", parse_speed, None)
        prompt_text = p.raw("prompts")
        buffer = p.buffer(cls.default_buffer)
        p.finish()
        if realtime is False and speed is not None and math.isfinite(speed):
            raise ConfigError(f"sim URL {url.url!r}: realtime=0 contradicts speed={speed}")
        if speed is None:
            speed = 1.0 if realtime in (None, True) else math.inf
        prompts = [s for s in prompt_text.split("|") if s] if prompt_text else None
        return cls(prof, user, session, seed, minutes, speed, prompts, buffer)

    # --- ground truth ----------------------------------------------------------------------------------------------

    @property
    def keystrokes(self) -> list[dict[str, Any]]:
        """emg2qwerty keystroke dicts (unix seconds) of the whole session."""
        return self._stream.keystrokes

    @property
    def prompts(self) -> list[dict[str, Any]]:
        return self._stream.prompts

    @property
    def start_time(self) -> float:
        """Unix time of stream index 0."""
        return float(self._stream.t0)

    @property
    def n_samples(self) -> int:
        return int(self._stream.n_samples)

    @property
    def session_name(self) -> str:
        return str(self._stream.session_name)

    @property
    def user(self) -> str:
        return str(self._stream.user)

    def time_of(self, index: int | np.ndarray) -> float | np.ndarray:
        """Unix time of stream index ``index`` (the simulator's clock)."""
        return self.start_time + np.asarray(index, dtype=np.float64) / self.sample_rate_hz

    # --- production -------------------------------------------------------------------------------------------------

    def _open(self) -> None:
        self._blocks = self._stream.blocks()

    def _release(self) -> None:
        self._blocks = None
        self._pending = None

    def _next_item(self, max_n: int) -> np.ndarray | int | None:
        if self._pending is None or self._pending.shape[0] == 0:
            block = next(self._blocks, None) if self._blocks is not None else None
            if block is None:
                return None
            emg = block[1]  # (k, n_bands, C) storage dtype
            uv = emg.astype(np.float32)
            if self._scale != 1.0:
                uv *= self._scale  # the same float32 operation as SimulatedSession.emg_uv(): identical samples
            self._pending = uv
        out, self._pending = self._pending[:max_n], self._pending[max_n:]
        return out
