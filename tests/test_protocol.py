"""Armband serial protocol v1: golden bytes, round trips, resync after corruption, sample assembly.

Everything here runs on bytes alone (no pty, no pyserial): the decoder is pure.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emgkey import protocol as P
from emgkey.errors import ProtocolError
from emgkey.profiles import ARMBAND8, EMG2QWERTY, PROFILES

# The example frame of docs/protocol.md ("Worked example"): DATA, device 7, seq 5, first sample 1000,
# boot 0xBEEF, 200 Hz, 1 band x 2 channels, 0.5 uV/count, counts [[1, -1], [256, -32767]].
GOLDEN_DATA_HEX = (
    "a5 5a 01 01 07 00 05 00 20 00 9f 90 "
    "e8 03 00 00 00 00 00 00 ef be 02 00 40 0d 03 00 00 00 00 3f 01 02 01 00 "
    "01 00 ff ff 00 01 01 80 "
    "1e 87 f6 2b"
)
GOLDEN_START_HEX = "a5 5a 01 82 ff ff 03 00 00 00 ca 04 95 06 61 a2"
DESC = P.StreamDescriptor(200.0, 1, 2, 0.5)


def golden_packet() -> P.DataPacket:
    counts = np.array([[1, -1], [256, -32767]], dtype=np.int16)
    return P.DataPacket(seq=5, device_id=7, sample_index=1000, boot_id=0xBEEF, descriptor=DESC, counts=counts)


def make_stream(
    n_packets: int, spp: int = 4, n_bands: int = 1, cpb: int = 3, seed: int = 0, seq0: int = 0
) -> tuple[list[bytes], list[P.DataPacket]]:
    """n_packets consecutive DATA frames (and their packet objects) of random counts."""
    rng = np.random.default_rng(seed)
    desc = P.StreamDescriptor(250.0, n_bands, cpb, 0.5)
    pkts = [
        P.DataPacket(
            seq=(seq0 + i) % P.SEQ_MODULO,
            device_id=1,
            sample_index=i * spp,
            boot_id=42,
            descriptor=desc,
            counts=rng.integers(-32767, 32768, (spp, desc.n_channels)).astype(np.int16),
        )
        for i in range(n_packets)
    ]
    return [P.encode_packet(p) for p in pkts], pkts


# ---------------------------------------------------------------------------------------------------------------------
# CRCs and golden bytes


def test_crc_check_values():
    assert P.crc16_ccitt(b"123456789") == 0x29B1
    assert P.crc32(b"123456789") == 0xCBF43926
    assert P.crc32(b"") == 0 and P.crc16_ccitt(b"") == 0xFFFF


@given(st.binary(max_size=300))
def test_crc32_equals_zlib(data: bytes):
    assert P.crc32(data) == zlib.crc32(data)


def test_golden_data_frame_is_pinned():
    data = P.encode_packet(golden_packet())
    assert data == bytes.fromhex(GOLDEN_DATA_HEX)
    assert len(data) == P.data_packet_size(2, 2) == 48
    assert P.crc16_ccitt(data[:10]) == 0x909F and P.crc32(data[:-4]) == 0x2BF6871E
    assert P.decode_frame(data) == golden_packet()


def test_golden_command_frame_is_pinned():
    assert P.encode_command(P.PacketType.CMD_START, seq=3) == bytes.fromhex(GOLDEN_START_HEX)


# ---------------------------------------------------------------------------------------------------------------------
# Round trips

descriptors = st.builds(
    P.StreamDescriptor,
    sample_rate_hz=st.sampled_from([200.0, 1000.0, 2000.0, 123.456]),
    n_bands=st.integers(1, 2),
    channels_per_band=st.integers(1, 16),
    scale_uv_per_count=st.sampled_from([0.5, 0.25, 1.0, 0.1]),
)


@st.composite
def data_packets(draw: st.DrawFn) -> P.DataPacket:
    desc = draw(descriptors)
    n = draw(st.integers(1, 20))
    seed = draw(st.integers(0, 2**32 - 1))
    counts = np.random.default_rng(seed).integers(-32768, 32768, (n, desc.n_channels)).astype(np.int16)
    return P.DataPacket(
        seq=draw(st.integers(0, 0xFFFF)),
        device_id=draw(st.integers(0, 0xFFFF)),
        sample_index=draw(st.integers(0, 2**64 - 1 - n)),
        boot_id=draw(st.integers(0, 0xFFFF)),
        descriptor=desc,
        counts=counts,
        flags=draw(st.integers(0, 3)),
    )


u16 = st.integers(0, 0xFFFF)
other_packets = st.one_of(
    st.builds(
        P.InfoPacket,
        seq=u16,
        device_id=u16,
        profile_name=st.text(max_size=10),
        firmware_version=st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
        adc_bits=st.integers(8, 24),
        boot_id=u16,
        samples_per_packet=st.integers(1, 100),
        serial_baud=st.sampled_from([9600, 115_200, 3_000_000]),
        descriptor=descriptors,
    ),
    st.builds(
        P.AckPacket,
        seq=u16,
        device_id=u16,
        command=st.sampled_from(sorted(P.COMMAND_TYPES)),
        command_seq=u16,
        status=st.sampled_from(P.AckStatus),
        state=st.sampled_from(P.DeviceState),
        next_sample_index=st.integers(0, 2**64 - 1),
    ),
    st.builds(P.PongPacket, seq=u16, device_id=u16, nonce=st.integers(0, 2**32 - 1), uptime_us=st.integers(0, 2**63)),
    st.builds(
        P.StatusPacket,
        seq=u16,
        device_id=u16,
        state=st.sampled_from(P.DeviceState),
        reason=st.sampled_from(P.StatusReason),
        boot_id=u16,
        next_sample_index=st.integers(0, 2**64 - 1),
        overflow_packets=st.integers(0, 2**32 - 1),
        clipped_samples=st.integers(0, 2**32 - 1),
    ),
    st.builds(
        P.CommandPacket,
        seq=u16,
        device_id=u16,
        command=st.sampled_from(sorted(P.COMMAND_TYPES)),
        nonce=st.just(0),
    ),
    st.builds(
        P.CommandPacket, seq=u16, device_id=u16, command=st.just(P.PacketType.CMD_PING), nonce=st.integers(0, 2**32 - 1)
    ),
)


@given(st.lists(st.one_of(data_packets(), other_packets), min_size=1, max_size=6))
@settings(max_examples=150, deadline=None)
def test_round_trip_every_packet_type(pkts: list[P.Packet]):
    blob = b"".join(P.encode_packet(p) for p in pkts)
    dec = P.PacketDecoder()
    out = dec.feed(blob)
    assert out == pkts
    assert dec.stats.packets_ok == len(pkts) and dec.stats.bytes_framed == len(blob)
    assert dec.stats.bytes_skipped == 0 and dec.stats.resyncs == 0 and dec.pending == 0


def test_descriptor_normalised_to_wire_precision():
    d = P.StreamDescriptor(2000.00001, 2, 16, 0.1)
    assert d.sample_rate_hz == 2000.0 and d.scale_uv_per_count == float(np.float32(0.1))
    assert P.StreamDescriptor.from_profile(ARMBAND8) == P.StreamDescriptor(200.0, 2, 8, 0.5)


def test_samples_uv_uses_scale():
    pkt = golden_packet()
    np.testing.assert_array_equal(pkt.samples_uv(), np.array([[0.5, -0.5], [128.0, -16383.5]], dtype=np.float32))
    assert pkt.samples_uv().dtype == np.float32


def test_encoder_rejects_oversized_payload():
    desc = P.StreamDescriptor(2000.0, 2, 16, 1.0)
    with pytest.raises(AssertionError, match="MAX_PAYLOAD"):
        P.encode_data(0, 1, 0, 0, desc, np.zeros((100, 32), dtype=np.int16))


# ---------------------------------------------------------------------------------------------------------------------
# Decoder robustness


@given(st.lists(st.binary(max_size=64), max_size=20))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_raise(chunks: list[bytes]):
    dec = P.PacketDecoder()
    for c in chunks:
        assert isinstance(dec.feed(c), list)
    dec.flush()
    s = dec.stats
    assert s.bytes_in == sum(map(len, chunks)) == s.bytes_framed + s.bytes_skipped + dec.pending
    assert dec.pending == 0


@given(st.lists(st.binary(max_size=64), max_size=10), st.integers(0, 8))
@settings(max_examples=200, deadline=None)
def test_arbitrary_bytes_with_sync_and_header_never_raise(garbage: list[bytes], k: int):
    """Random bytes sprinkled with syncs and valid headers (payload garbage) exercise every failure branch."""
    frames, _ = make_stream(3)
    parts: list[bytes] = []
    for i, g in enumerate(garbage):
        parts.append(g)
        if i % 3 == 0:
            parts.append(P.SYNC)
        if i % 3 == 1:
            parts.append(frames[i % 3][: P.HEADER_SIZE + k])
    dec = P.PacketDecoder()
    dec.feed(b"".join(parts))
    dec.flush()
    assert dec.stats.bytes_in == dec.stats.bytes_framed + dec.stats.bytes_skipped


def test_decoder_with_zlib_crc_is_identical():
    frames, pkts = make_stream(20)
    blob = bytearray(b"".join(frames))
    blob[100] ^= 4
    ref, fast = P.PacketDecoder(), P.PacketDecoder(frame_crc=zlib.crc32)
    assert ref.feed(bytes(blob)) == fast.feed(bytes(blob)) == pkts[:1] + pkts[2:]
    assert ref.stats == fast.stats


@given(st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_chunking_does_not_change_the_result(data: st.DataObject):
    frames, _ = make_stream(6, seed=data.draw(st.integers(0, 1000)))
    damaged = bytearray(b"".join(frames))
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, len(damaged) - 1))
        damaged[pos] ^= 1 << data.draw(st.integers(0, 7))
    blob = bytes(damaged)
    whole = P.PacketDecoder()
    expect = whole.feed(blob) + whole.flush()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=12)))
    pieces = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)])]
    chunked = P.PacketDecoder()
    got = [p for piece in pieces for p in chunked.feed(piece)] + chunked.flush()
    assert got == expect
    assert chunked.stats == whole.stats


@st.composite
def corruptions(draw: st.DrawFn, n_bytes: int) -> list[tuple[str, int, bytes]]:
    """A few (kind, position, payload) edits: flip, drop, dup, insert garbage."""
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "drop", "dup", "garbage"]))
        pos = draw(st.integers(0, n_bytes - 1))
        extra = draw(st.binary(min_size=1, max_size=40)) if kind == "garbage" else bytes([1 << draw(st.integers(0, 7))])
        ops.append((kind, pos, extra))
    return ops


def apply_corruptions(frames: list[bytes], ops: list[tuple[str, int, bytes]]) -> tuple[bytes, set[int]]:
    """Apply edits at original byte positions; returns the bytes and the indices of frames they touch."""
    bounds = np.cumsum([0] + [len(f) for f in frames])
    blob = b"".join(frames)

    def frame_of(pos: int) -> int:
        return int(np.searchsorted(bounds, pos, side="right") - 1)

    touched: set[int] = set()
    per_pos: dict[int, list[tuple[str, bytes]]] = {}
    for kind, pos, extra in ops:
        per_pos.setdefault(pos, []).append((kind, extra))
        k = frame_of(pos)
        # An insertion exactly at a frame boundary leaves both neighbours intact.
        if not (kind == "garbage" and pos == bounds[k]):
            touched.add(k)
        if kind in ("drop", "dup"):
            # Dropping (or doubling) one byte of a run of equal bytes is the same edit for any byte of the run:
            # e.g. dropping a frame's last CRC byte when it equals the next frame's first (0xA5) really costs the
            # next frame. The edit touches every frame the run reaches.
            end = pos
            while end + 1 < len(blob) and blob[end + 1] == blob[pos]:
                end += 1
            touched.add(frame_of(end))
    out = bytearray()
    for i, b in enumerate(blob):
        byte: int | None = b
        for kind, extra in per_pos.get(i, []):
            if kind == "garbage":
                out += extra
            elif kind == "flip" and byte is not None:
                byte ^= extra[0]
            elif kind == "drop":
                byte = None
            elif kind == "dup" and byte is not None:
                out.append(byte)
        if byte is not None:
            out.append(byte)
    return bytes(out), touched


@given(st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_resync_recovers_every_untouched_packet(data: st.DataObject):
    frames, pkts = make_stream(10, seed=data.draw(st.integers(0, 10_000)))
    ops = data.draw(corruptions(sum(map(len, frames))))
    blob, touched = apply_corruptions(frames, ops)
    dec = P.PacketDecoder()
    step = data.draw(st.integers(1, 400))
    got = [p for i in range(0, len(blob), step) for p in dec.feed(blob[i : i + step])] + dec.flush()
    # Nothing fabricated: every packet out is one that went in (a duplicated whole frame may repeat one).
    assert all(g in pkts for g in got)
    # Every packet the corruption did not touch comes out, in order.
    want = [p for i, p in enumerate(pkts) if i not in touched]
    it = iter(got)
    assert all(any(w == g for g in it) for w in want), f"lost an untouched packet; touched={sorted(touched)}"
    assert dec.stats.bytes_in == dec.stats.bytes_framed + dec.stats.bytes_skipped


# ---------------------------------------------------------------------------------------------------------------------
# Exact counters for hand-made damage


def decode_all(blob: bytes) -> tuple[list[P.Packet], P.DecoderStats]:
    dec = P.PacketDecoder()
    out = dec.feed(blob) + dec.flush()
    return out, dec.stats


def test_corrupt_crc_of_one_packet():
    frames, pkts = make_stream(8, spp=4)
    k = 3
    bad = bytearray(frames[k])
    bad[-1] ^= 0xFF
    frames[k] = bytes(bad)
    out, s = decode_all(b"".join(frames))
    assert out == pkts[:k] + pkts[k + 1 :]
    assert (s.crc_errors, s.resyncs, s.packets_ok, s.length_errors, s.truncated) == (1, 1, 7, 0, 0)
    assert s.bytes_skipped == len(frames[k]) and s.seq_skipped == 1
    asm = P.SampleAssembler(expect_index=0)
    items = asm.push_many(out)
    gaps = [i for i in items if isinstance(i, P.Gap)]
    assert gaps == [P.Gap(start=k * 4, n_missing=4)]
    assert asm.stats.samples_missing == 4 and asm.stats.samples_out == 7 * 4


def test_corrupt_header_length_cannot_swallow_the_next_packets():
    frames, pkts = make_stream(6)
    bad = bytearray(frames[2])
    bad[8:10] = (4000).to_bytes(2, "little")  # a plausible but wrong length; header CRC now fails
    frames[2] = bytes(bad)
    out, s = decode_all(b"".join(frames))
    assert out == pkts[:2] + pkts[3:]
    assert s.crc_errors == 0 and s.header_errors >= 1 and s.resyncs == 1


def test_length_error_with_valid_header_crc():
    """A header that is self-consistent but impossible for its type (an ACK of 100 B) is rejected early."""
    frames, pkts = make_stream(3)
    bogus = P.frame(P.PacketType.ACK, 1, 0, b"\0" * 100)
    out, s = decode_all(frames[0] + bogus + frames[1] + frames[2])
    assert out == pkts
    assert s.length_errors == 1 and s.resyncs == 1 and s.bytes_skipped == len(bogus)


def test_dropped_byte_inside_payload():
    frames, pkts = make_stream(5)
    frames[1] = frames[1][:20] + frames[1][21:]
    out, s = decode_all(b"".join(frames))
    assert out == [pkts[0], *pkts[2:]]
    assert s.crc_errors == 1 and s.resyncs == 1 and s.bytes_skipped == len(frames[1])


def test_garbage_between_packets():
    frames, pkts = make_stream(4)
    garbage = bytes(range(7, 40))
    out, s = decode_all(frames[0] + frames[1] + garbage + frames[2] + frames[3])
    assert out == pkts
    assert s.bytes_skipped == len(garbage) and s.resyncs == 1 and s.crc_errors == 0


def test_leading_garbage_is_not_a_resync():
    frames, pkts = make_stream(2)
    out, s = decode_all(b"\x00\xa5\x01" + b"".join(frames))
    assert out == pkts and s.bytes_skipped == 3 and s.resyncs == 0


def test_truncated_tail_counted_at_flush():
    frames, pkts = make_stream(3)
    dec = P.PacketDecoder()
    out = dec.feed(b"".join(frames) + frames[0][:30])
    assert out == pkts and dec.pending == 30
    assert dec.flush() == [] and dec.stats.truncated == 1 and dec.pending == 0


def test_unknown_type_and_version_are_skipped_whole():
    frames, pkts = make_stream(2)
    unknown = P.frame(0x42, 1, 9, b"future payload")
    v2 = bytearray(P.frame(P.PacketType.DATA, 1, 9, b"x" * 10))
    v2[2] = 2
    v2[10:12] = P.crc16_ccitt(bytes(v2[:10])).to_bytes(2, "little")
    v2[-4:] = P.crc32(bytes(v2[:-4])).to_bytes(4, "little")
    out, s = decode_all(frames[0] + unknown + bytes(v2) + frames[1])
    assert out == pkts
    assert s.unknown_type == 1 and s.unsupported_version == 1 and s.resyncs == 0 and s.bytes_skipped == 0


def test_malformed_data_counted():
    desc_bytes = P._DATA.pack(0, 0, 5, 200_000, 0.5, 1, 2, 1, 0)  # says 5 samples, carries 1
    bad = P.frame(P.PacketType.DATA, 1, 0, desc_bytes + b"\0" * 4)
    out, s = decode_all(bad)
    assert out == [] and s.malformed == 1
    with pytest.raises(P.FrameError) as exc:
        P.decode_frame(bad)
    assert exc.value.code == "malformed" and isinstance(exc.value, ProtocolError)


def test_decode_frame_names_the_problem():
    good = P.encode_packet(golden_packet())
    cases = {
        "crc_errors": good[:-1] + bytes([good[-1] ^ 1]),
        "header_errors": good[:4] + bytes([good[4] ^ 1]) + good[5:],
        "truncated": good[:-1],
        "sync": b"\x00" + good[1:],
    }
    for code, blob in cases.items():
        with pytest.raises(P.FrameError) as exc:
            P.decode_frame(blob)
        assert exc.value.code == code


def test_sequence_wraps_without_counting_a_loss():
    frames, _ = make_stream(4, seq0=0xFFFE)
    _, s = decode_all(b"".join(frames))
    assert s.seq_skipped == 0 and s.seq_out_of_order == 0


# ---------------------------------------------------------------------------------------------------------------------
# Sample assembly


def test_gap_late_duplicate():
    _, pkts = make_stream(6, spp=4)
    asm = P.SampleAssembler()
    order = [0, 1, 3, 3, 2, 4, 1, 5]  # 2 missing then late; a duplicate of 3 and a stale duplicate of 1
    items = [it for i in order for it in asm.push(pkts[i])]
    kinds = [(type(it).__name__, it.start) for it in items]
    assert kinds == [
        ("SampleBlock", 0),
        ("SampleBlock", 4),
        ("Gap", 8),
        ("SampleBlock", 12),
        ("SampleBlock", 16),
        ("SampleBlock", 20),
    ]
    s = asm.stats
    assert (s.gaps, s.samples_missing, s.duplicates, s.late, s.packets_used) == (1, 4, 2, 1, 5)
    start, arr = P.items_to_array(items, 3)
    assert start == 0 and arr.shape == (24, 3)
    assert np.isnan(arr[8:12]).all() and not np.isnan(arr[:8]).any()
    np.testing.assert_array_equal(arr[12:16], pkts[3].samples_uv())


def test_lost_head_and_tail_reported_with_expect_index_and_close():
    _, pkts = make_stream(5, spp=4)
    asm = P.SampleAssembler(expect_index=0)
    items = asm.push_many(pkts[1:4]) + asm.close(20)
    assert [i for i in items if isinstance(i, P.Gap)] == [P.Gap(0, 4), P.Gap(16, 4)]


def test_restart_and_channel_change():
    _, pkts = make_stream(3, spp=4)
    asm = P.SampleAssembler()
    asm.push(pkts[2])
    rebooted = P.DataPacket(0, 1, 0, 43, pkts[0].descriptor, pkts[0].counts)
    items = asm.push(rebooted)
    assert isinstance(items[0], P.StreamRestart) and asm.stats.restarts == 1 and asm.next_index == 4
    with pytest.raises(ProtocolError):
        P.items_to_array(items, 3)
    wide = P.DataPacket(1, 1, 4, 43, P.StreamDescriptor(250.0, 1, 4, 0.5), np.zeros((4, 4), np.int16))
    with pytest.raises(ProtocolError, match="channels"):
        asm.push(wide)


# ---------------------------------------------------------------------------------------------------------------------
# Link budget (the numbers in docs/protocol.md)


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_every_profile_fits_its_baud(profile):
    b = P.link_budget(profile)
    assert b.fits and b.utilization < 0.8, f"{profile.name} uses {b.utilization:.0%} of its UART"


def test_link_budget_numbers_in_doc():
    a, e = P.link_budget(ARMBAND8), P.link_budget(EMG2QWERTY)
    assert (a.packet_bytes, a.packets_per_s, a.wire_bits_per_s) == (360, 20.0, 72_000.0)
    assert (e.packet_bytes, e.packets_per_s, e.wire_bits_per_s) == (1320, 100.0, 1_320_000.0)
    assert round(a.utilization, 3) == 0.625 and round(e.utilization, 3) == 0.44
