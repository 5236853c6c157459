"""The command registry: one set of commands for gdb's `monitor`, the TUI, the CLI and Python.

A command has a name of one or more words ("info vcpus", "pt walk"), a usage and a
help line, and a handler that returns a Result: structured data for scripts plus a
text rendering for people. The machine holds the registry; the core commands
(commands.py), the debugger's (debug_commands.py) and the plugins' register into it.
"""

from __future__ import annotations

import json
import os
import shlex
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xenwb.machine import Machine


class CommandError(Exception):
    """A command was used wrongly: the message is shown to the user as is."""


class InternalCommandError(CommandError):
    """A command failed on a bug (its own or a plugin's), not on its use: one line naming the
    command; XENWB_DEBUG=1 prints the traceback on stderr."""


@dataclass
class Result:
    data: Any
    text: str

    def render(self, fmt: str = "text") -> str:
        if fmt == "json":
            return json.dumps(self.data, indent=2, default=str, sort_keys=False)
        return self.text


Handler = Callable[["Machine", list[str]], Result]
Checker = Callable[[list[str]], object]     # parses a command's arguments without running it


@dataclass
class Command:
    name: str
    handler: Handler
    help: str
    usage: str = ""
    plugin: str | None = None
    details: str = ""            # one line per argument, for `help COMMAND`
    check: Checker | None = None  # raises CommandError on arguments the handler would refuse

    @property
    def words(self) -> list[str]:
        return self.name.split()


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
          headers: dict[str, str] | None = None) -> str:
    """Render rows as an aligned text table."""
    if not rows:
        return "(none)"
    cols = list(columns or rows[0].keys())
    heads = [(headers or {}).get(c, c) for c in cols]
    cells = [[_cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(heads)]
    line = "  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()
    out = [line, "  ".join("-" * w for w in widths)]
    for row in cells:
        out.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(out)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple)):
        return ",".join(_cell(x) for x in v)
    return str(v)


def parse_int(text: str, what: str = "number") -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise CommandError(f"{what}: {text!r} is not a number (use 0x... for hex)") from None


@dataclass
class CommandRegistry:
    commands: dict[str, Command] = field(default_factory=dict)
    # called before every command runs (plugins take the trace records kept waiting for them)
    before_command: list[Callable[[], None]] = field(default_factory=list)

    def register(self, name: str, handler: Handler, help: str, usage: str = "",
                 plugin: str | None = None, details: str = "", check: Checker | None = None) -> Command:
        cmd = Command(" ".join(name.split()), handler, help, usage, plugin, details, check)
        self.commands[cmd.name] = cmd
        return cmd

    def unregister_plugin(self, plugin: str) -> None:
        for name in [n for n, c in self.commands.items() if c.plugin == plugin]:
            del self.commands[name]

    def names(self) -> list[str]:
        return sorted(self.commands)

    def lookup(self, words: Sequence[str]) -> tuple[Command, list[str]] | None:
        """Longest command name that prefixes the words; the rest are arguments."""
        for n in range(len(words), 0, -1):
            cmd = self.commands.get(" ".join(words[:n]))
            if cmd is not None:
                return cmd, list(words[n:])
        return None

    def run(self, machine: Machine, line: str) -> Result:
        try:
            words = shlex.split(line)
        except ValueError as e:
            raise CommandError(f"cannot parse {line!r}: {e}") from None
        if not words:
            raise CommandError("empty command; try 'help'")
        hit = self.lookup(words)
        if hit is None:
            raise CommandError(f"unknown command {' '.join(words[:2])!r}; try 'help'")
        cmd, args = hit
        for fn in self.before_command:
            fn()
        try:
            return cmd.handler(machine, args)
        except CommandError:
            raise
        except Exception as e:          # a bug, not a misuse: one line, the traceback on request
            if os.environ.get("XENWB_DEBUG"):
                traceback.print_exc()
            raise InternalCommandError(f"internal error in command {cmd.name!r}: {type(e).__name__}: {e}; "
                                       "XENWB_DEBUG=1 shows the traceback") from e

    def execute(self, machine: Machine, line: str, fmt: str = "text") -> tuple[bool, str]:
        """Run a line for a front end: (ok, rendered output or error message)."""
        try:
            return True, self.run(machine, line).render(fmt)
        except CommandError as e:
            return False, str(e)

    def complete(self, prefix: str) -> Iterable[str]:
        return (n for n in self.names() if n.startswith(prefix))


