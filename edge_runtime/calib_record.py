"""Recording a prompted calibration session through the ``Source`` interface.

The session shows prompts one at a time and records the armband; a ``Prompter`` decides when each
prompt appears, and so which samples belong to it:

- ``TimelinePrompter``: a known schedule. With ``sim://`` the simulated new user types the calibration
  prompts at their own pace (emg2qwerty's protocol: read, type, Enter, next prompt), and the schedule is
  the simulator's own; with ``--sim-typist`` the same schedule is computed for a simulated armband
  behind a serial link (the firmware on a pty).
- ``TerminalPrompter``: a person at a terminal. The next prompt appears when they press Enter on the
  terminal (when stdin is one) or when the prompt's time runs out (``pause_s + seconds_per_key`` per key).

``record`` reads the source in 20 ms blocks until ``seconds`` of stream time (and the prompt on screen
is finished), zero-fills gaps the source reports (they are counted, and a prompt that lost samples is
dropped later), refuses a device restart, and returns a ``CalibrationRecording``.
"""

from __future__ import annotations

import math
import select
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from emgkey.edge_runtime.calib_data import CalibrationDataError, CalibrationRecording, PromptSpan, prompt_keys
from emgkey.edge_runtime.sources import GapEvent, RestartEvent, Source, SourceURL
from emgkey.edge_runtime.validate import ChannelCountError, InvalidSampleError
from emgkey.errors import ConfigError
from emgkey.profiles import DeviceProfile

Display = Callable[[int, str], None]  # (prompt number from 1, text)


class Prompter(Protocol):
    def update(self, index: int) -> list[str]:
        """Prompts that appear at or before stream sample ``index`` and were not shown yet."""
        ...

    def finished(self, index: int, target: int) -> bool:
        """Whether recording may stop at ``index`` (``target`` samples wanted)."""
        ...

    def spans(self, end: int) -> list[PromptSpan]:
        """Complete prompts of a recording that ended at sample ``end``."""
        ...


class TimelinePrompter:
    """Prompts on a known schedule: ``(text, shown at, finished at)`` in stream samples, in order.

    ``asked``: the texts the calibration showed; a scheduled prompt whose text differs (the simulated typist
    cut the last prompt short when the session ended) or that ends after the recording is not complete.
    """

    def __init__(self, schedule: Sequence[tuple[str, int, int]], asked: Sequence[tuple[int, str]]) -> None:
        self.schedule = list(schedule)
        self.ids = {text: pid for pid, text in asked}
        self._shown = 0

    def update(self, index: int) -> list[str]:
        out = []
        while self._shown < len(self.schedule) and self.schedule[self._shown][1] <= index:
            out.append(self.schedule[self._shown][0])
            self._shown += 1
        return out

    def finished(self, index: int, target: int) -> bool:
        return index >= target

    def spans(self, end: int) -> list[PromptSpan]:
        out = []
        for i, (text, start, done) in enumerate(self.schedule):
            nxt = self.schedule[i + 1][1] if i + 1 < len(self.schedule) else end
            if text in self.ids and done <= end and start < end:
                out.append(PromptSpan(text, start, min(nxt, end), self.ids[text]))
        return out


