"""Time travel (issue 11): checkpoints, restores and reverse execution tell the truth.

* a restore (a named checkpoint, a periodic one, restart) followed by a run to shutdown
  gives the uninterrupted run's console bytes and trace, byte for byte (32-bit, 64-bit, SMP);
* real gdb (pygdbmi) on the 2-vcpu example: 1,000 stepi then 1,000 reverse-stepi come back
  through the same pc and registers at every step (every vcpu's, judged in the stub's
  process); reverse-continue stops at the latest earlier hit of a breakpoint, and at the
  write of a watchpoint; before the first hit gdb says there is no more history;
* each Xen-state catchpoint stops where the change was made: one reverse-stepi before the
  stop, the state is as it was before the change;
* input from outside the guest is recorded with where it entered: a re-execution from a
  checkpoint and `xenwb replay` give the same run;
* the checkpoints' memory stays within --checkpoint-memory; bad requests are one-line errors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.gdbmi import GDB, Gdb
from support.stub import InProcessStub

from xenwb.abi import constants as C
from xenwb.backends import ScriptedInput
from xenwb.control import StopEvent, StopKind
from xenwb.errors import XenwbError
from xenwb.hypervisor.paging import walk
from xenwb.registry import CommandError
from xenwb.session import Events, Session
from xenwb.timetravel import position_now

GRUB = Path("/usr/lib/grub-xen/grub-i386-xen.bin")
REPO = Path(__file__).resolve().parent.parent


def _reference(guest: str, vcpus: int, trace: Path) -> bytes:
    with Session(guest, vcpus=vcpus, console=lambda b: None, time_travel=False) as s:
        s.record(str(trace))
        assert s.run().reason.value == "shutdown"
        return bytes(s.console)


def _regs(s: Session) -> list[dict[str, int]]:
    return [dict(s.controller.guest_regs(v.id)) for v in s.machine.vcpus]


# ------------------------------------------------------------------------------------------ restores
@pytest.mark.parametrize("guest,vcpus", [("pvdemo-pae", 2), ("pvdemo64", 2)], ids=["pae-smp", "pv64-smp"])
def test_restore_then_run_gives_the_uninterrupted_run(tmp_path, guest, vcpus):
    ref = tmp_path / "ref.jsonl"
    console = _reference(guest, vcpus, ref)
    trace = tmp_path / "t.jsonl"
    with Session(guest, vcpus=vcpus, console=lambda b: None, checkpoint_every_ns=10_000_000) as s:
        s.record(str(trace))
        s.run(until="step_smp")
        s.checkpoint("smp")
        assert s.run().reason.value == "shutdown"
        assert bytes(s.console) == console and trace.read_bytes() == ref.read_bytes()
        autos = [c for c in s.checkpoints() if c.auto]
        assert len(autos) >= 5
        for name in ("smp", autos[len(autos) // 2].name, autos[0].name):   # named, periodic, back and forth
            ev = s.restore(name)
            assert ev.kind is not StopKind.error
            assert len(s.console) < len(console)           # the console text as it was then
            assert s.run().reason.value == "shutdown"
            assert bytes(s.console) == console, name
            assert trace.read_bytes() == ref.read_bytes(), name
        s.restart()
        assert s.machine.turns == 0 and s.console == b""
        assert s.run().reason.value == "shutdown"
        assert bytes(s.console) == console and trace.read_bytes() == ref.read_bytes()


def test_checkpoint_memory_is_bounded_oldest_first():
    with Session("pvdemo-pae", vcpus=2, console=lambda b: None, plugins=(), checkpoint_every_ns=1_000_000,
                 checkpoint_memory=1 << 20) as s:
        s.run()
        tt = s.timetravel
        assert tt.stats.dropped > 0
        assert tt.memory_used() <= tt.memory
        cps = s.checkpoints()
        assert cps[0].name == "boot"                   # the start of the history stays
        times = [c.time_ns for c in cps]
        assert times == sorted(times) and times[1] > 10_000_000    # the oldest automatic ones went
        s.restore(cps[len(cps) // 2].name)
        assert s.run().reason.value == "shutdown"


# ------------------------------------------------------------------------------------------ real gdb
GDB_SCRIPT = r'''
import gdb

def _regs():
    names = [r.name for r in gdb.selected_frame().architecture().registers("general")]
    return tuple(int(gdb.selected_frame().read_register(n)) for n in names)

def xenwb_there_and_back(n):
    """n stepi, then n reverse-stepi: each reverse step must come back to the state before."""
    seen = [_regs()]
    for _ in range(n):
        gdb.execute("stepi", to_string=True)
        seen.append(_regs())
    bad = []
    for i in range(n):
        gdb.execute("reverse-stepi", to_string=True)
        if _regs() != seen[-2 - i]:
            bad.append(i)
    print("<<<%d %s>>>" % (n, ",".join(map(str, bad[:10])) or "-"))
'''


@pytest.fixture(params=["pvdemo-pae", "pvdemo64"], ids=["pae", "pv64"])
def gdb_and_stub(tmp_path, request):
    if GDB is None:
        pytest.skip("gdb is not installed (Debian: apt-get install gdb)")
    stub = InProcessStub(request.param, 2)
    script = tmp_path / "tt.py"
    script.write_text(GDB_SCRIPT)
    g = Gdb()
    try:
        g.run(f"file {stub.session.image.path}")
        g.run(f"source {script}")
        g.run(f"target remote 127.0.0.1:{stub.server.port}")
        g.wait_stop()
        yield g, stub
    finally:
        g.close()
        stub.close()


def test_gdb_1000_stepi_then_1000_reverse_stepi_smp(gdb_and_stub):
    g, stub = gdb_and_stub
    g.run("break step_smp")
    assert g.cont()["reason"] == "breakpoint-hit"
    g.run("delete")
    states: list[list[dict[str, int]]] = []           # every vcpu at every stop, forward then back
    stub.ctl.add_listener(lambda ev: states.append(_regs(stub.session)))
    text = g.python("xenwb_there_and_back(1000)", timeout=600)
    assert text == "1000 -", text                      # gdb's registers of the thread at every step
    assert len(states) == 2000
    forward, back = states[:1000], states[1000:]
    assert back[:-1] == forward[-2::-1]                # and every vcpu's, in the stub's process
    assert len({s[stub.ctl.last_stop.vcpu]["pc"] for s in forward}) > 50
    assert stub.session.timetravel.stats.passes >= 1000
    assert g.cont(timeout=120)["reason"] == "exited-normally"      # and forward again to the end
    assert re.search(rb"pvdemo(64)?: all \d+ checks passed", bytes(stub.console))


def _reverse_continue(g: Gdb, timeout: float = 60.0) -> tuple[dict, str]:
    """reverse-continue: the stop record and what gdb printed before it."""
    g.run("-exec-continue --reverse")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, r in enumerate(g.records):
            if r.get("type") == "notify" and r.get("message") == "stopped":
                text = "".join(x["payload"] for x in g.records[:i] if x.get("type") == "console")
                del g.records[: i + 1]
                return r.get("payload") or {}, text
        g._pull(0.05)
    raise AssertionError("no stop after reverse-continue")


def test_gdb_reverse_continue_to_breakpoints_and_watchpoints(gdb_and_stub):
    g, stub = gdb_and_stub
    image = stub.session.image
    g.run("break printk")
    hits = []
    for _ in range(4):
        assert g.cont()["reason"] == "breakpoint-hit"
        hits.append((g.value("$pc"), g.value("$sp"), g.value("/x (long)fmt")))
    for i in (2, 1, 0):                                # the latest hit before now, each time
        stop, _ = _reverse_continue(g)
        assert stop["reason"] == "breakpoint-hit", stop
        assert (g.value("$pc"), g.value("$sp"), g.value("/x (long)fmt")) == hits[i]
    stop, text = _reverse_continue(g)                  # before the first: the start of the history
    assert "No more reverse-execution history" in text, (stop, text)
    assert int(stop["frame"]["addr"], 16) == image.entry
    g.run("delete")
    # a watchpoint hit while going back: the stop is right after the write
    checks = image.lookup("checks_run")
    g.run("watch checks_run")
    values = []
    for _ in range(3):
        stop = g.cont()
        assert stop["reason"] == "watchpoint-trigger", stop
        values.append((int(g.value("checks_run")), g.value("$pc")))
    stop, _ = _reverse_continue(g)
    assert stop["reason"] == "watchpoint-trigger", stop
    # going back, gdb stops where the previous write happened: the value then, right after it
    assert (int(g.value("checks_run")), g.value("$pc")) == values[1]
    assert stub.ctl.read_memory(stub.ctl.last_stop.vcpu, checks.address, 4) == values[1][0].to_bytes(4, "little")


# ------------------------------------------------------------------------------------------ catchpoints
def _before(s: Session, vid: int):
    """Back one instruction of vcpu vid (the change the stop reports must be undone there)."""
    ev = s.reverse_step(vid)
    assert ev.kind is StopKind.step, ev
    return ev


def test_catch_evtchn_stops_where_the_port_became_pending_or_was_delivered():
    with Session("pvdemo-pae", vcpus=2, console=lambda b: None) as s:
        s.run(until="step_smp")
        ec = s.domain.evtchn
        ctl = s.controller
        port = ec.virq_ports[(C.Virq.TIMER, 0)]
        s.command(f"catch evtchn {port} --vcpu 0")
        seen = set()
        for _ in range(12):
            ev = ctl.run("continue")
            assert ev.kind is StopKind.xen, ev
            assert str(port) in s.command("why").text
            vid = ev.vcpu
            v = s.machine.vcpus[vid]
            where = position_now(ctl)
            if "delivered" in ev.detail:
                assert ctl.guest_regs(vid)["pc"] == v.event_eip         # the handler's first instruction
                bounces = v.bounces
                _before(s, vid)
                assert v.bounces == bounces - 1 and ctl.guest_regs(vid)["pc"] != v.event_eip
                seen.add("upcall")
            elif "in hypercall" in ev.detail:
                assert ec.is_pending(port)
                _before(s, vid)
                assert not ec.is_pending(port)        # the hypercall it stopped after made it pending
                seen.add("hypercall")
            else:
                assert "between vcpu turns" in ev.detail and ec.is_pending(port)   # a timer fired
                seen.add("timer")
                continue
            for _ in range(4):                         # forward again: the same change, the same place
                again = ctl.run("continue")
                assert again.kind is StopKind.xen, again
                if position_now(ctl) == where:
                    break
            else:
                raise AssertionError(f"did not come back to {where}")
        assert seen >= {"upcall", "timer"}, seen


def test_catch_mask_stops_at_the_store_or_the_hypercall():
    with Session("pvdemo-pae", vcpus=2, console=lambda b: None) as s:
        s.command("catch mask 1 --clear")
        kinds = set()
        for _ in range(4):
            ev = s.controller.run("continue")
            assert ev.kind is StopKind.xen and ev.vcpu == 1, ev
            v = s.machine.vcpus[1]
            assert v.upcall_mask == 0
            kinds.add("store" if "guest store" in ev.detail else "xen")
            _before(s, 1)
            assert v.upcall_mask == 1                  # one instruction back: still masked
            assert s.controller.run("step", 1).kind in (StopKind.step, StopKind.xen)
        assert kinds == {"store", "xen"}


def test_catch_pte_and_multicall_stop_at_the_hypercall():
    with Session("pvdemo-pae", vcpus=2, console=lambda b: None) as s:
        dom = s.domain
        s.command("catch multicall --failed")
        ev = s.controller.run("continue")
        assert ev.kind is StopKind.xen and "returned -" in ev.detail, ev
        calls = dom.stats["hypercalls"]
        _before(s, ev.vcpu)
        assert dom.stats["hypercalls"] == calls - 1     # the multicall is undone: it made the failure
        s.command("delete all")
        va = 0xC0038000                                 # pvdemo remaps it with update_va_mapping
        s.command(f"catch pte {va:#x}")
        for _ in range(4):
            ev = s.controller.run("continue")
            assert ev.kind is StopKind.xen, ev
            if "update_va_mapping" in ev.detail:
                break
        else:
            raise AssertionError("no update_va_mapping caught")
        v0 = s.machine.vcpus[0]
        after = walk(dom.mem, dom.mode, v0.cr3_mfn, va).steps[-1].pte
        calls = dom.stats["hypercalls"]
        _before(s, ev.vcpu)
        assert dom.stats["hypercalls"] == calls - 1     # the hypercall that changed it is undone
        assert walk(dom.mem, dom.mode, v0.cr3_mfn, va).steps[-1].pte != after


# ------------------------------------------------------------------------------------------ input
@pytest.mark.skipif(not GRUB.exists(), reason="grub-xen-host is not installed")
def test_input_is_recorded_where_it_entered(tmp_path):
    with Session(str(GRUB), console=lambda b: None, checkpoint_every_ns=5_000_000) as s:
        s.machine.input_source = ScriptedInput(b"echo hello\n")     # a file or pipe on stdin
        s.run(until=Events(60))
        s.machine.console_input(b"echo again\nhalt\n")   # typed while stopped: enters at the next pump
        assert s.run().reason.value == "shutdown"
        console = bytes(s.console)
        assert b"hello" in console and b"again" in console
        assert [e.kind for e in s.machine.inputs.entries] == ["console", "console"]
        for cp in s.checkpoints()[1:]:                 # from before, between and after the inputs
            s.restore(cp.name)
            assert s.run().reason.value == "shutdown"
            assert bytes(s.console) == console, cp.name
    trace = tmp_path / "g.jsonl"
    p = subprocess.run([sys.executable, "-m", "xenwb", "run", str(GRUB), "--trace", str(trace)],
                       input=b"echo hello\nhalt\n", capture_output=True, timeout=120, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert b'"kind":"input"' in trace.read_bytes()
    p = subprocess.run([sys.executable, "-m", "xenwb", "replay", str(trace)], capture_output=True, timeout=120,
                       cwd=REPO, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and b"replay identical" in p.stderr, p.stderr
    assert b"hello" in p.stdout


# ------------------------------------------------------------------------------------------ errors
def test_bad_requests_are_one_line_errors():
    with Session("pvdemo-pae", console=lambda b: None) as s:
        s.run(until="step_events")
        for cmd, words in [("restore nosuch", "no checkpoint"), ("checkpoint 123", "bad checkpoint name"),
                           ("catch evtchn 999999", "port"), ("catch mask 7", "no vcpu"),
                           ("catch pte", "usage"), ("catch mask 0 --set --clear", "usage"),
                           ("catch evtchn 3 --bogus", "unknown option"), ("rstepi x", "not a number")]:
            with pytest.raises(CommandError) as e:
                s.command(cmd)
            assert words in str(e.value) and "\n" not in str(e.value), (cmd, e.value)
        s.command("checkpoint here")
        with pytest.raises(CommandError, match="exists"):
            s.command("checkpoint here")
        assert "here" in s.command("checkpoints").text
    with Session("pvdemo-pae", console=lambda b: None, time_travel=False) as s:
        s.run(until="step_events")
        with pytest.raises(CommandError, match="no history"):
            s.command("rstepi")
        with pytest.raises(XenwbError, match="no history"):
            s.restart()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for opt in (["--checkpoint-every", "0"], ["--checkpoint-memory", "x"]):
        p = subprocess.run([sys.executable, "-m", "xenwb", "run", "pvdemo-pae", *opt], capture_output=True,
                           text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "xenwb", "replay", "/nonexistent.jsonl"], capture_output=True,
                       text=True, timeout=60, env=env)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "cannot read" in p.stderr, p.stderr


def test_stop_event_kinds_describe():
    ev = StopEvent(StopKind.history_start, 0, detail="no more reverse-execution history")
    with Session("pvdemo-pae", console=lambda b: None, time_travel=False) as s:
        assert "start of the recorded history" in ev.describe(s.machine)
