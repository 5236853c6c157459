"""The control API (xenwb/control.py) in process, without gdb: the debugger tells the truth.

* a stop is invisible: runs with stops, steps, breakpoints and detaches at seeded random
  points give the undisturbed run's console bytes and trace file, byte for byte;
* a step is exactly one instruction (judged by capstone, tests/oracle.py), also in code that
  already ran at full speed (unicorn's translation cache);
* breakpoints fire in cached code and on a one-instruction `jmp .` loop, every time;
* watchpoints stop right after the accessing instruction, every access reported;
* an interrupt stops any loop at once; a crash stays inspectable.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
from oracle import successors
from support.harness import build_guest

from xenwb.control import Controller, StopKind
from xenwb.examples import resolve_guest
from xenwb.machine import Machine, StopReason
from xenwb.session import Events, Session


@pytest.fixture(scope="module")
def spin(tmp_path_factory):
    return build_guest("spin", tmp_path_factory.mktemp("spin"))


@pytest.fixture(scope="module")
def spin_crash(tmp_path_factory):
    return build_guest("spin", tmp_path_factory.mktemp("spin-crash"), defines=("CRASH=1",))


def _machine(path, vcpus: int = 1) -> tuple[Machine, Controller, bytearray]:
    m = Machine(path, vcpus=vcpus)
    out = bytearray()
    m.domain.console_sink = out.extend
    return m, Controller(m), out


def _undisturbed(name: str, vcpus: int, trace: Path) -> bytes:
    with Session(name, vcpus=vcpus, console=lambda b: None) as s:
        s.record(str(trace))
        r = s.run()
        assert r.reason.value == "shutdown" and s.domain.shutdown_reason == 0, r
        return bytes(s.console)


@pytest.mark.parametrize("name,vcpus", [("pvdemo-pae", 2), ("pvdemo-nonpae", 1), ("pvdemo-pae-msr", 1)])
def test_stops_steps_and_breakpoints_are_invisible(tmp_path, name, vcpus):
    ref_trace, trace = tmp_path / "ref.jsonl", tmp_path / "disturbed.jsonl"
    ref_console = _undisturbed(name, vcpus, ref_trace)
    rnd = random.Random(f"{name}-{vcpus}")
    with Session(name, vcpus=vcpus, console=lambda b: None) as s:
        s.record(str(trace))
        ctl = s.controller
        funcs = [sym.address for sym in s.image.symbols if sym.size and sym.address >= s.image.kernel_start][:400]
        stops = 0
        while not s.domain.finished:
            s.run(until=Events(rnd.randint(1, 40)))
            if s.domain.finished:
                break
            stops += 1
            for _ in range(rnd.randint(0, 5)):               # steps on random vcpus
                ev = ctl.run("step", rnd.randrange(vcpus))
                if ev.final:
                    break
            if rnd.random() < 0.3:                           # a breakpoint somewhere, hit or not
                addr = rnd.choice(funcs)
                ctl.insert_breakpoint(addr)
                s.run(until=Events(rnd.randint(1, 40)))
                ctl.remove_breakpoint(addr)
        assert stops >= 5
        assert bytes(s.console) == ref_console
    assert trace.read_bytes() == ref_trace.read_bytes()


def test_interrupts_from_another_thread_are_invisible(tmp_path):
    ref_trace, trace = tmp_path / "ref.jsonl", tmp_path / "disturbed.jsonl"
    ref_console = _undisturbed("pvdemo-pae", 2, ref_trace)
    rnd = random.Random(7)
    with Session("pvdemo-pae", vcpus=2, console=lambda b: None) as s:
        s.record(str(trace))
        ctl = s.controller
        n = 0
        while not ctl.finished:
            ctl.resume("continue")
            time.sleep(rnd.uniform(0, 0.004))
            assert ctl.interrupt(), "the machine did not stop"
            ctl.take_stop()
            n += 1
        assert n >= 3
        assert bytes(s.console) == ref_console
    assert trace.read_bytes() == ref_trace.read_bytes()


def _hammer_stops(m: Machine, done: threading.Event, seed: int) -> None:
    rnd = random.Random(seed)
    while not done.is_set():
        m.stop()
        time.sleep(rnd.uniform(0, 0.00003))


def test_stops_hammered_from_another_thread_are_invisible(tmp_path):
    """Machine.stop() from another thread every few tens of microseconds, so stops land
    everywhere: inside translated code, in hooks, between turns, while a run starts or ends.
    A uc_emu_stop from another thread sometimes stops unicorn so that part of a block runs
    twice (its stores done again) or the clock keeps the wrong bytes: stops from other
    threads go through the vcpus' virtual clocks instead, and each run is the undisturbed
    one. (Without that, about 3 rounds in 4 differed.)"""
    ref_trace = tmp_path / "ref.jsonl"
    ref_console = _undisturbed("pvdemo-pae", 2, ref_trace)
    for seed in range(3):
        trace = tmp_path / f"hammered-{seed}.jsonl"
        with Session("pvdemo-pae", vcpus=2, console=lambda b: None) as s:
            s.record(str(trace))
            m = s.machine
            done = threading.Event()
            t = threading.Thread(target=_hammer_stops, args=(m, done, seed), daemon=True)
            t.start()
            stops = 0
            try:
                while not s.domain.finished:
                    stops += m.run().reason is StopReason.requested
            finally:
                done.set()
                t.join()
            assert stops >= 300, stops
            assert bytes(s.console) == ref_console, f"round {seed}, {stops} stops"
        assert trace.read_bytes() == ref_trace.read_bytes(), f"round {seed}, {stops} stops"


@pytest.mark.parametrize("name,vcpus", [("pvdemo-pae", 1), ("pvdemo-nonpae", 1), ("pvdemo-pae", 2)])
def test_each_step_is_one_instruction_in_cached_code(name, vcpus):
    m, ctl, out = _machine(resolve_guest(name), vcpus)
    printk = m.image.lookup("printk").address
    ctl.insert_breakpoint(printk)
    for _ in range(3):                                       # printk has run at full speed before
        assert ctl.run("continue").kind is StopKind.swbreak
    ctl.remove_breakpoint(printk)
    vid = ctl.last_stop.vcpu
    v = m.vcpus[vid]
    steps = 1000
    for i in range(steps):
        regs = ctl.guest_regs(vid)
        insn, allowed = successors(v, regs)
        ev = ctl.run("step", vid)
        if ev.final:
            break
        assert ev.kind is StopKind.step and ev.vcpu == vid, ev
        pc = ctl.guest_regs(vid)["eip"]
        assert pc in allowed, (f"step {i}: {insn.address:#x} {insn.mnemonic} {insn.op_str} went to {pc:#x} "
                               f"({m.domain.symbolize(pc)}), expected one of {sorted(hex(a) for a in allowed)}")
    assert ctl.run("continue").kind is StopKind.exited
    assert b"checks passed" in out


def test_breakpoint_on_cached_code_and_on_a_spin_loop(spin):
    m, ctl, out = _machine(spin.path)
    ctl.insert_breakpoint(spin.symbols["spin"])
    ev = ctl.run("continue")
    assert ev.kind is StopKind.swbreak and ev.addr == spin.symbols["spin"]
    ctl.insert_breakpoint(spin.symbols["work"])                  # ran 200 times: cached
    ctl.remove_breakpoint(spin.symbols["spin"])
    ctl.remove_breakpoint(spin.symbols["work"])
    ctl.insert_breakpoint(spin.symbols["spin"])
    for _ in range(5):                                           # `jmp .`: stops at it every time
        ev = ctl.run("continue")
        assert ev.kind is StopKind.swbreak and m.vcpus[0].cpu.eip == spin.symbols["spin"], ev
    ctl.remove_breakpoint(spin.symbols["spin"])
    ctl.insert_breakpoint(spin.symbols["work"])
    m.vcpus[0].cpu.eip = spin.symbols["after_spin"]
    ev = ctl.run("continue")
    assert ev.kind is StopKind.swbreak and m.vcpus[0].cpu.eip == spin.symbols["work"], ev
    ctl.clear_all()
    assert ctl.run("continue").kind is StopKind.exited
    assert b"left the spin loop" in out


@pytest.mark.parametrize("kind,expect", [
    ("read", ["read_1", "read_2", "write_1"]),               # incl reads too
    ("access", ["read_1", "read_2", "write_1"]),
    ("write", ["write_1"]),
])
def test_watchpoints_stop_right_after_each_access(spin, kind, expect):
    m, ctl, out = _machine(spin.path)
    ctl.insert_breakpoint(spin.symbols["spin"])
    assert ctl.run("continue").kind is StopKind.swbreak         # `work` has run 200 times: cached
    ctl.remove_breakpoint(spin.symbols["spin"])
    ctl.insert_watchpoint(spin.symbols["value"], 4, kind)
    m.vcpus[0].cpu.eip = spin.symbols["after_spin"]
    order = ["read_1", "read_2", "compare", "write_1", "write_2", "work_ret"]
    hits = []
    for _ in range(len(expect)):
        ev = ctl.run("continue")
        assert ev.kind.value.endswith("watch") and ev.addr == spin.symbols["value"], ev
        pc = m.vcpus[0].cpu.eip
        after = [name for name in order if spin.symbols[name] == pc]
        assert after, f"stopped at {pc:#x}, not right after an access"
        hits.append(order[order.index(after[0]) - 1])
    assert hits == expect
    ctl.clear_all()
    assert ctl.run("continue").kind is StopKind.exited


def test_interrupt_stops_a_spin_loop_at_once(spin):
    m, ctl, out = _machine(spin.path)
    ctl.insert_breakpoint(spin.symbols["spin"])
    ctl.run("continue")
    ctl.remove_breakpoint(spin.symbols["spin"])
    for _ in range(5):
        ctl.resume("continue")
        time.sleep(0.05)
        t0 = time.monotonic()
        assert ctl.interrupt(timeout=1.0)
        assert time.monotonic() - t0 < 0.1
        assert ctl.take_stop().kind is StopKind.interrupt
    assert m.vcpus[0].cpu.eip == spin.symbols["spin"]


def test_step_on_a_spin_loop_returns(spin):
    m, ctl, out = _machine(spin.path)
    ctl.insert_breakpoint(spin.symbols["spin"])
    ctl.run("continue")
    for _ in range(3):                       # a breakpoint on the instruction it sits on: gdb's step-over
        ev = ctl.run("step")
        assert ev.kind is StopKind.step and m.vcpus[0].cpu.eip == spin.symbols["spin"]


def test_a_crash_stays_inspectable(spin_crash):
    m, ctl, out = _machine(spin_crash.path)
    ev = ctl.run("continue")
    assert ev.kind is StopKind.crashed and "page fault" in ev.detail.lower() or "#PF" in ev.detail, ev
    assert not ctl.finished and ctl.postmortem
    assert ctl.guest_regs(0)["eip"] == spin_crash.symbols["crash_insn"]
    assert len(ctl.read_memory(0, spin_crash.symbols["crash_insn"], 6)) == 6
    ev = ctl.run("continue")                 # going on after a crash ends it
    assert ev.kind is StopKind.crashed and ctl.finished


def test_catch_fault_holds_the_delivery_and_changes_nothing(tmp_path):
    ref = _undisturbed("pvdemo-pae", 1, tmp_path / "ref.jsonl")
    with Session("pvdemo-pae", console=lambda b: None) as s:
        s.record(str(tmp_path / "t.jsonl"))
        ctl = s.controller
        ctl.add_catchpoint("exception", [14, 13])
        vectors = []
        while True:
            ev = ctl.run("continue", signal=None)
            if ev.kind is not StopKind.exception:
                break
            vectors.append(ev.nr)
            assert ev.signal == 11                            # SIGSEGV in gdb
        assert ev.kind is StopKind.exited
        assert 14 in vectors and 13 in vectors
        assert bytes(s.console) == ref
    assert (tmp_path / "t.jsonl").read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


def test_catch_hypercall_failed_returns_only(tmp_path):
    m, ctl, out = _machine(resolve_guest("pvdemo-pae"))
    ctl.add_catchpoint("hypercall", None, failed_only=True)
    seen = []
    while True:
        ev = ctl.run("continue")
        if ev.kind is not StopKind.syscall_return:
            break
        ret = ctl.guest_regs(ev.vcpu)["eax"]
        assert ret & 0x80000000, f"stopped on a successful return ({ret:#x})"
        seen.append(ev.nr)
    assert ev.kind is StopKind.exited and len(seen) >= 5
    assert b"checks passed" in out


def test_interrupt_from_a_thread_with_a_blocked_guest():
    m, ctl, out = _machine(resolve_guest("pvdemo-pae"))
    ctl.idle_on_hang = True
    ctl.resume("continue")
    done = threading.Event()

    def stopper() -> None:
        time.sleep(0.01)
        ctl.interrupt()
        done.set()
    threading.Thread(target=stopper).start()
    assert ctl.wait(10) is not None and done.wait(5)
    ctl.take_stop()
    assert ctl.run("continue").kind is StopKind.exited
