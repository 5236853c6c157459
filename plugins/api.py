"""The plugin API.

A plugin subscribes to typed trace events from the machine (xenwb/trace.py, declared in
xenwb/trace_events.py) by kind, and registers commands in the machine's command registry
(xenwb/registry.py), so each command works the same from gdb's `monitor`, the TUI, the CLI
and Python. Plugins decode nothing themselves: decoded hypercall arguments arrive in the
events, and pagetable and event-channel state is read through the hypervisor's own code.

A plugin gets the compact records (`on_record`, cheap: keep them, derive what you show
when a command shows it, with `self.trace.formatter`) or, simpler and dearer, event dicts
(`on_event`). The kinds it lists in `deferred` it gets in batches (`on_records`), in order,
before anything reads it (a command, a checkpoint, get()), and at the end of each vcpu turn
while the machine runs on a thread of its own (the front ends read it live then): for a
plugin that only keeps them, nothing to do while the guest runs unobserved. It keeps at
most `self.history` records of each sort (`--history N`).

Each command is declared once (`command(name, handler, help, *arguments)`): its usage,
its help and its parser come from the declaration, and the handler receives the parsed
arguments.

Third-party plugins register a Plugin subclass under the entry-point group
`xenwb.plugins`.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import entry_points
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

from xenwb.registry import CommandError, Result, parse_int, table
from xenwb.trace_events import KINDS

if TYPE_CHECKING:
    from xenwb.machine import Machine
    from xenwb.trace import TraceBus

ENTRY_POINT_GROUP = "xenwb.plugins"
DEFAULT_HISTORY = 100_000
BACKLOG = 4096          # deferred records kept waiting at most (then delivered at a turn's end)
REQUIRED = object()


# -- declared command arguments --------------------------------------------------------------
@dataclass(frozen=True)
class Arg:
    """A positional argument (optional when it has a default)."""

    dest: str
    metavar: str
    help: str = ""
    type: Callable[[str], Any] = str
    default: Any = REQUIRED

    def usage(self) -> str:
        return self.metavar if self.default is REQUIRED else f"[{self.metavar}]"


@dataclass(frozen=True)
class Opt:
    """An option `--name VALUE`, or a flag `--name` when it has no metavar."""

    flag: str
    metavar: str | None = None
    help: str = ""
    type: Callable[[str], Any] = str
    default: Any = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")

    def usage(self) -> str:
        return f"[{self.flag}]" if self.metavar is None else f"[{self.flag} {self.metavar}]"


def _convert(a: Arg | Opt, text: str, label: str) -> Any:
    if a.type is int:
        return parse_int(text, label)
    try:
        return a.type(text)
    except ValueError as e:
        raise CommandError(f"{label}: {e}") from None


@dataclass(frozen=True)
class CommandSpec:
    """One command: name, handler(machine, parsed arguments), help, arguments."""

    name: str
    handler: Callable[[Machine, Any], Result]
    help: str
    args: tuple[Arg | Opt, ...] = field(default_factory=tuple)

    @property
    def usage(self) -> str:
        pos = [a.usage() for a in self.args if isinstance(a, Arg)]
        opts = [a.usage() for a in self.args if isinstance(a, Opt)]
        return " ".join(pos + opts)

    @property
    def details(self) -> str:
        """One line per argument, for `help COMMAND`."""
        lines = []
        for a in self.args:
            head = a.metavar if isinstance(a, Arg) else (a.flag + (f" {a.metavar}" if a.metavar else ""))
            dflt = getattr(a, "default", None)
            tail = f" (default {dflt})" if dflt not in (None, REQUIRED, False) else ""
            lines.append(f"{head:<18} {a.help}{tail}".rstrip())
        return "\n".join(lines)

    def parse(self, argv: Sequence[str]) -> SimpleNamespace:
        pos = [a for a in self.args if isinstance(a, Arg)]
        opts = {a.flag: a for a in self.args if isinstance(a, Opt)}
        out = {a.dest: (None if a.default is REQUIRED else a.default) for a in pos}
        out.update({o.dest: (False if o.metavar is None else o.default) for o in opts.values()})
        given: list[str] = []
        it = iter(argv)
        for word in it:
            if word.startswith("--") and word in opts:
                o = opts[word]
                if o.metavar is None:
                    out[o.dest] = True
                    continue
                value = next(it, None)
                if value is None:
                    raise CommandError(f"{word} needs a value (usage: {self.name} {self.usage})")
                out[o.dest] = _convert(o, value, word)
            elif word.startswith("--"):
                raise CommandError(f"unknown option {word} (usage: {self.name} {self.usage})")
            else:
                given.append(word)
        if len(given) > len(pos):
            raise CommandError(f"unexpected argument {given[len(pos)]!r} (usage: {self.name} {self.usage})")
        for a, text in zip(pos, given, strict=False):
            out[a.dest] = _convert(a, text, a.metavar)
        for a in pos[len(given):]:
            if a.default is REQUIRED:
                raise CommandError(f"usage: {self.name} {self.usage}")
        return SimpleNamespace(**out)

    def run(self, machine: Machine, argv: list[str]) -> Result:
        return self.handler(machine, self.parse(argv))


def command(name: str, handler: Callable[[Machine, Any], Result], help: str, *args: Arg | Opt) -> CommandSpec:
    return CommandSpec(name, handler, help, tuple(args))




class Plugin:
    """Base class. Subclasses set name/description and override what they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kinds: ClassVar[frozenset[str] | None] = None     # event kinds wanted (None: all; empty: none)
    # kinds whose records may arrive late, in order and before any record of another kind, in
    # batches: when they are read (get() returns the plugin, before a command, at a checkpoint),
    # at each vcpu turn's end while the machine runs on a thread other than the main one (a
    # front end reading it live), and whenever BACKLOG are waiting. For a plugin that keeps them
    # and reads nothing else meanwhile: a run nobody looks into costs it nothing until read.
    deferred: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.enabled = False
        self.history = DEFAULT_HISTORY

    @property
    def trace(self) -> TraceBus:
        return self.machine.domain.trace

    # lifecycle ------------------------------------------------------------------------
    def set_history(self, n: int) -> None:
        """Keep at most n records of each sort (called once, before the plugin is enabled)."""
        self.history = n

    def on_enable(self) -> None:
        """Called when enabled (install hooks here)."""

    def on_disable(self) -> None:
        """Called when disabled (remove hooks here)."""

    def on_record(self, rec: tuple[Any, ...]) -> None:
        """One trace record (only kinds in `kinds`): the compact form; override this or on_event."""

    def on_records(self, recs: Sequence[tuple[Any, ...]]) -> None:
        """Records in order, in one call: deferred records arrive this way. Override it too to
        take a batch in one go."""
        on_record = self.on_record
        for rec in recs:
            on_record(rec)

    def on_event(self, ev: dict[str, Any]) -> None:
        """One trace event as a dict (only kinds in `kinds`)."""

    def commands(self) -> list[CommandSpec | tuple[str, Callable[[Machine, list[str]], Result], str, str]]:
        """The commands this plugin offers: command(...) declarations (or, as before,
        (name, handler(machine, words), help, usage) tuples)."""
        return []

    def _wants_records(self) -> bool:
        return type(self).on_record is not Plugin.on_record

    # time travel ------------------------------------------------------------------------
    # A checkpoint saves the plugin's history and restoring it puts the history back, so it
    # matches the machine's (the events after it come again as the machine re-executes).
    # The default copies the instance's attributes: lists and deques of recorded events
    # shallowly (an event is not changed once recorded), everything else deeply. Override
    # both for state that does not fit.
    def save_state(self) -> Any:
        out: dict[str, Any] = {}
        for k, v in vars(self).items():
            if k in ("machine", "enabled"):
                continue
            if isinstance(v, deque):
                out[k] = deque(v, maxlen=v.maxlen)
            elif isinstance(v, list):
                out[k] = list(v)
            else:
                out[k] = copy.deepcopy(v)
        return out

    def load_state(self, state: Any) -> None:
        if state is None:                   # from before the plugin was enabled
            fresh = type(self)(self.machine)
            fresh.set_history(self.history)
            state = fresh.save_state()
        for k, v in state.items():
            if isinstance(v, deque):
                setattr(self, k, deque(v, maxlen=v.maxlen))
            elif isinstance(v, list):
                setattr(self, k, list(v))
            else:
                setattr(self, k, copy.deepcopy(v))