class TerminalPrompter:
    """A person types the prompts: Enter on the terminal (when interactive) or the prompt's time advances."""

    def __init__(
        self,
        prompts: Sequence[tuple[int, str]],
        sample_rate_hz: float,
        *,
        interactive: bool | None = None,
        seconds_per_key: float = 0.45,
        pause_s: float = 2.5,
        stdin: Any = None,
    ) -> None:
        self.prompts = list(prompts)
        self.rate = sample_rate_hz
        self.stdin = stdin if stdin is not None else sys.stdin
        self.interactive = self.stdin.isatty() if interactive is None else interactive
        self.seconds_per_key = seconds_per_key
        self.pause_s = pause_s
        self._starts: list[int] = []  # sample at which each prompt appeared
        self._target: int | None = None
        self._closed: int | None = None  # sample at which the last prompt was finished

    def _due(self, i: int) -> int:
        keys = len(prompt_keys(self.prompts[i][1]))
        return self._starts[i] + math.ceil((self.pause_s + self.seconds_per_key * keys) * self.rate)

    def _enter_pressed(self) -> bool:
        if not self.interactive:
            return False
        ready, _, _ = select.select([self.stdin], [], [], 0)
        if ready:
            self.stdin.readline()
            return True
        return False

    def update(self, index: int) -> list[str]:
        if not self._starts:
            self._starts.append(index)
            return [self.prompts[0][1]]
        i = len(self._starts) - 1
        if self._closed is not None:
            return []
        if self._enter_pressed() or index >= self._due(i):
            if (self._target is not None and index >= self._target) or i + 1 == len(self.prompts):
                self._closed = index  # time is up (or no prompts left): the prompt on screen is the last
                return []
            self._starts.append(index)
            return [self.prompts[i + 1][1]]
        return []

    def finished(self, index: int, target: int) -> bool:
        self._target = target
        return index >= target and self._closed is not None

    def spans(self, end: int) -> list[PromptSpan]:
        out = []
        for i, start in enumerate(self._starts):
            last = i + 1 == len(self._starts)
            stop = end if last else self._starts[i + 1]
            if not last or self._closed is not None:  # the last prompt counts only if it was finished
                pid, text = self.prompts[i]
                out.append(PromptSpan(text, start, stop, pid))
        return out


# ---------------------------------------------------------------------------------------------------------------------
# Simulated typists


def sim_url_with_prompts(url: str, prompts: Sequence[tuple[int, str]], seconds: float) -> str:
    """A ``sim://`` URL whose simulated user types ``prompts`` for ``seconds`` (real-time unless it says otherwise)."""
    parsed = SourceURL.parse(url)
    if parsed.scheme != "sim":
        raise ConfigError(f"{url!r} is not a sim:// URL")
    if "prompts" in parsed.params:
        raise ConfigError("calibration chooses the prompts from the prompt corpus: drop prompts= from the sim URL")
    if "minutes" in parsed.params:
        raise ConfigError("calibration sets the session length from --seconds: drop minutes= from the sim URL")
    params = dict(parsed.params)
    params["minutes"] = repr(seconds / 60.0)
    params["prompts"] = "|".join(text for _, text in prompts)
    return f"sim://{parsed.target}?{urllib.parse.urlencode(params, quote_via=urllib.parse.quote)}"


def sim_schedule(source: Any) -> list[tuple[str, int, int]]:
    """The simulated user's prompt schedule (text, shown, finished) in stream samples, from a ``SimSource``."""
    rate = source.sample_rate_hz
    t0 = source.start_time
    return [
        (p["payload"]["text"], round((p["start"] - t0) * rate), round((p["end"] - t0) * rate))
        for p in source.prompts
        if p.get("payload")
    ]


def typist_schedule(
    profile: DeviceProfile, spec: str, prompts: Sequence[tuple[int, str]], seconds: float
) -> list[tuple[str, int, int]]:
    """The schedule of simulated user ``spec`` (``"user=3&session=0&seed=0"``) typing ``prompts`` for ``seconds``.

    For a simulated armband behind a link (``emgkey.firmware_sim`` on a pty) that plays the session
    ``simulate_session(profile, user, session, seconds / 60, seed, prompts)`` from its first sample.
    """
    from emgkey.firmware_sim.simulate import stream_session  # the timeline only: no EMG is generated

    params = dict(urllib.parse.parse_qsl(spec, strict_parsing=True))
    unknown = set(params) - {"user", "session", "seed"}
    if unknown:
        raise ConfigError(f"--sim-typist {spec!r}: unknown keys {sorted(unknown)} (user, session, seed)")
    stream = stream_session(
        profile,
        int(params.get("user", 0)),
        int(params.get("session", 0)),
        seconds / 60.0,
        int(params.get("seed", 0)),
        [text for _, text in prompts],
    )
    rate = profile.sample_rate_hz
    return [
        (p["payload"]["text"], round((p["start"] - stream.t0) * rate), round((p["end"] - stream.t0) * rate))
        for p in stream.prompts
    ]


