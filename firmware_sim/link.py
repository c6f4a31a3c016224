"""Transport for the simulated armband: a real pseudo-terminal, the thread that drives the firmware on it,
a thin pyserial host helper, and ``emgkey sim stream``.

Only bytes cross this module; framing lives in ``emgkey.protocol`` and device
behaviour in ``emgkey.firmware_sim.firmware``. The firmware writes the pty
master; a host (the edge runtime, a test, ``pyserial-miniterm``) opens the slave
path exactly as it would open ``/dev/ttyUSB0``.

Pacing: with ``realtime=True`` the runner acquires packets as the (drifting)
device clock fills them and writes bytes no faster than the profile's UART
(8N1, ``serial_baud / 10`` bytes/s), so a slow or stalled link backs up into
the firmware's bounded TX buffer and overflows it exactly like a device would.
With ``realtime=False`` it packetizes as fast as the host reads (back-pressure
through the pty), which is what tests use.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import termios
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from emgkey import protocol as P
from emgkey.errors import EmgkeyError
from emgkey.firmware_sim.faults import FaultInjector, FaultSpec
from emgkey.firmware_sim.firmware import ArmbandFirmware, ArraySource, FirmwareConfig, TxFrame

if TYPE_CHECKING:
    import argparse

    import serial

log = logging.getLogger(__name__)


class LinkError(EmgkeyError, OSError):
    """The pseudo-terminal or serial port failed."""


class LinkTimeoutError(EmgkeyError, TimeoutError):
    """The device did not answer in time."""


class PtyLink:
    """The device end of a pseudo-terminal. The host opens ``path`` (or ``symlink``, if given).

    The link keeps its own slave descriptor open for its whole life: the master then never sees EIO
    when a host closes and reopens the port, and ``host_unread`` can tell whether the host has read
    everything (so a clean shutdown does not cut off the last packets).
    """

    def __init__(self, symlink: str | Path | None = None) -> None:
        self.symlink = Path(symlink) if symlink is not None else None
        self.master_fd = -1
        self._slave_fd = -1
        self.path = ""

    def open(self) -> PtyLink:
        assert self.master_fd < 0, "PtyLink is already open"
        self.master_fd, self._slave_fd = os.openpty()
        # Raw mode on the slave: no echo (the device would read its own output as commands), no CR/LF
        # translation, no line buffering, no signals from ^C bytes in binary data.
        tty.setraw(self._slave_fd, termios.TCSANOW)
        os.set_blocking(self.master_fd, False)
        self.path = os.ttyname(self._slave_fd)
        if self.symlink is not None:
            with contextlib.suppress(FileNotFoundError):
                self.symlink.unlink()
            self.symlink.symlink_to(self.path)
        return self

    def host_unread(self) -> int:
        """Bytes written by the device that the host has not read yet."""
        buf = fcntl.ioctl(self._slave_fd, termios.TIOCINQ, b"\0\0\0\0")
        return int.from_bytes(buf, "little")

    def wait_host_drained(self, timeout_s: float, settle_s: float = 0.2, stop: threading.Event | None = None) -> bool:
        """Wait until the host has read everything (the queue stayed empty for ``settle_s``), so closing the
        master does not cut off the last packets. The kernel moves bytes from master to slave asynchronously,
        hence the settle time rather than a single look at the queue. Returns False on timeout."""
        deadline = time.monotonic() + timeout_s
        empty_since: float | None = None
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            now = time.monotonic()
            if self.host_unread():
                empty_since = None
            elif empty_since is None:
                empty_since = now
            elif now - empty_since >= settle_s:
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        if self.symlink is not None:
            with contextlib.suppress(FileNotFoundError):
                if self.symlink.is_symlink() and os.readlink(self.symlink) == self.path:
                    self.symlink.unlink()
        for fd in (self.master_fd, self._slave_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master_fd = self._slave_fd = -1

    def __enter__(self) -> PtyLink:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class LinkStats:
    frames_written: int = 0
    bytes_written: int = 0
    frames_lost_disconnected: int = 0
    stall_s: float = 0.0
    host_bytes_read: int = 0  # bytes the host wrote to the device
    # sample_index of every DATA frame the byte faults altered (only with record_damage=True; tests).
    damaged_indices: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "damaged_indices"}


class FirmwareRunner:
    """Drives an ``ArmbandFirmware`` over a file descriptor (the pty master) in a background thread."""

    def __init__(
        self,
        firmware: ArmbandFirmware,
        fd: int,
        *,
        realtime: bool = True,
        faults: FaultInjector | None = None,
        record_damage: bool = False,
        poll_s: float = 0.02,
    ) -> None:
        assert poll_s > 0, "poll_s must be positive"
        self.firmware = firmware
        self.fd = fd
        self.realtime = realtime
        self.faults = faults
        self.record_damage = record_damage
        self.poll_s = poll_s
        self.stats = LinkStats()
        self.done = threading.Event()  # the source ended and every frame has been written
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="armband-firmware", daemon=True)
        self._uart_bytes_per_s = firmware.profile.serial_baud / P.UART_BITS_PER_BYTE

    def start(self) -> FirmwareRunner:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end and wait; re-raises what killed it, if anything did."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise LinkError("firmware thread did not stop")
        if self.error is not None:
            raise LinkError(f"firmware thread failed: {self.error!r}") from self.error

    def __enter__(self) -> FirmwareRunner:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # surfaced by stop(); a dead device thread must not go unnoticed
            self.error = exc
            log.exception("firmware thread failed")
        finally:
            self.done.set()

    def _loop(self) -> None:
        fw, fd = self.firmware, self.fd
        rate = fw.profile.sample_rate_hz
        out = b""  # the frame being written
        out_pos = 0
        hold_until = 0.0  # no writing before this (UART busy or a stall)
        while not self._stop.is_set():
            now = time.monotonic()
            if fw.streaming:
                if self.realtime:
                    due = fw.packets_due(now)
                    if due:
                        fw.acquire(due)
                elif not out and fw.tx_empty:
                    fw.acquire(1)
            if not out:
                f = fw.pop_tx()
                if f is not None:
                    out, out_pos = self._prepare(f, rate), 0
                    if self.faults is not None:
                        pause = self.faults.stall_s()
                        if pause:
                            self.stats.stall_s += pause
                            hold_until = max(hold_until, now) + pause
            wrote = 0
            if out and now >= hold_until:
                chunk = out[out_pos:] if not self.realtime else out[out_pos : out_pos + 256]
                try:
                    n = os.write(fd, chunk)
                except BlockingIOError:
                    n = 0
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    n = 0  # no host has the port open and the link holds no slave: the bytes have nowhere to go
                wrote = n
                out_pos += n
                self.stats.bytes_written += n
                if self.realtime and n:
                    hold_until = max(hold_until, now) + n / self._uart_bytes_per_s
                if out_pos >= len(out):
                    out, out_pos = b"", 0
                    self.stats.frames_written += 1
            if fw.source_exhausted and fw.tx_empty and not out:
                self.done.set()
            # Wait for the next event: a command, a writable port, the UART or the ADC.
            want_write = bool(out) and now >= hold_until
            timeout = self.poll_s
            if out and not want_write:
                timeout = min(timeout, hold_until - now)
            elif not out and fw.streaming:
                timeout = min(timeout, fw.seconds_until_next_packet(now)) if self.realtime else 0.0
            if want_write and wrote:
                timeout = 0.0  # the port took bytes: try the rest at once
            readable, _, _ = select.select([fd], [fd] if want_write else [], [], max(0.0, timeout))
            if readable:
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    data = b""
                except OSError as exc:
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                self.stats.host_bytes_read += len(data)
                if data:
                    fw.receive(data)

    def _prepare(self, f: TxFrame, rate: float) -> bytes:
        """Apply link faults to one frame; returns b'' if the link is down for it."""
        if self.faults is None:
            return bytes(f.data)
        if f.sample_index is not None and self.faults.link_down(f.sample_index / rate):
            self.stats.frames_lost_disconnected += 1
            self.faults.stats.frames_lost_disconnected += 1
            return b""
        data = self.faults.corrupt(f.data)
        if self.record_damage and f.sample_index is not None and data != f.data:
            self.stats.damaged_indices.append(f.sample_index)
        return data


class SerialHost:
    """Host side of the link over pyserial: bytes in and out, framing by ``emgkey.protocol``.

    A thin helper for tests and tools; the edge runtime's serial source is built on the same decoder.
    """

    def __init__(self, port: str, baud: int = 115_200, read_timeout_s: float = 0.02) -> None:
        self.port = port
        self.baud = baud
        self.read_timeout_s = read_timeout_s
        self.decoder = P.PacketDecoder()
        self.backlog: deque[P.Packet] = deque()  # packets read while waiting for a reply
        self._seq = 0
        self._ser: serial.Serial | None = None

    def open(self) -> SerialHost:
        import serial  # the only module that needs pyserial

        try:
            self._ser = serial.Serial(self.port, baudrate=self.baud, timeout=self.read_timeout_s)
        except serial.SerialException as exc:
            raise LinkError(f"cannot open {self.port}: {exc}") from exc
        return self

    def close(self) -> None:
        if self._ser is not None:
            self._ser.close()
            self._ser = None

    def __enter__(self) -> SerialHost:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ser(self) -> serial.Serial:
        assert self._ser is not None, "SerialHost is not open"
        return self._ser

    def send(self, command: P.PacketType, nonce: int = 0) -> int:
        """Write one command; returns its sequence number (ACKs echo it)."""
        seq = self._seq
        self._seq = (self._seq + 1) % P.SEQ_MODULO
        self.ser.write(P.encode_command(command, seq, nonce=nonce))
        self.ser.flush()
        return seq

    def read_packets(self) -> list[P.Packet]:
        """Whatever has arrived (waits up to ``read_timeout_s`` for the first byte)."""
        packets = list(self.backlog)
        self.backlog.clear()
        data = self.ser.read(max(1, self.ser.in_waiting))
        if data:
            packets.extend(self.decoder.feed(data))
        return packets

    def request(self, command: P.PacketType, timeout_s: float = 1.0, retries: int = 2, nonce: int = 0) -> P.Packet:
        """Send a command and wait for its reply (ACK with the same seq, INFO, PONG or STATUS).

        Resends on timeout: on a noisy link a command or its reply can be lost. (A resent START that
        finds the device already streaming is answered INVALID_STATE; callers treat that as started.)
        """
        want: dict[P.PacketType, type] = {
            P.PacketType.CMD_INFO: P.InfoPacket,
            P.PacketType.CMD_PING: P.PongPacket,
            P.PacketType.CMD_STATUS: P.StatusPacket,
        }
        expected = want.get(command, P.AckPacket)

        def is_reply(pkt: P.Packet) -> bool:
            if isinstance(pkt, P.AckPacket):
                return pkt.command == command and pkt.command_seq == seq
            if isinstance(pkt, P.PongPacket):
                return pkt.nonce == nonce
            return isinstance(pkt, expected)

        for attempt in range(retries + 1):
            seq = self.send(command, nonce)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                data = self.ser.read(max(1, self.ser.in_waiting))
                if not data:
                    continue
                # Everything else that arrived stays in the backlog, in order, for read_packets().
                for pkt in self.decoder.feed(data):
                    self.backlog.append(pkt)
                for i, pkt in enumerate(self.backlog):
                    if is_reply(pkt):
                        del self.backlog[i]
                        return pkt
            log.debug("no reply to %s (attempt %d)", command.name, attempt + 1)
        raise LinkTimeoutError(f"no reply to {command.name} after {retries + 1} tries of {timeout_s} s")


# ---------------------------------------------------------------------------------------------------------------------
# emgkey sim stream


def run_stream_cli(args: argparse.Namespace) -> int:
    """Stream one simulated user's session on a pty until the recording ends or SIGINT/SIGTERM."""
    from emgkey.atomic import atomic_write_text
    from emgkey.firmware_sim.firmware import PacedSource, SampleSource
    from emgkey.firmware_sim.simulate import simulate_session
    from emgkey.profiles import get_profile

    profile = get_profile(args.profile)
    spec = FaultSpec.parse(args.faults or "", seed=args.seed)
    session = simulate_session(profile, user_id=args.user, session_idx=0, minutes=args.minutes, seed=args.seed)
    injector = FaultInjector(spec) if spec.active else None
    speed = getattr(args, "speed", None)
    source: SampleSource = ArraySource(session.emg)
    if speed is not None and not args.realtime:  # faster than life, but a host can keep up as it reads
        source = PacedSource(source, profile.sample_rate_hz, speed)
    firmware = ArmbandFirmware(
        profile,
        source,
        FirmwareConfig(clock_ppm=spec.drift_ppm, seed=args.seed),
        drop_hook=injector.drop_packet if injector is not None else None,
    )
    budget = P.link_budget(profile)
    log.info(
        "%s: %d samples, %.0f%% of %d baud, faults: %s",
        profile.name,
        session.emg.shape[0],
        100 * budget.utilization,
        profile.serial_baud,
        spec,
    )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with PtyLink() as link:
            print(link.path, flush=True)
            if args.link_file:
                atomic_write_text(args.link_file, link.path + "\n")
            runner = FirmwareRunner(firmware, link.master_fd, realtime=args.realtime, faults=injector)
            with runner:
                while not stop.is_set() and not runner.done.is_set():
                    stop.wait(0.1)
                if not stop.is_set():
                    link.wait_host_drained(timeout_s=5.0, stop=stop)
            if args.link_file:
                with contextlib.suppress(FileNotFoundError):
                    Path(args.link_file).unlink()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    log.info("firmware %s", firmware.stats.as_dict())
    log.info("link %s", runner.stats.as_dict())
    if injector is not None:
        log.info("faults %s", injector.stats.as_dict())
    return 0
