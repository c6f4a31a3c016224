"""A fixed-capacity ring buffer of samples addressed by monotonically increasing absolute indices.

Every sample ever written has an absolute index (0, 1, 2, ... since the buffer
was made); the buffer holds the window ``[start, end)`` of them. Indices never
wrap or reset, so a consumer gets absolute sample numbers for free (the way
sherpa-onnx's streaming buffers number frames) and can ask for "samples 1200 to
1300" without tracking offsets. ``peek`` looks without taking; ``consume``
takes (BrainFlow keeps the two apart too).

Overflow is a policy, not an accident: ``"raise"`` refuses a write that does
not fit (``RingBufferOverflow``, nothing written); ``"drop_oldest"`` discards
the oldest samples to make room and counts them in ``dropped``. The buffer is
not thread-safe: the sources guard it with their own lock, together with the
event queue that must stay consistent with it.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
import numpy.typing as npt

from emgkey.errors import EmgkeyError


class OverflowPolicy(str, Enum):
    """What a full buffer does with a write that does not fit."""

    RAISE = "raise"  # fail loudly: the consumer is too slow and the caller must know
    DROP_OLDEST = "drop_oldest"  # keep the newest samples, count what was discarded

    @classmethod
    def parse(cls, value: str | OverflowPolicy) -> OverflowPolicy:
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown overflow policy {value!r}; known: {[p.value for p in cls]}") from None


class RingBufferOverflow(EmgkeyError, BufferError):
    """A write did not fit a buffer whose policy is ``raise``."""


class RingBuffer:
    """``capacity`` frames of shape ``frame_shape`` (time first: storage is (capacity, *frame_shape))."""

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, ...] = (),
        dtype: npt.DTypeLike = np.float32,
        overflow: OverflowPolicy | str = OverflowPolicy.RAISE,
    ) -> None:
        assert capacity > 0, f"capacity must be positive, got {capacity}"
        self.capacity = int(capacity)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.overflow = OverflowPolicy.parse(overflow)
        self._data = np.zeros((self.capacity, *self.frame_shape), dtype=dtype)  # (capacity, *frame)
        self._start = 0  # absolute index of the oldest held frame
        self._end = 0  # absolute index one past the newest frame (= frames ever written)
        self.dropped = 0  # frames discarded by DROP_OLDEST

    # --- indices ---------------------------------------------------------------------------------------------------

    @property
    def start(self) -> int:
        """Absolute index of the oldest frame still held."""
        return self._start

    @property
    def end(self) -> int:
        """Absolute index the next written frame gets (= frames written so far)."""
        return self._end

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def free(self) -> int:
        return self.capacity - len(self)

    @property
    def dtype(self) -> np.dtype:
        return self._data.dtype

    # --- write / read ------------------------------------------------------------------------------------------------

    def write(self, frames: np.ndarray) -> int:
        """Append ``frames`` (n, *frame_shape); returns the absolute index of ``frames[0]``.

        RAISE: a write that does not fit raises ``RingBufferOverflow`` and writes nothing.
        DROP_OLDEST: the oldest frames are discarded (counted in ``dropped``); a write longer than
        the capacity keeps only its last ``capacity`` frames.
        """
        assert frames.shape[1:] == self.frame_shape, f"frames {frames.shape} do not match frame {self.frame_shape}"
        n = int(frames.shape[0])
        first = self._end
        if n == 0:
            return first
        if n > self.free:
            if self.overflow == OverflowPolicy.RAISE:
                raise RingBufferOverflow(
                    f"ring buffer full: {len(self)} of {self.capacity} frames held, cannot write {n} more "
                    "(the consumer is not keeping up)"
                )
            excess = n - self.free
            self._start += excess
            self.dropped += excess
            if n > self.capacity:  # the head of this very write is already discarded
                frames = frames[n - self.capacity :]
                self._end += n - self.capacity
                n = self.capacity
        i = self._end % self.capacity
        k = min(n, self.capacity - i)  # up to the physical end, then wrap
        self._data[i : i + k] = frames[:k]
        if k < n:
            self._data[: n - k] = frames[k:]
        self._end += n
        return first

    def peek(self, n: int | None = None, start: int | None = None) -> np.ndarray:
        """A copy of frames ``[start, start + n)`` (default: from the oldest held, everything held).

        The range must lie within ``[self.start, self.end)``; asking for dropped or unwritten frames is a bug.
        """
        start = self._start if start is None else start
        n = self._end - start if n is None else n
        assert n >= 0, f"n must be non-negative, got {n}"
        assert self._start <= start and start + n <= self._end, (
            f"frames [{start}, {start + n}) are not all held (buffer holds [{self._start}, {self._end}))"
        )
        i = start % self.capacity
        k = min(n, self.capacity - i)
        if k == n:
            return self._data[i : i + n].copy()
        return np.concatenate([self._data[i:], self._data[: n - k]], axis=0)

    def consume(self, n: int) -> None:
        """Discard the ``n`` oldest frames (after a peek took them)."""
        assert 0 <= n <= len(self), f"cannot consume {n} of {len(self)} frames"
        self._start += n

    def read(self, n: int) -> np.ndarray:
        """``peek`` then ``consume`` up to ``n`` of the oldest frames."""
        n = min(n, len(self))
        out = self.peek(n)
        self.consume(n)
        return out

    def clear(self) -> None:
        """Drop everything held (not counted as overflow); indices keep increasing."""
        self._start = self._end

    def __repr__(self) -> str:
        return (
            f"RingBuffer(capacity={self.capacity}, frame_shape={self.frame_shape}, held=[{self._start}, {self._end}), "
            f"overflow={self.overflow.value}, dropped={self.dropped})"
        )
