"""sched_op, sched_op_compat, set_timer_op, and the vcpu timers and blocking they rest on.

Sources: xen/common/sched/core.c (do_sched_op, vcpu_block, vcpu_block_enable_events, do_poll,
vcpu_unblock, poll_timer_fn, do_set_timer_op, vcpu_periodic_timer_work,
vcpu_set_periodic_timer, vcpu_singleshot_timer_fn), xen/common/event_channel.c
(evtchn_check_pollers), xen/arch/x86/domain.c (vcpu_kick), public/sched.h.

Time is the vcpu's virtual clock (hypervisor/time.py): NOW() for a vcpu is the time its
own clock shows. The run loop (xenwb/machine.py) asks `timer_deadlines` where to stop a vcpu
and calls `fire_timers` when its clock has reached them.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, SchedOp, ShutdownReason
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.state import VcpuState
from xenwb.hypervisor.time import account_runstate

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.hypervisor.xenarea import HvGeometry

EINVAL, EFAULT, EPERM, ENOSYS = -Errno.EINVAL, -Errno.EFAULT, -Errno.EPERM, -Errno.ENOSYS
MAX_POLL_PORTS = 128               # do_poll: "Fairly arbitrary limit"
SET_TIMER_OP_FALLBACK_NS = 100_000_000   # do_set_timer_op: huge or negative -> NOW() + 100 ms


# ---------------------------------------------------------------- blocking and waking
def local_events_need_delivery(v: Vcpu) -> bool:
    """asm/event.h: evtchn_upcall_pending && !evtchn_upcall_mask."""
    return bool(v.upcall_pending) and not v.upcall_mask


def _set_state(v: Vcpu, state: VcpuState) -> None:
    v.state = state
    account_runstate(v.domain, v)


def vcpu_block(v: Vcpu) -> bool:
    """vcpu_block: block, unless an event is deliverable (checked /after/ blocking, so a
    wake-up cannot be lost). True when the vcpu really blocked."""
    if local_events_need_delivery(v):
        return False
    _set_state(v, VcpuState.blocked)
    v.rescheduled = True        # on real Xen another domain runs meanwhile: segments reload
    v.cpu.uc.emu_stop()
    v.domain.trace.emit_sched_block(v, v.poll_ports is not None, list(v.poll_ports or ()), v.poll_deadline)
    return True


def vcpu_wake(v: Vcpu) -> None:
    """vcpu_wake: the vcpu becomes runnable. An idle vcpu's clock catches up with the time
    of the vcpu that woke it (idle time passes at once, costing no host time)."""
    dom = v.domain
    cur = dom.current
    if cur is not None and cur is not v:
        dom.time.advance_to(v, dom.time.now(cur))
    _set_state(v, VcpuState.running)
    dom.trace.emit_sched_wake(v)


def vcpu_unblock(v: Vcpu) -> None:
    """vcpu_unblock: a blocked vcpu (in SCHEDOP_block or SCHEDOP_poll) wakes; its polling
    period ends. A vcpu that is down stays down (_VPF_down)."""
    if v.state is not VcpuState.blocked:
        return
    v.poll_ports = None
    v.poll_deadline = None
    vcpu_wake(v)


def vcpu_kick(v: Vcpu) -> None:
    """vcpu_kick (arch/x86/domain.c): unblock; a running vcpu notices the event on its next
    return to guest context (the start of its next turn, or the end of this hypercall)."""
    vcpu_unblock(v)


def evtchn_check_pollers(dom: Domain, port: int) -> None:
    """evtchn_check_pollers: wake each vcpu polling this port, or polling several ports
    (poll_evtchn = -1 then: any newly pending port wakes it)."""
    for v in dom.vcpus:
        ports = v.poll_ports
        if ports is not None and (len(ports) != 1 or ports[0] == port):
            vcpu_unblock(v)


# ---------------------------------------------------------------- timers
def send_timer_event(v: Vcpu) -> None:
    """send_timer_event -> send_guest_vcpu_virq(v, VIRQ_TIMER)."""
    v.domain.evtchn.send_virq(v, C.Virq.TIMER)


def periodic_timer_work(v: Vcpu) -> None:
    """vcpu_periodic_timer_work_locked: if the period has elapsed since the last event,
    send one and restart the period from now."""
    if not v.periodic_period:
        return
    now = v.domain.time.now(v)
    if now >= v.periodic_last + v.periodic_period:
        send_timer_event(v)
        v.periodic_last = now
    v.periodic_next = v.periodic_last + v.periodic_period


def set_periodic_timer(v: Vcpu, period: int) -> None:
    """vcpu_set_periodic_timer: 0 stops it; a new period is checked against the last event."""
    v.periodic_period = period
    periodic_timer_work(v)


def fire_timers(v: Vcpu) -> bool:
    """Run the timers of v that are due at v's clock: the periodic timer, the single-shot
    timer (vcpu_singleshot_timer_fn) and the SCHEDOP_poll timeout (poll_timer_fn).
    True when something fired."""
    now = v.domain.time.now(v)
    fired = False
    if v.periodic_period and now >= v.periodic_last + v.periodic_period:
        periodic_timer_work(v)
        fired = True
    if v.singleshot_deadline is not None and v.singleshot_deadline <= now:
        v.singleshot_deadline = None
        send_timer_event(v)
        fired = True
    if v.poll_ports is not None and v.poll_deadline is not None and v.poll_deadline <= now \
            and v.state is VcpuState.blocked:
        vcpu_unblock(v)
        fired = True
    return fired


def timer_deadlines(v: Vcpu, *, effective: bool = False) -> list[tuple[int, str]]:
    """(time, kind) of v's armed timers. With effective=True only timers whose firing can
    change something: a VIRQ_TIMER with no port bound goes nowhere, a poll timeout always
    wakes its poller."""
    out: list[tuple[int, str]] = []
    timer_bound = not effective or v.domain.evtchn.virq_bound(C.Virq.TIMER, v.id)
    if timer_bound:
        if v.periodic_period:
            out.append((v.periodic_last + v.periodic_period, "periodic"))
        if v.singleshot_deadline is not None:
            out.append((v.singleshot_deadline, "singleshot"))
    if v.poll_ports is not None and v.poll_deadline is not None:
        out.append((v.poll_deadline, "poll"))
    return out


# ---------------------------------------------------------------- SCHEDOP_block / poll
def do_block(vcpu: Vcpu) -> int:
    """SCHEDOP_block -> vcpu_block_enable_events: clear evtchn_upcall_mask, then block."""
    vcpu.upcall_mask = 0
    vcpu_block(vcpu)
    return 0


def do_poll(vcpu: Vcpu, arg: int) -> int:
    """SCHEDOP_poll (do_poll; compat_sched_op translates the 16-byte PV32 struct)."""
    dom = vcpu.domain
    L = dom.abi.sched_poll
    try:
        p = L.parse(vcpu.read_virt(arg, L.size()))
    except GuestFault:
        return EFAULT
    if p.nr_ports > MAX_POLL_PORTS:
        return EINVAL
    if not dom.geo.guest_range_ok(p.ports, 4 * p.nr_ports):      # guest_handle_okay
        return EFAULT
    if local_events_need_delivery(vcpu):
        return 0
    ev = dom.evtchn
    ports: list[int] = []
    for i in range(p.nr_ports):
        try:
            port = struct.unpack("<I", vcpu.read_virt(p.ports + 4 * i, 4))[0]
        except GuestFault:
            return EFAULT
        # evtchn_port_poll: -EINVAL for an invalid or unusable port, else its pending bit
        if not ev.valid(port) or not ev.ports[port].usable:
            return EINVAL
        if ev.is_pending(port):
            return 0
        ports.append(port)
    vcpu.poll_ports = ports
    vcpu.poll_deadline = p.timeout or None
    vcpu_block(vcpu)
    return 0


def shutdown(vcpu: Vcpu, reason: int) -> int:
    """domain_shutdown (common/domain.c): the reason is a u8 (callers truncate it) and a code
    the guest set earlier with SCHEDOP_shutdown_code takes precedence."""
    dom = vcpu.domain
    if dom.shutdown_code is None:
        dom.shutdown_code = reason & 0xFF
    reason = dom.shutdown_code
    if reason == ShutdownReason.suspend:
        dom.unimplemented("suspend (SHUTDOWN_suspend): treated as cancelled")
        dom.shutdown_code = None   # domain_resume forgets the code
        return 1   # suspend cancelled: the guest resumes in place
    dom.shutdown(vcpu, reason)
    return 0


def poll(vcpu: Vcpu, ports: list[int], timeout: int) -> None:
    """Block polling `ports` until one is pending or the timeout (0: none) passes."""
    vcpu.poll_ports = list(ports)
    vcpu.poll_deadline = timeout or None
    vcpu_block(vcpu)


def do_yield(vcpu: Vcpu) -> int:
    """vcpu_yield: give up the rest of this turn. The scheduler runs the vcpu whose clock is
    furthest behind next, which may be this one again (as on Xen with an idle pCPU)."""
    vcpu.rescheduled = True
    vcpu.cpu.uc.emu_stop()
    return 0


def do_sched_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    dom = vcpu.domain
    if cmd == SchedOp.yield_:
        return do_yield(vcpu)
    if cmd == SchedOp.block:
        return do_block(vcpu)
    if cmd == SchedOp.shutdown:
        try:
            reason = vcpu.read_u32(arg)
        except GuestFault:
            return EFAULT
        return shutdown(vcpu, reason)
    if cmd == SchedOp.poll:
        return do_poll(vcpu, arg)
    if cmd == SchedOp.shutdown_code:
        try:
            code = vcpu.read_u32(arg)
        except GuestFault:
            return EFAULT
        if dom.shutdown_code is None:           # only the first code counts, as a u8
            dom.shutdown_code = code & 0xFF
        return 0
    if cmd in (SchedOp.remote_shutdown, SchedOp.pin_override):
        return EPERM
    if cmd == SchedOp.watchdog:
        return dom.unimplemented("sched_op watchdog")
    return ENOSYS


def decode_sched(vcpu: Vcpu, cmd: int, arg: int) -> dict[str, Any]:
    try:
        name = SchedOp(cmd).name.rstrip("_")
    except ValueError:
        return {"cmd": str(cmd), "arg": f"{arg:#x}"}
    out: dict[str, Any] = {"cmd": name}
    try:
        if cmd == SchedOp.shutdown:
            r = vcpu.read_u32(arg)
            out["reason"] = ShutdownReason(r).name if r in ShutdownReason._value2member_map_ else r
        elif cmd == SchedOp.poll:
            p = vcpu.domain.abi.sched_poll.parse(vcpu.read_virt(arg, vcpu.domain.abi.sched_poll.size()))
            out.update(nr_ports=p.nr_ports, timeout=p.timeout, ports_ptr=f"{p.ports:#x}")
            if p.nr_ports <= MAX_POLL_PORTS:
                out["ports"] = list(struct.unpack(f"<{p.nr_ports}I", vcpu.read_virt(p.ports, 4 * p.nr_ports)))
    except GuestFault:
        out["arg"] = f"{arg:#x} (unreadable)"
    return out


def do_sched_op_compat(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    """do_sched_op_compat (arch/x86/compat.c): yield, block, shutdown with the reason in arg
    itself, of which domain_shutdown sees the low byte ((u8)arg: a guest that passes a pointer
    to a struct sched_shutdown, as GNU Mach does, shuts down with that byte); anything else
    -ENOSYS."""
    if cmd == SchedOp.yield_:
        return do_yield(vcpu)
    if cmd == SchedOp.block:
        return do_block(vcpu)
    if cmd == SchedOp.shutdown:
        return shutdown(vcpu, arg & 0xFF)
    return ENOSYS


def do_set_timer_op(vcpu: Vcpu, lo: int, hi: int, *_: int) -> int:
    """do_set_timer_op: a one-shot VIRQ_TIMER at an absolute system time (lo, hi); 0 stops
    it; a negative deadline, or one more than 2^50 ns ahead, becomes NOW() + 100 ms."""
    timeout = lo | (hi << 32)
    if timeout & (1 << 63):
        timeout -= 1 << 64                  # s_time_t
    if timeout == 0:
        vcpu.singleshot_deadline = None
        return 0
    now = vcpu.domain.time.now(vcpu)
    offset = timeout - now
    if timeout < 0 or (offset > 0 and (offset >> 50) & 0xFFFFFFFF):
        timeout = now + SET_TIMER_OP_FALLBACK_NS
    vcpu.singleshot_deadline = timeout
    return 0


def decode_sched_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> Any:
    return decode_sched(vcpu, cmd, arg)


def decode_sched_op_compat(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> Any:
    out: dict[str, Any] = {"cmd": cmd, "arg": arg}
    if cmd == SchedOp.shutdown:
        r = arg & 0xFF                          # what domain_shutdown sees
        out["reason"] = ShutdownReason(r).name if r in ShutdownReason._value2member_map_ else r
    return out


def do_set_timer_op64(vcpu: Vcpu, timeout: int, *_: int) -> int:
    """set_timer_op(u64 timeout) of the 64-bit ABI: one register."""
    return do_set_timer_op(vcpu, timeout & 0xFFFFFFFF, timeout >> 32)


def decode_set_timer_op(geo: HvGeometry, lo: int, hi: int, *_: int) -> Any:
    if geo.word == 8:
        return {"deadline_ns": lo}
    return {"deadline_ns": lo | (hi << 32)}
