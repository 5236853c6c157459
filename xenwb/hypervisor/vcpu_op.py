"""vcpu_op and the vcpu life cycle (initialise, up, down, register_vcpu_info):
xen/common/domain.c (common_vcpu_op, map_guest_area, vcpu_info_populate),
common/compat/domain.c, arch/x86/x86_64/domain.c (compat_vcpu_op) and xen/arch/x86/domain.c
(arch_do_vcpu_op, arch_set_info_guest for the compat vcpu_guest_context)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, ShutdownReason, VcpuOp
from xenwb.hypervisor import sched
from xenwb.hypervisor.debugreg import load_debugregs
from xenwb.hypervisor.descriptors import set_gdt
from xenwb.hypervisor.emulate import pv_fixup_guest_cr4
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.mm import MMError, PageType, set_ldt
from xenwb.hypervisor.paging import canonical
from xenwb.hypervisor.state import TrapInfo, VcpuState
from xenwb.hypervisor.time import account_runstate, runstate_info, update_runstate_area, update_vcpu_time
from xenwb.hypervisor.traps import EFLAGS_VM

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, ENOENT, EEXIST, EBUSY, ENOSYS, ETIME = (
    -Errno.EINVAL, -Errno.EFAULT, -Errno.ENOENT, -Errno.EEXIST, -Errno.EBUSY, -Errno.ENOSYS, -Errno.ETIME)
MIN_PERIOD_NS = 1_000_000          # MILLISECS(1)
STIME_DELTA_MAX = (1 << 62) - 1     # xen/include/xen/time.h


def _rd(vcpu: Vcpu, arg: int, L):
    return L.parse(vcpu.read_virt(arg, L.size()))


def do_vcpu_op(vcpu: Vcpu, cmd: int, vcpuid: int, arg: int, *_: int) -> int:
    """compat_vcpu_op (arch/x86/x86_64/domain.c) -> compat_common_vcpu_op
    (common/compat/domain.c) -> common_vcpu_op (common/domain.c)."""
    dom = vcpu.domain
    if vcpuid >= len(dom.vcpus):
        return ENOENT                          # domain_vcpu() == NULL
    target = dom.vcpus[vcpuid]
    L = dom.abi
    try:
        if cmd == VcpuOp.initialise:
            if dom.is_64:
                return vcpu_initialise64(dom, target, arg, vcpu)
            return vcpu_initialise(dom, target, arg, vcpu)
        if cmd == VcpuOp.up:
            return vcpu_up(dom, target, vcpu)
        if cmd == VcpuOp.down:
            return vcpu_down(dom, target)
        if cmd == VcpuOp.is_up:
            return 0 if target.state is VcpuState.down else 1
        if cmd == VcpuOp.get_runstate_info:
            vcpu.write_virt(arg, bytes(runstate_info(dom, target)))
            return 0
        if cmd == VcpuOp.register_runstate_memory_area:
            addr = _area_handle(vcpu, arg, L.vcpu_register_runstate_memory_area, L.vcpu_runstate_info)
            if addr is None:
                return EFAULT
            target.runstate_area = addr or None
            update_runstate_area(dom, target)
            return 0
        if cmd == VcpuOp.register_vcpu_time_memory_area:
            # arch_do_vcpu_op: a guest handle for a second vcpu_time_info, kept up to date
            addr = _area_handle(vcpu, arg, L.vcpu_register_time_memory_area, L.vcpu_time_info)
            if addr is None:
                return EFAULT
            target.time_area = addr or None
            update_vcpu_time(dom, target, force=True)
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
            return register_vcpu_info(dom, target, a.mfn, a.offset)
        if cmd == VcpuOp.send_nmi:
            return dom.unimplemented("vcpu_op send_nmi")
        if cmd == VcpuOp.get_physid:
            return EINVAL        # only the hardware domain's pinned vcpus have one
        if cmd in (14, 15):      # register_runstate/vcpu_time_phys_area: Xen 4.18 and later
            return ENOSYS
    except GuestFault:
        return EFAULT
    return ENOSYS


# the struct a command's argument points to, by layout name (decode_vcpu_op)
_DECODED_LAYOUT = {VcpuOp.set_periodic_timer: "vcpu_set_periodic_timer",
                   VcpuOp.set_singleshot_timer: "vcpu_set_singleshot_timer",
                   VcpuOp.register_vcpu_info: "vcpu_register_vcpu_info",
                   VcpuOp.register_runstate_memory_area: "vcpu_register_runstate_memory_area"}
_OP_NAMES = {int(op): op.name for op in VcpuOp}


def decode_vcpu_op(vcpu: Vcpu, cmd: int, vid: int, arg: int) -> dict[str, Any]:
    out: dict[str, Any] = {"cmd": _OP_NAMES.get(cmd) or str(cmd), "vcpu": vid, "arg": f"{arg:#x}"}
    L = vcpu.domain.abi
    try:
        if cmd in _DECODED_LAYOUT:
            out.update(_rd(vcpu, arg, getattr(L, _DECODED_LAYOUT[cmd])).to_dict())
        elif cmd == VcpuOp.initialise and vcpu.word == 8:
            ctx = _rd(vcpu, arg, L.vcpu_guest_context)
            r = ctx.user_regs
            out["context"] = {"rip": f"{r.rip:#x}", "cs": f"{r.cs:#x}", "rsp": f"{r.rsp:#x}",
                              "ss": f"{r.ss:#x}", "cr3": f"{ctx.ctrlreg[3]:#x}", "user_cr3": f"{ctx.ctrlreg[1]:#x}",
                              "flags": ctx.flags, "event": f"{ctx.event_callback_eip:#x}",
                              "kernel_sp": f"{ctx.kernel_ss:#x}:{ctx.kernel_sp:#x}", "gdt_ents": ctx.gdt_ents,
                              "gs_base_kernel": f"{ctx.gs_base_kernel:#x}"}
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


# ---------------------------------------------------------------- the vcpu life cycle
def vcpu_up(dom: Domain, target: Vcpu, caller: Vcpu | None = None) -> int:
    """VCPUOP_up (common_vcpu_op): -EINVAL unless initialised; a down vcpu wakes. Its clock
    starts at the time of the vcpu that brought it up."""
    if not target.initialised:
        return -Errno.EINVAL
    if target.state is VcpuState.down:
        cur = caller or dom.current
        if cur is not None and cur is not target:
            dom.time.advance_to(target, dom.time.now(cur))
            account_runstate(dom, target)      # the offline time up to now
        sched.vcpu_wake(target)
        dom.trace.emit_vcpu_up(cur, target.id)
    return 0


def vcpu_down(dom: Domain, target: Vcpu) -> int:
    """VCPUOP_down: taking the last vcpu that is up down shuts the domain down (poweroff);
    otherwise the vcpu goes offline (_VPF_down) and stops at once if it is the caller."""
    if not any(v is not target and v.state is not VcpuState.down for v in dom.vcpus):
        dom.shutdown(target, ShutdownReason.poweroff)
        return 0
    if target.state is not VcpuState.down:
        target.poll_ports = target.poll_deadline = None
        target.state = VcpuState.down
        account_runstate(dom, target)
        target.cpu.uc.emu_stop()
        dom.trace.emit_vcpu_down(dom.current, target.id)
    return 0


def _area_handle(vcpu: Vcpu, arg: int, handle_layout: Any, area_layout: Any) -> int | None:
    """The guest handle of a register_*_memory_area (compat: 32 bits), 0 to unregister, or
    None when the area does not lie in guest space (guest_handle_okay: -EFAULT)."""
    addr = _rd(vcpu, arg, handle_layout).addr & ((1 << (8 * vcpu.word)) - 1)
    if addr and not vcpu.domain.geo.guest_range_ok(addr, area_layout.size()):
        return None
    return addr


def register_vcpu_info(dom: Domain, v: Vcpu, mfn: int, offset: int) -> int:
    """VCPUOP_register_vcpu_info (common_vcpu_op -> map_vcpu_info, Xen 4.17 common/domain.c):
    move v's vcpu_info to mfn:offset (a PV guest's gfn is its mfn). Checks in map_vcpu_info's
    order: the struct within the page and aligned (-ENXIO), not registered before, the caller
    itself or an offline vcpu, a frame of the guest's that takes a writable type (-EINVAL each).
    The old contents are copied, then every selector bit and evtchn_upcall_pending are set so
    no event is lost in the move (vcpu_info_populate), and the time record is rewritten."""
    size = dom.abi.vcpu_info.size()
    if offset > 4096 - size or offset % dom.word:
        # alignof(vcpu_info_t): 8 on x86_64; alignof(the compat struct), 4, for a 32-bit guest
        return -Errno.ENXIO
    if v.vcpu_info_registered:
        return -Errno.EINVAL
    if dom.current is not None and v is not dom.current and v.state is not VcpuState.down:
        return -Errno.EINVAL                 # "on yourself or on other offline VCPUS"
    if not dom.mm.is_owned(mfn):
        return -Errno.EINVAL                 # get_page_from_gfn
    try:
        dom.mm.get_page_type(mfn, PageType.writable)
    except MMError:
        return -Errno.EINVAL
    gaddr = (mfn << 12) + offset
    old = dom.mem.read(v.vcpu_info_maddr, dom.abi.vcpu_info.size())
    dom.mem.write(gaddr, old)
    v.vcpu_info_maddr = gaddr
    v.vcpu_info_registered = True
    dom.trace.emit_vcpu_register_vcpu_info(dom.current or v, v.id, gaddr)
    v.pending_sel = ~0
    dom.evtchn.mark_events_pending(v)
    update_vcpu_time(dom, v, force=True)
    return 0


def vcpu_initialise(dom: Domain, v: Vcpu, arg: int, caller: Vcpu) -> int:
    """VCPUOP_initialise with a compat vcpu_guest_context (compat_common_vcpu_op ->
    arch_set_info_guest, xen/arch/x86/domain.c), checks in Xen's order: -EEXIST once
    initialised; debug registers 0-3 must be guest addresses; selectors get RPL 1
    (fixup_guest_code/stack_selector); EFLAGS.VM, a misaligned LDT base, more than 8192 LDT
    entries or 16 GDT frames are -EINVAL; CR3 must name a validated top-level table. The
    vcpu stays down until VCPUOP_up."""
    L = dom.abi.vcpu_guest_context
    try:
        ctx = L.parse(caller.read_virt(arg, L.size()))
    except GuestFault:
        return -Errno.EFAULT
    if v.initialised:
        return -Errno.EEXIST
    r = ctx.user_regs
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
        set_ldt(v, ctx.ldt_base, ctx.ldt_ents)
    v.trap_ctxt = [None] * 256
    for i, ti in enumerate(ctx.trap_ctxt):               # XLAT_trap_info: by position
        if ti.address or ti.cs & ~3:
            v.trap_ctxt[i] = TrapInfo(i, ti.flags, fix_code(ti.cs), ti.address)
    v.event_cs, v.event_eip = fix_code(ctx.event_callback_cs), ctx.event_callback_eip
    v.failsafe_cs, v.failsafe_eip = fix_code(ctx.failsafe_callback_cs), ctx.failsafe_callback_eip
    v.failsafe_mask = bool(ctx.flags & C.VGCF_failsafe_disables_events)
    v.kernel_ss, v.kernel_sp = fix(ctx.kernel_ss), ctx.kernel_sp
    load_debugregs(v, list(ctx.debugreg))
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
    dom.trace.emit_vcpu_initialise(caller, v.id, r.eip, r.esp, mfn)
    return 0


def vcpu_initialise64(dom: Domain, v: Vcpu, arg: int, caller: Vcpu) -> int:
    """VCPUOP_initialise with the native vcpu_guest_context (arch_set_info_guest,
    xen/arch/x86/domain.c): -EEXIST once initialised; non-canonical RIP, RSP, kernel_sp,
    LDT base, FS/GS bases, callback or trap addresses are -EINVAL; CS/SS/kernel_ss get RPL 3;
    outside kernel mode a user L4 (ctrlreg[1]) is required; IOPL is virtualised and IF
    forced on; the GDT frames and CR3 (and ctrlreg[1]) must validate. The vcpu starts in
    kernel mode unless VGCF_in_kernel is clear, and stays down until VCPUOP_up."""
    L = dom.abi.vcpu_guest_context
    try:
        ctx = L.parse(caller.read_virt(arg, L.size()))
    except GuestFault:
        return -Errno.EFAULT
    if v.initialised:
        return -Errno.EEXIST
    r = ctx.user_regs
    addrs = [r.rip, r.rsp, ctx.kernel_sp, ctx.fs_base, ctx.gs_base_kernel, ctx.gs_base_user,
             ctx.event_callback_eip, ctx.syscall_callback_eip, ctx.failsafe_callback_eip]
    if ctx.ldt_ents:
        addrs.append(ctx.ldt_base)
    if not all(canonical(a) for a in addrs) or not all(canonical(t.address) for t in ctx.trap_ctxt):
        return -Errno.EINVAL
    if not dom.geo.guest_range_ok(ctx.ldt_base, 1) and ctx.ldt_base:
        return -Errno.EINVAL                          # __addr_ok
    if ctx.ldt_base & 0xFFF or ctx.ldt_ents > 8192:
        return -Errno.EINVAL
    if (ctx.gdt_ents + 511) // 512 > 16 or ctx.gdt_ents > C.FIRST_RESERVED_GDT_ENTRY:
        return -Errno.EINVAL
    in_kernel = bool(ctx.flags & C.VGCF_in_kernel)
    if not in_kernel and not ctx.ctrlreg[1]:
        return -Errno.EINVAL
    cr3 = ctx.ctrlreg[3] >> 12                       # xen_cr3_to_pfn
    try:
        dom.mm.get_root(cr3)
    except MMError:
        return -Errno.EINVAL
    if not dom.mm.m2p_strict:
        dom.mm.fill_ro_mpt(cr3)
    old_cr3 = v.cr3_mfn
    v.cr3_mfn = cr3
    if ctx.gdt_ents:
        rc = set_gdt(v, list(ctx.gdt_frames)[: (ctx.gdt_ents + 511) // 512], ctx.gdt_ents)
        if rc:
            dom.mm.put_root(cr3)
            v.cr3_mfn = old_cr3
            return rc
    user = ctx.ctrlreg[1] >> 12
    if user:
        try:
            dom.mm.get_root(user)
        except MMError:
            dom.mm.put_root(cr3)
            v.cr3_mfn = old_cr3
            return -Errno.EINVAL
        if dom.mm.m2p_strict:
            dom.mm.zap_ro_mpt(user)
        v.user_cr3_mfn = user
    v.kernel_mode = in_kernel
    v.cpu.start_paging(v.active_top_mfn)
    if ctx.ldt_ents:
        set_ldt(v, ctx.ldt_base, ctx.ldt_ents)
    v.trap_ctxt = [None] * 256
    for i, ti in enumerate(ctx.trap_ctxt):            # memcpy: by position
        if ti.address or ti.cs & ~3:
            v.trap_ctxt[i] = TrapInfo(i, ti.flags, fix3(ti.cs), ti.address)
    v.event_eip, v.failsafe_eip, v.syscall_eip = (ctx.event_callback_eip, ctx.failsafe_callback_eip,
                                                  ctx.syscall_callback_eip)
    v.failsafe_mask = bool(ctx.flags & C.VGCF_failsafe_disables_events)
    v.syscall_mask = bool(ctx.flags & C.VGCF_syscall_disables_events)
    v.kernel_ss, v.kernel_sp = fix3(ctx.kernel_ss), ctx.kernel_sp
    v.iopl = (r.rflags >> 12) & 3
    v.set_virtual_ts(bool(ctx.ctrlreg[0] & 8))
    v.cr4 = pv_fixup_guest_cr4(ctx.ctrlreg[4])
    load_debugregs(v, list(ctx.debugreg))           # after CR4: DE decides DR4/5 and I/O breakpoints
    cpu = v.cpu
    for name in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
                 "r15"):
        cpu.set_reg(name, getattr(r, name))
    for seg in ("ds", "es", "fs", "gs"):
        sel = getattr(r, seg)
        cpu.set_reg(seg, sel if _loadable(v, sel) else 0)
    # load_segments: the bases from the context, the active GS one for the starting mode
    v.gs_base_kernel, v.gs_base_user = ctx.gs_base_kernel, ctx.gs_base_user
    cpu.fs_base = ctx.fs_base
    cpu.gs_base, cpu.shadow_gs_base = ((ctx.gs_base_kernel, ctx.gs_base_user) if in_kernel
                                       else (ctx.gs_base_user, ctx.gs_base_kernel))
    rflags = (r.rflags & 0x3F7FD7 & ~(3 << 12)) | (1 << 9) | 2
    v.exit_to(r.rip, fix3(r.cs), rflags, r.rsp, fix3(r.ss), sysret=False)
    v.initialised = True
    update_vcpu_time(dom, v)
    dom.trace.emit_vcpu_initialise(caller, v.id, r.rip, r.rsp, cr3)
    return 0


def fix3(sel: int) -> int:
    """__fixup_guest_selector for a 64-bit guest: an RPL below 3 becomes 3."""
    return sel if sel & 3 == 3 else (sel & ~3) | 3


def fix_code(sel: int) -> int:
    """fixup_guest_code_selector (compat): a ring-0 selector runs in ring 1."""
    return fix(sel)


def fix(sel: int) -> int:
    """A non-null selector with RPL 0 is bumped to the guest kernel's RPL 1."""
    return sel | 1 if sel & ~3 and not sel & 3 else sel


def _loadable(v: Vcpu, sel: int) -> bool:
    return sel >> 3 >= C.FIRST_RESERVED_GDT_ENTRY or (sel >> 3) < v.gdt_ents if sel & ~3 else False
