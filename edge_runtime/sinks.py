"""Where recognised text goes: stdout, JSON lines, a virtual keyboard; all behind one ``Sink`` interface.

The recognizer produces *results* (a segment's whole text so far); sinks mostly want *edits*. A
``TextEvent`` carries both: the segment's text and the edit from what the sink was shown last, as
``delete`` characters to erase from the end then ``insert`` to type -- a beam decoder may revise the
tail of a partial result, and a keyboard can only follow with backspaces.

Events:
- ``partial``: the segment's text changed (emitted only on change);
- ``final``: the segment ended (an endpoint, a long signal gap or the end of input); its text is final;
- ``status``: periodic counters (samples/s, dropped packets, latency percentiles), JSON-lines only; the last
  one (``"final": true``) is always written;
- ``gap`` / ``restart``: the source lost samples or restarted (``source_event``), JSON-lines only: where
  (``at``, a stream sample index, and ``stream_time_s``), how many samples (``n_missing``) and why (``reason``),
  so a consumer knows which stretch of the stream the text could not cover.

Sinks: ``StdoutSink`` (final lines on stdout; on a terminal also the live partial line),
``JsonlSink`` (one JSON object per event, flushed per line so a crash loses nothing),
``KeyboardSink`` (a Linux uinput virtual keyboard through ``evdev``, imported only when used), and
``MultiSink`` to fan out. ``close()`` flushes; it is safe to call twice.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from emgkey import charset
from emgkey.edge_runtime.recognizer import Result
from emgkey.edge_runtime.sources import GapEvent, SourceEvent
from emgkey.errors import EmgkeyError


class SinkError(EmgkeyError):
    """A sink cannot be opened (e.g. no permission on /dev/uinput, evdev missing)."""


@dataclass
class TextEvent:
    kind: str  # "partial" | "final"
    segment: int
    text: str  # what a reader sees (backspaces applied)
    raw: str  # keys as decoded, ⌫ included
    delete: int  # characters to erase from the end of what this segment showed before
    insert: str  # then characters to type
    stream_time_s: float  # the stream's sample clock when the event was made
    label_times_s: list[float] = field(default_factory=list)  # one per decoded key (raw), sample clock
    latency_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            "segment": self.segment,
            "text": self.text,
            "raw": self.raw,
            "delete": self.delete,
            "insert": self.insert,
            "stream_time_s": round(self.stream_time_s, 4),
            "label_times_s": [round(t, 4) for t in self.label_times_s],
            "latency_ms": {k: round(v, 3) for k, v in self.latency_ms.items()},
            "wall_time": round(time.time(), 4),
        }


def text_edit(before: str, after: str) -> tuple[int, str]:
    """(characters to delete from the end of ``before``, text to append) turning it into ``after``."""
    common = 0
    for a, b in zip(before, after):
        if a != b:
            break
        common += 1
    return len(before) - common, after[common:]


@dataclass
class TextTracker:
    """Turns successive ``Result``s into ``TextEvent``s (partials only when the text changed)."""

    shown: str = ""
    segment: int = -1

    def update(
        self,
        result: Result,
        stream_time_s: float,
        latency_ms: dict[str, float] | Callable[[], dict[str, float]] | None = None,
    ) -> TextEvent | None:
        """The event for ``result``, or None when there is nothing new to show. ``latency_ms`` may be a function,
        called only when an event is made: percentiles over the latency windows are too dear for every loop."""
        if result.segment != self.segment:
            self.segment, self.shown = result.segment, ""
        text = result.text
        if text == self.shown and (not result.is_final or not text):
            return None  # unchanged partial, or an empty segment ending (idle): nothing to say
        delete, insert = text_edit(self.shown, text)
        self.shown = text
        return TextEvent(
            kind="final" if result.is_final else "partial",
            segment=result.segment,
            text=text,
            raw=result.raw,
            delete=delete,
            insert=insert,
            stream_time_s=stream_time_s,
            label_times_s=list(result.timestamps),
            latency_ms=dict((latency_ms() if callable(latency_ms) else latency_ms) or {}),
        )


def source_event_dict(event: SourceEvent, sample_rate_hz: float) -> dict[str, Any]:
    """A gap or restart as a JSON object (``at`` is the stream sample index, as in ``stream_time_s``)."""
    d: dict[str, Any] = {"type": "gap" if isinstance(event, GapEvent) else "restart", "at": event.at}
    if isinstance(event, GapEvent):
        d["n_missing"] = event.n_missing
    d["reason"] = str(getattr(event.reason, "value", event.reason))
    d["stream_time_s"] = round(event.at / sample_rate_hz, 4)
    d["wall_time"] = round(time.time(), 4)
    return d


class Sink(Protocol):
    def emit(self, event: TextEvent) -> None: ...

    def status(self, counters: dict[str, Any]) -> None: ...

    def source_event(self, event: SourceEvent, sample_rate_hz: float) -> None: ...

    def close(self) -> None: ...


class StdoutSink:
    """Final texts, one line each (⏎ shown as a newline). On a terminal, the partial text on a live line."""

    def __init__(self, stream: IO[str] | None = None, live: bool | None = None) -> None:
        self.out = stream or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self._live_len = 0

    def _clear_live(self) -> None:
        if self._live_len:
            self.out.write("\r" + " " * self._live_len + "\r")
            self._live_len = 0

    def emit(self, event: TextEvent) -> None:
        if event.kind == "final":
            self._clear_live()
            if event.text:
                self.out.write(charset.to_display(event.text) + "\n")
            self.out.flush()
        elif self.live:
            line = event.text.replace(charset.ENTER, " ")[-200:]
            self._clear_live()
            self.out.write(line)
            self._live_len = len(line)
            self.out.flush()

    def status(self, counters: dict[str, Any]) -> None:
        pass

    def source_event(self, event: SourceEvent, sample_rate_hz: float) -> None:
        pass

    def close(self) -> None:
        self._clear_live()
        self.out.flush()


class JsonlSink:
    """One JSON object per line: text events and (every ``status_every_s``) status counters."""

    def __init__(self, path: str | Path | IO[str], status_every_s: float = 1.0) -> None:
        if isinstance(path, (str, Path)):
            self.out: IO[str] = open(path, "a", encoding="utf-8")
            self._owned = True
        else:
            self.out, self._owned = path, False
        self.status_every_s = status_every_s
        self._last_status = 0.0
        self._closed = False

    def _write(self, obj: dict[str, Any]) -> None:
        self.out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.out.flush()

    def emit(self, event: TextEvent) -> None:
        self._write(event.to_dict())

    def status(self, counters: dict[str, Any]) -> None:
        now = time.monotonic()
        if counters.get("final") or now - self._last_status >= self.status_every_s:  # the last one always
            self._last_status = now
            self._write({"type": "status", "wall_time": round(time.time(), 4), **counters})

    def source_event(self, event: SourceEvent, sample_rate_hz: float) -> None:
        self._write(source_event_dict(event, sample_rate_hz))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.out.flush()
        if self._owned:
            self.out.close()


# US-layout key for each typeable character: (evdev key name, needs shift).
def _us_keymap() -> dict[str, tuple[str, bool]]:
    km: dict[str, tuple[str, bool]] = {}
    for c in "abcdefghijklmnopqrstuvwxyz":
        km[c] = (f"KEY_{c.upper()}", False)
        km[c.upper()] = (f"KEY_{c.upper()}", True)
    for c in "0123456789":
        km[c] = (f"KEY_{c}", False)
    for c, name in zip(")!@#$%^&*(", "0123456789"):
        km[c] = (f"KEY_{name}", True)
    plain = {
        " ": "KEY_SPACE",
        "-": "KEY_MINUS",
        "=": "KEY_EQUAL",
        "[": "KEY_LEFTBRACE",
        "]": "KEY_RIGHTBRACE",
        "\\": "KEY_BACKSLASH",
        ";": "KEY_SEMICOLON",
        "'": "KEY_APOSTROPHE",
        "`": "KEY_GRAVE",
        ",": "KEY_COMMA",
        ".": "KEY_DOT",
        "/": "KEY_SLASH",
        charset.ENTER: "KEY_ENTER",
        "\n": "KEY_ENTER",
    }
    shifted = {
        "_": "KEY_MINUS",
        "+": "KEY_EQUAL",
        "{": "KEY_LEFTBRACE",
        "}": "KEY_RIGHTBRACE",
        "|": "KEY_BACKSLASH",
        ":": "KEY_SEMICOLON",
        '"': "KEY_APOSTROPHE",
        "~": "KEY_GRAVE",
        "<": "KEY_COMMA",
        ">": "KEY_DOT",
        "?": "KEY_SLASH",
    }
    km.update({c: (k, False) for c, k in plain.items()})
    km.update({c: (k, True) for c, k in shifted.items()})
    return km


US_KEYMAP = _us_keymap()


class KeyboardSink:
    """Types the text into whatever has focus, through a Linux uinput virtual keyboard (``evdev``).

    ``mode="final"`` types each segment once it is final; ``mode="partial"`` follows partial results
    as they change (fixing revisions with backspaces). Needs write access to ``/dev/uinput``. A
    ``device`` with ``write(type, code, value)`` and ``syn()`` can be passed instead (tests).
    """

    def __init__(
        self,
        mode: str = "final",
        device: Any = None,
        keymap: dict[str, tuple[str, bool]] | None = None,
        key_delay_s: float = 0.0,
    ) -> None:
        if mode not in ("final", "partial"):
            raise SinkError(f"keyboard mode must be final or partial, not {mode!r}")
        self.mode = mode
        self.keymap = keymap or US_KEYMAP
        self.key_delay_s = key_delay_s
        self.skipped: dict[str, int] = {}  # characters with no key on this layout
        try:
            from evdev import ecodes  # optional; Linux only
        except ImportError as exc:
            if device is None:
                raise SinkError("the keyboard sink needs the evdev package (pip install evdev), Linux only") from exc
            ecodes = None
        self._ecodes = ecodes
        if device is None:
            from evdev import UInput

            names = {k for k, _ in self.keymap.values()} | {"KEY_BACKSPACE", "KEY_LEFTSHIFT"}
            try:
                device = UInput({ecodes.EV_KEY: [ecodes.ecodes[n] for n in sorted(names)]}, name="emgkey-keyboard")
            except (OSError, PermissionError) as exc:
                raise SinkError(f"cannot create a uinput keyboard: {exc} (permission on /dev/uinput?)") from exc
        self.device = device
        self._typed_segment = -1
        self._closed = False

    def _code(self, name: str) -> Any:
        return self._ecodes.ecodes[name] if self._ecodes is not None else name

    def _ev_key(self) -> Any:
        return self._ecodes.EV_KEY if self._ecodes is not None else "EV_KEY"

    def _tap(self, name: str, shift: bool) -> None:
        ev = self._ev_key()
        if shift:
            self.device.write(ev, self._code("KEY_LEFTSHIFT"), 1)
        self.device.write(ev, self._code(name), 1)
        self.device.write(ev, self._code(name), 0)
        if shift:
            self.device.write(ev, self._code("KEY_LEFTSHIFT"), 0)
        self.device.syn()
        if self.key_delay_s:
            time.sleep(self.key_delay_s)

    def type_edit(self, delete: int, insert: str) -> None:
        for _ in range(delete):
            self._tap("KEY_BACKSPACE", False)
        for c in insert:
            key = self.keymap.get(c)
            if key is None:
                self.skipped[c] = self.skipped.get(c, 0) + 1
                continue
            self._tap(*key)

    def emit(self, event: TextEvent) -> None:
        if self.mode == "partial":
            self.type_edit(event.delete, event.insert)
            if event.kind == "final" and event.text:
                self.type_edit(0, " ")  # segments are separated like words
        elif event.kind == "final" and event.text:
            self.type_edit(0, event.text + " ")

    def status(self, counters: dict[str, Any]) -> None:
        pass

    def source_event(self, event: SourceEvent, sample_rate_hz: float) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self.device, "close", None)
        if close is not None:
            close()


class MultiSink:
    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    def emit(self, event: TextEvent) -> None:
        for s in self.sinks:
            s.emit(event)

    def status(self, counters: dict[str, Any]) -> None:
        for s in self.sinks:
            s.status(counters)

    def source_event(self, event: SourceEvent, sample_rate_hz: float) -> None:
        for s in self.sinks:
            s.source_event(event, sample_rate_hz)

    def close(self) -> None:
        # Close every sink even if one fails, then re-raise the first failure.
        first: BaseException | None = None
        for s in self.sinks:
            try:
                s.close()
            except (OSError, EmgkeyError) as exc:
                first = first or exc
        if first is not None:
            raise first
