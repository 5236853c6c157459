"""sched_op, sched_op_compat, set_timer_op: xen/common/sched/core.c, public/sched.h."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, SchedOp, ShutdownReason
from xenwb.hypervisor.hypercalls import hypercall
from xenwb.hypervisor.memory import GuestFault

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, EPERM, ENOSYS = -Errno.EINVAL, -Errno.EFAULT, -Errno.EPERM, -Errno.ENOSYS
MAX_POLL_PORTS = 128


def do_block(vcpu: Vcpu) -> int:
    """SCHEDOP_block: enable event delivery, then block unless an event is pending."""
    vcpu.upcall_mask = 0
    if vcpu.upcall_pending:
        return 0
    vcpu.domain.block(vcpu)
    return 0


def do_poll(vcpu: Vcpu, arg: int) -> int:
    dom = vcpu.domain
    L = dom.abi.sched_poll
    try:
        p = L.parse(vcpu.read_virt(arg, L.size()))
    except GuestFault:
        return EFAULT
    if p.nr_ports > MAX_POLL_PORTS:
        return EINVAL
    try:
        ports = struct.unpack(f"<{p.nr_ports}I", vcpu.read_virt(p.ports, 4 * p.nr_ports)) if p.nr_ports else ()
    except GuestFault:
        return EFAULT
    ev = dom.evtchn  # type: ignore[attr-defined]
    for port in ports:
        if port >= ev.nr_ports:
            return EINVAL
    if any(ev.is_pending(port) for port in ports):
        return 0
    if vcpu.upcall_pending and not vcpu.upcall_mask:
        return 0
    if p.timeout and p.timeout <= dom.time.now(vcpu):
        return 0
    dom.poll(vcpu, list(ports), p.timeout)
    return 0


def shutdown(vcpu: Vcpu, reason: int) -> int:
    if reason == ShutdownReason.suspend:
        vcpu.domain.unimplemented("suspend (SHUTDOWN_suspend): treated as cancelled")
        return 1   # suspend cancelled: the guest resumes in place
    vcpu.domain.shutdown(vcpu, reason)
    return 0


@hypercall(C.Hypercall.sched_op, decoder=lambda v, cmd, arg, *_: decode_sched(v, cmd, arg))
def do_sched_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    dom = vcpu.domain
    if cmd == SchedOp.yield_:
        dom.yield_vcpu(vcpu)
        return 0
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
            dom.extra["shutdown_code"] = vcpu.read_u32(arg)
        except GuestFault:
            return EFAULT
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
    except GuestFault:
        out["arg"] = f"{arg:#x} (unreadable)"
    return out


@hypercall(C.Hypercall.sched_op_compat, decoder=lambda v, cmd, arg, *_: {"cmd": cmd, "arg": arg})
def do_sched_op_compat(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    if cmd == SchedOp.yield_:
        vcpu.domain.yield_vcpu(vcpu)
        return 0
    if cmd == SchedOp.block:
        return do_block(vcpu)
    if cmd == SchedOp.shutdown:
        return shutdown(vcpu, arg)
    return ENOSYS


@hypercall(C.Hypercall.set_timer_op, decoder=lambda v, lo, hi, *_: {"deadline_ns": lo | (hi << 32)})
def do_set_timer_op(vcpu: Vcpu, lo: int, hi: int, *_: int) -> int:
    """One-shot VIRQ_TIMER at an absolute system time; 0 cancels; a deadline that is
    negative or absurdly far (> 2^50 ns ahead) becomes now + 100 ms."""
    deadline = lo | (hi << 32)
    dom = vcpu.domain
    if deadline == 0:
        vcpu.singleshot_deadline = None
        return 0
    now = dom.time.now(vcpu)
    if deadline & (1 << 63) or deadline - now > (1 << 50):
        deadline = now + 100_000_000
    vcpu.singleshot_deadline = deadline
    return 0
