"""`xenwb shell`: a full-screen terminal workbench (prompt_toolkit).

Panes: guest console (F2 sends what you type to the guest's console), a live tail of
hypercalls and multicall batches coloured by result, the selected vcpu's registers and
event-mask state, disassembly around its PC (capstone, with symbols), command output,
and a status line. The guest runs in a background thread so the screen stays
responsive; every command goes through the same registry as gdb's `monitor`.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from prompt_toolkit.application import Application
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.data_structures import Point
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import ConditionalContainer, HSplit, Layout, VSplit, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.styles import Style
from prompt_toolkit.widgets import Frame, TextArea

from gdbstub.server import GdbServer, parse_address
from plugins.hypercalls import brief_args
from xenwb.disasm import disassemble
from xenwb.errors import XenwbError
from xenwb.registry import CommandError, Result

if TYPE_CHECKING:
    from xenwb.session import Session

STYLE = Style.from_dict({
    "ok": "#5faf5f", "fail": "#ff5f5f bold", "mc": "#d7af00", "dim": "#808080",
    "status": "reverse", "pc": "reverse bold", "title": "bold", "prompt": "bold #5fafff",
    "console-mode": "bold #ffaf00",
})
TAIL = 400


class ShellControl:
    """Drives the machine through the session's Controller, shared with the gdb stub, so
    stops made from gdb or from the shell are one and the same. The machine runs in the
    controller's background thread; the UI thread only asks and reads."""

    def __init__(self, session: Session, gdb_address: str | None = None) -> None:
        self.session = session
        self.machine = session.machine
        self.tail: deque[dict[str, Any]] = deque(maxlen=TAIL)
        self.last_stop: Any = None
        self.error: str | None = None
        self.on_change: Any = None
        self.machine.domain.trace.subscribe(self._on_event)
        self.dbg = session.controller
        self.dbg.add_listener(self._on_stop)
        host, port = parse_address(gdb_address) if gdb_address else ("127.0.0.1", 0)
        self.server = GdbServer(self.dbg, host, port, resume_when_idle=False)
        self.server_thread = threading.Thread(target=self.server.serve, name="xenwb-gdb", daemon=True)
        self.server_thread.start()

    @property
    def selected(self) -> int:
        return self.session.debugger.selected

    def _on_event(self, ev: dict[str, Any]) -> None:
        if ev["kind"] in ("hypercall", "fault", "crash", "shutdown", "upcall"):
            self.tail.append(ev)

    def _on_stop(self, ev: Any) -> None:          # any thread
        self.last_stop = ev
        for w in self.session.writers:
            w.flush()
        if self.on_change is not None:
            self.on_change()

    @property
    def running(self) -> bool:
        return self.dbg.running

    def cont(self) -> str:
        if self.dbg.running:
            return "already running"
        if self.dbg.finished:
            return "the domain has ended"
        self.dbg.resume("continue")
        return "running"

    def stop(self) -> str:
        if not self.dbg.running:
            return "not running"
        self.dbg.interrupt()
        return "stopped"

    def wait(self, timeout: float | None = None) -> None:
        self.dbg.wait(timeout)

    def close(self) -> None:
        if self.dbg.running:
            self.dbg.interrupt()
        self.server.shutdown()
        self.server_thread.join(timeout=5)
        self.server.close()

    def status(self) -> str:
        m = self.machine
        dom = m.domain
        ev = self.last_stop
        if self.dbg.running:
            state = "running"
        elif dom.shutdown_reason is not None:
            state = f"shut down ({ev.detail if ev is not None else dom.shutdown_reason})"
        elif dom.crash_report is not None:
            state = f"crashed, inspectable: {dom.crash_report}"
        elif ev is not None and ev.kind.value != "initial":
            state = f"stopped: {ev.describe(m)}"
        else:
            state = "stopped (not started)"
        gdb = f" | gdb stub {self.server.address[0]}:{self.server.port}"
        if self.server.session is not None:
            gdb += " (attached)"
        return (f" {state} | vcpu{self.selected} | virtual time {m.now() / 1e9:.6f} s | "
                f"{dom.stats['hypercalls']} hypercalls | {dom.stats['faults']} faults{gdb}"
                + (f" | {self.error}" if self.error else ""))


