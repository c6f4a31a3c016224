"""Sample validation: the last gate before samples reach a source's buffer (and so the model).

Every ``Source`` passes each block it produces through a ``SampleValidator``.
Two problems are caught, and handled differently on purpose:

- **Wrong shape** (channel or band count, not 3-D, not real numbers) always
  raises ``ChannelCountError`` / ``InvalidSampleError``. It means the profile
  does not describe the device (wrong ``profile=``, wrong board, wrong channel
  rows): every later sample would be misread, so there is nothing sensible to
  drop and carry on with.
- **NaN or infinite values** depend on ``nonfinite``:
  ``"drop"`` (the default for live sources) removes each sample row holding a
  non-finite value, counts it, and reports it to the consumer as a gap of that
  many samples, so features and decoder reset or pad instead of eating NaN.
  One glitched sample from a driver must not end an all-day session.
  ``"raise"`` (the default for file replay, where a NaN means a corrupt file)
  raises ``InvalidSampleError`` naming the source, the sample and the channel.

Either way a non-finite value never leaves a source.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum

import numpy as np

from emgkey.errors import EmgkeyError


class InvalidSampleError(EmgkeyError, ValueError):
    """Samples from a source cannot be used; names the source and what is wrong."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class ChannelCountError(InvalidSampleError):
    """A block does not have the profile's (n_bands, channels_per_band) layout."""


class NonFinitePolicy(str, Enum):
    RAISE = "raise"
    DROP = "drop"

    @classmethod
    def parse(cls, value: str | NonFinitePolicy) -> NonFinitePolicy:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown nonfinite policy {value!r}; known: {[p.value for p in cls]}") from None


@dataclass
class ValidationStats:
    blocks: int = 0
    samples: int = 0  # sample rows checked
    invalid_samples: int = 0  # rows dropped for a NaN/inf value (DROP policy)

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# One run of a validated block: good samples (n, n_bands, C) float32, or the number of rows dropped there.
Run = np.ndarray | int


@dataclass
class SampleValidator:
    """Checks blocks of ``(n, n_bands, channels_per_band)`` samples from the source named ``source``."""

    source: str
    n_bands: int
    channels_per_band: int
    nonfinite: NonFinitePolicy = NonFinitePolicy.DROP
    stats: ValidationStats = field(default_factory=ValidationStats)

    def __post_init__(self) -> None:
        assert self.n_bands > 0 and self.channels_per_band > 0, "band and channel counts must be positive"
        self.nonfinite = NonFinitePolicy.parse(self.nonfinite)

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.n_bands, self.channels_per_band)

    def check_shape(self, block: np.ndarray) -> None:
        """Raise ``ChannelCountError`` / ``InvalidSampleError`` unless ``block`` is (n, n_bands, C) of real numbers."""
        if block.ndim != 3 or block.shape[1:] != self.frame_shape:
            raise ChannelCountError(
                self.source,
                f"got a block of shape {block.shape}, expected (n, {self.n_bands}, {self.channels_per_band}) "
                f"= {self.n_bands} band(s) x {self.channels_per_band} channels; the device does not match its "
                "profile (wrong profile=, board or channel rows?)",
            )
        if block.dtype.kind not in "fiu":
            raise InvalidSampleError(self.source, f"samples of dtype {block.dtype} are not real numbers")

    def split(self, block: np.ndarray, first_index: int = 0) -> list[Run]:
        """Validate ``block`` and return its runs in order: float32 arrays of good rows, ints of dropped rows.

        ``first_index`` is the stream index of ``block[0]``, only used to name a bad sample in errors.
        """
        self.check_shape(block)
        n = int(block.shape[0])
        self.stats.blocks += 1
        self.stats.samples += n
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, caught just below
            samples = block.astype(np.float32, copy=False)
        if samples.dtype.kind != "f" or n == 0:
            return [samples] if n else []
        good = np.asarray(np.isfinite(samples).all(axis=(1, 2)))  # (n,)
        if bool(good.all()):
            return [samples]
        bad_rows = np.flatnonzero(~good)
        if self.nonfinite == NonFinitePolicy.RAISE:
            raise _nonfinite_error(self.source, samples, good, first_index)
        self.stats.invalid_samples += len(bad_rows)
        runs: list[Run] = []
        # Boundaries where goodness flips: runs alternate between kept arrays and dropped counts.
        edges = np.flatnonzero(np.diff(good.astype(np.int8))) + 1
        for a, b in zip([0, *edges.tolist()], [*edges.tolist(), n]):
            runs.append(samples[a:b] if good[a] else b - a)
        return runs


def _nonfinite_error(source: str, samples: np.ndarray, good: np.ndarray, first_index: int) -> InvalidSampleError:
    """The error naming the first non-finite value of ``samples`` (n, n_bands, C); ``good`` marks clean rows."""
    bad_rows = np.flatnonzero(~good)
    row = int(bad_rows[0])
    band, chan = (int(v) for v in np.argwhere(~np.isfinite(samples[row]))[0])
    return InvalidSampleError(
        source,
        f"non-finite sample ({samples[row, band, chan]}) at stream index {first_index + row}, "
        f"band {band}, channel {chan} ({len(bad_rows)} bad row(s) in this block of {len(samples)})",
    )


def check_samples(source: str, block: np.ndarray, n_bands: int, channels_per_band: int, first_index: int = 0) -> None:
    """Raise unless ``block`` is (n, n_bands, C) of finite real numbers: the stateless check, with the messages of
    ``SampleValidator`` under ``nonfinite="raise"``. For entry points that take samples from a caller rather than a
    source (``StreamState.accept``), where there is no gap to report a dropped row as."""
    SampleValidator(source, n_bands, channels_per_band, NonFinitePolicy.RAISE).check_shape(block)
    if block.dtype.kind == "f" and len(block):
        good = np.asarray(np.isfinite(block).all(axis=(1, 2)))  # (n,)
        if not bool(good.all()):
            raise _nonfinite_error(source, block, good, first_index)
