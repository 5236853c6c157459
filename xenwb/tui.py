"""`xenwb shell`: a full-screen terminal workbench (prompt_toolkit).

Panes: the guest console (a terminal emulator, pyte: colours, cursor movement, a bounded
scrollback; F2 sends what you type to the guest), a live tail of hypercalls coloured by
result, the selected vcpu's registers and event-mask state, disassembly around its PC
(AT&T, as gdb and the `disas` command print it), command output, the real gdb (`gdb CMD`)
and a status line with the stop reason. Every pane scrolls: the mouse wheel over it, or
PageUp/PageDown (Shift-Up/Down a line, Ctrl-Home/End its top/its end) for the active pane,
which F6 (or Ctrl-X o) cycles and F7 (or Ctrl-X 1) zooms to the whole screen.

The guest runs in the Controller's background thread (shared with the gdb stub), so the
screen stays responsive; every command goes through the same registry as gdb's `monitor`.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import pyte
from prompt_toolkit.application import Application
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import FormattedText, StyleAndTextTuples
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import ConditionalContainer, DynamicContainer, HSplit, Layout, VSplit, Window
from prompt_toolkit.layout.controls import FormattedTextControl, UIContent, UIControl
from prompt_toolkit.layout.dimension import Dimension as D
from prompt_toolkit.mouse_events import MouseButton, MouseEvent, MouseEventType
from prompt_toolkit.styles import Style
from prompt_toolkit.widgets import Frame, TextArea
from pyte.screens import Margins

from gdbstub.server import GdbServer, parse_address
from plugins.hypercalls import brief_args
from xenwb.consoletail import ConsoleTail
from xenwb.control import POSTMORTEM_KINDS, StopEvent, StopKind
from xenwb.disasm import disassemble
from xenwb.errors import XenwbError
from xenwb.hypervisor.vcpu64 import Vcpu64
from xenwb.registry import CommandError, Result

if TYPE_CHECKING:
    from xenwb.session import Session

STYLE = Style.from_dict({
    "ok": "#5faf5f", "fail": "#ff5f5f bold", "mc": "#d7af00", "dim": "#808080",
    "status": "reverse", "pc": "reverse bold", "prompt": "bold #5fafff", "active": "reverse bold",
    "console-mode": "bold #ffaf00",
})
TAIL = 400                       # hypercall tail entries kept
TAIL_KINDS = frozenset({"hypercall", "fault", "crash", "shutdown", "upcall"})   # what the tail pane shows
OUTPUT_LINES = 5000              # command output lines kept
GDB_LINES = 2000
CONSOLE_COLS, CONSOLE_ROWS, CONSOLE_SCROLLBACK = 80, 24, 2000
CONSOLE_CHUNK = 64 * 1024        # console bytes given to the terminal emulator per redraw
CONSOLE_BACKLOG = 256 * 1024     # further behind than this (a flood), older output is skipped
DISAS_BEFORE, DISAS_AFTER = 16, 48
WHEEL_ROWS = 3
INTRO = ("xenwb shell: 'help' lists commands, 'keys' the keys. F2 guest console input, F6 next pane, "
         "F7 zoom, PgUp/PgDn scroll, Ctrl-C stops the guest, 'quit' leaves.")
KEYS = """\
F2                  command line <-> guest console input
F6, Ctrl-X o        make the next pane active (its title is highlighted; a click does it too)
F7, Ctrl-X 1        zoom the active pane to the whole screen, and back
PageUp, PageDown    scroll the active pane by a page (the mouse wheel scrolls the pane under it)
Shift-Up, -Down     scroll the active pane by a line
Ctrl-Home, Ctrl-End the active pane's top; back to its end (or, disassembly, to the pc)
Ctrl-C              stop a running guest (else clear the command line)
Ctrl-Q              quit"""

Line = StyleAndTextTuples                  # one line of styled text
Pos = tuple[int, int]                      # (line index, row of that line once wrapped)


# -- scrolling panes ------------------------------------------------------------------------------
class LineLog:
    """A bounded log of text lines, indexed from the first line ever appended, so an index
    keeps naming the same line while old ones drop off."""

    def __init__(self, maxlen: int) -> None:
        self.lines: deque[str] = deque(maxlen=maxlen)
        self.appended = 0

    def append(self, line: str) -> int:
        """Add one line (tabs expanded); returns its index."""
        self.lines.append(line.expandtabs())
        self.appended += 1
        return self.appended - 1

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines)

    def view(self) -> tuple[int, Sequence[str]]:
        """(index of the first line kept, the lines): a Pane's source."""
        return self.appended - len(self.lines), self.lines


def wrap(line: Line, width: int, indent: int = 0) -> list[Line]:
    """line cut into rows of at most width characters; rows after the first begin with
    indent spaces. Too narrow to wrap sensibly: one row (the window clips it)."""
    if width <= indent + 8:
        return [line]
    rows: list[Line] = []
    row: Line = []
    room = width
    for style, text, *_ in line:
        while len(text) > room:
            if room:
                row.append((style, text[:room]))
            text = text[room:]
            rows.append(row)
            row, room = [("", " " * indent)], width - indent
        if text:
            row.append((style, text))
            room -= len(text)
    rows.append(row)
    return rows


