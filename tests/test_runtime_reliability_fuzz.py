"""Fuzzing the serial protocol's receiver beyond random bytes (``tests/test_protocol.py`` covers those).

Random bytes almost never pass two CRCs, so they only exercise the framing. Here every frame carries valid
CRCs around an arbitrary version, type and payload (or a structured payload with hostile field values), so the
payload parsers and the sample assembler see what a buggy or hostile device could send:

- the streaming ``PacketDecoder``, fed such frames between garbage in random pieces, must agree with the
  one-shot ``decode_frame`` on every frame, count every refusal, and never raise;
- the ``SampleAssembler`` must tile each boot's stream exactly (blocks and gaps, never overlapping) whatever
  order, duplication or restarts the packets come in, and refuse a channel-count change with ``ProtocolError``.

Run as a script, this file is also an atheris (libFuzzer) harness over the same receiver::

    pip install atheris && python tests/test_runtime_reliability_fuzz.py -runs=200000
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emgkey import protocol as P

_HEAD = struct.Struct("<2sBBHHH")  # sync, version, type, device_id, seq, length (docs/protocol.md)
# Payload layouts of docs/protocol.md (written out here, not imported: the test checks the parser against the doc).
_DATA = struct.Struct("<QHHIfBBBB")
_INFO = struct.Struct("<BBBBHHIIfBBBB")
_ACK = struct.Struct("<BHBBQ")
_PONG = struct.Struct("<IQ")
_STATUS = struct.Struct("<BBHQII")
TYPES = [int(t) for t in P.PacketType] + [0x00, 0x06, 0x7F, 0x80, 0x86, 0xFF]
T = TypeVar("T")


def raw_frame(version: int, ptype: int, device_id: int, seq: int, payload: bytes) -> bytes:
    """A frame with valid header and frame CRCs around anything (``P.frame`` fixes the version)."""
    head = _HEAD.pack(P.SYNC, version, ptype, device_id, seq, len(payload))
    body = head + struct.pack("<H", P.crc16_ccitt(head)) + payload
    return body + struct.pack("<I", P.crc32(body))


def test_raw_frame_is_the_protocols_frame() -> None:
    assert raw_frame(P.PROTOCOL_VERSION, 1, 7, 5, b"\x01\x02") == P.frame(1, 7, 5, b"\x01\x02")


def mostly(valid: list[T], hostile: list[T]) -> st.SearchStrategy[T]:
    """A field value: usually a valid one (so that parsers get past it), sometimes a hostile one."""
    return st.sampled_from(valid * 4 + hostile)


@st.composite
def data_payloads(draw: st.DrawFn) -> bytes:
    """DATA heads with edge values (zero/NaN/negative scale, zero rate or channels, unknown format, u64 extremes),
    and sample bytes that fit, fall short or run over."""
    n = draw(mostly([1, 2, 3], [0]))
    bands = draw(mostly([1, 2], [0]))
    cpb = draw(mostly([1, 3], [0]))
    head = _DATA.pack(
        draw(st.sampled_from([0, 1, 10, 2**32, 2**63, 2**64 - 1])),
        draw(st.integers(0, 0xFFFF)),
        n,
        draw(mostly([200_000], [0, 1, 2**32 - 1])),
        draw(mostly([0.5], [0.0, -1.0, float("nan"), float("inf"), 1e-45])),
        bands,
        cpb,
        draw(mostly([1], [0, 2])),
        draw(st.integers(0, 255)),
    )
    size = 2 * n * bands * cpb + draw(mostly([0], [-2, 2, 1]))
    return head + draw(st.binary(min_size=max(0, size), max_size=max(0, size)))


@st.composite
def reply_payloads(draw: st.DrawFn, ptype: int) -> bytes:
    """INFO / ACK / STATUS / PONG payloads with fields drawn mostly valid, enums sometimes out of range."""
    if ptype == P.PacketType.ACK:
        return _ACK.pack(
            draw(st.integers(0, 255)),
            draw(st.integers(0, 0xFFFF)),
            draw(mostly([0, 1, 2, 3], [4, 255])),
            draw(mostly([0, 1], [2, 255])),
            draw(st.sampled_from([0, 1, 2**64 - 1])),
        )
    if ptype == P.PacketType.STATUS:
        return _STATUS.pack(
            draw(mostly([0, 1], [7])),
            draw(mostly([0, 1], [9])),
            draw(st.integers(0, 0xFFFF)),
            draw(st.sampled_from([0, 5, 2**64 - 1])),
            draw(st.integers(0, 2**32 - 1)),
            draw(st.integers(0, 2**32 - 1)),
        )
    if ptype == P.PacketType.PONG:
        return _PONG.pack(draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**64 - 1)))
    name = draw(st.sampled_from([b"armband8", b"", "é".encode(), b"\xff\xfe", b"x" * 32]))
    name_len = len(name) + draw(mostly([0], [1, -1]))
    head = _INFO.pack(
        1, 0, 0, 16, draw(st.integers(0, 0xFFFF)), 10, 115200,
        draw(mostly([200_000], [0])), draw(mostly([0.5], [float("nan")])),
        draw(mostly([2], [0])), 8, draw(mostly([1], [3])), max(0, min(255, name_len)),
    )  # fmt: skip
    return head + name


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    version = draw(mostly([P.PROTOCOL_VERSION] * 3, [0, 2, 255]))
    ptype = draw(st.sampled_from([int(P.PacketType.DATA)] * 8 + TYPES))
    structured = draw(st.integers(0, 3)) > 0
    if ptype == P.PacketType.DATA and structured:
        payload = draw(data_payloads())
    elif ptype in (P.PacketType.ACK, P.PacketType.STATUS, P.PacketType.INFO, P.PacketType.PONG) and structured:
        payload = draw(reply_payloads(ptype))
    else:
        payload = draw(st.binary(max_size=80))
    return raw_frame(version, ptype, draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)), payload)


def one_shot(frame: bytes) -> P.Packet | str:
    try:
        return P.decode_frame(frame)
    except P.FrameError as exc:
        return exc.code


@given(st.lists(st.tuples(frames(), st.binary(max_size=12)), max_size=12), st.integers(1, 97))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_stream_decoder_agrees_with_one_shot_decode_on_crc_valid_frames(
    items: list[tuple[bytes, bytes]], step: int
) -> None:
    blob = b"".join(f + g.replace(P.SYNC[:1], b"\x00") for f, g in items)  # garbage without a sync byte
    expect = [one_shot(f) for f, _ in items]
    dec = P.PacketDecoder()
    got = [p for i in range(0, len(blob), step) for p in dec.feed(blob[i : i + step])] + dec.flush()
    assert got == [e for e in expect if not isinstance(e, str)]
    s = dec.stats
    for code in ("malformed", "unknown_type", "unsupported_version"):
        assert getattr(s, code) == expect.count(code), code
    assert s.packets_ok == len(got)
    assert s.length_errors >= expect.count("length_errors")
    assert s.bytes_in == len(blob) == s.bytes_framed + s.bytes_skipped + dec.pending


def _desc(channels: int) -> P.StreamDescriptor:
    return P.StreamDescriptor(200.0, 1, channels, 0.5, P.SampleFormat.INT16)


@given(
    st.lists(
        st.tuples(st.integers(0, 60), st.integers(1, 5), st.sampled_from([7, 7, 7, 9])),  # start, n, boot id
        max_size=40,
    )
)
@settings(max_examples=400, deadline=None)
def test_assembler_tiles_each_boot_exactly(packets: list[tuple[int, int, int]]) -> None:
    asm = P.SampleAssembler()
    items: list[P.StreamItem] = []
    for seq, (start, n, boot) in enumerate(packets):
        counts = (np.arange(start, start + n, dtype=np.int16)[:, None] * np.ones((1, 2), np.int16)).astype(np.int16)
        items += asm.push(P.DataPacket(seq, 1, start, boot, _desc(2), counts, 0))
    pos: int | None = None
    for it in items:
        if isinstance(it, P.StreamRestart):
            pos = None
            continue
        assert pos is None or it.start == pos, f"{it} does not continue the stream at {pos}"
        if isinstance(it, P.SampleBlock):  # exactly the packet's samples: 0.5 uV x the index
            np.testing.assert_array_equal(it.samples[:, 0], 0.5 * np.arange(it.start, it.stop, dtype=np.float32))
        pos = it.stop
    s = asm.stats
    assert s.packets_in == len(packets) == s.packets_used + s.duplicates + s.late
    used = sum(it.stop - it.start for it in items if isinstance(it, P.SampleBlock))
    assert s.samples_out == used and s.restarts == sum(isinstance(it, P.StreamRestart) for it in items)


@given(st.lists(st.sampled_from([2, 2, 2, 3]), min_size=1, max_size=10))
@settings(max_examples=100, deadline=None)
def test_assembler_refuses_a_channel_count_change(channels: list[int]) -> None:
    asm = P.SampleAssembler()
    for i, c in enumerate(channels):
        pkt = P.DataPacket(i, 1, i, 7, _desc(c), np.zeros((1, c), np.int16), 0)
        if c != channels[0]:
            with pytest.raises(P.ProtocolError, match=f"{c} channels, stream has {channels[0]}"):
                asm.push(pkt)
        else:
            asm.push(pkt)


# ---------------------------------------------------------------------------------------------------------------------
# atheris


def fuzz_one_input(data: bytes) -> None:
    """libFuzzer entry: the bytes as a receiver's input, and as the payloads of CRC-valid frames."""
    dec = P.PacketDecoder()
    step = 1 + (data[0] if data else 0)
    pkts = [p for i in range(0, len(data), step) for p in dec.feed(data[i : i + step])] + dec.flush()
    s = dec.stats
    assert s.bytes_in == s.bytes_framed + s.bytes_skipped + dec.pending
    framed = b"".join(raw_frame(1, data[i], 1, i, data[i + 1 : i + 41]) for i in range(0, len(data), 41))
    pkts += P.PacketDecoder().feed(framed)
    asm = P.SampleAssembler()
    for p in pkts:
        if isinstance(p, P.DataPacket):
            try:
                asm.push(p)
            except P.ProtocolError:
                asm = P.SampleAssembler()


def test_atheris_harness_runs() -> None:
    """A short libFuzzer run of the harness, when atheris is installed (``pip install atheris``)."""
    pytest.importorskip("atheris", reason="atheris is optional: pip install atheris")
    out = subprocess.run(
        [sys.executable, str(Path(__file__)), "-runs=3000", "-seed=1"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Done 3000 runs" in out.stderr


if __name__ == "__main__":
    import inspect

    import atheris

    # Coverage feedback from the protocol module only (instrument_all() would take minutes over numpy).
    for obj in list(vars(P).values()):
        if getattr(obj, "__module__", None) != P.__name__:
            continue
        for fn in [obj] if inspect.isfunction(obj) else list(vars(obj).values()) if inspect.isclass(obj) else []:
            if inspect.isfunction(fn):
                atheris.instrument_func(fn)
    atheris.Setup(sys.argv, fuzz_one_input)
    atheris.Fuzz()
