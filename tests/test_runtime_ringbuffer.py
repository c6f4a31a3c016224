"""RingBuffer: fixed capacity, absolute indices, overflow policies; hypothesis against a plain-list model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emgkey.edge_runtime.ringbuffer import OverflowPolicy, RingBuffer, RingBufferOverflow


def frames(first: int, n: int) -> np.ndarray:
    """(n, 2) frames whose values encode their absolute index: frame i is [i, -i]."""
    idx = np.arange(first, first + n, dtype=np.float64)
    return np.stack([idx, -idx], axis=1)


class ListModel:
    """The obvious implementation: a Python list of (absolute index) values."""

    def __init__(self, capacity: int, policy: OverflowPolicy) -> None:
        self.capacity = capacity
        self.policy = policy
        self.items: list[int] = []
        self.start = 0
        self.end = 0
        self.dropped = 0

    def write(self, n: int) -> bool:
        if len(self.items) + n > self.capacity and self.policy == OverflowPolicy.RAISE:
            return False
        self.items += list(range(self.end, self.end + n))
        self.end += n
        excess = max(0, len(self.items) - self.capacity)
        self.items = self.items[excess:]
        self.start += excess
        self.dropped += excess
        return True

    def consume(self, n: int) -> None:
        self.items = self.items[n:]
        self.start += n


ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 25)),
        st.tuples(st.just("consume"), st.integers(0, 25)),
        st.tuples(st.just("peek"), st.integers(0, 25), st.integers(0, 25)),
        st.tuples(st.just("read"), st.integers(0, 25)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 17), policy=st.sampled_from(list(OverflowPolicy)), ops=ops)
def test_ring_buffer_matches_list_model(capacity: int, policy: OverflowPolicy, ops: list[tuple]) -> None:
    rb = RingBuffer(capacity, (2,), np.float64, policy)
    model = ListModel(capacity, policy)
    for op in ops:
        if op[0] == "write":
            n = op[1]
            ok = model.write(n) if n else True
            if ok:
                assert rb.write(frames(rb.end, n)) == model.end - n
            else:
                with pytest.raises(RingBufferOverflow):
                    rb.write(frames(rb.end, n))
        elif op[0] == "consume":
            n = min(op[1], len(model.items))
            rb.consume(n)
            model.consume(n)
        elif op[0] == "peek":
            off = min(op[1], len(model.items))
            n = min(op[2], len(model.items) - off)
            got = rb.peek(n, model.start + off)
            np.testing.assert_array_equal(got, frames(model.start + off, n))
        else:
            n = min(op[1], len(model.items))
            got = rb.read(op[1])
            np.testing.assert_array_equal(got[:, 0], model.items[:n])
            model.consume(n)
        # Invariants after every operation: indices, length, and the whole content.
        assert (rb.start, rb.end, len(rb), rb.dropped) == (model.start, model.end, len(model.items), model.dropped)
        assert 0 <= len(rb) <= capacity and rb.free == capacity - len(rb)
        np.testing.assert_array_equal(rb.peek()[:, 0], model.items)


def test_indices_are_absolute_and_survive_wraparound() -> None:
    rb = RingBuffer(4, (), np.int64)
    for i in range(10):
        assert rb.write(np.array([i])) == i
        assert rb.read(1).tolist() == [i]
    assert (rb.start, rb.end, len(rb)) == (10, 10, 0)
    rb.write(np.arange(10, 13))
    assert rb.peek(2, 11).tolist() == [11, 12]  # wraps around the physical end


def test_raise_policy_is_atomic_and_loud() -> None:
    rb = RingBuffer(5, (), np.int64, "raise")
    rb.write(np.arange(3))
    with pytest.raises(RingBufferOverflow, match="not keeping up"):
        rb.write(np.arange(3))
    assert rb.peek().tolist() == [0, 1, 2] and rb.end == 3 and rb.dropped == 0


def test_drop_oldest_counts_and_handles_oversized_writes() -> None:
    rb = RingBuffer(4, (), np.int64, OverflowPolicy.DROP_OLDEST)
    rb.write(np.arange(3))
    rb.write(np.arange(3, 10))  # longer than the capacity: only its last 4 are kept
    assert rb.peek().tolist() == [6, 7, 8, 9] and (rb.start, rb.end, rb.dropped) == (6, 10, 6)


def test_peek_outside_held_range_is_a_bug() -> None:
    rb = RingBuffer(4, (), np.int64, OverflowPolicy.DROP_OLDEST)
    rb.write(np.arange(6))
    with pytest.raises(AssertionError, match="not all held"):
        rb.peek(2, 0)
    with pytest.raises(AssertionError, match="not all held"):
        rb.peek(3, 4)


def test_unknown_policy_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="unknown overflow policy"):
        RingBuffer(4, (), np.int64, "drop_newest")
    rb = RingBuffer(4, (2, 3))
    with pytest.raises(AssertionError, match="do not match frame"):
        rb.write(np.zeros((1, 3, 2), np.float32))
