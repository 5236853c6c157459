"""End to end: the real gdb (Debian gdb 13) through pygdbmi against ``xenwb run --gdb``.

Each test starts its own ``xenwb run pvdemo-pae --gdb 127.0.0.1:0`` and gdb, bounds every
wait, and checks at the end that the guest still reaches its normal shutdown ("all N
checks passed", exit 0).
"""

from __future__ import annotations

import re
import signal
import time

import pytest
from support.client import XenwbProcess
from support.gdbmi import GDB, Gdb

pytestmark = pytest.mark.skipif(GDB is None, reason="gdb is not installed (Debian: apt-get install gdb)")


@pytest.fixture(scope="module")
def guest():
    from xenwb.examples import resolve_guest
    from xenwb.loader import load_guest
    path = resolve_guest("pvdemo-pae")
    img = load_guest(path)
    return path, {s.name: s.address for s in img.symbols}


@pytest.fixture
def launch(guest):
    """launch(vcpus=1, wait=True) -> (xenwb process, connected gdb with the guest's symbols)."""
    made: list[tuple[XenwbProcess, Gdb]] = []

    def start(vcpus: int = 1, wait: bool = True) -> tuple[XenwbProcess, Gdb]:
        p = XenwbProcess(vcpus=vcpus, wait=wait)
        g = Gdb()
        made.append((p, g))
        g.run(f"file {guest[0]}")
        attach(g, p)
        return p, g

    yield start
    for p, g in made:
        g.close()
        p.kill()


def attach(g: Gdb, p: XenwbProcess) -> dict:
    g.run(f"target remote 127.0.0.1:{p.port}")
    return g.wait_stop()


def expect_normal_end(g: Gdb, p: XenwbProcess) -> str:
    stop = g.cont(timeout=30)
    assert stop.get("reason") == "exited-normally", stop
    rc, out, err = p.finish(timeout=30)
    assert rc == 0, err
    assert "Traceback" not in err, err
    assert re.search(r"pvdemo: all \d+ checks passed", out), out[-400:]
    return out


def at(g: Gdb, where: str) -> dict:
    g.run(f"break {where}")
    stop = g.cont()
    assert stop.get("reason") == "breakpoint-hit", stop
    g.run("delete")
    return stop


# ------------------------------------------------------------------------------------------- tests
def test_break_continue_stepi_registers_disassembly(launch, guest):
    p, g = launch()
    syms = guest[1]
    g.run("break start_kernel")
    stop = g.cont()
    assert stop["reason"] == "breakpoint-hit" and stop["frame"]["func"] == "start_kernel", stop
    assert int(stop["frame"]["addr"], 16) == syms["start_kernel"]
    assert stop["thread-id"] == "1"
    g.run("delete")
    g.run("stepi")
    stop = g.wait_stop()
    assert stop["reason"] == "end-stepping-range", stop
    pc = int(stop["frame"]["addr"], 16)
    assert pc != syms["start_kernel"]
    regs = g.console("info registers")
    for name in ("eax", "esp", "eip", "eflags", "cs", "ss", "ds", "fs", "gs", "cr0", "cr3"):
        assert re.search(rf"^{name}\s+0x[0-9a-f]+", regs, re.M), (name, regs)
    assert re.search(rf"^eip\s+{pc:#x}", regs, re.M)
    assert re.search(r"^cs\s+0xe019", regs, re.M)                  # FLAT_RING1_CS: the kernel runs in ring 1
    dis = g.console("x/8i $pc")
    lines = [ln for ln in dis.splitlines() if re.match(r"\s*(=>\s*)?0x[0-9a-f]+", ln)]
    assert len(lines) == 8 and lines[0].lstrip().startswith("=>"), dis
    assert "xmm0" in g.console("info registers xmm0")             # the SSE feature is there
    g.run("next")                                                   # source-level step works too
    assert g.wait_stop()["reason"] == "end-stepping-range"
    expect_normal_end(g, p)


def test_read_and_write_variables(launch):
    p, g = launch()
    at(g, "start_kernel")
    assert g.value("checks_run") == "0"
    assert g.value("/x data_canary") == "0x600dcafe"
    g.run("set var checks_run = 1000")
    assert g.value("checks_run") == "1000"
    out = expect_normal_end(g, p)
    n = int(re.search(r"pvdemo: all (\d+) checks passed", out).group(1))
    assert n >= 1000                                                 # the guest saw the write


def test_watch_a_variable(launch):
    p, g = launch()
    at(g, "start_kernel")
    g.run("watch checks_run")
    stop = g.cont()
    assert stop["reason"] == "watchpoint-trigger", stop
    assert stop["value"] == {"old": "0", "new": "1"}
    assert stop["frame"]["func"] == "check"
    stop = g.cont()
    assert stop["reason"] == "watchpoint-trigger" and stop["value"] == {"old": "1", "new": "2"}, stop
    g.run("delete")
    g.run("rwatch data_canary")
    stop = g.cont()
    assert stop["reason"] == "read-watchpoint-trigger", stop
    g.run("delete")
    expect_normal_end(g, p)


def test_catch_hypercall_as_syscall(launch):
    p, g = launch()
    g.run("catch syscall 18")                                        # __HYPERVISOR_console_io
    stop = g.cont()
    assert stop["reason"] == "syscall-entry" and stop["syscall-number"] == "18", stop
    assert g.value("$eax") == "18"
    why = g.console("monitor why")
    assert "on entry to hypercall 18 (console_io)" in why and "\"cmd\": \"write\"" in why, why
    stop = g.cont()
    assert stop["reason"] == "syscall-return" and stop["syscall-number"] == "18", stop
    assert g.value("$eax") == "0"                                   # CONSOLEIO_write's result
    assert "on return from hypercall 18 (console_io)" in g.console("monitor why")
    g.run("delete")
    expect_normal_end(g, p)


