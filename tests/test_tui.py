"""The shell, driven through prompt_toolkit's pipe input (and a real terminal via tmux)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from prompt_toolkit.data_structures import Size
from prompt_toolkit.formatted_text import fragment_list_to_text
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from xenwb.session import ALL_PLUGINS, Session
from xenwb.tui import TAIL_KINDS, WHEEL_ROWS, Shell

PAGE_UP, PAGE_DOWN, F2, F6, F7 = "\x1b[5~", "\x1b[6~", "\x1bOQ", "\x1b[17~", "\x1b[18~"


class SizedOutput(DummyOutput):
    """A dummy terminal of a given size."""

    def __init__(self, rows: int, columns: int) -> None:
        self.size = Size(rows=rows, columns=columns)

    def get_size(self) -> Size:
        return self.size


async def _until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the shell")
        await asyncio.sleep(0.05)


def _drive(script, guest: str = "pvdemo-pae", vcpus: int = 1, size: tuple[int, int] = (40, 160)):
    async def main() -> Shell:
        with create_pipe_input() as inp:
            session = Session(guest, plugins=ALL_PLUGINS, vcpus=vcpus)
            shell = Shell(session, input=inp, output=SizedOutput(*size))
            task = asyncio.ensure_future(shell.app.run_async())
            await asyncio.sleep(0.2)

            def type_line(text: str) -> None:
                inp.send_text(text + "\r")

            try:
                await script(shell, type_line, inp.send_text)
            finally:
                if shell.app.is_running:
                    type_line("quit")
                await asyncio.wait_for(task, 30)
                shell.shutdown()
            return shell
    return asyncio.run(main())


def _said(shell: Shell, text: str) -> bool:
    return any(text in line for line in shell.output_lines)


def _lines(shell: Shell, pane: str) -> list[str]:
    """A pane's whole text (all its lines, not only those in view)."""
    _, lines = shell.panes[pane].source()
    return [line if isinstance(line, str) else fragment_list_to_text(line) for line in lines]


def _shown(shell: Shell, pane: str) -> list[str]:
    """The rows of a pane on the screen, as last drawn."""
    return [fragment_list_to_text(r) for r in shell.panes[pane].rows]


def test_shell_boot_break_step_walk_masks_continue() -> None:
    async def script(shell: Shell, type_line, keys) -> None:
        m = shell.machine
        target = m.image.lookup("step_multicall").address
        type_line("break step_multicall")
        await _until(lambda: _said(shell, "breakpoint at"))
        type_line("run")
        await _until(lambda: not shell.ctl.running and m.vcpus[0].cpu.eip == target)
        # the stop reason, in the status line and (the stop ended a `run`) in the output
        assert f"stopped: vcpu0 breakpoint at {target:#010x} <step_multicall>" in shell.ctl.status()
        await _until(lambda: _said(shell, "stopped: vcpu0 breakpoint at"))
        assert "<step_multicall>" in _lines(shell, "vcpu")
        # one disassembly syntax: the pane shows what `disas` prints (AT&T), operands whole
        pane = shell.panes["disassembly"]
        disas = _lines(shell, "disassembly")
        type_line("disas step_multicall 12")
        await _until(lambda: any(line.startswith(f"{target:08x} <step_multicall>") for line in shell.output_lines))
        said = list(shell.output_lines)
        printed = said[said.index("xenwb> disas step_multicall 12") + 1:]
        at_pc = next(i for i, t in enumerate(disas) if t.startswith(f"{target:08x}"))
        assert disas[at_pc: at_pc + 12] == printed and any("%esp" in t for t in printed)
        pc_row = next(r for r in pane.rows if r and r[0][0] == "class:pc")
        assert fragment_list_to_text(pc_row) == disas[at_pc]
        assert pane.preferred_width(500) == max(len(t) for t in disas)
        joined: list[str] = []                      # narrower than that, lines wrap (indented), never cut
        for row in (fragment_list_to_text(r) for r in pane.render(30, 200)):
            assert len(row) <= 30
            if row.startswith("    "):
                joined[-1] += row[4:]
            else:
                joined.append(row)
        assert joined == disas
        type_line("stepi 3")
        await _until(lambda: _said(shell, "vcpu0 pc") and m.vcpus[0].cpu.eip != target)
        type_line("step")
        await _until(lambda: _said(shell, "kernel.c:"))
        type_line("pt walk step_multicall")
        await _until(lambda: _said(shell, "RW kernel"))
        type_line("evmask")
        await _until(lambda: _said(shell, "vcpu0: upcall_mask="))
        type_line("hypercalls summary")
        await _until(lambda: _said(shell, "console_io"))
        type_line("delete all")
        await _until(lambda: _said(shell, "deleted"))
        type_line("continue")
        await _until(lambda: m.domain.finished)
        assert m.domain.shutdown_reason == 0
        await _until(lambda: "checks passed" in shell.console.text())
        assert "shut down (poweroff)" in shell.ctl.status()
        assert any("sched_op" in line for line in _lines(shell, "hypercalls"))

    _drive(script)


