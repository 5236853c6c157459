"""vcpu life cycle and time records: VCPUOP_initialise/up/down, register_vcpu_info, runstate,
vcpu_time_info and the wallclock.

Sources: xen/common/domain.c (common_vcpu_op, map_guest_area, vcpu_info_populate),
xen/common/compat/domain.c (compat_common_vcpu_op), xen/arch/x86/domain.c (arch_set_info_guest
for the compat vcpu_guest_context), xen/common/sched/core.c (vcpu_runstate_change,
vcpu_runstate_get), xen/arch/x86/time.c (__update_vcpu_system_time, collect_time_info: the
version odd/even protocol), public/vcpu.h.
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
VCPU_INFO_SIZE = 64


def update_vcpu_time(dom: Domain, v: Vcpu, force: bool = False) -> None:
    """__update_vcpu_system_time (arch/x86/time.c): collect the record, and unless it is
    unchanged (or forced), write it with the version protocol: version odd
    (version_update_begin), the fields, version even again (version_update_end).

    The virtual TSC counts one tick per ns, so tsc_timestamp = system_time = the vcpu's clock
    and tsc_to_system_mul = 2^31, tsc_shift = 1 (the 1 GHz case of public/xen.h).
    XEN_PVCLOCK_TSC_STABLE_BIT stays clear (collect_time_info sets it only when Xen's
    clocksource is the TSC): each vcpu has its own clock, up to one scheduling quantum apart,
    so a guest must not assume the TSCs of different vcpus agree (Linux then keeps
    pvclock readings monotonic across vcpus itself)."""
    base = v.vcpu_info_maddr + TIME_INFO_OFFSET
    mem = dom.mem
    now = dom.time.now(v)
    fields = struct.pack("<QQIbB", now, now, dom.time.mul_frac, dom.time.shift, 0)
    if not force and mem.read(base + 8, len(fields)) == fields:
        return
    ver = mem.read_u32(base)
    odd = ((ver + 1) | 1) & 0xFFFFFFFF
    mem.write_u32(base, odd)
    mem.write(base + 8, fields)
    mem.write_u32(base, (odd + 1) & 0xFFFFFFFF)


def init_wallclock(dom: Domain) -> None:
    """shared_info wc_*: the UTC time at system time 0 (fixed, so runs are repeatable),
    written with the same version protocol on wc_version (update_domain_wallclock_time)."""
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
    """vcpu_runstate_change (sched/core.c): time since the last change goes to the state the
    vcpu was in; the vcpu enters the state it is in now. Call it after changing v.state."""
    now = dom.time.now(v)
    st = v.runstate_state
    v.runstate_time[st] += max(0, now - v.runstate_entry)
    v.runstate_entry = max(now, v.runstate_entry)
    v.runstate_state = runstate_of(v)


def runstate_info(dom: Domain, v: Vcpu):
    """vcpu_runstate_get + the compat translation (44 bytes: i32 state, u64 entry, u64 time[4])."""
    account_runstate(dom, v)
    r = dom.abi.vcpu_runstate_info()
    r.state = v.runstate_state
    r.state_entry_time = v.runstate_entry
    for i in range(4):
        r.time[i] = v.runstate_time[i]
    return r


def update_runstate_area(dom: Domain, v: Vcpu) -> None:
    """update_runstate_area: write the registered area; a fault is ignored (as Xen does)."""
    if v.runstate_area:
        try:
            v.write_virt(v.runstate_area, bytes(runstate_info(dom, v)))
        except GuestFault:
            pass


def vcpu_up(dom: Domain, target: Vcpu, caller: Vcpu | None = None) -> int:
    """VCPUOP_up (common_vcpu_op): -EINVAL unless initialised; a down vcpu wakes. Its clock
    starts at the time of the vcpu that brought it up."""
    from xenwb.hypervisor.hypercalls.sched import vcpu_wake
    from xenwb.hypervisor.vcpu import VcpuState
    if not target.initialised:
        return -Errno.EINVAL
    if target.state is VcpuState.down:
        cur = caller or dom.current
        if cur is not None and cur is not target:
            dom.time.advance_to(target, dom.time.now(cur))
            account_runstate(dom, target)      # the offline time up to now
        vcpu_wake(target)
        dom.trace.emit(cur, "vcpu", "up", target=target.id)
    return 0


def vcpu_down(dom: Domain, target: Vcpu) -> int:
    """VCPUOP_down: taking the last vcpu that is up down shuts the domain down (poweroff);
    otherwise the vcpu goes offline (_VPF_down) and stops at once if it is the caller."""
    from xenwb.abi.constants import ShutdownReason
    from xenwb.hypervisor.vcpu import VcpuState
    if not any(v is not target and v.state is not VcpuState.down for v in dom.vcpus):
        dom.shutdown(target, ShutdownReason.poweroff)
        return 0
    if target.state is not VcpuState.down:
        target.poll_ports = target.poll_deadline = None
        target.state = VcpuState.down
        account_runstate(dom, target)
        target.cpu.uc.emu_stop()
        dom.trace.emit(dom.current, "vcpu", "down", target=target.id)
    return 0


def register_vcpu_info(dom: Domain, v: Vcpu, mfn: int, offset: int) -> int:
    """VCPUOP_register_vcpu_info (common_vcpu_op + map_guest_area, common/domain.c): move
    v's vcpu_info to mfn:offset (a PV guest's gfn is its mfn). The old contents are copied
    (vcpu_info_populate), then every selector bit and evtchn_upcall_pending are set so no
    event is lost in the move, and the time record is rewritten."""
    from xenwb.hypervisor.mm import MMError, PageType
    gaddr = (mfn << 12) + offset
    if gaddr >> 12 != mfn or gaddr >= 1 << 64:
        return -Errno.EINVAL
    if v.vcpu_info_registered:
        return -Errno.EBUSY
    if (gaddr + VCPU_INFO_SIZE - 1) >> 12 != mfn or gaddr % 4:
        return -Errno.ENXIO                # crosses a page / not compat_ulong_t aligned
    if not dom.mm.is_owned(mfn):
        return -Errno.EINVAL               # check_get_page_from_gfn
    try:
        dom.mm.get_page_type(mfn, PageType.writable)
    except MMError:
        return -Errno.EACCES
    old = dom.mem.read(v.vcpu_info_maddr, VCPU_INFO_SIZE)
    dom.mem.write(gaddr, old)
    v.vcpu_info_maddr = gaddr
    v.vcpu_info_registered = True
    dom.trace.emit(dom.current or v, "vcpu", "register_vcpu_info", target=v.id, maddr=gaddr)
    dom.mem.write_u32(gaddr + 4, 0xFFFFFFFF)
    dom.evtchn.mark_events_pending(v)  # type: ignore[attr-defined]
    update_vcpu_time(dom, v, force=True)
    return 0


def vcpu_initialise(dom: Domain, v: Vcpu, arg: int, caller: Vcpu) -> int:
    """VCPUOP_initialise with a compat vcpu_guest_context (compat_common_vcpu_op ->
    arch_set_info_guest, xen/arch/x86/domain.c), checks in Xen's order: -EEXIST once
    initialised; debug registers 0-3 must be guest addresses; selectors get RPL 1
    (fixup_guest_code/stack_selector); EFLAGS.VM, a misaligned LDT base, more than 8192 LDT
    entries or 16 GDT frames are -EINVAL; CR3 must name a validated top-level table. The
    vcpu stays down until VCPUOP_up."""
    from xenwb.hypervisor.hypercalls.descriptors import set_gdt
    from xenwb.hypervisor.mm import MMError
    from xenwb.hypervisor.traps import EFLAGS_VM
    from xenwb.hypervisor.vcpu import TrapInfo
    L = dom.abi.vcpu_guest_context
    try:
        ctx = L.parse(caller.read_virt(arg, L.size()))
    except GuestFault:
        return -Errno.EFAULT
    if v.initialised:
        return -Errno.EEXIST
    r = ctx.user_regs
    if any(ctx.debugreg[i] >= dom.geo.hv_start for i in range(4)):   # breakpoint_addr_ok
        return -Errno.EINVAL
    if r.eflags & EFLAGS_VM:
        return -Errno.EINVAL
    if ctx.ldt_base & 0xFFF or ctx.ldt_ents > 8192:
        return -Errno.EINVAL
    if (ctx.gdt_ents + 511) // 512 > 16 or ctx.gdt_ents > C.FIRST_RESERVED_GDT_ENTRY:
        return -Errno.EINVAL
    cr3 = ctx.ctrlreg[3]
    mfn = ((cr3 >> 12) | (cr3 << 20)) & 0xFFFFFFFF      # compat_cr3_to_pfn
    try:
        dom.mm.get_root(mfn)
    except MMError:
        return -Errno.EINVAL
    v.cpu.start_paging(mfn)
    old_cr3 = v.cr3_mfn
    v.cr3_mfn = mfn
    if ctx.gdt_ents:
        frames = list(ctx.gdt_frames)[: (ctx.gdt_ents + 511) // 512]
        rc = set_gdt(v, frames, ctx.gdt_ents)
        if rc:
            dom.mm.put_root(mfn)
            v.cr3_mfn = old_cr3
            return rc
    if ctx.ldt_ents:
        from xenwb.hypervisor.hypercalls.mm import set_ldt
        set_ldt(v, ctx.ldt_base, ctx.ldt_ents)
    v.trap_ctxt = [None] * 256
    for i, ti in enumerate(ctx.trap_ctxt):               # XLAT_trap_info: by position
        if ti.address or ti.cs & ~3:
            v.trap_ctxt[i] = TrapInfo(i, ti.flags, fix_code(ti.cs), ti.address)
    v.event_cs, v.event_eip = fix_code(ctx.event_callback_cs), ctx.event_callback_eip
    v.failsafe_cs, v.failsafe_eip = fix_code(ctx.failsafe_callback_cs), ctx.failsafe_callback_eip
    v.failsafe_mask = bool(ctx.flags & C.VGCF_failsafe_disables_events)
    v.kernel_ss, v.kernel_sp = fix(ctx.kernel_ss), ctx.kernel_sp
    v.debugreg = list(ctx.debugreg)
    v.iopl = (r.eflags >> 12) & 3                        # IOPL privileges are virtualised
    v.set_virtual_ts(bool(ctx.ctrlreg[0] & 8))           # only CR0.TS is the guest's
    cpu = v.cpu
    for name in ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp"):
        cpu.set_reg(name, getattr(r, name))
    cs, ss = fix_code(r.cs), fix(r.ss)
    for seg in ("ds", "es", "fs", "gs"):
        sel = getattr(r, seg)
        cpu.set_reg(seg, fix(sel) if _loadable(v, sel) else 0)
    eflags = (r.eflags & 0x3F7FD7 & ~(3 << 12)) | (1 << 9) | 2   # X86_EFLAGS_ALL, IF forced on
    cpu.transfer(r.eip, cs, eflags, r.esp, ss)
    v.pending_iret_target = dict(cpu.regs(), eip=r.eip, cs=cs, eflags=eflags, esp=r.esp, ss=ss)
    v.initialised = True
    update_vcpu_time(dom, v)
    dom.trace.emit(caller, "vcpu", "initialise", target=v.id, eip=r.eip, esp=r.esp, cr3_mfn=mfn)
    return 0


def fix_code(sel: int) -> int:
    """fixup_guest_code_selector (compat): a ring-0 selector runs in ring 1."""
    return fix(sel)


def fix(sel: int) -> int:
    """A non-null selector with RPL 0 is bumped to the guest kernel's RPL 1."""
    return sel | 1 if sel & ~3 and not sel & 3 else sel


def _loadable(v: Vcpu, sel: int) -> bool:
    return sel >> 3 >= C.FIRST_RESERVED_GDT_ENTRY or (sel >> 3) < v.gdt_ents if sel & ~3 else False
