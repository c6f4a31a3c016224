"""``serial://PORT``: the armband over a serial port, protocol v1 (``docs/protocol.md``).

    serial:///dev/ttyUSB0?profile=armband8
    serial:///dev/serial/by-id/usb-emgkey-armband?baud=115200&reconnect=1&backoff_max_s=2

Three layers, kept apart as BrainFlow keeps them:

- **transport** (``SerialTransport``): bytes in and out, nothing else. ``PySerialTransport``
  wraps pyserial and turns every port failure into ``TransportError``; tests plug in
  fakes. A vanished port (USB unplugged, pty closed) is a ``TransportError`` like any other.
- **framing** (``emgkey.protocol``): the pure ``PacketDecoder`` (resyncs after corruption,
  counts CRC failures and skipped bytes) and ``SampleAssembler`` (sample index -> exact gaps,
  boot id -> restarts).
- **this source**: the INFO / START handshake, a reader thread that feeds the buffer,
  and reconnection.

Handshake: CMD_INFO -> INFO (profile name and stream descriptor, checked against
``profile=``, or used to pick the profile when none is given); for a new stream
CMD_STATUS -> STATUS (an idle device's ``next_sample_index`` is where the stream
will start); CMD_START -> ACK. The start index seeds the assembler, so even a
lost first packet is a gap. Commands are resent on timeout; a START answered
INVALID_STATE means the device is already streaming (our first ACK was lost, or
a previous host left it running): fine. Asking STATUS first matters on a noisy
link: the ACK to a resent START carries the index of "now", not of the start.

Reconnect: when the port fails (read/write error, or it cannot be opened), the
reader thread closes it and tries again with exponential backoff
(``backoff_s`` doubling up to ``backoff_max_s``; ``max_attempts`` or forever),
re-running the handshake each time. The assembler survives the reconnect: if the
device kept its boot id, the samples lost meanwhile come out as one exact
``GapEvent(reason="link")``; if it rebooted, a ``RestartEvent``. A port that
stays open but goes silent for ``stall_s`` seconds while streaming gets the
handshake again on the same port (a device that rebooted behind a USB adapter
is idle and must be restarted); no answer means reconnect.

End of stream: an END_OF_SOURCE STATUS (the simulated device ran out of
samples) reports a lost tail as a gap and ends the source.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import zlib
from typing import Protocol

from emgkey import protocol as P
from emgkey.edge_runtime.sources import (
    BufferConfig,
    GapReason,
    Source,
    SourceError,
    SourceStats,
    SourceURL,
    UrlParams,
    parse_bool,
)
from emgkey.errors import EmgkeyError
from emgkey.profiles import DeviceProfile, get_profile

log = logging.getLogger(__name__)


class TransportError(EmgkeyError, OSError):
    """The port cannot be opened, read or written (gone, busy, hung up)."""


class SerialTransport(Protocol):
    """Bytes over a port. Every failure is a ``TransportError``; ``read`` returns b'' on timeout."""

    def open(self) -> None: ...

    def close(self) -> None: ...

    def read(self, max_bytes: int) -> bytes: ...

    def write(self, data: bytes) -> None: ...


class PySerialTransport:
    """pyserial, thin. ``read`` waits up to ``read_timeout_s`` for the first byte, then takes what is there."""

    def __init__(self, port: str, baud: int = 115_200, read_timeout_s: float = 0.02) -> None:
        self.port = port
        self.baud = baud
        self.read_timeout_s = read_timeout_s
        self._ser = None

    def open(self) -> None:
        import serial  # pyserial: the only module here that needs it

        assert self._ser is None, "transport already open"
        try:
            # exclusive: a second process on the same armband would steal half the bytes of every frame.
            self._ser = serial.Serial(self.port, baudrate=self.baud, timeout=self.read_timeout_s, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise TransportError(f"cannot open {self.port}: {exc}") from exc

    def close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            with contextlib.suppress(Exception):  # closing a port that already vanished may fail; it is gone
                ser.close()

    def read(self, max_bytes: int) -> bytes:
        import serial

        ser = self._ser
        if ser is None:
            raise TransportError(f"{self.port} is not open")
        try:
            data: bytes = ser.read(max(1, min(ser.in_waiting, max_bytes)))
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"read from {self.port} failed: {exc}") from exc
        return data

    def write(self, data: bytes) -> None:
        import serial

        ser = self._ser
        if ser is None:
            raise TransportError(f"{self.port} is not open")
        try:
            ser.write(data)
            ser.flush()
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"write to {self.port} failed: {exc}") from exc


class HandshakeError(SourceError):
    """The device did not answer a command (after retries) or refused it."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(source, problem, code="handshake")