class PluginManager:
    """Finds plugins (built-in and entry points), enables and disables them at run time."""

    def __init__(self, machine: Machine, history: int = DEFAULT_HISTORY) -> None:
        self.machine = machine
        self.history = history
        self.available: dict[str, type[Plugin]] = {}
        self.instances: dict[str, Plugin] = {}
        self.load_errors: list[str] = []
        self._subscribers: dict[str, list[Callable[[Any], None]]] = {}
        self._waiting: dict[str, list[Any]] = {}     # plugin -> its deferred records not yet delivered
        machine.turn_hooks.append(self._deliver_at_turn_end)
        machine.commands.before_command.append(self.deliver_here)
        # built-in and third-party plugins alike come from the entry-point group
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                cls = ep.load()
            except Exception as e:  # a broken third-party plugin must not stop the workbench
                self.load_errors.append(f"plugin {ep.name!r} ({ep.value}) failed to load: {type(e).__name__}: {e}")
                continue
            if not (isinstance(cls, type) and issubclass(cls, Plugin) and cls.name):
                self.load_errors.append(f"plugin {ep.name!r} ({ep.value}) is not a plugins.api.Plugin subclass")
                continue
            self.available.setdefault(cls.name, cls)
        for spec in (command("plugins", self._cmd_list, "list plugins and whether they are enabled"),
                     command("plugin enable", self._cmd_enable, "enable a plugin", Arg("name", "NAME")),
                     command("plugin disable", self._cmd_disable, "disable a plugin", Arg("name", "NAME"))):
            register(machine, spec)

    def get(self, name: str) -> Plugin:
        """The plugin, with every record it is owed delivered (when this thread may)."""
        self.deliver_here()
        if name not in self.instances:
            if name not in self.available:
                raise CommandError(f"no plugin {name!r} (available: {', '.join(sorted(self.available))})")
            p = self.available[name](self.machine)
            p.set_history(self.history)
            self.instances[name] = p
        return self.instances[name]

    def command_names(self, p: Plugin) -> list[str]:
        return [c.name if isinstance(c, CommandSpec) else c[0] for c in p.commands()]

    def enable(self, name: str) -> Plugin:
        p = self.get(name)
        if not p.enabled:
            p.enabled = True
            p.on_enable()
            self._subscribe(p)
            for c in p.commands():
                register(self.machine, c, plugin=p.name)
        return p

    def _subscribe(self, p: Plugin) -> None:
        kinds = p.kinds
        if kinds is not None and not kinds:        # an empty set: no events at all
            return
        bus = self.machine.domain.trace
        if not p._wants_records():
            bus.subscribe(p.on_event, kinds)
            self._subscribers[p.name] = [p.on_event]
            return
        wanted = frozenset(KINDS) if kinds is None else kinds
        late, now = wanted & p.deferred, wanted - p.deferred
        fns: list[Callable[[Any], None]] = []
        if late:
            waiting = self._waiting[p.name] = []
            fns.append(waiting.append)
            bus.subscribe_records(waiting.append, late)
        if now:
            fn = p.on_record if not late else partial(self._deliver_then, p, waiting)
            fns.append(fn)
            bus.subscribe_records(fn, now)
        self._subscribers[p.name] = fns

    @staticmethod
    def _deliver_then(p: Plugin, waiting: list[Any], rec: Any) -> None:
        """A record of a kind not deferred: after the deferred ones before it."""
        if waiting:
            PluginManager._deliver_one(p, waiting)
        p.on_record(rec)

    @staticmethod
    def _deliver_one(p: Plugin, waiting: list[Any]) -> None:
        recs = waiting[:]
        waiting.clear()
        p.on_records(recs)

    def deliver(self, at_least: int = 1) -> None:
        """Hand each plugin the records kept waiting for it, where at least `at_least` wait
        (before a command, at a checkpoint, in get(); at a turn's end, see below)."""
        for name, waiting in self._waiting.items():
            if len(waiting) >= at_least:
                self._deliver_one(self.instances[name], waiting)

    def _deliver_at_turn_end(self) -> None:
        """A turn hook: live delivery for readers on other threads (the front ends run the
        machine on threads of their own, the main thread reads), else only a long backlog."""
        self.deliver(1 if threading.current_thread() is not threading.main_thread() else BACKLOG)

    def deliver_here(self) -> None:
        """deliver(), unless another thread is running the machine (then what a plugin shows
        is as of the last delivery)."""
        if not self.machine.running_elsewhere():
            self.deliver()

    def disable(self, name: str) -> None:
        p = self.get(name)
        if p.enabled:
            p.enabled = False
            for fn in self._subscribers.pop(name, ()):
                self.machine.domain.trace.unsubscribe(fn)
            self._waiting.pop(name, None)
            self.machine.commands.unregister_plugin(p.name)
            p.on_disable()

    def save_state(self) -> Any:
        """The enabled plugins' histories (time travel's participant protocol)."""
        self.deliver()
        return {n: p.save_state() for n, p in self.instances.items() if p.enabled}

    def load_state(self, state: Any) -> None:
        state = state or {}
        for waiting in self._waiting.values():      # records of a future being undone
            waiting.clear()
        for n, p in self.instances.items():
            if p.enabled:
                p.load_state(state.get(n))

    def enable_all(self) -> None:
        for name in sorted(self.available):
            self.enable(name)

    def _cmd_list(self, m: Machine, a: Any) -> Result:
        rows = [{"plugin": n, "enabled": n in self.instances and self.instances[n].enabled,
                 "description": c.description} for n, c in sorted(self.available.items())]
        text = table(rows) + "".join(f"\n{e}" for e in self.load_errors)
        return Result({"plugins": rows, "load_errors": self.load_errors}, text)

    def _cmd_enable(self, m: Machine, a: Any) -> Result:
        self.enable(a.name)
        return Result({"enabled": a.name}, f"{a.name} enabled")

    def _cmd_disable(self, m: Machine, a: Any) -> Result:
        self.disable(a.name)
        return Result({"disabled": a.name}, f"{a.name} disabled")


def register(machine: Machine, c: CommandSpec | tuple[str, Callable[[Machine, list[str]], Result], str, str],
             plugin: str | None = None) -> None:
    """Put a declared command (or a legacy (name, handler, help, usage) tuple) in the registry."""
    if isinstance(c, CommandSpec):
        machine.commands.register(c.name, c.run, c.help, c.usage, plugin=plugin, details=c.details, check=c.parse)
    else:
        name, handler, help_, usage = c
        machine.commands.register(name, handler, help_, usage, plugin=plugin)
