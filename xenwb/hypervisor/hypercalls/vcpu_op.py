"""vcpu_op: xen/common/domain.c (common_vcpu_op), common/compat/domain.c, arch/x86/x86_64/domain.c
(compat_vcpu_op) and xen/arch/x86/domain.c (arch_do_vcpu_op)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, VcpuOp
from xenwb.hypervisor.hypercalls import hypercall
from xenwb.hypervisor.memory import GuestFault

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, ENOENT, EEXIST, EBUSY, ENOSYS, ETIME = (
    -Errno.EINVAL, -Errno.EFAULT, -Errno.ENOENT, -Errno.EEXIST, -Errno.EBUSY, -Errno.ENOSYS, -Errno.ETIME)
MIN_PERIOD_NS = 1_000_000          # MILLISECS(1)
STIME_DELTA_MAX = (1 << 62) - 1     # xen/include/xen/time.h


def _rd(vcpu: Vcpu, arg: int, L):
    return L.parse(vcpu.read_virt(arg, L.size()))


@hypercall(C.Hypercall.vcpu_op, decoder=lambda v, cmd, vid, arg, *_: decode_vcpu_op(v, cmd, vid, arg))
def do_vcpu_op(vcpu: Vcpu, cmd: int, vcpuid: int, arg: int, *_: int) -> int:
    """compat_vcpu_op (arch/x86/x86_64/domain.c) -> compat_common_vcpu_op
    (common/compat/domain.c) -> common_vcpu_op (common/domain.c)."""
    from xenwb.hypervisor.hypercalls import sched
    from xenwb.hypervisor.vcpu import VcpuState
    dom = vcpu.domain
    if vcpuid >= len(dom.vcpus):
        return ENOENT                          # domain_vcpu() == NULL
    target = dom.vcpus[vcpuid]
    L = dom.abi
    try:
        if cmd == VcpuOp.initialise:
            return dom.vcpu_initialise(target, arg)
        if cmd == VcpuOp.up:
            from xenwb.hypervisor.vcpus import vcpu_up
            return vcpu_up(dom, target, vcpu)
        if cmd == VcpuOp.down:
            return dom.vcpu_down(target)
        if cmd == VcpuOp.is_up:
            return 0 if target.state is VcpuState.down else 1
        if cmd == VcpuOp.get_runstate_info:
            vcpu.write_virt(arg, bytes(dom.runstate(target)))
            return 0
        if cmd == VcpuOp.register_runstate_memory_area:
            # compat: a 32-bit handle; the whole area must be below the hypervisor range
            a = _rd(vcpu, arg, L.vcpu_register_runstate_memory_area)
            addr = a.addr & 0xFFFFFFFF
            if addr + L.vcpu_runstate_info.size() > dom.geo.hv_start:
                return EFAULT
            target.runstate_area = addr or None
            dom.update_runstate_area(target)
            return 0
        if cmd == VcpuOp.set_periodic_timer:
            p = _rd(vcpu, arg, L.vcpu_set_periodic_timer).period_ns
            if p < MIN_PERIOD_NS or p > STIME_DELTA_MAX:
                return EINVAL
            sched.set_periodic_timer(target, p)
            return 0
        if cmd == VcpuOp.stop_periodic_timer:
            sched.set_periodic_timer(target, 0)
            return 0
        if cmd == VcpuOp.set_singleshot_timer:
            if target is not vcpu:
                return EINVAL
            t = _rd(vcpu, arg, L.vcpu_set_singleshot_timer)
            if t.timeout_abs_ns < dom.time.now(vcpu):
                # "the timeout has already expired: just inject the event"
                # (VCPU_SSHOTTMR_future and its -ETIME are gone from current Xen)
                vcpu.singleshot_deadline = None
                sched.send_timer_event(vcpu)
                return 0
            vcpu.singleshot_deadline = t.timeout_abs_ns
            return 0
        if cmd == VcpuOp.stop_singleshot_timer:
            if target is not vcpu:
                return EINVAL
            vcpu.singleshot_deadline = None
            return 0
        if cmd == VcpuOp.register_vcpu_info:
            a = _rd(vcpu, arg, L.vcpu_register_vcpu_info)
            return dom.register_vcpu_info(target, a.mfn, a.offset)
        if cmd == VcpuOp.send_nmi:
            return dom.unimplemented("vcpu_op send_nmi")
        if cmd == VcpuOp.get_physid:
            return EINVAL        # only the hardware domain's pinned vcpus have one
        if cmd in (13, 14, 15):  # register_vcpu_time_memory_area, *_phys_area
            return dom.unimplemented(f"vcpu_op command {cmd}")
    except GuestFault:
        return EFAULT
    return ENOSYS


def decode_vcpu_op(vcpu: Vcpu, cmd: int, vid: int, arg: int) -> dict[str, Any]:
    try:
        name = VcpuOp(cmd).name
    except ValueError:
        name = str(cmd)
    out: dict[str, Any] = {"cmd": name, "vcpu": vid, "arg": f"{arg:#x}"}
    L = vcpu.domain.abi
    layouts = {VcpuOp.set_periodic_timer: L.vcpu_set_periodic_timer,
               VcpuOp.set_singleshot_timer: L.vcpu_set_singleshot_timer,
               VcpuOp.register_vcpu_info: L.vcpu_register_vcpu_info,
               VcpuOp.register_runstate_memory_area: L.vcpu_register_runstate_memory_area}
    try:
        if cmd in layouts:
            out.update(_rd(vcpu, arg, layouts[VcpuOp(cmd)]).to_dict())
        elif cmd == VcpuOp.initialise:
            ctx = _rd(vcpu, arg, L.vcpu_guest_context)
            r = ctx.user_regs
            out["context"] = {"eip": f"{r.eip:#x}", "cs": f"{r.cs:#x}", "esp": f"{r.esp:#x}",
                              "ss": f"{r.ss:#x}", "cr3": f"{ctx.ctrlreg[3]:#x}", "flags": ctx.flags,
                              "event": f"{ctx.event_callback_cs:#x}:{ctx.event_callback_eip:#x}",
                              "kernel_sp": f"{ctx.kernel_ss:#x}:{ctx.kernel_sp:#x}",
                              "gdt_ents": ctx.gdt_ents}
    except GuestFault:
        out["arg"] += " (unreadable)"
    return out
