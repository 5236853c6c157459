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

import hashlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugins.api import PluginManager
from xenwb import __version__
from xenwb.commands import register_core_commands
from xenwb.consoletail import ConsoleTail
from xenwb.control import Controller, DebugError, StopEvent, StopKind
from xenwb.debug_commands import register_debugger_commands
from xenwb.errors import XenwbError
from xenwb.examples import DEFAULT_EXAMPLE, resolve_guest
from xenwb.machine import Machine, RunResult, StopReason
from xenwb.registry import Result
from xenwb.timetravel import DEFAULT_MEMORY, Checkpoint, TimeTravel
from xenwb.trace_events import Record, kind_of
from xenwb.tracefile import TraceWriter, open_writer

ALL_PLUGINS = ("all",)          # every plugin of the entry-point group xenwb.plugins, third-party ones too
DEFAULT_HISTORY = 100_000       # records each plugin keeps (older ones are dropped; a trace file keeps all)


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
                 console: Any = None, hv_console: Any = None, event_filter: Any = None,
                 symbols: str | Path | None = None,
                 history: int = DEFAULT_HISTORY, time_travel: bool = True,
                 checkpoint_every_ns: int | None = None, checkpoint_memory: int = DEFAULT_MEMORY) -> None:
        self.machine = Machine(resolve_guest(str(guest) if guest is not None else None), memory_mib=memory_mib,
                               cmdline=cmdline, module=module, vcpus=vcpus, symbols=symbols)
        self.guest = str(guest) if guest is not None else DEFAULT_EXAMPLE
        self.options: dict[str, Any] = {"memory_mib": memory_mib, "vcpus": vcpus, "cmdline": cmdline,
                                        "module": hashlib.sha256(module).hexdigest() if module else None,
                                        "symbols": str(symbols) if symbols is not None else None}
        # the guest's console output (its PV console ring; console_io lines too unless hv_console
        # keeps the hypervisor console apart) and the hypervisor console's, each with its callback;
        # the last of each is kept (all of it goes to the callbacks)
        self.console = ConsoleTail()
        self.hv_console = ConsoleTail()
        self._console_cb = console
        self._hv_console_cb = hv_console
        self._console_shown = 0         # console bytes given to the callback (re-executed ones are not again)
        self._hv_console_shown = 0
        self.machine.domain.console_sink = self._on_console
        if hv_console is not None:
            self.machine.domain.hv_console_sink = self._on_hv_console
        self.plugins = PluginManager(self.machine, history=history)
        for p in plugins:
            if p == "all":
                self.plugins.enable_all()
            else:
                self.plugins.enable(p)
        self.filter = event_filter
        self._queue: deque[Record] = deque()
        self._listening = False
        self._event_budget: int | None = None
        self._held: list[Record] = []      # events past an Events stop, delivered when the machine goes on
        self.machine.resume_hooks.append(self._release_held)
        self._subscribed = False
        self._targets: list[Any] = []              # what this session subscribed to the bus
        self.writers: list[TraceWriter] = []
        self.last: RunResult | None = None
        # the one controller every front end drives (gdb stub, shell, CLI, this API)
        register_core_commands(self.machine.commands)
        self.controller = Controller(self.machine)
        # time travel: history from the first instruction (time_travel=True), or from the first checkpoint
        self.timetravel = TimeTravel(self.controller, every_ns=checkpoint_every_ns, memory=checkpoint_memory,
                                     from_boot=time_travel or checkpoint_every_ns is not None)
        self.timetravel.add_participant("session", self)
        self.timetravel.add_participant("plugins", self.plugins)
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
                self.machine.stop_hooks.remove(w.flush_pending)
            w.close()
        self.writers.clear()
        self._rewire()

    # plumbing ----------------------------------------------------------------------------
    @staticmethod
    def _show(buf: ConsoleTail, data: bytes, shown: int, cb: Any) -> int:
        """Append data to buf and give the callback what it was not given before (bytes shown
        before going back in time are not shown again); returns the new count shown."""
        start = len(buf)
        buf += data
        if cb is not None and len(buf) > shown:
            cb(data[max(0, shown - start):])
            return len(buf)
        return shown

    def _on_console(self, data: bytes) -> None:
        self._console_shown = self._show(self.console, data, self._console_shown, self._console_cb)

    def _on_hv_console(self, data: bytes) -> None:
        self._hv_console_shown = self._show(self.hv_console, data, self._hv_console_shown, self._hv_console_cb)

    # time travel: what the session keeps follows the machine back (participant protocol)
    def save_state(self) -> Any:
        return (len(self.console), {id(w): w.save_state() for w in self.writers}, list(self._held),
                len(self.hv_console))

    def load_state(self, state: Any) -> None:
        n, writers, held, n_hv = state if state is not None else (0, {}, [], 0)
        self.console.truncate(n)
        self.hv_console.truncate(n_hv)
        for w in self.writers:
            w.load_state(writers.get(id(w)))
        self._held = list(held)

    def _listen(self) -> None:
        """Subscribe to the trace once something here wants events (a trace file, events(),
        an Events stop): the machine observes more while anybody listens."""
        self._subscribed = True
        self._rewire()

    def _rewire(self) -> None:
        """Who receives the records: the writers themselves (their `add`: no Python frame per
        event) when nothing here must see each one (no filter, no Events stop counting, nothing
        held back, no events() reader), else _on_event. The new subscribers come first, so
        the kinds stay wanted throughout (no observer is switched off and on again)."""
        if not self._subscribed:
            return
        direct = self.filter is None and self._event_budget is None and not self._held and not self._listening
        want = [w.add for w in self.writers] if direct else [self._on_event]
        if want == self._targets:
            return
        bus = self.machine.domain.trace
        for fn in want:
            if fn not in self._targets:
                bus.subscribe_records(fn)
        for fn in self._targets:
            if fn not in want:
                bus.unsubscribe(fn)
        self._targets = want

    def _on_event(self, ev: Record) -> None:
        if self.filter is not None and not self.filter.match_record(ev, self.machine.domain.trace.formatter):
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

    def _deliver(self, ev: Record) -> None:
        for w in self.writers:
            w.add(ev)
        if self._listening:
            self._queue.append(ev)

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for ev in held:
            self._deliver(ev)
        self._rewire()

    def record(self, path: str, fmt: str | None = None, header: dict[str, Any] | None = None) -> TraceWriter:
        """Write every (filtered) event from now on to a JSONL or Perfetto file. Its first
        record says what the run is (the guest and its options, and `header`'s fields), so
        `xenwb replay` can run it again."""
        w = open_writer(path, fmt, self.machine.domain.trace.formatter)
        w.header({**self.describe(), **(header or {})})
        self.writers.append(w)
        self._listen()
        self._rewire()
        # flushed after every vcpu turn and at every stop: a killed run loses at most one turn's events
        self.machine.turn_hooks.append(w.flush_pending)
        self.machine.stop_hooks.append(w.flush_pending)
        return w

    def describe(self) -> dict[str, Any]:
        """The session's guest and options, as a trace header records them."""
        return {"xenwb": __version__, "guest": self.guest, "path": str(self.machine.image.path),
                "memory_mib": self.options["memory_mib"], "vcpus": self.options["vcpus"],
                "cmdline": self.options["cmdline"], "module": self.options["module"],
                **({"symbols": self.options["symbols"]} if self.options["symbols"] else {})}

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
                self._event_budget = max(1, until.count)
                self._listen()
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
            self._rewire()
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
        self._listening = True
        self._listen()
        as_dict = self.machine.domain.trace.formatter.as_dict
        try:
            while True:
                while self._queue:
                    ev = self._queue.popleft()
                    if kinds is None or kind_of(ev) in kinds:
                        yield as_dict(ev)
                if self.machine.domain.finished or (self.last is not None and self.last.reason in (
                        StopReason.hang, StopReason.crash, StopReason.shutdown)):
                    return
                self.run(until=Events(chunk))
                if self.last.reason is not StopReason.requested and not self._queue:
                    return
        finally:
            self._listening = False
            self._rewire()

    def command(self, line: str) -> Result:
        return self.machine.commands.run(self.machine, line)

    # time travel ---------------------------------------------------------------------------
    def checkpoint(self, name: str | None = None) -> Checkpoint:
        """A checkpoint of the machine now (the guest stopped); restore() goes back to it."""
        return self.timetravel.checkpoint(name)

    def checkpoints(self) -> list[Checkpoint]:
        return list(self.timetravel.checkpoints)

    def restore(self, cp: Checkpoint | str) -> StopEvent:
        """Back to a checkpoint (or its name): the machine, the trace files, the plugins'
        histories and the console text as they were then."""
        return self._time_op(lambda: self.timetravel.restore(cp.name if isinstance(cp, Checkpoint) else cp))

    def restart(self) -> StopEvent:
        """Back to the guest's first instruction, without building the machine again."""
        return self._time_op(self.timetravel.restart)

    def reverse_step(self, vcpu: int | None = None) -> StopEvent:
        """Undo one stepi of the vcpu (default: the one of the last stop)."""
        vid = self.controller.last_stop.vcpu if vcpu is None else vcpu
        return self._time_op(lambda: self.timetravel.reverse_step(vid or 0))

    def reverse_continue(self) -> StopEvent:
        """Back to the last breakpoint, watchpoint or catchpoint hit before now (or the start
        of the history)."""
        return self._time_op(self.timetravel.reverse_continue)

    def _time_op(self, op) -> StopEvent:
        try:
            ev = op()
        except DebugError as e:
            raise XenwbError(str(e)) from None
        self.controller.take_stop()
        for w in self.writers:
            w.flush()
        if ev.kind is StopKind.error:
            raise XenwbError(ev.detail)
        return ev
