"""Issue 6: the shell, driven through prompt_toolkit's pipe input (and a real terminal via tmux)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.key_binding.key_processor import KeyPress
from prompt_toolkit.keys import Keys
from prompt_toolkit.output import DummyOutput

from xenwb.session import ALL_PLUGINS, Session
from xenwb.tui import Shell


async def _until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the shell")
        await asyncio.sleep(0.05)


def _drive(script: Callable[[Shell, Callable[[str], None]], object], guest: str = "pvdemo-pae", vcpus: int = 1):
    async def main() -> Shell:
        with create_pipe_input() as inp:
            session = Session(guest, plugins=ALL_PLUGINS, vcpus=vcpus)
            shell = Shell(session, input=inp, output=DummyOutput())
            task = asyncio.ensure_future(shell.app.run_async())
            await asyncio.sleep(0.2)

            def type_line(text: str) -> None:
                inp.send_text(text + "\r")

            try:
                await script(shell, type_line)
            finally:
                if shell.app.is_running:
                    type_line("quit")
                await asyncio.wait_for(task, 30)
                shell.shutdown()
            return shell
    return asyncio.run(main())


def _said(shell: Shell, text: str) -> bool:
    return any(text in line for line in shell.output_lines)


def test_shell_boot_break_step_walk_masks_continue() -> None:
    async def script(shell: Shell, type_line) -> None:
        m = shell.machine
        target = m.image.lookup("step_multicall").address
        type_line("break step_multicall")
        await _until(lambda: _said(shell, "breakpoint at"))
        type_line("run")
        await _until(lambda: not shell.ctl.running and m.vcpus[0].cpu.eip == target)
        assert "step_multicall" in shell._vcpu_text()
        assert any(t[0] == "class:pc" and "step_multicall" in t[1] for t in shell._disas_text())
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
        assert "all " in bytes(shell.session.console).decode() and "checks passed" in shell._console_text()
        assert "shut down" in shell.ctl.status()
        assert any("sched_op" in frag[1] for frag in shell._tail_text())

    _drive(script)


def test_shell_watch_regs_x_and_errors() -> None:
    async def script(shell: Shell, type_line) -> None:
        m = shell.machine
        type_line("watch checks_run")
        await _until(lambda: _said(shell, "write watchpoint"))
        type_line("run")
        await _until(lambda: not shell.ctl.running and shell.ctl.last_stop is not None)
        assert shell.ctl.last_stop.kind.value == "watch"
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


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_shell_gdb_pane() -> None:
    async def script(shell: Shell, type_line) -> None:
        type_line("break step_multicall")
        type_line("run")
        await _until(lambda: not shell.ctl.running and shell.ctl.last_stop is not None)
        type_line("gdb bt")
        await _until(lambda: shell.gdb is not None and any("step_multicall" in x for x in shell.gdb.lines), 60)
        type_line("gdb p checks_run")
        await _until(lambda: any(x.startswith("$1 = ") for x in shell.gdb.lines), 30)
        type_line("gdb next")
        await _until(lambda: any("end-stepping-range" in x for x in shell.gdb.lines), 30)
        # a stop made from gdb is the shell's stop too
        assert shell.ctl.last_stop.kind.value == "step"
        assert shell.machine.image.line_at(shell.machine.vcpus[0].cpu.eip) is not None

    _drive(script)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_shell_in_a_real_terminal(tmp_path) -> None:
    """tmux smoke test: start `xenwb shell`, type commands, read the screen back."""
    name = f"xenwb-test-{os.getpid()}"
    cmd = f"{sys.executable} -m xenwb shell pvdemo-pae; echo SHELL-EXITED-$?; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "160", "-y", "48", cmd], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-t", name, "-p"], capture_output=True, text=True).stdout

    def wait_for(text: str, timeout: float = 30) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s = screen()
            if text in s:
                return s
            time.sleep(0.2)
        raise AssertionError(f"{text!r} not on screen:\n{screen()}")

    def keys(*k: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", name, *k], check=True)

    try:
        wait_for("xenwb>")
        keys("run", "Enter")
        wait_for("shut down")
        keys("pt check", "Enter")
        s = wait_for("no invariant violations")
        assert "guest console" in s and "hypercalls" in s and "checks passed" in s
        subprocess.run(["tmux", "resize-window", "-t", name, "-x", "120", "-y", "40"], check=False)
        keys("multicall stats", "Enter")
        wait_for("batches=")
        keys("quit", "Enter")
        wait_for("SHELL-EXITED-0")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], check=False)


GRUB = "/usr/lib/grub-xen/grub-i386-xen.bin"


@pytest.mark.skipif(not os.path.exists(GRUB), reason="grub-xen-host is not installed")
def test_console_input_reaches_the_guest() -> None:
    """F2 turns the command line into the guest's console: GRUB runs what is typed."""
    async def script(shell: Shell, type_line) -> None:
        type_line("run")
        await _until(lambda: "grub>" in shell._console_text(), 60)
        shell.app.key_processor.feed(KeyPress(Keys.F2))
        shell.app.key_processor.process_keys()
        await _until(lambda: shell.console_mode)
        type_line("echo hello from the shell")
        await _until(lambda: "\nhello from the shell" in shell._console_text(), 60)
        shell.console_mode = False
        type_line("stop")
        await _until(lambda: not shell.ctl.running)

    _drive(script, guest=GRUB)
