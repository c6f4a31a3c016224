"""Public entry point: one simulated user typing through one session, recorded by one device.

    session = simulate_session(ARMBAND8, user_id=3, session_idx=0, minutes=2.0, seed=0)
    session.emg          # (T, 2, 8) int16 ADC counts
    session.emg_uv()     # (T, 2, 8) float32 microvolts
    session.keystrokes   # emg2qwerty keystroke dicts, unix seconds

or, block by block (what a live firmware needs; identical samples):

    stream = stream_session(ARMBAND8, 3, 0, minutes=2.0, seed=0)
    for timestamps, emg in stream.blocks():   # ~1 s per block
        ...

Same (profile, seed, user, session, minutes, prompts) -> bit-identical output.
The typing timeline and the muscle activity do not depend on the profile, so
``emg2qwerty`` and ``armband8`` recordings of one session are two devices on
the same arm at the same time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from emgkey.corpus import PromptSampler
from emgkey.firmware_sim.frontend import DeviceFrontend, FrontendParams
from emgkey.firmware_sim.population import Population, SessionParams, UserParams, seeded_rng
from emgkey.firmware_sim.synth import BLOCK_S, MuscleActivity, physio_rate_for
from emgkey.firmware_sim.typist import TypingTimeline, clean_prompt, type_prompts
from emgkey.profiles import DeviceProfile

# Sessions of one user take prompts from one schedule, this many apart, so they rarely repeat a sentence.
PROMPTS_PER_SESSION_SLOT = 200
PREROLL_BLOCKS = 1  # simulated and discarded before t = 0 so the filters start settled
START_REST_S = 2.5  # hands at rest before the first prompt appears
END_REST_S = 1.0


@dataclass
class SimulatedSession:
    """A finished recording, in the shapes ``emgkey.session.write_session`` takes."""

    profile: DeviceProfile
    timestamps: npt.NDArray[np.float64]  # (T,) unix seconds
    emg: npt.NDArray[Any]  # (T, n_bands, C) storage dtype: float32 microvolts or int16 ADC counts
    keystrokes: list[dict[str, Any]]
    prompts: list[dict[str, Any]]
    user: str
    session_name: str
    condition: str = "on_keyboard"

    def emg_uv(self) -> npt.NDArray[np.float32]:
        """(T, n_bands, C) float32 microvolts (int16 counts times the ADC scale)."""
        out = self.emg.astype(np.float32)
        if self.profile.adc_scale_uv_per_count != 1.0:
            out *= np.float32(self.profile.adc_scale_uv_per_count)
        return out

    @property
    def n_samples(self) -> int:
        return int(self.emg.shape[0])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.profile.sample_rate_hz


def prompt_schedule_seed(user: UserParams) -> int:
    """Seed of the user's own prompt schedule (population seed and user id), for ``PromptSampler``."""
    return int(seeded_rng(user.seed, "prompts", user.user_id).integers(2**62))


def default_prompt_sampler(user: UserParams) -> PromptSampler:
    """The user's own prompt schedule over the whole corpus."""
    return PromptSampler(seed=prompt_schedule_seed(user))


def _prompt_stream(
    session: SessionParams, prompts: Sequence[str] | None, sampler: PromptSampler | None
) -> Iterator[str]:
    if prompts is not None:
        # Cycling prompts that hold nothing typeable would never fill the session.
        if not any(clean_prompt(p) for p in prompts):
            raise ValueError(f"none of the {len(prompts)} prompts has typeable text (pass None for the corpus)")
        return itertools.cycle(prompts)
    sampler = sampler or default_prompt_sampler(session.user)
    first = session.session_idx * PROMPTS_PER_SESSION_SLOT
    return (sampler.prompt(i) for i in itertools.count(first))


