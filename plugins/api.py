"""The plugin API.

A plugin subscribes to typed trace events from the machine (xenwb/trace.py) and
registers commands in the machine's command registry (xenwb/commands.py), so each
command works the same from gdb's `monitor`, the TUI, the CLI and Python. Plugins
decode nothing themselves: decoded hypercall arguments arrive in the events, and
pagetable and event-channel state is read through the hypervisor's own code.

Third-party plugins register a Plugin subclass under the entry-point group
`xenwb.plugins`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from xenwb.registry import CommandError, Result, table

if TYPE_CHECKING:
    from xenwb.machine import Machine

ENTRY_POINT_GROUP = "xenwb.plugins"


class Plugin:
    """Base class. Subclasses set name/description and override what they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kinds: ClassVar[frozenset[str] | None] = None     # event kinds wanted (None: all)

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.enabled = False

    # lifecycle ------------------------------------------------------------------------
    def on_enable(self) -> None:
        """Called when enabled (install hooks here)."""

    def on_disable(self) -> None:
        """Called when disabled (remove hooks here)."""

    def on_event(self, ev: dict[str, Any]) -> None:
        """One trace event (only kinds in `kinds`)."""

    def commands(self) -> list[tuple[str, Callable[[Machine, list[str]], Result], str, str]]:
        """(name, handler, help, usage) for each command this plugin offers."""
        return []

    # plumbing ---------------------------------------------------------------------------
    def _dispatch(self, ev: dict[str, Any]) -> None:
        if self.kinds is None or ev["kind"] in self.kinds:
            self.on_event(ev)


class PluginManager:
    """Finds plugins (built-in and entry points), enables and disables them at run time."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.available: dict[str, type[Plugin]] = {}
        self.instances: dict[str, Plugin] = {}
        self.load_errors: list[str] = []
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
        reg = machine.commands
        reg.register("plugins", self._cmd_list, "list plugins and whether they are enabled")
        reg.register("plugin enable", self._cmd_enable, "enable a plugin", "NAME")
        reg.register("plugin disable", self._cmd_disable, "disable a plugin", "NAME")

    def get(self, name: str) -> Plugin:
        if name not in self.instances:
            if name not in self.available:
                raise CommandError(f"no plugin {name!r} (available: {', '.join(sorted(self.available))})")
            self.instances[name] = self.available[name](self.machine)
        return self.instances[name]

    def enable(self, name: str) -> Plugin:
        p = self.get(name)
        if not p.enabled:
            p.enabled = True
            p.on_enable()
            self.machine.domain.trace.subscribe(p._dispatch)
            for cname, handler, help_, usage in p.commands():
                self.machine.commands.register(cname, handler, help_, usage, plugin=p.name)
        return p

    def disable(self, name: str) -> None:
        p = self.get(name)
        if p.enabled:
            p.enabled = False
            self.machine.domain.trace.unsubscribe(p._dispatch)
            self.machine.commands.unregister_plugin(p.name)
            p.on_disable()

    def enable_all(self) -> None:
        for name in sorted(self.available):
            self.enable(name)

    def _cmd_list(self, m: Machine, args: list[str]) -> Result:
        rows = [{"plugin": n, "enabled": n in self.instances and self.instances[n].enabled,
                 "description": c.description} for n, c in sorted(self.available.items())]
        text = table(rows) + "".join(f"\n{e}" for e in self.load_errors)
        return Result({"plugins": rows, "load_errors": self.load_errors}, text)

    def _cmd_enable(self, m: Machine, args: list[str]) -> Result:
        if len(args) != 1:
            raise CommandError("usage: plugin enable NAME")
        self.enable(args[0])
        return Result({"enabled": args[0]}, f"{args[0]} enabled")

    def _cmd_disable(self, m: Machine, args: list[str]) -> Result:
        if len(args) != 1:
            raise CommandError("usage: plugin disable NAME")
        self.disable(args[0])
        return Result({"disabled": args[0]}, f"{args[0]} disabled")


class Options:
    """Tiny `--key value` / `--flag` parser for command arguments."""

    def __init__(self, args: list[str], flags: set[str], keys: set[str]) -> None:
        self.flags: set[str] = set()
        self.values: dict[str, str] = {}
        self.positional: list[str] = []
        it = iter(args)
        for a in it:
            if a.startswith("--"):
                k = a[2:]
                if k in flags:
                    self.flags.add(k)
                elif k in keys:
                    try:
                        self.values[k] = next(it)
                    except StopIteration:
                        raise CommandError(f"--{k} needs a value") from None
                else:
                    raise CommandError(f"unknown option {a}")
            else:
                self.positional.append(a)