# ---------------------------------------------------------------------------------------------------------------------
# The recording loop


def record(
    source: Source,
    prompter: Prompter,
    seconds: float,
    *,
    display: Display | None = None,
    block_ms: float = 20.0,
    max_extra_s: float = 30.0,
    expect_profile: DeviceProfile | None = None,
) -> CalibrationRecording:
    """Record ``seconds`` of prompted typing (plus the end of the prompt on screen, at most ``max_extra_s``)."""
    shown = 0
    try:
        source.start()
        prof = source.profile
        if expect_profile is not None and prof.name != expect_profile.name:
            raise CalibrationDataError(
                "wrong_channels", f"the source is a {prof.name!r} device, the bundle is for {expect_profile.name!r}"
            )
        rate = prof.sample_rate_hz
        target = round(seconds * rate)
        capacity = target + round(max_extra_s * rate)
        buf = np.zeros((capacity, prof.n_bands, prof.channels_per_band), dtype=np.float32)
        missing: list[tuple[int, int]] = []
        block = max(1, round(block_ms / 1000.0 * rate))
        n = 0
        for text in prompter.update(0):
            shown += 1
            if display:
                display(shown, text)
        while n < capacity and not source.ended and not prompter.finished(n, target):
            chunk = source.read_chunk(block, timeout=0.25)
            for ev in chunk.events:
                if isinstance(ev, RestartEvent):
                    raise CalibrationDataError("restart", "the device restarted during calibration: record again")
                if isinstance(ev, GapEvent):
                    k = min(ev.n_missing, capacity - n)
                    missing.append((n, k))
                    n += k  # zeros: the buffer is zero-filled
            k = min(chunk.n, capacity - n)
            buf[n : n + k] = chunk.samples[:k]
            n += k
            for text in prompter.update(n):
                shown += 1
                if display:
                    display(shown, text)
        source.stop()
    except (ChannelCountError, InvalidSampleError) as exc:
        code = "wrong_channels" if isinstance(exc, ChannelCountError) else "non_finite"
        raise CalibrationDataError(code, str(exc)) from exc
    finally:
        source.close()
    return CalibrationRecording(
        profile=prof,
        samples=buf[:n].copy(),
        spans=prompter.spans(n),
        source=source.name,
        missing=missing,
        notes=[f"{shown} prompts shown"],
    )


def simulated_recording(
    profile: DeviceProfile,
    user: int,
    seconds: float,
    prompts: Sequence[tuple[int, str]],
    *,
    session: int = 0,
    seed: int = 0,
) -> CalibrationRecording:
    """What ``record`` returns for ``sim://?user=U&session=S&seed=SEED`` typing ``prompts``, without pacing
    or a source (benchmarks, tests): the same samples and the same prompt spans."""
    from emgkey.firmware_sim.simulate import simulate_session

    texts = [text for _, text in prompts]
    sess = simulate_session(profile, user, session, seconds / 60.0, seed, texts)
    rate = profile.sample_rate_hz
    t0 = float(sess.timestamps[0])
    schedule = [
        (p["payload"]["text"], round((p["start"] - t0) * rate), round((p["end"] - t0) * rate)) for p in sess.prompts
    ]
    n = sess.n_samples
    return CalibrationRecording(
        profile=profile,
        samples=sess.emg_uv(),
        spans=TimelinePrompter(schedule, prompts).spans(n),
        source=f"sim://?user={user}&session={session}&seed={seed}&profile={profile.name}",
        notes=[f"{len(schedule)} prompts shown"],
    )
