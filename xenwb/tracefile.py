"""Trace writers: JSONL and Perfetto/Chrome trace JSON.

Both write events in order, with deterministic serialisation (no host time, no
addresses of Python objects), so two captures of the same run are byte-identical.
Output is flushed at every machine stop and every FLUSH_EVERY events, and the files
stay valid when cut short: a JSONL file is valid line by line, and a Chrome trace
array without its closing bracket is accepted by ui.perfetto.dev and chrome://tracing.
A full disk or an unwritable path is a clear one-line error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from xenwb.errors import XenwbError

FLUSH_EVERY = 512


class TraceWriter:
    format = ""

    def __init__(self, fh: IO[str], path: str) -> None:
        self.fh = fh
        self.path = path
        self.count = 0
        self._pending = 0
        self.error: str | None = None

    @classmethod
    def open(cls, path: str) -> TraceWriter:
        try:
            fh = Path(path).open("w", encoding="utf-8", newline="\n")
        except OSError as e:
            raise XenwbError(f"{path}: cannot write trace: {e.strerror or e}") from None
        w = cls(fh, path)
        w.start()
        return w

    def start(self) -> None:
        pass

    def _put(self, text: str) -> None:
        try:
            self.fh.write(text)
            self._pending += 1
            if self._pending >= FLUSH_EVERY:
                self.flush()
        except OSError as e:
            raise XenwbError(f"{self.path}: trace write failed: {e.strerror or e}") from None

    def flush_pending(self) -> None:
        """Flush if anything was written since the last flush (cheap when nothing was)."""
        if self._pending:
            self.flush()

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as e:
            raise XenwbError(f"{self.path}: trace write failed: {e.strerror or e}") from None
        self._pending = 0

    def write(self, ev: dict[str, Any]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def close(self) -> None:
        if self.fh.closed:
            return
        try:
            self.finish()
            self.fh.flush()
            self.fh.close()
        except OSError as e:
            raise XenwbError(f"{self.path}: trace write failed: {e.strerror or e}") from None


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


class JsonlWriter(TraceWriter):
    """One event per line: seq, vcpu, time_ns, kind, name, then kind-specific fields."""

    format = "jsonl"

    def write(self, ev: dict[str, Any]) -> None:
        self._put(_dumps(ev) + "\n")
        self.count += 1


class PerfettoWriter(TraceWriter):
    """Chrome trace-event JSON (array form): a track per vcpu, hypercalls as complete
    slices, multicall entries nested inside their batch, faults/upcalls/events as
    instants, the upcall mask as a counter. Timestamps are virtual microseconds."""

    format = "perfetto"

    def start(self) -> None:
        self._put("[\n")
        self._first = True
        self._named: set[int] = set()
        self._open_mc: dict[int, dict[str, Any]] = {}
        self._emit({"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "xenwb domain"}})

    def _emit(self, obj: dict[str, Any]) -> None:
        self._put(("" if self._first else ",\n") + _dumps(obj))
        self._first = False

    def _track(self, vcpu: int | None) -> int:
        tid = (vcpu if vcpu is not None else -1) + 1
        if tid not in self._named:
            self._named.add(tid)
            name = f"vcpu{vcpu}" if vcpu is not None else "backends"
            self._emit({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": name}})
        return tid

    def write(self, ev: dict[str, Any]) -> None:
        self.count += 1
        tid = self._track(ev.get("vcpu"))
        ts = ev["time_ns"] / 1000.0
        kind = ev["kind"]
        if kind == "hypercall":
            args = {"ret": ev["ret"], "errno": ev.get("errno"), "caller": ev.get("symbol") or ev.get("eip"),
                    "args": ev.get("args"), "seq": ev["seq"]}
            self._emit({"name": ev["name"], "cat": "hypercall" if ev.get("multicall") is None else "multicall-entry",
                        "ph": "X", "ts": ts, "dur": max(ev.get("duration_ns", 0), 1) / 1000.0,
                        "pid": 1, "tid": tid, "args": args})
        elif kind == "multicall":
            return   # the batch is the multicall hypercall's own slice; its entries nest inside it
        elif kind == "mask":
            self._emit({"name": f"upcall_mask vcpu{ev['vcpu']}", "ph": "C", "ts": ts, "pid": 1,
                        "args": {"mask": ev["new"]}})
        else:
            fields = {k: v for k, v in ev.items() if k not in ("seq", "vcpu", "time_ns", "kind", "name")}
            self._emit({"name": f"{kind}:{ev['name']}", "cat": kind, "ph": "i", "s": "t", "ts": ts,
                        "pid": 1, "tid": tid, "args": fields})

    def finish(self) -> None:
        self.fh.write("\n]\n")


WRITERS: dict[str, type[TraceWriter]] = {"jsonl": JsonlWriter, "perfetto": PerfettoWriter}


def open_writer(path: str, fmt: str | None = None) -> TraceWriter:
    if fmt is None:
        fmt = "perfetto" if path.endswith((".json", ".perfetto", ".pftrace.json")) else "jsonl"
    if fmt not in WRITERS:
        raise XenwbError(f"unknown trace format {fmt!r} (jsonl or perfetto)")
    return WRITERS[fmt].open(path)