class GdbPane:
    """The real gdb, driven through its machine interface (pygdbmi), attached to the
    workbench's own stub with the guest ELF's symbols."""

    def __init__(self, elf: str, port: int) -> None:
        from pygdbmi.gdbcontroller import GdbController
        self.lines: deque[str] = deque(maxlen=1000)
        self.ctl = GdbController(command=["gdb", "--nx", "--quiet", "--interpreter=mi3", elf])
        self._collect(self.ctl.write("-gdb-set pagination off", timeout_sec=5, raise_error_on_timeout=False))
        self._collect(self.ctl.write(f"-target-select remote 127.0.0.1:{port}", timeout_sec=15,
                                     raise_error_on_timeout=False))

    def execute(self, cmd: str, timeout: float = 10.0) -> None:
        self.lines.append(f"(gdb) {cmd}")
        quoted = cmd.replace("\\", "\\\\").replace('"', '\\"')
        self._collect(self.ctl.write(f'-interpreter-exec console "{quoted}"', timeout_sec=timeout,
                                     raise_error_on_timeout=False))

    def poll(self) -> None:
        self._collect(self.ctl.get_gdb_response(timeout_sec=0, raise_error_on_timeout=False))

    def _collect(self, responses: list[dict[str, Any]]) -> None:
        for r in responses or []:
            kind, payload = r.get("type"), r.get("payload")
            if kind in ("console", "target", "output") and isinstance(payload, str):
                self.lines.extend(payload.expandtabs(4).rstrip("\n").splitlines() or [""])
            elif kind == "result" and r.get("message") == "error" and isinstance(payload, dict):
                self.lines.append(f"error: {payload.get('msg', '')}")
            elif kind == "notify" and r.get("message") == "stopped" and isinstance(payload, dict):
                frame = payload.get("frame", {})
                self.lines.append(f"[stopped: {payload.get('reason', '')} at {frame.get('addr', '?')} "
                                  f"{frame.get('func', '')}]")

    def close(self) -> None:
        try:
            self.ctl.exit()
        except Exception:
            pass


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
        self.output_lines: list[str] = ["xenwb shell: type 'help' for commands, F2 for guest console input, "
                                        "Ctrl-C to stop the guest, 'quit' to leave."]
        self.console_mode = False
        self._register_shell_commands()
        self.cmdline = TextArea(height=1, prompt=self._prompt, multiline=False, history=InMemoryHistory(),
                                completer=CommandCompleter(self), complete_while_typing=False,
                                accept_handler=self._accept)
        self.app = Application(layout=self._layout(), key_bindings=self._keys(), style=STYLE, full_screen=True,
                               refresh_interval=0.25, input=input, output=output, mouse_support=False,
                               before_render=lambda app: self._poll_gdb())
        self.ctl.on_change = self.app.invalidate      # thread-safe: redraw when the machine stops

    # layout ---------------------------------------------------------------------------
    def _prompt(self):
        return FormattedText([("class:console-mode", "console> ")] if self.console_mode
                             else [("class:prompt", "xenwb> ")])

    def _layout(self) -> Layout:
        console = Window(_following(self._console_text), wrap_lines=True)
        tail = Window(_following(self._tail_text), wrap_lines=False)
        vcpu = Window(FormattedTextControl(self._vcpu_text), wrap_lines=False)
        disas = Window(FormattedTextControl(self._disas_text), wrap_lines=False)
        out = Window(_following(self._output_text), wrap_lines=True)
        gdb = Window(_following(self._gdb_text), wrap_lines=True)
        status = Window(FormattedTextControl(lambda: [("class:status", self.ctl.status())]), height=1)
        body = HSplit([
            VSplit([Frame(console, title="guest console"), Frame(vcpu, title="vcpu", width=44)]),
            VSplit([Frame(tail, title="hypercalls"), Frame(disas, title="disassembly", width=56)]),
            VSplit([Frame(out, title="output"),
                    ConditionalContainer(Frame(gdb, title="gdb"), filter=Condition(lambda: self.gdb is not None))],
                   height=12),
            status,
            self.cmdline,
        ])
        return Layout(body, focused_element=self.cmdline)

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

        return kb

    def _console_text(self):
        text = bytes(self.session.console[-8000:]).decode("latin-1", "replace")
        return text.replace("\r\n", "\n").replace("\r", "")

    def _tail_text(self):
        out: list[tuple[str, str]] = []
        for ev in list(self.ctl.tail)[-60:]:
            if ev["kind"] == "hypercall":
                style = "class:fail" if ev["ret"] < 0 else ("class:mc" if ev.get("multicall") is not None
                                                            else "class:ok")
                ret = f"{ev['ret']}" + (f" {ev['errno']}" if ev.get("errno") else "")
                out.append((style, f"{ev['time_ns']:>10} v{ev['vcpu']} {ev['name']:<18} -> {ret:<10} "
                                   f"{ev.get('symbol') or ''} {brief_args(ev['args'], 70)}\n"))
            else:
                out.append(("class:fail" if ev["kind"] == "crash" else "class:dim",
                            f"{ev['time_ns']:>10} v{ev['vcpu']} {ev['kind']}: {ev['name']}\n"))
        return out

    def _vcpu_text(self):
        if self.ctl.running:
            return [("class:dim", "(running: registers shown when stopped)")]
        v = self.machine.vcpus[self.ctl.selected]
        r = self.ctl.dbg.guest_regs(v.id)
        lines = [f"vcpu{v.id} {v.state.value}  cpl {r['cs'] & 3}"]
        for a, b in (("eax", "ebx"), ("ecx", "edx"), ("esi", "edi"), ("ebp", "esp")):
            lines.append(f"{a} {r[a]:08x}   {b} {r[b]:08x}")
        lines.append(f"eip {r['eip']:08x}   efl {r['eflags']:08x}")
        lines.append(f"cs {r['cs']:04x} ss {r['ss']:04x} ds {r['ds']:04x} fs {r['fs']:04x}")
        lines.append(f"cr3 mfn {v.cr3_mfn:#x}  cr2 {v.cr2:#x}")
        sel = v.pending_sel
        lines.append(f"upcall mask {v.upcall_mask} pending {v.upcall_pending} sel {sel:#x}")
        sym = self.machine.domain.symbolize(r["eip"])
        if sym:
            lines.append(f"<{sym}>")
        return "\n".join(lines)

    def _disas_text(self):
        if self.ctl.running:
            return [("class:dim", "(running)")]
        v = self.machine.vcpus[self.ctl.selected]
        pc = self.ctl.dbg.guest_regs(v.id)["eip"]
        out: list[tuple[str, str]] = []
        for addr, text in disassemble(self.machine, v, pc, 10, before=4):
            out.append(("class:pc" if addr == pc else "", f"{text}\n"))
        return out

    def _output_text(self):
        return "\n".join(self.output_lines[-200:])

    def _gdb_text(self):
        return "\n".join(list(self.gdb.lines)[-200:]) if self.gdb is not None else ""

    def _poll_gdb(self) -> None:
        if self.gdb is not None:
            self.gdb.poll()

    # commands -------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.output_lines.extend(text.splitlines() or [""])
        if self.app.is_running:
            self.app.invalidate()

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
            self.say(f"xenwb> {line}")
            self.execute(line)
        return False

    def send_console(self, text: str) -> None:
        m = self.machine
        feed = getattr(m, "console_input", None)
        if feed is not None:
            feed(text.encode())
        else:
            m.console.feed(text.encode())

    def execute(self, line: str) -> None:
        try:
            ok, text = self.machine.commands.execute(self.machine, line)
        except Exception as e:       # a failing command must never take the screen down
            ok, text = False, f"{type(e).__name__}: {e}"
        self.say(text if ok else f"error: {text}")

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
        reg.register("gdb", self._cmd_gdb, "run a command in the real gdb attached to this guest", "COMMAND...")
        reg.register("trace save", self._cmd_trace_save, "write the trace from now on to FILE", "FILE")
        reg.register("console", self._cmd_console, "send text to the guest console", "TEXT")
        reg.register("quit", lambda m, a: Result(None, self.quit() or "bye"), "leave the shell")

    def _cmd_gdb(self, m, args) -> Result:
        if not args:
            raise CommandError("usage: gdb COMMAND (e.g. gdb bt, gdb list, gdb p checks_run)")
        if self.gdb is None:
            if self.ctl.server.session is not None:
                raise CommandError("another gdb is attached to the stub; detach it first")
            if self.ctl.running:
                self.ctl.stop()
            self.gdb = GdbPane(str(m.image.path), self.ctl.server.port)
        self.gdb.execute(" ".join(args))
        return Result({"gdb": list(self.gdb.lines)[-40:]}, "(see the gdb pane)")

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
        try:
            self.app.run()      # prompt_toolkit restores the terminal however run() ends
        finally:
            self.shutdown()


def _following(get_text) -> FormattedTextControl:
    """A text control whose cursor sits on its last line, so the window shows the tail.
    The text is snapshotted once per render: the machine thread keeps appending to it."""
    snapshot: list = [""]

    def text():
        snapshot[0] = get_text()
        return snapshot[0]

    def last_line() -> Point:
        t = snapshot[0]
        # n newlines make n + 1 lines (the last one possibly empty): the cursor goes on the last
        return Point(0, t.count("\n") if isinstance(t, str) else sum(f[1].count("\n") for f in t))

    return FormattedTextControl(text, get_cursor_position=last_line, show_cursor=False)


def main_shell(session: Session) -> int:
    Shell(session).run()
    return 0