class _Text:
    """A pane's lines for one render, wrapped to its width; positions are (line, row)."""

    def __init__(self, first: int, lines: Sequence[str | Line], width: int, wrapped: bool, indent: int) -> None:
        self.first, self.lines, self.end = first, lines, first + len(lines)
        self.width, self.wrapped, self.indent = width, wrapped, indent
        self._rows: dict[int, list[Line]] = {}

    def rows(self, i: int) -> list[Line]:
        rows = self._rows.get(i)
        if rows is None:
            line = self.lines[i - self.first]
            frags: Line = [("", line)] if isinstance(line, str) else line
            rows = self._rows[i] = wrap(frags, self.width, self.indent) if self.wrapped else [frags]
        return rows

    def clamp(self, pos: Pos) -> Pos:
        i, r = pos
        if i < self.first:
            return self.first, 0
        if i >= self.end:
            return self.end, 0
        return i, min(r, len(self.rows(i)) - 1)

    def forward(self, pos: Pos, n: int) -> tuple[list[Line], Pos]:
        """Up to n rows from pos on, and the position after them."""
        i, r = self.clamp(pos)
        out: list[Line] = []
        while len(out) < n and i < self.end:
            rows = self.rows(i)
            take = rows[r: r + n - len(out)]
            out += take
            r += len(take)
            if r >= len(rows):
                i, r = i + 1, 0
        return out, (i, r)

    def backward(self, pos: Pos, n: int) -> tuple[list[Line], Pos]:
        """Up to n rows just before pos, and the position of the first of them."""
        i, r = self.clamp(pos)
        out: list[Line] = []
        while len(out) < n:
            if r == 0:
                if i <= self.first:
                    break
                i -= 1
                r = len(self.rows(i))
            take = min(r, n - len(out))
            out[:0] = self.rows(i)[r - take: r]
            r -= take
        return out, (i, r)