def test_shell_watch_regs_x_and_errors() -> None:
    async def script(shell: Shell, type_line, keys) -> None:
        m = shell.machine
        type_line("watch checks_run")
        await _until(lambda: _said(shell, "write watchpoint"))
        type_line("run")
        await _until(lambda: not shell.ctl.running and shell.ctl.last_stop.kind.value != "initial")
        assert shell.ctl.last_stop.kind.value == "watch"
        assert "watchpoint (write)" in shell.ctl.status()
        type_line("regs")
        await _until(lambda: _said(shell, "eip"))
        type_line("x checks_run 1")
        await _until(lambda: any(line.startswith(f"{m.image.lookup('checks_run').address:08x}:")
                                 for line in shell.output_lines))
        type_line("info breakpoints")
        await _until(lambda: _said(shell, "watchpoint (write)"))
        type_line("frobnicate")
        await _until(lambda: _said(shell, "error: unknown command"))
        type_line("vcpu 7")
        await _until(lambda: _said(shell, "error: no vcpu 7"))

    _drive(script)


def test_long_results_scroll_with_keys_and_the_output_pane_grows() -> None:
    heights = {}

    async def script(shell: Shell, type_line, keys) -> None:
        out = shell.panes["output"]
        type_line("help")
        # a result longer than the pane is shown from its first line...
        await _until(lambda: _shown(shell, "output")[:1] == ["xenwb> help"])
        height = heights[shell.app.output.get_size().rows] = len(out.rows)
        helped = _lines(shell, "output")
        assert len(helped) > height and not any("examine guest-physical" in r for r in _shown(shell, "output"))
        # ...and PageDown/PageUp page through it (the output pane is the active one)
        keys(PAGE_DOWN * len(helped))               # more than enough: wrapped lines take several rows
        await _until(lambda: any("examine guest-physical" in r for r in _shown(shell, "output")))
        assert out.top is None                      # at the end: following again
        keys(PAGE_UP)
        await _until(lambda: not any("examine guest-physical" in r for r in _shown(shell, "output")))
        # F6 makes the next pane active (round all of them), F7 zooms the active one
        keys(F6)
        await _until(lambda: shell.active == "console")
        keys(F6 * 4)
        await _until(lambda: shell.active == "output")
        keys(F7)
        await _until(lambda: shell.zoomed and len(out.rows) >= shell.app.output.get_size().rows - 6)
        keys(F7)
        await _until(lambda: not shell.zoomed and len(out.rows) == height)

    for rows in (24, 60):
        _drive(script, size=(rows, 100))
    assert heights[24] >= 6 and heights[60] >= 24


@pytest.fixture
def crash_guest(guests):
    return guests["crash"]


