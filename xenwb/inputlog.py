"""Input from outside the guest, recorded where it entered: the same log gives the same run.

What does not come from the guest image is the only non-determinism a run has: bytes the
user types at the console (a terminal, a pipe, the shell's `console` command) and the
toolstack's writes to xenstore. The machine lets such input in only at its console pumps,
points between vcpu turns numbered from boot (Machine.pumps), so an input is placed exactly
by the number of the pump that took it. The log keeps every input with that number (and
the virtual time, for people); re-executing from a checkpoint, or a whole recorded session
(`xenwb replay`), enters the same inputs at the same pumps.

The log is history, not machine state: restoring a checkpoint moves its cursor back (seek);
the entries after it are the recorded future, replayed as the machine gets there. New input
while a future is recorded starts another timeline: the recorded future is dropped from
that pump on (the listener is told, so later checkpoints can be dropped too).
"""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

KINDS = ("console", "xenstore")


@dataclass(frozen=True)
class Input:
    """One input: console bytes, or a xenstore write (data = path NUL value)."""

    pump: int
    kind: str
    data: bytes
    time_ns: int = 0

    def event_fields(self) -> dict[str, object]:
        """The fields of its trace event (kind "input")."""
        if self.kind == "xenstore":
            path, _, value = self.data.partition(b"\0")
            return {"pump": self.pump, "path": path.decode("latin-1"), "value": value.decode("latin-1")}
        return {"pump": self.pump, "text": self.data.decode("latin-1")}

    @classmethod
    def from_event(cls, ev: dict[str, object]) -> Input:
        """The input a trace event of kind "input" records (ValueError if malformed)."""
        kind, pump = ev.get("name"), ev.get("pump")
        if kind not in KINDS or not isinstance(pump, int) or pump < 0:
            raise ValueError(f"not an input event: {ev!r}")
        if kind == "xenstore":
            data = f"{ev.get('path', '')}\0{ev.get('value', '')}".encode("latin-1")
        else:
            data = str(ev.get("text", "")).encode("latin-1")
        t = ev.get("time_ns")
        return cls(pump, str(kind), data, t if isinstance(t, int) else 0)


class InputLog:
    """Every input of a run in pump order, a cursor at the machine's present, and an inbox
    for what front ends submit from other threads."""

    def __init__(self) -> None:
        self.entries: list[Input] = []
        self.cursor = 0                 # entries[cursor:] are the recorded future
        self._pumps: list[int] = []     # entries' pump numbers, for seek
        self._inbox: deque[tuple[str, bytes]] = deque()
        self._lock = threading.Lock()
        self.replay_only = False        # re-executing history: take no new input
        self.on_new_input: Callable[[int], None] | None = None   # told the pump of each new input

    # -- front ends ------------------------------------------------------------------------
    def submit(self, kind: str, data: bytes) -> None:
        """Input for the guest from any thread; it enters at the next pump."""
        if kind not in KINDS:
            raise ValueError(f"input kind {kind!r}")
        with self._lock:
            self._inbox.append((kind, data))

    def take_inbox(self) -> list[tuple[str, bytes]]:
        if self.replay_only or not self._inbox:
            return []
        with self._lock:
            out = list(self._inbox)
            self._inbox.clear()
        return out

    # -- the recorded future ---------------------------------------------------------------
    def load(self, entries: list[Input]) -> None:
        """A recorded session's inputs, all in the future (`xenwb replay`)."""
        self.entries = sorted(entries, key=lambda e: e.pump)
        self._pumps = [e.pump for e in self.entries]
        self.cursor = 0

    def seek(self, pump: int) -> None:
        """The machine is back at `pump` (a restored checkpoint): what came later is future."""
        self.cursor = bisect.bisect_right(self._pumps, pump)

    @property
    def has_future(self) -> bool:
        return self.cursor < len(self.entries)

    def due(self, pump: int) -> list[Input]:
        """The recorded inputs of this pump (the cursor moves past them)."""
        out = []
        while self.cursor < len(self.entries) and self.entries[self.cursor].pump <= pump:
            out.append(self.entries[self.cursor])
            self.cursor += 1
        return out

    def record(self, pump: int, kind: str, data: bytes, time_ns: int) -> Input:
        """New input at this pump: any recorded future is another timeline, dropped."""
        if self.cursor < len(self.entries):
            del self.entries[self.cursor:]
            del self._pumps[self.cursor:]
        e = Input(pump, kind, data, time_ns)
        self.entries.append(e)
        self._pumps.append(pump)
        self.cursor = len(self.entries)
        if self.on_new_input is not None:
            self.on_new_input(pump)
        return e
