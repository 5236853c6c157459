"""The plugin API.

A plugin subscribes to typed trace events from the machine (xenwb/trace.py, declared in
xenwb/trace_events.py) by kind, and registers commands in the machine's command registry
(xenwb/registry.py), so each command works the same from gdb's `monitor`, the TUI, the CLI
and Python. Plugins decode nothing themselves: decoded hypercall arguments arrive in the
events, and pagetable and event-channel state is read through the hypervisor's own code.

A plugin gets the compact records (`on_record`, cheap: keep them, derive what you show
when a command shows it, with `self.trace.formatter`) or, simpler and dearer, event dicts
(`on_event`). It keeps at most `self.history` records of each sort (`--history N`).

Each command is declared once (`command(name, handler, help, *arguments)`): its usage,
its help and its parser come from the declaration, and the handler receives the parsed
arguments.

Third-party plugins register a Plugin subclass under the entry-point group
`xenwb.plugins`.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

from xenwb.registry import CommandError, Result, parse_int, table

if TYPE_CHECKING:
    from xenwb.machine import Machine
    from xenwb.trace import TraceBus

ENTRY_POINT_GROUP = "xenwb.plugins"
DEFAULT_HISTORY = 100_000
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
        self._subscribers: dict[str, Callable[[Any], None]] = {}
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
            kinds = p.kinds
            if kinds is None or kinds:             # an empty set: no events at all
                bus = self.machine.domain.trace
                if p._wants_records():
                    fn = p.on_record
                    bus.subscribe_records(fn, kinds)
                else:
                    fn = p.on_event
                    bus.subscribe(fn, kinds)
                self._subscribers[name] = fn
            for c in p.commands():
                register(self.machine, c, plugin=p.name)
        return p

    def disable(self, name: str) -> None:
        p = self.get(name)
        if p.enabled:
            p.enabled = False
            fn = self._subscribers.pop(name, None)
            if fn is not None:
                self.machine.domain.trace.unsubscribe(fn)
            self.machine.commands.unregister_plugin(p.name)
            p.on_disable()

    def save_state(self) -> Any:
        """The enabled plugins' histories (time travel's participant protocol)."""
        return {n: p.save_state() for n, p in self.instances.items() if p.enabled}

    def load_state(self, state: Any) -> None:
        state = state or {}
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
