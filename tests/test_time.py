"""Virtual time: vcpu_time_info and RDTSC, wallclock, the timer hypercalls firing VIRQ_TIMER at
the right virtual time, SCHEDOP_block/poll wake-ups, idle time jumps and hang detection.

Rules: xen/arch/x86/time.c (__update_vcpu_system_time, collect_time_info), xen/common/sched/core.c
(do_set_timer_op, vcpu_set_periodic_timer, vcpu_periodic_timer_work, do_poll, poll_timer_fn,
vcpu_block), xen/common/domain.c (VCPUOP_set_singleshot_timer & co.). Virtual time is one ns per
byte of guest code executed, so a timer event reaches the guest within a basic block or two of
its deadline: the tolerances below are in bytes of guest code (ns), not host time.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time

import pytest
from ev_support import EvGuest, build_ev_guest, have_toolchain
from support.harness import Hv
from unicorn import UC_ARCH_X86, UC_MODE_32, UC_MODE_64, Uc
from unicorn import x86_const as X

from xenwb.abi import constants as C
from xenwb.hypervisor import sched
from xenwb.hypervisor.time import update_vcpu_time
from xenwb.machine import StopReason
from xenwb.vclock import VClock

H = C.Hypercall
EINVAL = -22
SLACK_NS = 200          # a couple of basic blocks of the guest's upcall path
MS = 1_000_000


@pytest.fixture(scope="module")
def elf(tmp_path_factory):
    if not have_toolchain():
        pytest.skip("gcc/binutils not available")
    return build_ev_guest(tmp_path_factory.mktemp("ev"))


# ================================================================ vcpu_time_info, RDTSC, wallclock
def read_time_info(hv: Hv, v=None) -> tuple[int, int, int, int, int, int]:
    v = v or hv.v
    ver, _, tsc, sys_time, mul, shift, flags = struct.unpack(
        "<IIQQIbB", hv.dom.mem.read(v.vcpu_info_maddr + 32, 30))
    return ver, tsc, sys_time, mul, shift, flags


def pvclock(tsc: int, stamp: int, system_time: int, mul: int, shift: int) -> int:
    delta = tsc - stamp
    delta = delta << shift if shift >= 0 else delta >> -shift
    return system_time + ((delta * mul) >> 32)


def test_time_info_version_protocol_and_consistency() -> None:
    """Version odd while writing, even after; tsc_timestamp/system_time the vcpu's clock;
    mul/shift describe the 1 GHz virtual TSC, so the guest's pvclock formula gives back the
    clock at any later TSC. TSC_STABLE is not claimed (per-vcpu clocks)."""
    hv = Hv.example("pvdemo-pae")
    ver0 = read_time_info(hv)[0]
    assert ver0 and not ver0 & 1
    seen: list[int] = []
    mem = hv.dom.mem
    orig = mem.write_u32

    def spy(maddr: int, val: int) -> None:
        if maddr == hv.v.vcpu_info_maddr + 32:
            seen.append(val)
        orig(maddr, val)

    mem.write_u32 = spy  # type: ignore[method-assign]
    hv.v.clock.units += 123_456
    update_vcpu_time(hv.dom, hv.v)
    update_vcpu_time(hv.dom, hv.v)          # unchanged record: not rewritten
    mem.write_u32 = orig  # type: ignore[method-assign]
    assert seen == [ver0 + 1, ver0 + 2]
    ver, stamp, sys_time, mul, shift, flags = read_time_info(hv)
    now = hv.dom.time.now(hv.v)
    assert stamp == sys_time == now and (mul, shift) == (0x80000000, 1) and flags == 0
    for later in (now, now + 1, now + 10**9, now + 2**40):
        assert pvclock(later, stamp, sys_time, mul, shift) == later
    assert hv.dom.time.tsc(hv.v) == now


def test_wallclock() -> None:
    """shared_info wc_version even, wc_sec = UTC at system time 0 (fixed: runs repeat)."""
    hv = Hv.example("pvdemo-pae")
    ver, sec, nsec = struct.unpack("<III", hv.dom.mem.read(hv.shared_info_maddr() + 2304, 12))
    assert ver and not ver & 1 and sec == 1_167_609_600 and nsec == 0


@pytest.mark.parametrize("mode", ["32", "64"])
def test_rdtsc_and_rdtscp_come_from_the_virtual_clock(mode: str) -> None:
    """RDTSC/RDTSCP are answered by the clock's C instruction hooks: EDX:EAX is the clock
    (bytes of code so far), never the host's TSC, ECX of RDTSCP is TSC_AUX, and on a 64-bit
    engine the upper halves of RAX/RDX/RCX are cleared as the instructions do."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64 if mode == "64" else UC_MODE_32)
    uc.mem_map(0x1000, 0x1000)
    code = bytes([0x0F, 0x31, 0x89, 0xC6, 0x0F, 0x01, 0xF9])      # rdtsc; mov %eax,%esi; rdtscp
    uc.mem_write(0x1000, code)
    clock = VClock(uc)
    if mode == "64":
        clock.install_tsc_hooks(X.UC_X86_REG_RAX, X.UC_X86_REG_RDX, X.UC_X86_REG_RCX)
        for r in (X.UC_X86_REG_RAX, X.UC_X86_REG_RDX, X.UC_X86_REG_RCX):
            uc.reg_write(r, 0xFFFFFFFF_FFFFFFFF)
    else:
        clock.install_tsc_hooks(X.UC_X86_REG_EAX, X.UC_X86_REG_EDX, X.UC_X86_REG_ECX)
    clock.units = 5_000_000_000 - len(code)        # the block's bytes are counted at its start
    clock.tsc_aux = 7
    uc.emu_start(0x1000, 0x1000 + len(code))
    ax = X.UC_X86_REG_RAX if mode == "64" else X.UC_X86_REG_EAX
    dx = X.UC_X86_REG_RDX if mode == "64" else X.UC_X86_REG_EDX
    cx = X.UC_X86_REG_RCX if mode == "64" else X.UC_X86_REG_ECX
    assert (uc.reg_read(dx) << 32 | uc.reg_read(ax)) == 5_000_000_000
    assert uc.reg_read(X.UC_X86_REG_ESI) == 5_000_000_000 & 0xFFFFFFFF
    assert uc.reg_read(cx) == 7
    assert clock.tsc_reads == 2