class SerialSource(Source):
    scheme = "serial"

    def __init__(
        self,
        port: str,
        profile: DeviceProfile | None = None,
        *,
        baud: int | None = None,
        buffer: BufferConfig | None = None,
        reconnect: bool = True,
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
        max_attempts: int | None = None,
        stall_s: float = 2.0,
        command_timeout_s: float = 0.5,
        command_retries: int = 3,
        read_timeout_s: float = 0.02,
        transport: SerialTransport | None = None,
    ) -> None:
        assert backoff_s > 0 and backoff_max_s >= backoff_s, "backoff must be positive and backoff_max_s >= backoff_s"
        assert stall_s > 0 and command_timeout_s > 0 and command_retries >= 0, "timeouts must be positive"
        super().__init__(f"serial://{port}", profile, buffer)
        self.port = port
        self.baud = baud or (profile.serial_baud if profile is not None else 115_200)
        self.reconnect = reconnect
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_attempts = max_attempts
        self.stall_s = stall_s
        self.command_timeout_s = command_timeout_s
        self.command_retries = command_retries
        self.transport: SerialTransport = transport or PySerialTransport(port, self.baud, read_timeout_s)
        # zlib computes the protocol's CRC-32 bit for bit, ~8x faster than the reference table (docs/protocol.md).
        self.decoder = P.PacketDecoder(frame_crc=zlib.crc32)
        self.assembler = P.SampleAssembler()
        self.info: P.InfoPacket | None = None  # the device's last INFO
        self._seq = 0
        self._link_up = False
        self._backlog: list[P.Packet] = []  # packets that arrived while waiting for a reply
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_rx = 0.0
        self._stalls = 0
        self._eos = False  # END_OF_SOURCE seen
        self._data_boot: int | None = None  # boot id of the samples the assembler is following

    @classmethod
    def from_url(cls, url: SourceURL, profile: DeviceProfile | str | None = None) -> SerialSource:
        if not url.target:
            raise SourceError(url.url, "no port: serial:///dev/ttyUSB0?profile=armband8", code="config")
        p = UrlParams(url)
        prof = p.profile(profile)
        kw = dict(
            baud=p.get("baud", int, None),
            reconnect=p.get("reconnect", parse_bool, True),
            backoff_s=p.get("backoff_s", float, 0.05),
            backoff_max_s=p.get("backoff_max_s", float, 2.0),
            max_attempts=p.get("max_attempts", int, None),
            stall_s=p.get("stall_s", float, 2.0),
            command_timeout_s=p.get("command_timeout_s", float, 0.5),
            command_retries=p.get("command_retries", int, 3),
            buffer=p.buffer(cls.default_buffer),
        )
        p.finish()
        return cls(url.target, prof, **kw)

    # --- lifecycle hooks -------------------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.transport.open()
        except TransportError as exc:
            raise SourceError(self.name, str(exc), code="open") from exc
        self._link_up = True
        try:
            self._request_info()
        except BaseException:
            self._close_link()
            raise

    def _start_stream(self) -> None:
        if not self._eos:
            if not self._link_up:
                self._connect()  # a link lost while stopped: reconnect now (raises if the device is not there)
            self._request_start()
        self._flush_backlog()
        self._stop_evt.clear()
        self._last_rx = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"serial-source {self.port}", daemon=True)
        self._thread.start()

    def _stop_stream(self) -> None:
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(5.0)
            if self._thread.is_alive():
                raise SourceError(self.name, "reader thread did not stop", code="thread")
            self._thread = None
        if self._link_up and not self._eos:
            # Best effort: the device may be gone; samples that arrive meanwhile are still buffered.
            try:
                self._request(P.PacketType.CMD_STOP, retries=0)
            except (TransportError, HandshakeError) as exc:
                log.info("%s: STOP not acknowledged (%s)", self.name, exc)
            self._flush_backlog()

    def _release(self) -> None:
        self._close_link()

    def _update_stats(self, st: SourceStats) -> None:
        d, a = self.decoder.stats, self.assembler.stats
        st.bytes_in = d.bytes_in
        st.packets = d.packets_ok
        st.dropped_packets = d.seq_skipped
        st.crc_errors = d.crc_errors
        st.header_errors = d.header_errors
        st.bytes_skipped = d.bytes_skipped
        st.resyncs = d.resyncs
        st.device_overflows = a.device_overflows
        st.duplicates = a.duplicates
        st.late = a.late

    @property
    def stalls(self) -> int:
        """Times the port went silent for ``stall_s`` while streaming (and was re-handshaken)."""
        return self._stalls

    # --- handshake ---------------------------------------------------------------------------------------------------

    def _send(self, command: P.PacketType) -> int:
        seq = self._seq
        self._seq = (self._seq + 1) % P.SEQ_MODULO
        self.transport.write(P.encode_command(command, seq))
        return seq

    def _request(self, command: P.PacketType, retries: int | None = None) -> P.Packet:
        """Send ``command`` and wait for its reply; every other packet read meanwhile goes to the backlog, in order."""
        want: type = {P.PacketType.CMD_INFO: P.InfoPacket, P.PacketType.CMD_STATUS: P.StatusPacket}.get(
            command, P.AckPacket
        )
        tries = (self.command_retries if retries is None else retries) + 1
        for attempt in range(tries):
            seq = self._send(command)
            deadline = time.monotonic() + self.command_timeout_s
            decoded = 0
            while time.monotonic() < deadline:
                data = self.transport.read(4096)
                if not data:
                    continue
                self._last_rx = time.monotonic()
                reply: P.Packet | None = None
                packets = self.decoder.feed(data)
                decoded += len(packets)
                for pkt in packets:
                    if reply is None and isinstance(pkt, want):
                        if not isinstance(pkt, P.AckPacket) or (pkt.command == command and pkt.command_seq == seq):
                            reply = pkt
                            continue
                    self._backlog.append(pkt)
                if reply is not None:
                    return reply
            if decoded == 0 and self.decoder.pending:
                # Nothing decoded for a whole attempt: the reply may sit behind a truncated frame whose missing
                # bytes will never come (the device went quiet mid-frame). Give up on that frame so the bytes
                # behind it are searched. (A live stream decodes packets every few tens of ms, so this does
                # not cut a frame that is merely slow.)
                self._backlog += self.decoder.flush()
            log.debug("%s: no reply to %s (attempt %d of %d)", self.name, command.name, attempt + 1, tries)
        raise HandshakeError(self.name, f"no reply to {command.name} after {tries} tries of {self.command_timeout_s} s")

    def _request_info(self) -> P.InfoPacket:
        info = self._request(P.PacketType.CMD_INFO)
        assert isinstance(info, P.InfoPacket)
        d = info.descriptor
        if self._profile is None:
            try:
                prof = get_profile(info.profile_name)
            except ValueError:
                raise SourceError(
                    self.name,
                    f"device reports unknown profile {info.profile_name!r}; pass profile= explicitly",
                    code="profile",
                ) from None
        else:
            prof = self._profile
        if (d.n_bands, d.channels_per_band, d.sample_rate_hz) != (
            prof.n_bands,
            prof.channels_per_band,
            prof.sample_rate_hz,
        ):
            raise SourceError(
                self.name,
                f"device streams {d.n_bands}x{d.channels_per_band} channels at {d.sample_rate_hz:g} Hz "
                f"(profile {info.profile_name!r}), but profile {prof.name} is {prof.n_bands}x"
                f"{prof.channels_per_band} at {prof.sample_rate_hz:g} Hz",
                code="profile",
            )
        self._configure(prof)
        if self.assembler.n_channels is None:
            self.assembler.n_channels = d.n_channels
        previous, self.info = self.info, info
        if previous is not None and previous.boot_id != info.boot_id:
            log.warning("%s: device rebooted (boot id %04x -> %04x)", self.name, previous.boot_id, info.boot_id)
        return info

    def _request_start(self) -> None:
        """START (and, for a new stream, STATUS first): seeds the assembler with the index the stream starts at."""
        assert self.info is not None
        boot = self.info.boot_id
        new_stream = self._data_boot != boot  # first connection, or the device rebooted meanwhile
        expect: int | None = None
        if new_stream:
            # Ask where the stream will start *before* START: if START's ACK is lost, the resent START is
            # answered INVALID_STATE with the index of "now", and a lost first packet would go unnoticed.
            status = self._request(P.PacketType.CMD_STATUS)
            assert isinstance(status, P.StatusPacket)
            if status.state == P.DeviceState.IDLE:
                expect = status.next_sample_index
        ack = self._request(P.PacketType.CMD_START)
        assert isinstance(ack, P.AckPacket)
        if ack.status == P.AckStatus.EXHAUSTED:
            # The device ran out of samples (its END_OF_SOURCE STATUS was lost, or we came back too late):
            # report whatever tail we missed, up to the index it stopped at, and end.
            log.info("%s: device has no more samples", self.name)
            self._flush_backlog()
            for item in self.assembler.close(ack.next_sample_index):
                assert isinstance(item, P.Gap)
                self._push_gap(item.n_missing, GapReason.LINK)
            self._eos = True
            self._finish()
            return
        if ack.status == P.AckStatus.OK:
            expect = ack.next_sample_index
        elif not (ack.status == P.AckStatus.INVALID_STATE and ack.state == P.DeviceState.STREAMING):
            raise HandshakeError(self.name, f"device refused START: {ack.status.name}")
        # else: already streaming (our first START's ACK was lost, or a previous host left it running).
        if not new_stream:
            return
        if self._data_boot is not None:
            # The device rebooted while we were away: deliver what the old stream left, then say so.
            self._flush_backlog()
            if self._data_boot == boot:
                return  # the backlog already held the new boot's samples; the assembler reported the restart
            self._push_restart(f"device rebooted (boot id {boot:04x})")
        # Expect the stream's first index, so that even a lost first packet is a gap (None: learn it from DATA).
        self.assembler.reset(expect_index=expect, boot_id=boot)
        self._data_boot = boot

    # --- reader thread -----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop_evt.is_set() and not self._eos:
                if not self._link_up:
                    self._reconnect_with_backoff()
                    continue
                try:
                    data = self.transport.read(4096)
                    now = time.monotonic()
                    if data:
                        self._last_rx = now
                        self._handle(self.decoder.feed(data))
                    elif now - self._last_rx > self.stall_s:
                        self._on_stall()
                except (TransportError, HandshakeError) as exc:
                    self._on_link_lost(exc)
        except BaseException as exc:  # surfaced to the reader by the next read(); a dead thread must not go unnoticed
            log.error("%s: reader thread failed: %r", self.name, exc)
            self._fail(exc)

    def _on_link_lost(self, exc: BaseException) -> None:
        log.warning("%s: link lost (%s)", self.name, exc)
        self._close_link()
        if not self.reconnect:
            raise SourceError(self.name, f"link lost and reconnect=0: {exc}", code="disconnected") from exc

    def _on_stall(self) -> None:
        """Silence while streaming: ask again on the same port (INFO + START); no answer means reconnect."""
        self._stalls += 1
        log.warning("%s: no bytes for %.1f s, re-handshaking", self.name, self.stall_s)
        self._request_info()
        self._request_start()
        self._flush_backlog()
        self._last_rx = time.monotonic()

    def _close_link(self) -> None:
        self.transport.close()
        self._link_up = False
        # An incomplete frame at the cut cannot be completed by bytes from a new connection.
        for pkt in self.decoder.flush():
            self._backlog.append(pkt)
        self.decoder.reset()
        self._flush_backlog()

    def _connect(self) -> None:
        self.transport.open()
        self._link_up = True
        try:
            self._request_info()
        except BaseException:
            self._close_link()
            raise

    def _reconnect_with_backoff(self) -> None:
        delay = self.backoff_s
        attempts = 0
        while not self._stop_evt.is_set():
            try:
                self._connect()
                self._request_start()
                self._flush_backlog()
                self._last_rx = time.monotonic()
                with self._cond:
                    self._stats.reconnects += 1
                log.info("%s: reconnected after %d failed attempt(s)", self.name, attempts)
                return
            except (TransportError, HandshakeError) as exc:
                self._close_link()
                attempts += 1
                with self._cond:
                    self._stats.connect_failures += 1
                if self.max_attempts is not None and attempts >= self.max_attempts:
                    raise SourceError(
                        self.name, f"gave up reconnecting after {attempts} attempts: {exc}", code="disconnected"
                    ) from exc
                log.debug("%s: reconnect attempt %d failed (%s); retrying in %.2f s", self.name, attempts, exc, delay)
                self._stop_evt.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)

    # --- packets -> buffer -------------------------------------------------------------------------------------------

    def _flush_backlog(self) -> None:
        if self._backlog and self._profile is not None:
            pkts, self._backlog = self._backlog, []
            self._handle(pkts)

    def _handle(self, packets: list[P.Packet]) -> None:
        prof = self.profile
        shape = (prof.n_bands, prof.channels_per_band)
        for pkt in packets:
            if isinstance(pkt, P.DataPacket):
                items = self.assembler.push(pkt)
                self._data_boot = pkt.boot_id
                for i, item in enumerate(items):
                    if isinstance(item, P.SampleBlock):
                        self._push_samples(item.samples.reshape(item.samples.shape[0], *shape))  # (n, bands, C)
                    elif isinstance(item, P.Gap):
                        nxt = items[i + 1] if i + 1 < len(items) else None
                        device = isinstance(nxt, P.SampleBlock) and bool(nxt.flags & P.DataFlags.OVERFLOW_BEFORE)
                        self._push_gap(item.n_missing, GapReason.DEVICE_OVERFLOW if device else GapReason.LINK)
                    else:
                        self._push_restart(f"device rebooted (boot id {item.boot_id:04x})")
            elif isinstance(pkt, P.StatusPacket) and pkt.reason == P.StatusReason.END_OF_SOURCE:
                for item in self.assembler.close(pkt.next_sample_index):
                    assert isinstance(item, P.Gap)
                    self._push_gap(item.n_missing, GapReason.LINK)
                self._eos = True
                self._finish()
            else:
                log.debug("%s: ignoring %s", self.name, type(pkt).__name__)
