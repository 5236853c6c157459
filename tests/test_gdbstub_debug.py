"""xenwb/debug.py in process, without gdb: every debugging request leaves the guest's own
behaviour intact (same console output, same check count), stops are exact, and held
hypercalls are re-issued exactly once."""

from __future__ import annotations

import re
import threading
import time

import pytest

from xenwb.debug import Debugger, StopKind
from xenwb.examples import resolve_guest
from xenwb.machine import Machine


@pytest.fixture(scope="module", params=["pvdemo-pae", "pvdemo-nonpae"])
def guest_path(request):
    return resolve_guest(request.param)


def _machine(path, vcpus: int = 1) -> tuple[Machine, bytearray]:
    m = Machine(path, vcpus=vcpus)
    out = bytearray()
    m.domain.console_sink = out.extend
    return m, out


def _shape(console: bytes) -> bytes:
    """Console output with numbers masked: stops and steps move virtual time a little (a
    single step counts the whole translation block it starts), so time-derived figures may
    differ; every line, every check and its verdict must not."""
    return re.sub(rb"(0x)?[0-9a-f]*[0-9][0-9a-f]*", b"#", console)


@pytest.fixture(scope="module")
def reference(guest_path) -> bytes:
    """The console output of an undisturbed run, numbers masked."""
    m, out = _machine(guest_path)
    m.run()
    assert m.domain.shutdown_reason == 0
    return _shape(bytes(out))


def _sym(m: Machine, name: str) -> int:
    s = m.image.lookup(name)
    assert s is not None, name
    return s.address


def _resume(d: Debugger, mode: str = "continue", vcpu: int | None = None):
    d.resume(mode, vcpu)
    ev = d.wait(30)
    assert ev is not None, "no stop within 30 s"
    d.take_stop()
    return ev


def _finish(d: Debugger, out: bytearray, reference: bytes) -> None:
    d.clear_all()
    ev = _resume(d)
    assert ev.kind is StopKind.exited and ev.code == 0, ev
    assert _shape(bytes(out)) == reference


def test_enter_guest_halts_on_the_entry_point(guest_path, reference):
    m, out = _machine(guest_path)
    d = Debugger(m)
    d.enter_guest()
    v = m.vcpus[0]
    assert v.cpu.eip == m.image.entry and v.cpu.cpl == 1
    _finish(d, out, reference)


def test_breakpoint_is_a_hook_not_a_patch(guest_path, reference):
    m, out = _machine(guest_path)
    d = Debugger(m)
    d.enter_guest()
    v = m.vcpus[0]
    sk = _sym(m, "start_kernel")
    before = v.debug_read(sk, 16)
    d.insert_breakpoint(sk)
    assert v.debug_read(sk, 16) == before
    ev = _resume(d)
    assert ev.kind is StopKind.swbreak and ev.addr == sk and v.cpu.eip == sk
    ev = _resume(d)                                       # passes the breakpoint it sits on
    assert ev.kind is StopKind.exited
    assert _shape(bytes(out)) == reference


def test_steps_then_run_to_the_end(guest_path, reference):
    m, out = _machine(guest_path)
    d = Debugger(m)
    d.enter_guest()
    v = m.vcpus[0]
    pcs = []
    for _ in range(300):                                  # through start_kernel, printk, a hypercall...
        ev = _resume(d, "step", 0)
        assert ev.kind is StopKind.step
        pcs.append(v.cpu.eip)
        assert v.cpu.eip < m.domain.geo.hv_start          # never inside the hypervisor's trampoline
    assert len(set(pcs)) > 50
    _finish(d, out, reference)


def test_write_watchpoint_stops_after_the_write_and_never_repeats_it(guest_path, reference):
    """checks_run++ is a read-modify-write: were the instruction restarted after the stop,
    the count would double. Every hit must see the value one higher, through the whole run
    (which switches to new pagetables halfway: the watch follows)."""
    m, out = _machine(guest_path)
    d = Debugger(m)
    d.enter_guest()
    v = m.vcpus[0]
    var = _sym(m, "checks_run")
    d.insert_watchpoint(var, 4, "write")
    hits = []
    while True:
        ev = _resume(d)
        if ev.kind is not StopKind.watch:
            break
        assert ev.addr == var
        hits.append(v.read_u32(var))
    assert ev.kind is StopKind.exited
    assert hits == list(range(1, len(hits) + 1))
    n = int(re.search(rb"all (\d+) checks passed", bytes(out)).group(1))
    assert len(hits) == n
    assert _shape(bytes(out)) == reference


def test_catch_every_hypercall_reissues_each_once(guest_path, reference):
    m, out = _machine(guest_path)
    d = Debugger(m)
    d.enter_guest()
    d.catch_hypercalls([])
    entries = returns = 0
    while True:
        ev = _resume(d)
        if ev.kind is StopKind.syscall_entry:
            entries += 1
            assert m.vcpus[ev.vcpu].cpu.regs()["eax"] == ev.nr
        elif ev.kind is StopKind.syscall_return:
            returns += 1
        else:
            break
    assert ev.kind is StopKind.exited, ev
    assert entries == m.domain.stats["hypercalls"]
    assert returns >= entries - 30                       # iret and the final shutdown do not return
    assert _shape(bytes(out)) == reference


def test_interrupt_from_another_thread(guest_path):
    m, out = _machine(guest_path)
    d = Debugger(m)
    d.enter_guest()
    v = m.vcpus[0]
    fin = _sym(m, "finish")
    d.insert_breakpoint(fin)
    assert _resume(d).kind is StopKind.swbreak
    d.remove_breakpoint(fin)
    loop = _sym(m, "early_log")
    d.write_memory(0, loop, b"\xeb\xfe")                   # jmp .
    v.cpu.eip = loop
    d.resume()
    time.sleep(0.2)
    assert d.running
    t = threading.Thread(target=d.interrupt)
    t.start()
    t.join(10)
    ev = d.wait(10)
    assert ev is not None and ev.kind is StopKind.interrupt and v.cpu.eip == loop
    d.take_stop()
    d.write_memory(0, loop, b"\0\0")
    v.cpu.eip = fin
    ev = _resume(d)
    assert ev.kind is StopKind.exited


def test_write_memory_is_all_or_nothing_and_refuses_the_hypervisor(guest_path):
    from xenwb.hypervisor.memory import GuestFault
    m, _ = _machine(guest_path)
    d = Debugger(m)
    d.enter_guest()
    with pytest.raises(GuestFault):
        d.write_memory(0, m.domain.geo.hv_start - 2, b"abcd")
    with pytest.raises(GuestFault):
        d.write_memory(0, 0x1000, b"x")
    assert d.read_memory(0, 0x1000, 4) == b""
    assert len(d.read_memory(0, m.domain.geo.hv_start, 16)) == 16    # the M2P is mapped, readable


def test_second_vcpu_breakpoint(guest_path):
    m, _ = _machine(guest_path, vcpus=2)
    if m.image.lookup("secondary_start") is None:
        pytest.skip("this pvdemo has no SMP bring-up")
    d = Debugger(m)
    d.enter_guest()
    d.insert_breakpoint(_sym(m, "secondary_start"))
    ev = _resume(d)
    assert ev.kind is StopKind.swbreak and ev.vcpu == 1
    d.clear_all()
    ev = _resume(d, "step", 0)                              # vcpu0 is blocked: it steps when it runs again
    assert ev.kind is StopKind.step and ev.vcpu == 0
    assert _resume(d).kind is StopKind.exited
