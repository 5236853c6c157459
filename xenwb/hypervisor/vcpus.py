"""vcpu life cycle and time records: VCPUOP_initialise/up/down, runstate, vcpu_time_info.

Sources: xen/common/domain.c (common_vcpu_op, map_vcpu_info), xen/arch/x86/domain.c
(arch_set_info_guest for the compat vcpu_guest_context), xen/arch/x86/time.c
(__update_vcpu_system_time: the version odd/even protocol), public/vcpu.h.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno
from xenwb.hypervisor.memory import GuestFault

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu

RUNSTATE_running, RUNSTATE_runnable, RUNSTATE_blocked, RUNSTATE_offline = 0, 1, 2, 3
XEN_PVCLOCK_TSC_STABLE_BIT = 1
TIME_INFO_OFFSET = 32        # vcpu_info.time


def update_vcpu_time(dom: Domain, v: Vcpu) -> None:
    """Refresh v's vcpu_time_info: version odd, fields, version even."""
    base = v.vcpu_info_maddr + TIME_INFO_OFFSET
    mem = dom.mem
    ver = mem.read_u32(base)
    now = dom.time.now(v)
    mem.write_u32(base, (ver + 1) | 1)
    mem.write(base + 8, struct.pack("<QQIbB", now, now, dom.time.mul_frac, dom.time.shift,
                                    XEN_PVCLOCK_TSC_STABLE_BIT))
    mem.write_u32(base, ((ver + 1) | 1) + 1)


def init_wallclock(dom: Domain) -> None:
    """shared_info wc_*: the UTC time at system time 0 (fixed, so runs are repeatable)."""
    from xenwb.hypervisor.time import WALLCLOCK_EPOCH
    si = dom.abi.shared_info
    base = dom.shared_info_mfn << 12
    mem = dom.mem
    mem.write_u32(base + si.offset("wc_version"), 1)
    mem.write_u32(base + si.offset("wc_sec"), WALLCLOCK_EPOCH)
    mem.write_u32(base + si.offset("wc_nsec"), 0)
    mem.write_u32(base + si.offset("wc_version"), 2)


def runstate_of(v: Vcpu) -> int:
    from xenwb.hypervisor.vcpu import VcpuState
    return {VcpuState.running: RUNSTATE_running, VcpuState.blocked: RUNSTATE_blocked,
            VcpuState.down: RUNSTATE_offline, VcpuState.stopped: RUNSTATE_runnable}[v.state]


def account_runstate(dom: Domain, v: Vcpu) -> None:
    """Move time spent since the last change into the current state's bucket."""
    now = dom.time.now(v)
    st = v.runstate_state
    v.runstate_time[st] += max(0, now - v.runstate_entry)
    v.runstate_entry = now
    v.runstate_state = runstate_of(v)


def runstate_info(dom: Domain, v: Vcpu):
    account_runstate(dom, v)
    r = dom.abi.vcpu_runstate_info()
    r.state = v.runstate_state
    r.state_entry_time = v.runstate_entry
    for i in range(4):
        r.time[i] = v.runstate_time[i]
    return r


def update_runstate_area(dom: Domain, v: Vcpu) -> None:
    if v.runstate_area:
        try:
            v.write_virt(v.runstate_area, bytes(runstate_info(dom, v)))
        except GuestFault:
            pass   # Xen skips an unmapped area silently


def vcpu_initialise(dom: Domain, v: Vcpu, arg: int, caller: Vcpu) -> int:
    """VCPUOP_initialise with a compat vcpu_guest_context (arch_set_info_guest)."""
    from xenwb.hypervisor.hypercalls.descriptors import set_gdt
    from xenwb.hypervisor.mm import MMError
    from xenwb.hypervisor.vcpu import TrapInfo
    if v.initialised:
        return -Errno.EEXIST
    L = dom.abi.vcpu_guest_context
    try:
        ctx = L.parse(caller.read_virt(arg, L.size()))
    except GuestFault:
        return -Errno.EFAULT
    r = ctx.user_regs
    if ctx.gdt_ents > C.FIRST_RESERVED_GDT_ENTRY or ctx.ldt_ents > 8192:
        return -Errno.EINVAL
    cr3 = ctx.ctrlreg[3]
    mfn = (cr3 >> 12) | ((cr3 & 0xFFF) << 20)      # xen_cr3_to_pfn
    try:
        dom.mm.get_root(mfn)
    except MMError:
        return -Errno.EINVAL
    v.cr3_mfn = mfn
    v.trap_ctxt = [None] * 256
    for ti in ctx.trap_ctxt:
        if ti.address:
            cs = ti.cs | 1 if not ti.cs & 3 else ti.cs
            v.trap_ctxt[ti.vector] = TrapInfo(ti.vector, ti.flags, cs, ti.address)
    v.event_cs, v.event_eip = fix(ctx.event_callback_cs), ctx.event_callback_eip
    v.failsafe_cs, v.failsafe_eip = fix(ctx.failsafe_callback_cs), ctx.failsafe_callback_eip
    v.failsafe_mask = bool(ctx.flags & C.VGCF_failsafe_disables_events)
    v.kernel_ss, v.kernel_sp = fix(ctx.kernel_ss), ctx.kernel_sp
    v.debugreg = list(ctx.debugreg)
    v.iopl = (r.eflags >> 12) & 3
    v.virtual_ts = bool(ctx.ctrlreg[0] & 8)
    v.cpu.start_paging(mfn)
    if ctx.gdt_ents:
        frames = list(ctx.gdt_frames)[: (ctx.gdt_ents + 511) // 512]
        rc = set_gdt(v, frames, ctx.gdt_ents)
        if rc:
            dom.mm.put_root(mfn)
            v.cr3_mfn = 0
            return rc
    if ctx.ldt_ents:
        from xenwb.hypervisor.hypercalls.mm import set_ldt
        set_ldt(v, ctx.ldt_base, ctx.ldt_ents)
    cpu = v.cpu
    for name in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"):
        cpu.set_reg(name, getattr(r, name))
    cs, ss = fix(r.cs), fix(r.ss)
    for seg in ("ds", "es", "fs", "gs"):
        sel = getattr(r, seg)
        cpu.set_reg(seg, fix(sel) if _loadable(v, sel) else 0)
    eflags = (r.eflags & ~(3 << 12)) | (1 << 9) | 2
    cpu.transfer(r.eip, cs, eflags, r.esp, ss)
    v.pending_iret_target = dict(cpu.regs(), eip=r.eip, cs=cs, eflags=eflags, esp=r.esp, ss=ss)
    v.initialised = True
    dom.trace.emit(caller, "vcpu", "initialise", target=v.id, eip=r.eip)
    return 0


def fix(sel: int) -> int:
    """A non-null selector with RPL 0 is bumped to the guest kernel's RPL 1."""
    return sel | 1 if sel & ~3 and not sel & 3 else sel


def _loadable(v: Vcpu, sel: int) -> bool:
    return sel >> 3 >= C.FIRST_RESERVED_GDT_ENTRY or (sel >> 3) < v.gdt_ents if sel & ~3 else False