# ================================================================ timers firing in virtual time
def test_singleshot_timer_fires_at_its_deadline(elf) -> None:
    g = EvGuest(elf, "singleshot", deadline=5 * MS)
    assert g.run().reason is StopReason.shutdown
    assert g.s32("rc") == 0 and g.u32("ticks") == 1
    assert 5 * MS <= g.u64("tick_tsc") < 5 * MS + SLACK_NS


def test_set_timer_op_fires_at_its_deadline(elf) -> None:
    g = EvGuest(elf, "set_timer_op", deadline=7 * MS + 333)
    assert g.run().reason is StopReason.shutdown
    assert g.u32("ticks") == 1
    assert 7 * MS + 333 <= g.u64("tick_tsc") < 7 * MS + 333 + SLACK_NS


def test_periodic_timer_ticks_every_period(elf) -> None:
    g = EvGuest(elf, "periodic", period=2 * MS, count=6)
    assert g.run().reason is StopReason.shutdown
    assert g.s32("rc") == 0 and g.u32("ticks") == 6
    ticks = [g.u64("tick_tsc", i) for i in range(6)]
    for n, t in enumerate(ticks, 1):
        assert n * 2 * MS <= t < n * 2 * MS + SLACK_NS * n


def test_default_periodic_timer_is_10ms(elf) -> None:
    """xen/arch/x86/pv/domain.c: every PV vcpu starts with a 10 ms periodic VIRQ_TIMER."""
    g = EvGuest(elf, "idle", count=3)
    assert g.run().reason is StopReason.shutdown
    assert [g.u64("tick_tsc", i) // MS for i in range(3)] == [10, 20, 30]


def test_set_timer_op_hypercall_rules() -> None:
    """do_set_timer_op: 0 cancels; negative or more than 2^50 ns ahead -> NOW() + 100 ms."""
    hv = Hv.example("pvdemo-pae")
    assert hv.call(H.set_timer_op, 12345, 1) == 0
    assert hv.v.singleshot_deadline == (1 << 32) + 12345
    assert hv.call(H.set_timer_op, 0, 0) == 0
    assert hv.v.singleshot_deadline is None
    assert hv.call(H.set_timer_op, 0, 0x80000000) == 0            # negative
    assert hv.v.singleshot_deadline == hv.dom.time.now(hv.v) + 100 * MS   # NOW() of the call
    assert hv.call(H.set_timer_op, 0, 1 << 19) == 0               # 2^51 ns ahead
    assert hv.v.singleshot_deadline == hv.dom.time.now(hv.v) + 100 * MS


def test_vcpu_timer_ops_rules() -> None:
    """VCPUOP_set_periodic_timer: < 1 ms or > STIME_DELTA_MAX -> -EINVAL, any vcpu of the domain;
    VCPUOP_set/stop_singleshot_timer: own vcpu only (-EINVAL); a deadline already passed
    sends the event at once."""
    hv = Hv.example("pvdemo-pae", vcpus=2)
    ev = hv.dom.evtchn
    arg = hv.put(struct.pack("<Q", 999_999))
    assert hv.call(H.vcpu_op, 6, 0, arg) == EINVAL
    arg = hv.put(struct.pack("<Q", 1 << 62))
    assert hv.call(H.vcpu_op, 6, 0, arg) == EINVAL
    arg = hv.put(struct.pack("<Q", 3 * MS))
    assert hv.call(H.vcpu_op, 6, 1, arg) == 0                      # another vcpu: allowed
    assert hv.dom.vcpus[1].periodic_period == 3 * MS
    assert hv.call(H.vcpu_op, 7, 1, 0) == 0
    assert hv.dom.vcpus[1].periodic_period == 0
    ss = hv.put(struct.pack("<QI", 5 * MS, 0))
    assert hv.call(H.vcpu_op, 8, 1, ss) == EINVAL
    assert hv.call(H.vcpu_op, 9, 1, 0) == EINVAL
    assert hv.call(H.vcpu_op, 8, 0, ss) == 0 and hv.v.singleshot_deadline == 5 * MS
    assert hv.call(H.vcpu_op, 9, 0, 0) == 0 and hv.v.singleshot_deadline is None
    port = ev.bind_virq(C.Virq.TIMER, 0)
    hv.v.clock.units = 10 * MS
    past = hv.put(struct.pack("<QI", 1 * MS, 1))                   # VCPU_SSHOTTMR_future ignored
    assert hv.call(H.vcpu_op, 8, 0, past) == 0
    assert ev.is_pending(port) and hv.v.singleshot_deadline is None


# ================================================================ block and poll wake-ups
def test_poll_times_out(elf) -> None:
    g = EvGuest(elf, "poll_timeout", deadline=3 * MS)
    assert g.run().reason is StopReason.shutdown
    assert g.s32("rc") == 0 and g.u32("ticks") == 0
    assert 3 * MS <= g.u64("woke_tsc") < 3 * MS + SLACK_NS


def test_poll_on_masked_port_then_unmask(elf) -> None:
    """A masked port becoming pending raises no upcall but wakes its poller
    (evtchn_check_pollers); EVTCHNOP_unmask re-raises it and the upcall is taken on the way
    out of that hypercall."""
    g = EvGuest(elf, "poll_masked", deadline=4 * MS)
    assert g.run().reason is StopReason.shutdown
    assert g.s32("rc") == 0 and g.s32("rc2") == 0
    assert 4 * MS <= g.u64("woke_tsc") < 4 * MS + SLACK_NS
    assert g.u32("pending_after_poll") == 1 and g.u32("ticks_after_poll") == 0
    assert g.u32("ticks_after_unmask") == 1


def test_block_wakes_on_event_and_the_upcall_frame(elf) -> None:
    """SCHEDOP_block unmasks events and blocks; the timer event wakes the vcpu, and on its way
    back to the guest Xen's frame is pushed: EIP after the `int $0x82`, CS | saved mask 0,
    EFLAGS with IF (events were enabled by block); the callback runs with the mask set."""
    g = EvGuest(elf, "block_upcall", deadline=2 * MS)
    assert g.run().reason is StopReason.shutdown
    assert [g.u32("frame", i) for i in range(3)][:2] == [g.addr("after_block"), 0xE019]
    eflags = g.u32("frame", 2)
    assert eflags & 0x200 and not eflags & 0x3000
    assert g.u32("esp_after_block") - g.u32("frame_esp") == 12
    assert g.u32("mask_in_upcall") == 1


def test_poll_semantics_on_the_hypervisor_side() -> None:
    """do_poll: -EINVAL for more than 128 ports or an unusable port; returns at once when a
    port is pending or an upcall is deliverable; otherwise blocks. A single-port poller wakes
    only for its port; a multi-port poller for any newly pending port; a kick (an unmasked
    event for the vcpu) wakes any poller (vcpu_unblock)."""
    from xenwb.hypervisor.state import VcpuState
    hv = Hv.example("pvdemo-pae", vcpus=2)
    ev = hv.dom.evtchn
    v0, v1 = hv.dom.vcpus
    a, b = ev.bind_ipi(0), ev.bind_ipi(0)
    c = ev.bind_ipi(1)
    ports = hv.put(struct.pack("<2I", a, b))

    def poll(nr: int, ptr: int = ports, timeout: int = 0) -> int:
        return hv.call(H.sched_op, 3, hv.put(struct.pack("<IIQ", ptr, nr, timeout)))

    assert poll(129) == EINVAL
    assert poll(1, hv.put(struct.pack("<I", 40))) == EINVAL        # free port
    ev.set_mask(a, True)
    ev.set_pending(a)
    assert poll(2) == 0 and v0.state is VcpuState.running          # already pending
    ev.ops.clear_pending(a)
    assert poll(1) == 0 and v0.state is VcpuState.blocked and v0.poll_ports == [a]
    ev.set_mask(b, True)
    ev.set_pending(b)                                              # not its port: still polling
    assert v0.state is VcpuState.blocked
    ev.set_pending(a)                                              # masked, but its port
    assert v0.state is VcpuState.running and v0.poll_ports is None
    ev.ops.clear_pending(a)
    ev.ops.clear_pending(b)
    assert poll(2) == 0 and v0.poll_ports == [a, b]
    d = ev.bind_ipi(1)
    ev.set_mask(d, True)
    ev.set_pending(d)                                              # any port wakes a multi-poller
    assert v0.state is VcpuState.running
    assert poll(1) == 0 and v0.state is VcpuState.blocked
    ev.set_pending(ev.bind_ipi(0))                                 # unmasked, for v0: kick
    assert v0.state is VcpuState.running
    v0.upcall_mask = 0
    assert v0.upcall_pending and poll(1) == 0 and v0.state is VcpuState.running
    assert c and v1.state is VcpuState.down


def test_block_is_not_a_lost_wakeup() -> None:
    """vcpu_block checks for a deliverable event after blocking: a pending event with events
    unmasked by SCHEDOP_block itself returns at once."""
    from xenwb.hypervisor.state import VcpuState
    hv = Hv.example("pvdemo-pae")
    hv.v.upcall_pending = 1
    assert hv.v.upcall_mask == 1
    assert hv.call(H.sched_op, 1, 0) == 0
    assert hv.v.upcall_mask == 0 and hv.v.state is VcpuState.running
    hv.v.upcall_pending = 0
    assert hv.call(H.sched_op, 1, 0) == 0 and hv.v.state is VcpuState.blocked
    sched.vcpu_unblock(hv.v)
    assert hv.v.state is VcpuState.running


# ================================================================ idle and hangs
def test_idle_time_costs_no_host_time(elf) -> None:
    """Blocked with only a periodic timer: virtual time jumps from tick to tick. One virtual
    second (100 ticks) takes a small fraction of a host second and executes almost no code."""
    g = EvGuest(elf, "idle", count=100)
    t = time.process_time()
    assert g.run().reason is StopReason.shutdown
    cpu = time.process_time() - t
    assert g.u32("ticks") == 100 and g.m.now() >= 1_000 * MS
    assert cpu < 0.5, f"{cpu:.3f} s of host CPU for 1 virtual second"
    assert g.v.clock.units - 1_000 * MS < 100_000            # < 100 us of code ran


def test_guest_blocked_forever_is_a_hang(elf) -> None:
    g = EvGuest(elf, "hang")
    r = g.run()
    assert r.reason is StopReason.hang
    assert "no VIRQ_TIMER port bound" in r.detail and "vcpu0 blocked in SCHEDOP_block" in r.detail


def test_masked_timer_port_is_a_hang_not_a_spin(elf) -> None:
    """The periodic timer keeps firing into a masked port: after the first time that can wake
    nobody, so the run ends as a hang at once instead of jumping from tick to tick forever."""
    g = EvGuest(elf, "masked_hang")
    r = g.run()
    assert r.reason is StopReason.hang and "masked" in r.detail
    assert g.m.now() == 10 * MS


def test_cli_reports_a_hang_with_exit_1(elf) -> None:
    """`xenwb run` on a guest that blocks forever: a clear message and exit status 1, quickly."""
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "xenwb", "run", str(elf)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1, p.stderr
    assert "hang" in p.stderr and "SCHEDOP_block" in p.stderr
    assert time.monotonic() - t < 20