def test_monitor_commands(launch):
    p, g = launch()
    text = g.console("monitor help")
    for cmd in ("help", "info vcpus", "xen version", "why"):
        assert cmd in text, text
    assert "xen-3.0" in g.console("monitor xen version")
    assert "running" in g.console("monitor info vcpus")
    expect_normal_end(g, p)


def test_threads_are_vcpus(launch):
    p, g = launch(vcpus=2)
    text = g.console("info threads")
    assert re.search(r"\*\s+1\s+Thread 1 \"vcpu0\" \(vcpu0 running, events masked\)", text), text
    assert re.search(r"2\s+Thread 2 \"vcpu1\" \(vcpu1 down\)", text), text
    r, _ = g.run("-thread-info")
    assert [t["id"] for t in r["payload"]["threads"]] == ["1", "2"]
    assert "Switching to thread 2" in g.console("thread 2")
    assert g.value("$pc")                                           # vcpu1's own registers
    g.console("thread 1")
    at(g, "start_kernel")
    assert "start_kernel" in g.console("thread apply all bt 1")
    expect_normal_end(g, p)


def test_thread_2_runs_guest_code(launch, guest):
    """A breakpoint hit by the second vcpu stops in thread 2, whose registers and stack are
    its own; stepping and continuing from there work."""
    if "secondary_start" not in guest[1]:
        pytest.skip("this pvdemo has no SMP bring-up (no secondary_start): a stop in thread 2 needs a guest "
                    "that brings vcpu1 up; listing and selecting thread 2 is covered by test_threads_are_vcpus")
    p, g = launch(vcpus=2)
    g.run("break secondary_start")
    stop = g.cont(timeout=30)
    if stop.get("reason", "").startswith("exited"):
        pytest.skip("the guest did not bring vcpu1 up with 2 vcpus")
    assert stop["reason"] == "breakpoint-hit" and stop["thread-id"] == "2", stop
    assert stop["frame"]["func"] == "secondary_start"
    g.run("delete")
    text = g.console("info threads")
    assert re.search(r"\*\s+2\s+Thread 2 \"vcpu1\" \(vcpu1 running", text), text
    sp2 = int(g.value("/x $sp"), 16)
    g.console("thread 1")
    assert int(g.value("/x $sp"), 16) != sp2                       # vcpu0 has its own stack
    g.console("thread 2")
    g.run("stepi")
    stop = g.wait_stop()
    assert stop["reason"] == "end-stepping-range" and stop["thread-id"] == "2", stop
    # vcpu0 waits in a hypercall meanwhile: stepping it runs the machine until it has run
    # one instruction (here the first one of its event upcall)
    assert "vcpu0 blocked" in g.console("info threads")
    g.console("thread 1")
    g.run("stepi")
    stop = g.wait_stop(timeout=30)
    assert stop["reason"] == "end-stepping-range" and stop["thread-id"] == "1", stop
    expect_normal_end(g, p)


def _spin(g: Gdb, guest) -> tuple[int, int]:
    """Stop at finish() and park the vcpu on a `jmp .` written into early_log (unused once
    the console works), so the guest runs for as long as we like. Returns (loop, old pc)."""
    at(g, "finish")
    old = int(g.value("/x $pc"), 16)
    loop = guest[1]["early_log"]
    g.run(f"set {{unsigned short}}{loop:#x} = 0xfeeb")
    g.run(f"set $pc = {loop:#x}")
    return loop, old


def _back_on_the_loop(g: Gdb, loop: int, pc: int) -> int:
    """A stop of the spinning vcpu can land inside an event upcall it is taking (the timer
    keeps ticking while it spins: the stop is then on the callback's instructions, a truthful
    place); run that upcall to its end, back on the loop. Returns the pc there."""
    if pc != loop:
        g.run(f"tbreak *{loop:#x}")
        stop = g.cont(timeout=30)
        assert stop["reason"] == "breakpoint-hit", stop
        pc = int(stop["frame"]["addr"], 16)
    return pc


def _unspin(g: Gdb, loop: int, old: int) -> None:
    g.run(f"set {{unsigned short}}{loop:#x} = 0")
    g.run(f"set $pc = {old:#x}")


def test_ctrl_c_interrupts_a_running_guest(launch, guest):
    p, g = launch()
    loop, old = _spin(g, guest)
    g.run("-exec-continue")
    time.sleep(0.5)
    assert p.proc.poll() is None
    g.mi.gdb_process.send_signal(signal.SIGINT)                    # Ctrl-C to gdb: it sends 0x03
    stop = g.wait_stop()
    assert stop["reason"] == "signal-received" and stop["signal-name"] == "SIGINT", stop
    assert _back_on_the_loop(g, loop, int(stop["frame"]["addr"], 16)) == loop
    _unspin(g, loop, old)
    expect_normal_end(g, p)


def test_detach_and_reattach(launch, guest):
    p, g = launch()
    loop, old = _spin(g, guest)
    g.run("detach")
    g.close()
    time.sleep(0.3)
    assert p.proc.poll() is None                                     # the guest keeps running
    g2 = Gdb()
    try:
        g2.run(f"file {guest[0]}")
        attach(g2, p)
        assert _back_on_the_loop(g2, loop, int(g2.value("/x $pc"), 16)) == loop
        _unspin(g2, loop, old)
        expect_normal_end(g2, p)
    finally:
        g2.close()