class SessionStream:
    """One session, generated on demand. Ground truth is known up front; EMG comes block by block.

    ``blocks()`` may be iterated once per ``SessionStream`` (the generators are stateful);
    build another stream for another pass, it will produce the same samples.
    """

    def __init__(
        self,
        profile: DeviceProfile,
        user_id: int,
        session_idx: int,
        minutes: float,
        seed: int,
        prompts: Sequence[str] | None = None,
        *,
        prompt_sampler: PromptSampler | None = None,
        population: Population | None = None,
        frontend_params: FrontendParams | None = None,
    ) -> None:
        assert minutes > 0, f"minutes must be positive, got {minutes}"
        pop = population or Population(seed)
        assert pop.seed == seed, "population seed and seed disagree"
        self.profile = profile
        self.user_params = pop.user(user_id)
        self.session_params = self.user_params.session(session_idx)
        self.n_samples = round(minutes * 60.0 * profile.sample_rate_hz)
        assert self.n_samples >= 2, f"{minutes} minutes at {profile.sample_rate_hz} Hz is fewer than 2 samples"
        self.duration_s = self.n_samples / profile.sample_rate_hz
        self.t0 = self.session_params.start_unix
        self.user = self.user_params.name
        self.session_name = self.session_params.session_name(profile.name)
        self.condition = self.session_params.condition
        self.timeline: TypingTimeline = type_prompts(
            _prompt_stream(self.session_params, prompts, prompt_sampler),
            self.session_params.style,
            np.random.default_rng(self.session_params.typing_seed),
            self.duration_s,
            start_rest_s=START_REST_S,
            end_rest_s=END_REST_S,
        )
        self.keystrokes = self.timeline.keystrokes(self.t0)
        self.prompts = self.timeline.prompt_dicts(self.t0)
        self.physio_fs = physio_rate_for(profile)
        self._frontend_params = frontend_params
        self._consumed = False

    def timestamps(self, start: int = 0, stop: int | None = None) -> npt.NDArray[np.float64]:
        """Unix times of device samples ``[start, stop)``, (n,) float64."""
        stop = self.n_samples if stop is None else stop
        return self.t0 + np.arange(start, stop, dtype=np.float64) / self.profile.sample_rate_hz

    def blocks(self) -> Iterator[tuple[npt.NDArray[np.float64], npt.NDArray[Any]]]:
        """Yield ``(timestamps (n,), emg (n, n_bands, C))`` blocks of about ``BLOCK_S`` seconds, in order."""
        assert not self._consumed, "a SessionStream's blocks() can be iterated only once"
        self._consumed = True
        up, sp = self.user_params, self.session_params
        activity = MuscleActivity(up, sp, self.timeline, self.physio_fs)
        frontend = DeviceFrontend(
            self.profile,
            up,
            sp,
            activity.layout,
            self.physio_fs,
            self.duration_s,
            self._frontend_params,
            row_source=activity.row_source,
        )
        noise_rng = seeded_rng(up.seed, "electrode-noise", self.profile.name, up.user_id, sp.session_idx)
        r = frontend.decimation
        block = round(BLOCK_S * self.physio_fs)
        assert block % r == 0, f"block of {block} samples is not a multiple of the decimation factor {r}"
        total = self.n_samples * r
        i = -PREROLL_BLOCKS * block
        k = 0  # device samples emitted so far
        while i < total:
            n = min(block, total - i)
            emg = frontend.process(activity.block(i, n), i, noise_rng)  # (n / R, bands, C)
            if i >= 0:
                yield self.timestamps(k, k + emg.shape[0]), emg
                k += emg.shape[0]
            i += n
        assert k == self.n_samples, f"emitted {k} samples, expected {self.n_samples}"

    def run(self) -> SimulatedSession:
        """Generate the whole session into preallocated arrays."""
        prof = self.profile
        dtype = np.float32 if prof.sample_format == "float32" else np.int16
        emg = np.empty((self.n_samples, prof.n_bands, prof.channels_per_band), dtype=dtype)  # (T, bands, C)
        k = 0
        for _, block in self.blocks():
            emg[k : k + block.shape[0]] = block
            k += block.shape[0]
        return SimulatedSession(
            profile=prof,
            timestamps=self.timestamps(),
            emg=emg,
            keystrokes=self.keystrokes,
            prompts=self.prompts,
            user=self.user,
            session_name=self.session_name,
            condition=self.condition,
        )


def stream_session(
    profile: DeviceProfile,
    user_id: int,
    session_idx: int,
    minutes: float,
    seed: int,
    prompts: Sequence[str] | None = None,
    **kwargs: Any,
) -> SessionStream:
    """A ``SessionStream`` (ground truth now, EMG blocks on demand); see ``SessionStream`` for keywords."""
    return SessionStream(profile, user_id, session_idx, minutes, seed, prompts, **kwargs)


def simulate_session(
    profile: DeviceProfile,
    user_id: int,
    session_idx: int,
    minutes: float,
    seed: int,
    prompts: Sequence[str] | None = None,
    **kwargs: Any,
) -> SimulatedSession:
    """Simulate user ``user_id`` of population ``seed`` typing for ``minutes`` in session ``session_idx``.

    ``prompts`` are typed in order (cycled); by default the user's own
    schedule over ``emgkey.corpus`` prompts is used. Extra keywords go to
    ``SessionStream`` (``prompt_sampler``, ``population``, ``frontend_params``).
    """
    return SessionStream(profile, user_id, session_idx, minutes, seed, prompts, **kwargs).run()