class Pane(UIControl):
    """A scrollable view of lines from `source` (index of the first line, the lines).

    Unscrolled, a pane shows its home: the end of its text (follow), or the top, or the
    lines around the index `home` returns. Scrolled, it keeps showing the same lines while
    new ones arrive and old ones drop off; scrolling down to the end returns home."""

    def __init__(self, title: str, source: Callable[[], tuple[int, Sequence[str | Line]]], *, wrap: bool = False,
                 indent: int = 0, follow: bool = True, home: Callable[[], int] | None = None,
                 width: Callable[[], int] | None = None) -> None:
        self.title = title
        self.source = source
        self.wrapped, self.indent, self.follow, self.home, self.width = wrap, indent, follow, home, width
        self.top: Pos | None = None                    # where the user scrolled to; None: home
        self.on_click: Callable[[Pane], None] | None = None
        self.rows: list[Line] = []                     # the rows of the last render
        self.size = (80, 0)                            # its width and height

    def _text(self, width: int) -> _Text:
        first, lines = self.source()
        return _Text(first, lines, width, self.wrapped, self.indent)

    def _home(self, t: _Text, height: int) -> Pos:
        if self.follow:
            return t.backward((t.end, 0), height)[1]
        if self.home is not None:
            return t.backward((self.home(), 0), height // 4)[1]
        return t.first, 0

    def _view(self, t: _Text, height: int) -> tuple[list[Line], Pos]:
        """The rows in view and the position of the first."""
        start = t.clamp(self.top) if self.top is not None else self._home(t, height)
        rows, _ = t.forward(start, height)
        if len(rows) < height:                         # the end is in view: a full window's worth
            more, start = t.backward(start, height - len(rows))
            rows = more + rows
        return rows, start

    def render(self, width: int, height: int) -> list[Line]:
        """The rows shown in a window of this size."""
        self.rows, _ = self._view(self._text(width), height)
        self.size = (width, height)
        return self.rows

    def scroll(self, delta: int) -> None:
        """Scroll by delta rows (negative: up) in the window of the last render."""
        width, height = self.size
        if not height:
            return
        t = self._text(width)
        _, start = self._view(t, height)
        if delta < 0:
            self.top = t.backward(start, -delta)[1]
            return
        _, pos = t.forward(start, delta)
        if len(t.forward(pos, height)[0]) < height:   # scrolled to the end
            self.top = None if self.follow else t.backward((t.end, 0), height)[1]
        else:
            self.top = pos

    def page(self, direction: int) -> None:
        self.scroll(direction * max(1, self.size[1] - 1))

    def to_top(self) -> None:
        self.top = (self.source()[0], 0)

    def show_from(self, index: int) -> None:
        """Scroll so that line index is the first shown (or the end is in view)."""
        self.top = (index, 0)

    def go_home(self) -> None:
        self.top = None

    # UIControl -----------------------------------------------------------------------------------
    def create_content(self, width: int, height: int) -> UIContent:
        rows = self.render(width, height)
        return UIContent(get_line=lambda i: rows[i], line_count=len(rows), show_cursor=False)

    def preferred_width(self, max_available_width: int) -> int | None:
        return min(self.width(), max_available_width) if self.width is not None else None

    def mouse_handler(self, mouse_event: MouseEvent) -> None | Any:
        kind = mouse_event.event_type
        if kind is MouseEventType.SCROLL_UP:
            self.scroll(-WHEEL_ROWS)
        elif kind is MouseEventType.SCROLL_DOWN:
            self.scroll(WHEEL_ROWS)
        elif kind is MouseEventType.MOUSE_UP and mouse_event.button is MouseButton.LEFT and self.on_click:
            self.on_click(self)
        else:
            return NotImplemented
        return None


# -- the guest console: a terminal emulator ------------------------------------------------------
class _ScrollbackScreen(pyte.Screen):
    """pyte's screen plus a bounded scrollback: the lines that scroll off the top of the
    whole screen, as a terminal keeps them."""

    def __init__(self, columns: int, lines: int, scrollback: int) -> None:
        self.scrollback: deque[Any] = deque(maxlen=scrollback)
        self.scrolled = 0                              # lines ever scrolled off
        super().__init__(columns, lines)

    def linefeed(self) -> None:
        super().linefeed()
        self.carriage_return()  # a bare "\n" starts a new line, as a tty's ONLCR makes it

    def index(self) -> None:
        top, bottom = self.margins or Margins(0, self.lines - 1)
        if top == 0 and self.cursor.y == bottom:
            self.scrollback.append(self.buffer[0])
            self.scrolled += 1
        super().index()


_ANSI_COLOURS = {
    "black": "ansiblack", "red": "ansired", "green": "ansigreen", "brown": "ansiyellow", "blue": "ansiblue",
    "magenta": "ansimagenta", "cyan": "ansicyan", "white": "ansigray",
    "brightblack": "ansibrightblack", "brightred": "ansibrightred", "brightgreen": "ansibrightgreen",
    "brightbrown": "ansibrightyellow", "brightblue": "ansibrightblue", "brightmagenta": "ansibrightmagenta",
    "bfightmagenta": "ansibrightmagenta",          # sic: pyte 0.8's name for SGR 105
    "brightcyan": "ansibrightcyan", "brightwhite": "ansiwhite",
}


def _colour(name: str) -> str | None:
    """A pyte colour (a name, or rrggbb for 256 and true colours) in prompt_toolkit's terms."""
    if name in _ANSI_COLOURS:
        return _ANSI_COLOURS[name]
    if len(name) == 6 and all(c in "0123456789abcdefABCDEF" for c in name):
        return f"#{name}"
    return None


@lru_cache(maxsize=1024)
def _cell_style(fg: str, bg: str, bold: bool, italics: bool, underscore: bool, strikethrough: bool,
                reverse: bool, blink: bool) -> str:
    parts = [f"fg:{c}" for c in [_colour(fg)] if c] + [f"bg:{c}" for c in [_colour(bg)] if c]
    for on, word in ((bold, "bold"), (italics, "italic"), (underscore, "underline"), (strikethrough, "strike"),
                     (reverse, "reverse"), (blink, "blink")):
        if on:
            parts.append(word)
    return " ".join(parts)


def _row_fragments(row: Any, columns: int, cursor: int | None) -> Line:
    """One screen row as styled text (to its last written cell, or the cursor)."""
    end = min(columns, max(max(row, default=-1) + 1, -1 if cursor is None else cursor + 1))
    out: Line = []
    for x in range(end):
        ch = row[x]
        style = _cell_style(*ch[1:-2], ch.reverse != (x == cursor), ch.blink)
        if out and out[-1][0] == style:
            out[-1] = (style, out[-1][1] + ch.data)
        else:
            out.append((style, ch.data))
    return out


class _ConsoleLines(Sequence[Line]):
    """The console's scrollback and screen rows, styled when asked for (a pane shows few)."""

    def __init__(self, rows: list[Any], columns: int, cursor: tuple[int, int] | None) -> None:
        self.rows, self.columns, self.cursor = rows, columns, cursor

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        cur = self.cursor
        return _row_fragments(self.rows[i], self.columns, cur[1] if cur is not None and cur[0] == i else None)


class GuestConsole:
    """The guest's console output as a terminal shows it: pyte applies colours, cursor
    movement and erases to a screen of fixed height (memory stays bounded: the screen and a
    scrollback of CONSOLE_SCROLLBACK lines), as wide as the pane but at least 80 columns
    (the Xen console tells the guest no size: like `xl console` in a terminal that wide)."""

    def __init__(self, output: ConsoleTail, columns: int = CONSOLE_COLS, rows: int = CONSOLE_ROWS,
                 scrollback: int = CONSOLE_SCROLLBACK) -> None:
        self.output = output                           # what the guest wrote (the session's record)
        self.fed = 0
        self.screen = _ScrollbackScreen(columns, rows, scrollback)
        self.stream = pyte.ByteStream(self.screen)

    def update(self) -> bool:
        """Give the emulator what the guest wrote since (at most CONSOLE_CHUNK bytes); True
        while more is pending."""
        total = len(self.output)
        if total < self.fed:                           # the machine went back in time: draw it again
            self.screen = _ScrollbackScreen(self.screen.columns, self.screen.lines, self.screen.scrollback.maxlen)
            self.stream = pyte.ByteStream(self.screen)
            self.fed = 0
        self.fed = max(self.fed, self.output.start)     # older output is no longer kept
        if total - self.fed > CONSOLE_BACKLOG:         # a flood: what would scroll away unseen is skipped
            cut = self.output.find(b"\n", total - CONSOLE_BACKLOG)
            self.fed = cut + 1 if cut >= 0 else total - CONSOLE_BACKLOG
        chunk = bytes(self.output[self.fed: self.fed + CONSOLE_CHUNK])
        self.fed += len(chunk)
        self.stream.feed(chunk)
        return self.fed < len(self.output)

    def resize(self, columns: int) -> None:
        columns = max(CONSOLE_COLS, columns)
        if columns != self.screen.columns:
            self.screen.resize(self.screen.lines, columns)

    def lines(self) -> tuple[int, Sequence[Line]]:
        """A Pane's source: the scrollback, then the screen down to its last used row."""
        sc = self.screen
        last = sc.cursor.y
        for y in range(sc.lines - 1, last, -1):
            if any(ch.data != " " or ch.bg != "default" or ch.reverse for ch in sc.buffer[y].values()):
                last = y
                break
        history = list(sc.scrollback)
        rows = history + [sc.buffer[y] for y in range(last + 1)]
        cursor = None if sc.cursor.hidden else (len(history) + sc.cursor.y, sc.cursor.x)
        return sc.scrolled - len(history), _ConsoleLines(rows, sc.columns, cursor)

    def text(self) -> str:
        """What the scrollback and the screen show, as plain text."""
        _, lines = self.lines()
        return "\n".join("".join(t for _, t, *_ in line).rstrip() for line in lines)


# -- the machine, shared with the gdb stub --------------------------------------------------------
class ShellControl:
    """Drives the machine through the session's Controller, shared with the gdb stub, so
    stops made from gdb or from the shell are one and the same. The machine runs in the
    controller's background thread; the UI thread only asks and reads."""

    def __init__(self, session: Session, gdb_address: str | None = None) -> None:
        self.session = session
        self.machine = session.machine
        self.tail: deque[dict[str, Any]] = deque(maxlen=TAIL)
        self.tail_count = 0
        self._tail_lock = threading.Lock()
        self.stops = 0
        self.on_change: Callable[[], None] | None = None
        self.ours = False          # the shell resumed the machine: its next stop is one gdb was not told of
        self._continued = False    # a `continue` from the shell: its stop is announced in the output
        self._stale: StopEvent | None = None
        self._announce: StopEvent | None = None
        # only what the tail pane shows: the machine then observes nothing else for the shell
        self.machine.domain.trace.subscribe(self._on_event, kinds=TAIL_KINDS)
        session.timetravel.add_participant("shell", self)
        self.dbg = session.controller
        self.dbg.add_listener(self._on_stop)
        host, port = parse_address(gdb_address) if gdb_address else ("127.0.0.1", 0)
        self.server = GdbServer(self.dbg, host, port, resume_when_idle=False)
        self.server_thread = threading.Thread(target=self.server.serve, name="xenwb-gdb", daemon=True)
        self.server_thread.start()

    @property
    def selected(self) -> int:
        return self.session.debugger.selected

    @property
    def last_stop(self) -> StopEvent:
        return self.dbg.last_stop

    @property
    def running(self) -> bool:
        return self.dbg.running

    def _on_event(self, ev: dict[str, Any]) -> None:          # the machine's thread
        with self._tail_lock:
            self.tail.append(ev)
            self.tail_count += 1

    # time travel: the tail follows the machine back (a participant of session.timetravel)
    def save_state(self) -> Any:
        with self._tail_lock:
            return self.tail_count, list(self.tail)

    def load_state(self, state: Any) -> None:
        count, tail = state if state is not None else (0, [])
        with self._tail_lock:
            self.tail.clear()
            self.tail.extend(tail)
            self.tail_count = count

    def tail_view(self) -> tuple[int, list[dict[str, Any]]]:
        """(index of the first entry kept, the entries), consistent with each other."""
        with self._tail_lock:
            return self.tail_count - len(self.tail), list(self.tail)

    def _on_stop(self, ev: StopEvent) -> None:                # any thread
        self.stops += 1
        for w in self.session.writers:
            w.flush()
        if self.ours:
            self.ours = False
            self._stale = ev
        if self._continued:
            self._continued = False
            self._announce = ev
        if self.on_change is not None:
            self.on_change()

    def take_stale(self) -> StopEvent | None:
        """The last stop made from the shell, which an attached gdb does not know of, once."""
        ev, self._stale = self._stale, None
        return ev

    def take_announcement(self) -> StopEvent | None:
        """The stop that ended a `continue` from the shell, once."""
        ev, self._announce = self._announce, None
        return ev

    def cont(self) -> str:
        if self.dbg.running:
            return "already running"
        if self.dbg.finished:
            return "the domain has ended"
        self.ours = self._continued = True
        self.dbg.resume("continue")
        return "running"

    def stop(self) -> str:
        if not self.dbg.running:
            return "not running"
        self.dbg.interrupt()
        return "stopped"

    def close(self) -> None:
        if self.dbg.running:
            self.dbg.interrupt()
        self.server.shutdown()
        self.server_thread.join(timeout=5)
        self.server.close()

    def describe(self, ev: StopEvent) -> str:
        """A stop for the output pane (a post-mortem one with what can still be done)."""
        text = ev.describe(self.machine)
        if ev.kind in POSTMORTEM_KINDS:
            return (f"post-mortem: {text}\n  registers, memory and Xen state stay inspectable (regs, info registers, "
                    "x, disas, gdb bt); continuing ends the session")
        return f"stopped: {text}"

    def state(self) -> str:
        """What the machine is doing, in one line: the stop reason when it is stopped."""
        dbg, ev = self.dbg, self.dbg.last_stop
        if dbg.running:
            return "running"
        if ev.kind is StopKind.exited:
            return f"shut down ({ev.detail.removeprefix('shutdown (').removesuffix(')')})"
        if ev.kind is StopKind.killed:
            return "killed"
        first = ev.describe(self.machine).splitlines()[0]
        if dbg.finished:
            return f"ended: {first}"
        if dbg.postmortem:
            return f"post-mortem, inspectable: {first}"
        if ev.kind is StopKind.initial:
            return "stopped before the first instruction"
        return f"stopped: {first}"

    def status(self) -> str:
        m = self.machine
        dom = m.domain
        gdb = f" | gdb stub {self.server.address[0]}:{self.server.port}"
        if self.server.session is not None:
            gdb += " (attached)"
        return (f" {self.state()} | vcpu{self.selected} | virtual time {m.now() / 1e9:.6f} s | "
                f"{dom.stats['hypercalls']} hypercalls | {dom.stats['faults']} faults{gdb}")


# -- the real gdb ---------------------------------------------------------------------------------
class GdbPane:
    """The real gdb, driven through its machine interface (pygdbmi), attached to the
    workbench's own stub with the guest ELF's symbols. Commands are written at once and
    their output collected as it comes (poll), so the screen never waits for gdb."""

    def __init__(self, elf: str, host: str, port: int) -> None:
        from pygdbmi.gdbcontroller import GdbController
        self.lines = LineLog(GDB_LINES)
        self.threads: dict[int, str] = {}          # vcpu -> gdb's thread number
        self._token = 0
        self.ctl = GdbController(command=["gdb", "--nx", "--quiet", "--interpreter=mi3", elf])
        self._write("-gdb-set pagination off")
        self._write(f"-target-select remote {host}:{port}")
        self._thread_info = self._write("-thread-info")

    def _write(self, mi: str) -> int:
        self._token += 1
        self.ctl.write(f"{self._token}{mi}", timeout_sec=5, read_response=False)
        return self._token

    def _console(self, cmd: str) -> None:
        quoted = cmd.replace("\\", "\\\\").replace('"', '\\"')
        self._write(f'-interpreter-exec console "{quoted}"')

    def execute(self, cmd: str) -> int:
        """Run a gdb command; returns the index of its line in the pane."""
        index = self.lines.append(f"(gdb) {cmd}")
        self._console(cmd)
        return index

    def refresh(self, vcpu: int | None, why: str) -> None:
        """Make gdb re-read the target after a stop it was not told of: it caches registers
        and memory, believing the target never ran. Then select the vcpu that stopped and
        show its frame."""
        self.lines.append(f"[{why}]")
        self._console("maintenance flush register-cache")
        self._console("maintenance flush dcache")
        if vcpu in self.threads:
            self._write(f"-thread-select {self.threads[vcpu]}")
        self._console("frame")

    def poll(self) -> None:
        self._collect(self.ctl.get_gdb_response(timeout_sec=0, raise_error_on_timeout=False))

    def _collect(self, responses: list[dict[str, Any]]) -> None:
        for r in responses or []:
            kind, payload, message = r.get("type"), r.get("payload"), r.get("message")
            if kind in ("console", "target", "output") and isinstance(payload, str):
                for line in payload.rstrip("\n").splitlines() or [""]:
                    self.lines.append(line)
            elif kind == "result" and message == "error" and isinstance(payload, dict):
                self.lines.append(f"error: {payload.get('msg', '')}")
            elif kind == "result" and r.get("token") == self._thread_info and isinstance(payload, dict):
                for t in payload.get("threads", []):
                    name = t.get("name", "")
                    if name.startswith("vcpu") and name[4:].isdigit():
                        self.threads[int(name[4:])] = t["id"]
            elif kind == "notify" and message == "stopped" and isinstance(payload, dict):
                frame = payload.get("frame", {})
                reason = f": {payload['reason']}" if payload.get("reason") else ""
                self.lines.append(f"[stopped{reason} at {frame.get('addr', '?')} {frame.get('func', '')}]")

    def close(self) -> None:
        try:
            self.ctl.exit()
        except Exception:
            pass


# -- the shell ------------------------------------------------------------------------------------
class CommandCompleter(Completer):
    def __init__(self, shell: Shell) -> None:
        self.shell = shell

    def get_completions(self, document: Document, complete_event):
        text = document.text_before_cursor
        words = text.split()
        names = self.shell.command_names()
        if not words or (len(words) == 1 and not text.endswith(" ")):
            for n in names:
                if n.startswith(text.lstrip()):
                    yield Completion(n, start_position=-len(text.lstrip()))
            return
        # a multi-word command name, or a symbol argument
        for n in names:
            if n.startswith(text.lstrip()) and n != text.strip():
                yield Completion(n, start_position=-len(text.lstrip()))
        word = "" if text.endswith(" ") else words[-1]
        if len(word) >= 2:
            for s in self.shell.symbols():
                if s.startswith(word):
                    yield Completion(s, start_position=-len(word))


class Shell:
    def __init__(self, session: Session, *, input=None, output=None, gdb_address: str | None = None) -> None:
        self.session = session
        self.ctl = ShellControl(session, gdb_address)
        self.machine = session.machine
        self.gdb: GdbPane | None = None
        self.console = GuestConsole(session.console)
        self.output_lines = LineLog(OUTPUT_LINES)
        self.output_lines.append(INTRO)
        self.console_mode = False
        self.zoomed = False
        self._disas_key: tuple[int, int, int] | None = None
        self._disas: list[tuple[int, str]] = []
        self.panes = {
            "console": Pane("guest console", self.console.lines, wrap=True),     # wraps in a narrow pane
            "vcpu": Pane("vcpu", self._vcpu_lines, follow=False),
            "hypercalls": Pane("hypercalls", self._tail_lines),
            "disassembly": Pane("disassembly", self._disas_lines, wrap=True, indent=4, follow=False,
                                home=self._pc_line, width=self._disas_width),
            "output": Pane("output", self.output_lines.view, wrap=True, indent=2),
            "gdb": Pane("gdb", self._gdb_lines, wrap=True, indent=2),
        }
        for p in self.panes.values():
            p.on_click = self._activate
        self.active = "output"
        self._register_shell_commands()
        self.cmdline = TextArea(height=1, prompt=self._prompt, multiline=False, history=InMemoryHistory(),
                                completer=CommandCompleter(self), complete_while_typing=False,
                                accept_handler=self._accept)
        self.app = Application(layout=self._layout(), key_bindings=self._keys(), style=STYLE, full_screen=True,
                               refresh_interval=0.25, input=input, output=output, mouse_support=True,
                               before_render=self._before_render)
        self.ctl.on_change = self.app.invalidate      # thread-safe: redraw when the machine stops

    # layout ---------------------------------------------------------------------------
    def _prompt(self):
        return FormattedText([("class:console-mode", "console> ")] if self.console_mode
                             else [("class:prompt", "xenwb> ")])

    def _frame(self, name: str, width: D | None = None) -> Frame:
        pane = self.panes[name]
        return Frame(Window(pane, dont_extend_width=pane.width is not None),
                     title=lambda: [("class:active" if name == self.active else "", pane.title)], width=width)

    def _layout(self) -> Layout:
        frames = {
            "console": self._frame("console", D(min=20, preferred=CONSOLE_COLS + 2, weight=1)),
            "vcpu": self._frame("vcpu", D(min=24, preferred=44, max=44)),
            "hypercalls": self._frame("hypercalls", D(min=24, preferred=36, weight=1)),
            "disassembly": self._frame("disassembly"),
            "output": self._frame("output"),
            "gdb": self._frame("gdb"),
        }
        status = Window(FormattedTextControl(lambda: [("class:status", self.ctl.status())]),
                        height=self._status_height, wrap_lines=True, style="class:status")
        normal = HSplit([
            VSplit([frames["console"], frames["vcpu"]], height=D(min=5, preferred=14, max=CONSOLE_ROWS + 2)),
            VSplit([frames["hypercalls"], frames["disassembly"]], height=D(min=4, preferred=8, max=16)),
            VSplit([frames["output"],
                    ConditionalContainer(frames["gdb"], filter=Condition(lambda: self.gdb is not None))],
                   height=D(min=5, preferred=10, weight=4)),
            status,
            self.cmdline,
        ])

        def body():
            if not self.zoomed:
                return normal
            return HSplit([frames[self.active], status, self.cmdline])
        return Layout(DynamicContainer(body), focused_element=self.cmdline)

    def _status_height(self) -> D:
        """As many rows as the status line needs (before any pane grows)."""
        return D.exact(-(-len(self.ctl.status()) // max(1, self.app.output.get_size().columns)))

    def _pane_names(self) -> list[str]:
        return [n for n in self.panes if n != "gdb" or self.gdb is not None]

    def _activate(self, pane: Pane) -> None:
        self.active = next(n for n, p in self.panes.items() if p is pane)

    def _keys(self) -> KeyBindings:
        kb = KeyBindings()

        @kb.add("c-c")
        def _(event) -> None:
            if self.ctl.running:
                self.say(self.ctl.stop())
            else:
                self.cmdline.text = ""

        @kb.add("c-q")
        def _(event) -> None:
            self.quit()

        @kb.add("f2")
        def _(event) -> None:
            self.console_mode = not self.console_mode

        @kb.add("f6")
        @kb.add("c-x", "o")
        def _(event) -> None:
            names = self._pane_names()
            self.active = names[(names.index(self.active) + 1) % len(names)] if self.active in names else "output"

        @kb.add("f7")
        @kb.add("c-x", "1")
        def _(event) -> None:
            self.zoomed = not self.zoomed

        for key, action in (("pageup", lambda p: p.page(-1)), ("pagedown", lambda p: p.page(1)),
                            ("s-up", lambda p: p.scroll(-1)), ("s-down", lambda p: p.scroll(1)),
                            ("c-home", Pane.to_top), ("c-end", Pane.go_home)):
            kb.add(key)(lambda event, action=action: action(self.panes[self.active]))
        return kb

    def _before_render(self, app: Application) -> None:
        self.console.resize(self.panes["console"].size[0])
        if self.console.update():
            app.invalidate()                          # more console output to draw
        if self.gdb is not None:
            self.gdb.poll()
        self._sync_gdb()
        ev = self.ctl.take_announcement()
        if ev is not None:
            self.say(self.ctl.describe(ev))

    def _sync_gdb(self) -> None:
        """After a stop made from the shell, the gdb pane re-reads the target."""
        ev = self.ctl.take_stale()
        if ev is not None and self.gdb is not None and not ev.final:
            self.gdb.refresh(ev.vcpu, f"{ev.describe(self.machine).splitlines()[0]}: stopped from the shell")

    # pane sources ---------------------------------------------------------------------
    def _tail_lines(self) -> tuple[int, Sequence[Line]]:
        first, events = self.ctl.tail_view()
        return first, [_tail_line(ev) for ev in events]

    def _vcpu_lines(self) -> tuple[int, Sequence[str | Line]]:
        if self.ctl.running:
            return 0, [[("class:dim", "(running: registers shown when stopped)")]]
        v = self.machine.vcpus[self.ctl.selected]
        r = self.ctl.dbg.guest_regs(v.id)
        if isinstance(v, Vcpu64):
            lines = [f"vcpu{v.id} {v.state.value}  {'kernel' if v.kernel_mode else 'user'} mode"]
            for a, b in (("rax", "rbx"), ("rcx", "rdx"), ("rsi", "rdi"), ("rbp", "rsp"), ("r8", "r9"),
                         ("r10", "r11"), ("r12", "r13"), ("r14", "r15")):
                lines.append(f"{a:<3} {r[a]:016x} {b:<3} {r[b]:016x}")
            lines.append(f"rip {r['rip']:016x} rfl {r['rflags']:08x}")
            lines.append(f"cs {r['cs']:04x} ss {r['ss']:04x} ds {r['ds']:04x} fs {r['fs']:04x} gs {r['gs']:04x}")
            lines.append(f"fs_base {r['fs_base']:#x} gs_base {r['gs_base']:#x} k_gs_base {r['k_gs_base']:#x}")
            lines.append(f"L4 mfn kernel {v.cr3_mfn:#x} user {v.user_cr3_mfn:#x}  cr2 {v.cr2:#x}")
        else:
            lines = [f"vcpu{v.id} {v.state.value}  cpl {r['cs'] & 3}"]
            for a, b in (("eax", "ebx"), ("ecx", "edx"), ("esi", "edi"), ("ebp", "esp")):
                lines.append(f"{a} {r[a]:08x}   {b} {r[b]:08x}")
            lines.append(f"eip {r['eip']:08x}   efl {r['eflags']:08x}")
            lines.append(f"cs {r['cs']:04x} ss {r['ss']:04x} ds {r['ds']:04x} fs {r['fs']:04x}")
            lines.append(f"cr3 mfn {v.cr3_mfn:#x}  cr2 {v.cr2:#x}")
        sel = v.pending_sel
        lines.append(f"upcall mask {v.upcall_mask} pending {v.upcall_pending} sel {sel:#x}")
        sym = self.machine.domain.symbolize(r["pc"])
        if sym:
            lines.append(f"<{sym}>")
        return 0, lines

    def _disas_lines(self) -> tuple[int, Sequence[Line]]:
        """Instructions around the selected vcpu's pc, disassembled once per stop; a new
        stop brings the pane back to the pc."""
        if self.ctl.running:
            return 0, [[("class:dim", "(running)")]]
        v = self.machine.vcpus[self.ctl.selected]
        pc = self.ctl.dbg.guest_regs(v.id)["pc"]
        key = (self.ctl.stops, v.id, pc)
        if key != self._disas_key:
            self._disas_key = key
            self._disas = disassemble(self.machine, v, pc, DISAS_AFTER, before=DISAS_BEFORE)
            self.panes["disassembly"].go_home()
        return 0, [[("class:pc" if addr == pc else "", text)] for addr, text in self._disas]

    def _pc_line(self) -> int:
        pc = self.ctl.dbg.guest_regs(self.ctl.selected)["pc"]
        return next((i for i, (addr, _) in enumerate(self._disas) if addr == pc), 0)

    def _disas_width(self) -> int:
        """Wide enough for every operand (narrower windows wrap)."""
        return max([40] + [len(text) for _, text in self._disas])

    def _gdb_lines(self) -> tuple[int, Sequence[str]]:
        return self.gdb.lines.view() if self.gdb is not None else (0, [])

    # commands -------------------------------------------------------------------------
    def say(self, text: str) -> int:
        """Add text to the output pane; returns the index of its first line."""
        lines = text.splitlines() or [""]
        first = self.output_lines.append(lines[0])
        for line in lines[1:]:
            self.output_lines.append(line)
        return first

    def command_names(self) -> list[str]:
        return self.machine.commands.names()

    def symbols(self) -> list[str]:
        return [s.name for s in self.machine.image.symbols]

    def _accept(self, buf) -> bool:
        line = buf.text.strip()
        if self.console_mode:
            self.send_console(buf.text + "\r")
            return False
        if line:
            self.execute(line)
        return False

    def send_console(self, text: str) -> None:
        self.machine.console_input(text.encode())

    def execute(self, line: str) -> None:
        """Run a command line; the output pane shows its result from its first line."""
        start = self.say(f"xenwb> {line}")
        self.ctl.ours = not self.ctl.running          # a stop it makes is one gdb does not see
        try:
            ok, text = self.machine.commands.execute(self.machine, line)
        except Exception as e:       # a failing command must never take the screen down
            ok, text = False, f"{type(e).__name__}: {e}"
        finally:
            if not self.ctl.running:
                self.ctl.ours = False
        self.say(text if ok else f"error: {text}")
        self.panes["output"].show_from(start)

    def quit(self) -> None:
        if self.app.is_running:
            self.app.exit()

    def shutdown(self) -> None:
        if self.gdb is not None:
            self.gdb.close()
            self.gdb = None
        self.ctl.close()
        self.session.close()

    def _register_shell_commands(self) -> None:
        """The shell's own commands; the debugger's (break, stepi, x, ...) are in the registry."""
        reg = self.machine.commands
        reg.register("run", lambda m, a: Result(None, self.ctl.cont()), "start or continue the guest")
        reg.register("continue", lambda m, a: Result(None, self.ctl.cont()), "continue the guest")
        reg.register("stop", lambda m, a: Result(None, self.ctl.stop()), "stop the guest")
        reg.register("gdb", self._cmd_gdb, "run a command in the real gdb attached to this guest (stops the guest "
                     "first)", "COMMAND...")
        reg.register("trace save", self._cmd_trace_save, "write the trace from now on to FILE", "FILE")
        reg.register("console", self._cmd_console, "send text to the guest console", "TEXT")
        reg.register("keys", lambda m, a: Result(None, KEYS), "the shell's keys")
        reg.register("quit", lambda m, a: Result(None, self.quit() or "bye"), "leave the shell")

    def _cmd_gdb(self, m, args) -> Result:
        if not args:
            raise CommandError("usage: gdb COMMAND (e.g. gdb bt, gdb list, gdb p checks_run)")
        if self.gdb is None and self.ctl.server.session is not None:
            raise CommandError("another gdb is attached to the stub; detach it first")
        if self.ctl.running:
            self.ctl.stop()
        if self.gdb is None:
            self.gdb = GdbPane(str(m.image.path), *self.ctl.server.address)
            self.ctl.take_stale()                     # a new gdb reads everything afresh
        self._sync_gdb()
        self.ctl.ours = False                         # what gdb does next, gdb sees
        cmd = " ".join(args)
        self.panes["gdb"].show_from(self.gdb.execute(cmd))
        return Result({"gdb": cmd}, "(see the gdb pane)")

    def _cmd_trace_save(self, m, args) -> Result:
        if len(args) != 1:
            raise CommandError("usage: trace save FILE")
        try:
            self.session.record(args[0])
        except XenwbError as e:
            raise CommandError(str(e)) from None
        return Result({"file": args[0]}, f"tracing to {args[0]}")

    def _cmd_console(self, m, args) -> Result:
        self.send_console(" ".join(args) + "\r")
        return Result(None, "sent")

    def run(self) -> None:
        """Show the screen until the shell ends: quit, Ctrl-Q, SIGTERM or SIGHUP (or an
        exception). prompt_toolkit restores the terminal whichever way run() ends."""
        try:
            self.app.run(pre_run=self._quit_on_signals)
        finally:
            self.shutdown()

    def _quit_on_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.quit)


def _tail_line(ev: dict[str, Any]) -> Line:
    """One hypercall-tail entry, coloured by result (red: failed, yellow: in a multicall)."""
    if ev["kind"] == "hypercall":
        style = "class:fail" if ev["ret"] < 0 else ("class:mc" if ev.get("multicall") is not None else "class:ok")
        ret = f"{ev['ret']}" + (f" {ev['errno']}" if ev.get("errno") else "")
        return [(style, f"{ev['time_ns']:>10} v{ev['vcpu']} {ev['name']:<18} -> {ret:<10} "
                        f"{ev.get('symbol') or ''} {brief_args(ev['args'], 70)}")]
    return [("class:fail" if ev["kind"] == "crash" else "class:dim",
             f"{ev['time_ns']:>10} v{ev['vcpu']} {ev['kind']}: {ev['name']}")]
