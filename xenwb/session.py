"""The Python API: a session around one machine, for scripts.

    from xenwb.session import Session
    with Session("pvdemo-pae") as s:            # a path or a bundled example name
        s.run(until="start_kernel")              # a symbol, "shutdown", Events(n), Time(ns)
        print(s.command("pt walk start_kernel").text)
        for ev in s.events(kinds={"hypercall"}):  # runs the guest, yielding events live
            ...

The same command registry serves gdb's monitor and the TUI, so s.command(...) gives
what `monitor ...` gives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unicorn import UC_HOOK_CODE

from xenwb.commands import Result
from xenwb.errors import XenwbError
from xenwb.examples import resolve_guest
from xenwb.machine import Machine, RunResult, StopReason
from xenwb.tracefile import TraceWriter, open_writer

ALL_PLUGINS = ("hypercalls", "multicall", "evmask", "pagetable")


@dataclass(frozen=True)
class Events:
    """Stop after this many trace events (those passing the session's filter)."""

    count: int


@dataclass(frozen=True)
class Time:
    """Stop once virtual time reaches this many nanoseconds."""

    ns: int


@dataclass(frozen=True)
class Symbol:
    """Stop when any vcpu is about to execute this symbol (or address)."""

    name: str | int


Until = str | int | Events | Time | Symbol | None


class Session:
    def __init__(self, guest: str | Path | None = None, *, memory_mib: int = 64, vcpus: int = 1,
                 cmdline: str = "", module: bytes | None = None, plugins: tuple[str, ...] = ALL_PLUGINS,
                 console: Any = None, event_filter: Any = None) -> None:
        from plugins.api import PluginManager
        self.machine = Machine(resolve_guest(str(guest) if guest is not None else None), memory_mib=memory_mib,
                               cmdline=cmdline, module=module, vcpus=vcpus)
        self.console = bytearray()
        self._console_cb = console
        self.machine.domain.console_sink = self._on_console
        self.plugins = PluginManager(self.machine)
        for p in plugins:
            self.plugins.enable(p)
        self.filter = event_filter
        self._queue: deque[dict[str, Any]] = deque()
        self._listening = False
        self._event_budget: int | None = None
        self._held: list[dict[str, Any]] = []
        self.writers: list[TraceWriter] = []
        self.machine.domain.trace.subscribe(self._on_event)
        self.last: RunResult | None = None

    # context manager -------------------------------------------------------------------
    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        for w in self.writers:
            if w.flush_pending in self.machine.turn_hooks:
                self.machine.turn_hooks.remove(w.flush_pending)
            w.close()
        self.writers.clear()

    # plumbing ----------------------------------------------------------------------------
    def _on_console(self, data: bytes) -> None:
        self.console += data
        if self._console_cb is not None:
            self._console_cb(data)

    def _on_event(self, ev: dict[str, Any]) -> None:
        if self.filter is not None and not self.filter.match(ev):
            return
        if self._event_budget is not None and self._event_budget <= 0:
            # the machine stops at its next opportunity; events until then belong to the next run
            self._held.append(ev)
            return
        self._deliver(ev)
        if self._event_budget is not None:
            self._event_budget -= 1
            if self._event_budget <= 0:
                self.machine.stop()

    def _deliver(self, ev: dict[str, Any]) -> None:
        for w in self.writers:
            w.write(ev)
        if self._listening:
            self._queue.append(ev)

    def record(self, path: str, fmt: str | None = None) -> TraceWriter:
        """Write every (filtered) event from now on to a JSONL or Perfetto file."""
        w = open_writer(path, fmt)
        self.writers.append(w)
        # flushed after every vcpu turn: a killed run loses at most one turn's events
        self.machine.turn_hooks.append(w.flush_pending)
        return w

    @property
    def image(self):
        return self.machine.image

    @property
    def domain(self):
        return self.machine.domain

    # running -----------------------------------------------------------------------------
    def run(self, until: Until = "shutdown") -> RunResult:
        """Run until shutdown/crash/hang, or the given stop condition."""
        hooks: list[tuple[Any, int]] = []
        self._event_budget = None
        held, self._held = self._held, []
        for ev in held:
            self._on_event(ev)
        old_timeout = self.machine.timeout_ns
        try:
            if isinstance(until, Events):
                self._event_budget = until.count - len(held)
                if self._event_budget <= 0:
                    return self.last if self.last is not None else RunResult(StopReason.requested)
            elif isinstance(until, Time):       # the earlier of this and the machine's own limit
                self.machine.timeout_ns = until.ns if old_timeout is None else min(until.ns, old_timeout)
            elif isinstance(until, (Symbol, int)) or (isinstance(until, str) and until != "shutdown"):
                target = until.name if isinstance(until, Symbol) else until
                addr = self.address(target)
                for v in self.machine.vcpus:
                    h = v.cpu.uc.hook_add(UC_HOOK_CODE, self._at_symbol, None, addr, addr)
                    hooks.append((v.cpu.uc, h))
            self.last = self.machine.run()
        finally:
            for uc, h in hooks:
                uc.hook_del(h)
            self._event_budget = None
            self.machine.timeout_ns = old_timeout
            for w in self.writers:
                w.flush()
        return self.last

    def _at_symbol(self, uc, address, size, _ud) -> None:
        uc.emu_stop()
        self.machine.stop_requested = True

    def address(self, target: str | int) -> int:
        """A symbol's address (or a number in C syntax); XenwbError if there is no such symbol."""
        if isinstance(target, int):
            return target
        sym = self.machine.image.lookup(target)
        if sym is None:
            try:
                return int(target, 0)
            except ValueError:
                raise XenwbError(f"no symbol {target!r} in {self.machine.image.path}") from None
        return sym.address

    def events(self, kinds: set[str] | None = None, chunk: int = 256) -> Iterator[dict[str, Any]]:
        """Run the guest and yield its events as they happen, until it stops for good."""
        self._listening = True
        try:
            while True:
                while self._queue:
                    ev = self._queue.popleft()
                    if kinds is None or ev["kind"] in kinds:
                        yield ev
                if self.machine.domain.finished or (self.last is not None and self.last.reason in (
                        StopReason.hang, StopReason.crash, StopReason.shutdown)):
                    return
                self.run(until=Events(chunk))
                if self.last.reason is not StopReason.requested and not self._queue:
                    return
        finally:
            self._listening = False

    def command(self, line: str) -> Result:
        return self.machine.commands.run(self.machine, line)
