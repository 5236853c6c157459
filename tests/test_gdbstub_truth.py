"""The debugger tells the truth, end to end: real gdb 13 (through pygdbmi) against the stub.

* 1,000 consecutive `stepi` on code that already ran at full speed, each judged by capstone
  (tests/oracle.py) from inside the stub's process at every stop, in the PAE, non-PAE and
  2-vcpu examples; gdb's pcs are the judge's;
* write, read and access watchpoints stop right after each of two back-to-back accesses
  (tests/guests/spin.S);
* a breakpoint on a `jmp .` loop stops every `continue`; Ctrl-C, a dropped connection and
  SIGTERM stop or end the run within 1 s; another gdb attaches afterwards;
* a crashed guest stays inspectable (bt, info registers, x) until detach;
* attaching, stepping and detaching many times at seeded random points changes nothing the
  guest sees: its console output is the undisturbed run's;
* what QEMU users expect: a bare `target remote` finds the ELF (qXfer:exec-file), `catch
  syscall mmu_update` by name (the data directory the stub prints), `info mem` from the
  pagetables, `maint packet Qqemu.PhyMemMode:1`, `monitor why` and `monitor info registers`.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.client import REPO, XenwbProcess
from support.gdbmi import GDB, Gdb
from support.harness import build_guest
from support.stub import InProcessStub, Judge

pytestmark = pytest.mark.skipif(GDB is None, reason="gdb is not installed (Debian: apt-get install gdb)")

GDB_SCRIPT = r'''
import random
import time

import gdb


def xenwb_steps(n):
    """n stepi, then the pc after each."""
    pcs = []
    for _ in range(n):
        gdb.execute("stepi", to_string=True)
        pcs.append(int(gdb.parse_and_eval("$pc")) & 0xFFFFFFFF)
    print("<<<" + " ".join("%x" % p for p in pcs) + ">>>")


def xenwb_attach_loop(port, seed, limit):
    """Attach, stepi 0-3 times, detach, wait a little; until nobody listens any more."""
    rnd = random.Random(seed)
    attaches = steps = 0
    while attaches < limit:
        try:
            gdb.execute("target remote 127.0.0.1:%d" % port, to_string=True)
        except gdb.error:
            break
        attaches += 1
        try:
            for _ in range(rnd.randint(0, 3)):
                gdb.execute("stepi", to_string=True)
                steps += 1
            gdb.execute("detach", to_string=True)
        except gdb.error:
            break
        time.sleep(rnd.uniform(0, 0.004))
    print("<<<%d %d>>>" % (attaches, steps))
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gdb") / "xenwb_test.py"
    path.write_text(GDB_SCRIPT)
    return path


@pytest.fixture(scope="module")
def spin(tmp_path_factory):
    return build_guest("spin", tmp_path_factory.mktemp("spin"))


@pytest.fixture(scope="module")
def spin_crash(tmp_path_factory):
    return build_guest("spin", tmp_path_factory.mktemp("spin-crash"), defines=("CRASH=1",))


@pytest.fixture
def cleanup():
    """Things to close at the end of the test, whatever happens."""
    items: list = []
    yield items
    for x in reversed(items):
        try:
            x.close() if hasattr(x, "close") else x.kill()
        except Exception:
            pass


def _gdb(cleanup, *args: str) -> Gdb:
    g = Gdb(*args)
    cleanup.append(g)
    return g


def _xenwb(cleanup, guest: str, **kw) -> XenwbProcess:
    p = XenwbProcess(guest, **kw)
    cleanup.append(p)
    return p


# ------------------------------------------------------------------------------------------------ stepping
@pytest.mark.parametrize("guest,vcpus", [("pvdemo-pae", 1), ("pvdemo-nonpae", 1), ("pvdemo-pae", 2)],
                         ids=["pae", "nonpae", "smp"])
def test_1000_stepi_each_one_instruction_in_cached_code(cleanup, script, guest, vcpus):
    stub = InProcessStub(guest, vcpus)
    cleanup.append(stub)
    g = _gdb(cleanup)
    g.run(f"file {stub.session.image.path}")
    g.run(f"source {script}")
    g.run(f"target remote 127.0.0.1:{stub.server.port}")
    g.wait_stop()
    g.run("break printk")
    for _ in range(3):                                   # printk has run at full speed before
        assert g.cont()["reason"] == "breakpoint-hit"
    g.run("delete")
    judge = Judge(stub, stub.ctl.last_stop.vcpu)
    stub.ctl.add_listener(judge)
    text = g.python("xenwb_steps(1000)", timeout=120)
    stub.ctl.remove_listener(judge)
    gdb_pcs = [int(x, 16) for x in text.split()]
    assert judge.errors == []
    assert len(judge.pcs) == 1000 and gdb_pcs == judge.pcs       # gdb saw what happened
    assert len(set(gdb_pcs)) > 100                               # real code, not a loop
    assert g.cont(timeout=60)["reason"] == "exited-normally"
    assert re.search(rb"pvdemo: all \d+ checks passed", bytes(stub.console))


# ------------------------------------------------------------------------------------------------ watchpoints
def _at_spin(g: Gdb, spin) -> None:
    """Run to the `jmp .` (work() has run 200 times: its code is cached), and leave it."""
    g.run("break spin")
    assert g.cont()["reason"] == "breakpoint-hit"
    g.run("delete")


def _pcs_of_hits(g: Gdb, spin, n: int, reason: str) -> list[str]:
    """Continue n times from after_spin; the instruction each stop comes right after."""
    order = ["read_1", "read_2", "compare", "write_1", "write_2", "work_ret"]
    at = {spin.symbols[name]: name for name in order}
    g.run(f"set $pc = {spin.symbols['after_spin']:#x}")
    hits = []
    for _ in range(n):
        stop = g.cont()
        assert stop["reason"] == reason, stop
        name = at.get(int(stop["frame"]["addr"], 16))
        assert name is not None, f"stopped at {stop['frame']['addr']}, not right after an access"
        hits.append(order[order.index(name) - 1])
    g.run("delete")
    return hits


def test_watchpoints_stop_right_after_each_access(cleanup, spin):
    p = _xenwb(cleanup, str(spin.path))
    g = _gdb(cleanup)
    g.run(f"file {spin.path}")
    g.run(f"target remote 127.0.0.1:{p.port}")
    g.wait_stop()
    _at_spin(g, spin)
    g.run("rwatch *(int *) &value")                                        # two back-to-back reads, then incl
    assert _pcs_of_hits(g, spin, 3, "read-watchpoint-trigger") == ["read_1", "read_2", "write_1"]
    g.run("awatch *(int *) &value")
    assert _pcs_of_hits(g, spin, 3, "access-watchpoint-trigger") == ["read_1", "read_2", "write_1"]
    g.run("watch *(int *) &value")                                         # back-to-back writes: incl, then mov
    g.run("watch *(int *) &other")
    assert _pcs_of_hits(g, spin, 2, "watchpoint-trigger") == ["write_1", "write_2"]
    g.run(f"set $pc = {spin.symbols['after_spin']:#x}")
    assert g.cont()["reason"] == "exited-normally"
    rc, out, err = p.finish()
    assert rc == 0 and "left the spin loop" in out, err


# ------------------------------------------------------------------------------------------------ never wedged
def test_spin_loop_breakpoint_interrupts_disconnect_sigterm(cleanup, spin):
    p = _xenwb(cleanup, str(spin.path))
    g = _gdb(cleanup)
    g.run(f"file {spin.path}")
    g.run(f"target remote 127.0.0.1:{p.port}")
    g.wait_stop()
    g.run("break spin")
    for _ in range(5):                                           # `jmp .` with a breakpoint on it
        stop = g.cont()
        assert stop["reason"] == "breakpoint-hit" and int(stop["frame"]["addr"], 16) == spin.symbols["spin"]
    g.run("delete")
    # Ctrl-C to gdb: it sends 0x03; the spinning guest stops at once
    g.run("-exec-continue")
    time.sleep(0.3)
    t0 = time.monotonic()
    g.mi.gdb_process.send_signal(signal.SIGINT)
    stop = g.wait_stop()
    assert time.monotonic() - t0 < 1.0
    assert stop["reason"] == "signal-received" and stop["signal-name"] == "SIGINT", stop
    # a dropped connection: the session ends and another gdb attaches to the running guest
    g2 = _gdb(cleanup)
    g2.run(f"file {spin.path}")
    g.run("-exec-continue")
    time.sleep(0.2)
    t0 = time.monotonic()
    g.mi.gdb_process.kill()
    g2.run(f"target remote 127.0.0.1:{p.port}")
    stop = g2.wait_stop()
    assert time.monotonic() - t0 < 1.0
    assert int(g2.value("/x $pc"), 16) == spin.symbols["spin"]
    # SIGTERM to xenwb while the guest spins under gdb: the run ends
    g2.run("-exec-continue")
    time.sleep(0.2)
    t0 = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    p.proc.wait(timeout=5)
    assert time.monotonic() - t0 < 1.0
    _, _, err = p.finish()
    assert "Traceback" not in err, err


# ------------------------------------------------------------------------------------------------ post-mortem
def test_a_crash_stays_inspectable_until_detach(cleanup, spin_crash):
    p = _xenwb(cleanup, str(spin_crash.path))
    g = _gdb(cleanup)
    g.run(f"file {spin_crash.path}")
    g.run(f"target remote 127.0.0.1:{p.port}")
    g.wait_stop()
    stop = g.cont()
    assert stop["reason"] == "signal-received" and stop["signal-name"] == "SIGSEGV", stop
    crash = spin_crash.symbols["crash_insn"]
    assert "crash_insn" in g.console("bt")
    regs = g.console("info registers")
    assert re.search(rf"^eip\s+{crash:#x}", regs, re.M), regs
    assert re.search(r"^esp\s+0x[0-9a-f]+", regs, re.M)
    assert "0x1000" in g.console("x/i $pc")                      # movl %eax, 0x1000
    assert len(g.console("x/4xw $esp").split()) >= 5              # the stack is readable
    assert "domain crashed" in g.console("monitor why")
    assert "EIP=" in g.console("monitor info registers")
    g.run("detach")
    rc, _, err = p.finish()
    assert rc == 1 and "crash" in err, err


# ------------------------------------------------------------------------------------------------ invisible stops
def test_attach_step_detach_at_random_points_changes_nothing(cleanup, script):
    ref = subprocess.run([sys.executable, "-m", "xenwb", "run", "pvdemo-pae", "--vcpus", "2", "--merge-consoles"],
                         cwd=REPO, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert ref.returncode == 0
    g = _gdb(cleanup)
    g.run("set confirm off")
    g.run("set tcp auto-retry off")                           # once the run ended: refused at once
    g.run(f"source {script}")
    p = _xenwb(cleanup, "pvdemo-pae", vcpus=2, wait=False)      # the guest runs as soon as it listens
    attaches, steps = (int(x) for x in g.python(f"xenwb_attach_loop({p.port}, 13, 1000)", timeout=120).split())
    rc, out, err = p.finish()
    assert rc == 0, err
    assert attaches >= 5 and steps >= 5, (attaches, steps)
    assert re.search(r"pvdemo: all \d+ checks passed", out)
    assert out.encode() == ref.stdout                             # byte for byte


# ------------------------------------------------------------------------------------------------ features
def test_exec_file_syscall_names_memory_map_phys_mode_monitor(cleanup):
    p = _xenwb(cleanup, "pvdemo-pae")
    hint = p.proc.stderr.readline().decode()
    p.stderr_lines.append(hint)
    ddir = re.search(r"--data-directory (\S+)", hint).group(1)
    g = _gdb(cleanup, "--data-directory", ddir)
    g.run(f"target remote 127.0.0.1:{p.port}")                  # no `file`: the stub names the ELF
    g.wait_stop()
    assert re.search(r"0x[0-9a-f]+ <checks_run>", g.console("p &checks_run"))
    g.run("catch syscall mmu_update")
    stop = g.cont()
    assert stop["reason"] == "syscall-entry" and stop["syscall-name"] == "mmu_update", stop
    assert "on entry to hypercall 1 (mmu_update)" in g.console("monitor why")
    stop = g.cont()
    assert stop["reason"] == "syscall-return" and stop["syscall-name"] == "mmu_update", stop
    g.run("delete")
    mem = g.console("info mem")
    assert re.search(r"0xc0000000 0x[0-9a-f]+ rw", mem) and " ro " in mem, mem
    ro = int(re.search(r"(0x[0-9a-f]+) 0x[0-9a-f]+ ro", mem).group(1), 16)    # the first read-only range
    r, _ = g.run(f"set {{int}}{ro:#x} = {{int}}{ro:#x}", ok=("error",))   # gdb keeps out of "rom"
    assert "Cannot access memory" in r["payload"]["msg"], r
    g.run("delete mem")                                         # without the map, gdb writes anywhere again
    g.run(f"set {{int}}{ro:#x} = {{int}}{ro:#x}")
    # guest-physical addresses: pfn 0 holds the kernel's first page (VIRT_BASE 0xc0000000)
    virt = g.console("x/4xw 0xc0000000").split(":", 1)[1].split()
    assert '"OK"' in g.console("maint packet Qqemu.PhyMemMode:1")
    assert '"1"' in g.console("maint packet qqemu.PhyMemMode")
    assert g.console("x/4xw 0").split(":", 1)[1].split() == virt
    assert g.console("monitor xp 0 4").split(":", 1)[1].split() == [w.removeprefix("0x") for w in virt]
    assert '"OK"' in g.console("maint packet Qqemu.PhyMemMode:0")
    info = g.console("monitor info registers")
    assert "EIP=" in info and "GDT=" in info and "CS =e019" in info, info
    assert g.cont(timeout=60)["reason"] == "exited-normally"
    rc, out, err = p.finish()
    assert rc == 0 and re.search(r"all \d+ checks passed", out), err