def test_status_line_after_a_crash_is_post_mortem(crash_guest) -> None:
    async def script(shell: Shell, type_line, keys) -> None:
        type_line("run")
        await _until(lambda: _said(shell, "post-mortem:"))
        status = shell.ctl.status()
        assert "post-mortem, inspectable: vcpu0 crashed at" in status and "<hlt_insn>" in status
        assert _said(shell, "registers, memory and Xen state stay inspectable")
        type_line("regs")
        await _until(lambda: _said(shell, f"eip    {crash_guest.symbols['hlt_insn']:#010x}"))
        type_line("continue")
        await _until(lambda: "ended: vcpu0 crashed" in shell.ctl.status())

    _drive(script, guest=str(crash_guest.path))


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_shell_gdb_pane_is_refreshed_after_shell_stops() -> None:
    def gdb_has(shell: Shell, pattern: str, since: int = 0) -> bool:
        """A line of the gdb pane matches, among those from index since on."""
        if shell.gdb is None:
            return False
        first, lines = shell.gdb.lines.view()
        return any(re.search(pattern, x) for x in list(lines)[max(0, since - first):])

    async def script(shell: Shell, type_line, keys) -> None:
        m = shell.machine
        type_line("break step_multicall")
        type_line("run")
        await _until(lambda: not shell.ctl.running and shell.ctl.last_stop.kind.value == "swbreak")
        type_line("gdb bt")
        await _until(lambda: gdb_has(shell, r"^#0 .*step_multicall"), 60)
        type_line("gdb p checks_run")
        await _until(lambda: gdb_has(shell, r"^\$1 = "), 30)
        type_line("gdb next")
        await _until(lambda: gdb_has(shell, "end-stepping-range"), 30)
        # a stop made from gdb is the shell's stop too
        assert shell.ctl.last_stop.kind.value == "step"
        assert m.image.line_at(m.vcpus[0].cpu.eip) is not None
        # a stop made from the shell: gdb re-reads the target by itself
        type_line("delete all")
        type_line("break step_events")
        mark = shell.gdb.lines.appended
        type_line("continue")
        await _until(lambda: gdb_has(shell, r"^#0 .*step_events \(\)", mark), 30)
        assert gdb_has(shell, r"\[vcpu0 breakpoint at 0x[0-9a-f]+ <step_events>: stopped from the shell\]")
        type_line("gdb bt")
        await _until(lambda: gdb_has(shell, r"^#1 .* in start_kernel", mark), 30)
        assert not gdb_has(shell, r"^#0 .*step_multicall", mark)
        type_line("stepi")
        await _until(lambda: _said(shell, "vcpu0 pc") and m.vcpus[0].cpu.eip != m.image.lookup("step_events").address)
        mark = shell.gdb.lines.appended
        type_line("gdb p/x $pc")
        pc = f"0x{m.vcpus[0].cpu.eip:x}"
        await _until(lambda: gdb_has(shell, rf"^\$\d+ = {pc}$", mark), 30)
        # a stop on the other vcpu: gdb switches to its thread
        type_line("delete all")
        type_line("break secondary_startup")
        mark = shell.gdb.lines.appended
        type_line("continue")
        await _until(lambda: gdb_has(shell, r"^#0 .*secondary_startup \(\)", mark), 30)
        type_line("gdb info threads")
        await _until(lambda: gdb_has(shell, r'^\* 2 +Thread 2 "vcpu1"', mark), 30)

    _drive(script, vcpus=2)


def _output_pane(screen: str) -> list[str]:
    """The output pane's rows on a captured screen (the pane spans the width: no gdb pane)."""
    rows = screen.splitlines()
    top = next(i for i, r in enumerate(rows) if "| output |" in r)
    bottom = next(i for i in range(top + 1, len(rows)) if rows[i].startswith("└"))
    return [r[1:-1] for r in rows[top + 1: bottom]]


def _tmux(name: str, cmd: str, size: tuple[int, int] = (160, 48)):
    """Start cmd in a detached tmux session; returns screen(), wait_for(text), keys(*k), flags()."""
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(size[0]), "-y", str(size[1]), cmd],
                   check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-t", name, "-p"], capture_output=True, text=True).stdout

    def wait_for(text: str, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = screen()
            if text in s:
                return s
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not on screen:\n{screen()}")

    def keys(*k: str, literal: bool = False) -> None:
        subprocess.run(["tmux", "send-keys", "-t", name, *(["-l"] if literal else []), *k], check=True)

    def flags() -> str:
        """Whether the program in the pane has the alternate screen and mouse reporting on."""
        return subprocess.run(["tmux", "display", "-p", "-t", name, "#{alternate_on} #{mouse_any_flag}"],
                              capture_output=True, text=True).stdout.strip()

    return screen, wait_for, keys, flags


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_shell_in_a_real_terminal() -> None:
    """tmux smoke test: start `xenwb shell`, type commands, scroll, read the screen back; the
    terminal is restored when a SIGTERM ends the shell."""
    name = f"xenwb-test-{os.getpid()}"
    screen, wait_for, keys, flags = _tmux(name, f"{sys.executable} -m xenwb shell pvdemo-pae; "
                                                "echo SHELL-EXITED-$?; sleep 30")
    try:
        wait_for("xenwb>")
        assert flags() == "1 1"
        keys("run", "Enter")
        wait_for("shut down")
        keys("pt check", "Enter")
        s = wait_for("no invariant violations")
        assert "guest console" in s and "hypercalls" in s and "checks passed" in s
        keys("help", "Enter")
        s = wait_for("xenwb> help")
        assert "examine guest-physical" not in s        # help's last line, below the pane's end
        keys(*["PageDown"] * 8)
        s = wait_for("examine guest-physical")
        assert "xenwb> help" not in s
        before = _output_pane(s)
        y = 1 + next(i for i, r in enumerate(s.splitlines()) if "| output |" in r) + 3   # in the output pane
        keys(f"\x1b[<64;10;{y}M", literal=True)                                       # the wheel: up a notch
        end = time.monotonic() + 10
        while (after := _output_pane(screen())) == before and time.monotonic() < end:
            time.sleep(0.05)
        assert after[WHEEL_ROWS:] == before[:-WHEEL_ROWS]
        subprocess.run(["tmux", "resize-window", "-t", name, "-x", "120", "-y", "40"], check=False)
        keys("multicall stats", "Enter")
        wait_for("batches=")
        pane_pid = subprocess.run(["tmux", "display", "-p", "-t", name, "#{pane_pid}"],
                                  capture_output=True, text=True).stdout.strip()
        shell_pid = subprocess.run(["pgrep", "-P", pane_pid, "-f", "xenwb shell"],
                                   capture_output=True, text=True).stdout.split()
        assert len(shell_pid) == 1
        os.kill(int(shell_pid[0]), signal.SIGTERM)
        wait_for("SHELL-EXITED-0")
        assert flags() == "0 0"                          # the terminal was given back as it was
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], check=False)


