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

from plugins.api import PluginManager
from xenwb.commands import register_core_commands
from xenwb.control import Controller, StopEvent, StopKind
from xenwb.debug_commands import register_debugger_commands
from xenwb.errors import XenwbError
from xenwb.examples import resolve_guest
from xenwb.machine import Machine, RunResult, StopReason
from xenwb.registry import Result
from xenwb.tracefile import TraceWriter, open_writer

ALL_PLUGINS = ("all",)          # every plugin of the entry-point group xenwb.plugins, third-party ones too


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
                 console: Any = None, event_filter: Any = None, symbols: str | Path | None = None) -> None:
        self.machine = Machine(resolve_guest(str(guest) if guest is not None else None), memory_mib=memory_mib,
                               cmdline=cmdline, module=module, vcpus=vcpus, symbols=symbols)
        self.console = bytearray()
        self._console_cb = console
        self.machine.domain.console_sink = self._on_console
        self.plugins = PluginManager(self.machine)
        for p in plugins:
            if p == "all":
                self.plugins.enable_all()
            else:
                self.plugins.enable(p)
        self.filter = event_filter
        self._queue: deque[dict[str, Any]] = deque()
        self._listening = False
        self._event_budget: int | None = None
        self._held: list[dict[str, Any]] = []      # events past an Events stop, delivered when the machine goes on
        self.machine.resume_hooks.append(self._release_held)
        self._subscribed = False
        self.writers: list[TraceWriter] = []
        self.last: RunResult | None = None
        # the one controller every front end drives (gdb stub, shell, CLI, this API)
        register_core_commands(self.machine.commands)
        self.controller = Controller(self.machine)
        self.debugger = register_debugger_commands(self.machine.commands, self.controller)

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

    def _listen(self) -> None:
        """Subscribe to the trace once something here wants events (a trace file, events(),
        an Events stop): the machine observes more while anybody listens."""
        if not self._subscribed:
            self._subscribed = True
            self.machine.domain.trace.subscribe(self._on_event)

    def _on_event(self, ev: dict[str, Any]) -> None:
        if self.filter is not None and not self.filter.match(ev):
            return
        if self._event_budget is not None:
            if self._event_budget <= 0:
                # the machine stops at its next opportunity (invisibly to the guest); what
                # happens until then is delivered as soon as it goes on, before anything new
                self._held.append(ev)
                return
            self._event_budget -= 1
            if self._event_budget == 0:
                self.machine.stop()
        self._deliver(ev)

    def _deliver(self, ev: dict[str, Any]) -> None:
        for w in self.writers:
            w.write(ev)
        if self._listening:
            self._queue.append(ev)

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for ev in held:
            self._deliver(ev)

    def record(self, path: str, fmt: str | None = None) -> TraceWriter:
        """Write every (filtered) event from now on to a JSONL or Perfetto file."""
        w = open_writer(path, fmt)
        self.writers.append(w)
        self._listen()
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
        """Run until shutdown/crash/hang, or the given stop condition. A stop condition
        stops the machine invisibly: run() again goes on as if it had not stopped."""
        ctl = self.controller
        self._event_budget = None
        old_timeout = self.machine.timeout_ns
        temporary: int | None = None
        try:
            if isinstance(until, Events):
                self._listen()
                self._event_budget = max(1, until.count)
            elif isinstance(until, Time):       # the earlier of this and the machine's own limit
                self.machine.timeout_ns = until.ns if old_timeout is None else min(until.ns, old_timeout)
            elif isinstance(until, (Symbol, int)) or (isinstance(until, str) and until != "shutdown"):
                target = until.name if isinstance(until, Symbol) else until
                addr = self.address(target)
                if addr not in ctl.breakpoints():
                    ctl.insert_breakpoint(addr)
                    temporary = addr
            self.last = self._result(ctl.run("continue"))
            if self.domain.finished:
                self._release_held()            # nothing runs any more: the rest of the story
        finally:
            if temporary is not None:
                ctl.remove_breakpoint(temporary)
            self._event_budget = None
            self.machine.timeout_ns = old_timeout
            for w in self.writers:
                w.flush()
        return self.last

    def _result(self, ev: StopEvent) -> RunResult:
        """The controller's stop as a run result."""
        k = ev.kind
        if k is StopKind.exited:
            return RunResult(StopReason.shutdown, ev.detail.removeprefix("shutdown (").removesuffix(")"))
        if k is StopKind.crashed:
            return RunResult(StopReason.crash, ev.detail)
        if k is StopKind.hang:
            return RunResult(StopReason.hang, ev.detail)
        if k is StopKind.limit:
            reason = StopReason.time_limit if "second" in ev.detail else StopReason.instruction_limit
            return RunResult(reason, ev.detail)
        if k is StopKind.error:
            raise XenwbError(f"workbench error while running: {ev.detail}")
        return RunResult(StopReason.requested, ev.describe(self.machine))

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
        self._listen()
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