GRUB = "/usr/lib/grub-xen/grub-i386-xen.bin"


@pytest.mark.skipif(not os.path.exists(GRUB), reason="grub-xen-host is not installed")
def test_console_renders_grub_and_input_reaches_it() -> None:
    """GRUB's console escapes are applied, not shown; F2 turns the command line into the
    guest's console: GRUB runs what is typed."""
    async def script(shell: Shell, type_line, keys) -> None:
        type_line("run")
        await _until(lambda: "grub>" in shell.console.text(), 60)
        text = shell.console.text()
        assert "\x1b" not in text and "[?25h" not in text
        assert any(line.startswith(" " * 23 + "GNU GRUB  version") for line in text.splitlines())  # ESC[2;24H
        keys(F2)
        await _until(lambda: shell.console_mode)
        type_line("echo hello from the shell")
        await _until(lambda: "\nhello from the shell" in shell.console.text(), 60)
        keys(F2)
        type_line("stop")
        await _until(lambda: not shell.ctl.running)

    _drive(script, guest=GRUB)


@pytest.mark.skipif(shutil.which("tmux") is None or not os.path.exists(GRUB), reason="needs tmux and grub-xen-host")
def test_grub_console_in_a_real_terminal() -> None:
    name = f"xenwb-grub-{os.getpid()}"
    screen, wait_for, keys, flags = _tmux(name, f"{sys.executable} -m xenwb shell {GRUB} --run; "
                                                "echo SHELL-EXITED-$?; sleep 30")
    try:
        s = wait_for("grub>")
        assert "GNU GRUB  version" in s and "Minimal BASH-like line editing" in s
        assert "Welcome to GRUB!" not in s                  # GRUB cleared the screen after it
        assert "^[" not in s and "\x1b" not in s and not re.search(r"\[\d+(;\d+)*[mHJ]", s)
        keys("quit", "Enter")
        wait_for("SHELL-EXITED-0")
        assert flags() == "0 0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], check=False)


def test_the_shell_subscribes_only_to_what_its_tail_shows() -> None:
    """The tail pane shows hypercalls, faults, upcalls, crashes and shutdowns: the shell asks
    the trace bus for those kinds only, so without plugins the machine observes nothing else
    (no upcall-mask stores, no event-channel events), and the tail still fills up."""
    async def script(shell: Shell, type_line, keys) -> None:
        bus = shell.machine.domain.trace
        mine = [ks for fn, ks, _ in bus._subs if getattr(fn, "__self__", None) is shell.ctl]
        assert mine == [TAIL_KINDS]
        assert not bus.wants("mask") and not bus.wants("event") and bus.wants("hypercall")
        type_line("run")
        await _until(lambda: shell.machine.domain.finished)
        _, tail = shell.ctl.tail_view()
        assert tail and {e["kind"] for e in tail} <= TAIL_KINDS and any(e["kind"] == "upcall" for e in tail)

    async def main() -> None:
        with create_pipe_input() as inp:
            shell = Shell(Session("pvdemo-pae", plugins=()), input=inp, output=SizedOutput(40, 160))
            task = asyncio.ensure_future(shell.app.run_async())
            await asyncio.sleep(0.2)
            try:
                await script(shell, lambda t: inp.send_text(t + "\r"), inp.send_text)
            finally:
                if shell.app.is_running:
                    inp.send_text("quit\r")
                await asyncio.wait_for(task, 30)
                shell.shutdown()
    asyncio.run(main())
