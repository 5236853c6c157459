"""Exceptions, events, system calls and returns of a 64-bit PV guest, as Xen's entry code
does them.

Sources (Xen 4.17): xen/arch/x86/x86_64/entry.S (create_bounce_frame, switch_to_kernel,
int80_direct_trap, sysenter_entry, restore_all_guest), xen/arch/x86/pv/iret.c (do_iret),
xen/arch/x86/pv/domain.c (toggle_guest_mode), xen/arch/x86/domain.c (load_segments and
its failsafe frame).

Kernel and user both run at CPL 3 (xen-pv64-abi.md section 4): what tells them apart is
the vcpu's kernel-mode flag (TF_kernel_mode) and the L4 in CR3. A bounce taken in user
mode switches to kernel mode first (toggle_guest_mode: swapgs, the kernel L4) and uses the
kernel stack given by stack_switch. Xen leaves the hypervisor by sysretq after hypercalls
and bounces (so RCX/R11 hold the return RIP and RFLAGS) and by iretq otherwise.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from xenwb.abi import constants as C
from xenwb.hypervisor import traps
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.paging import canonical
from xenwb.hypervisor.state import DomainCrash
from xenwb.hypervisor.time import update_runstate_area, update_secondary_time
from xenwb.hypervisor.xenarea64 import HV64_END, HV64_START

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu64 import Vcpu64

RFLAGS_TF, RFLAGS_IF, RFLAGS_DF = 1 << 8, 1 << 9, 1 << 10
RFLAGS_IOPL, RFLAGS_NT, RFLAGS_RF, RFLAGS_VM, RFLAGS_AC = 3 << 12, 1 << 14, 1 << 16, 1 << 17, 1 << 18
# the exceptions with an error code (X86_EXC_HAVE_EC)
HAVE_EC = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})


def toggle_guest_mode(v: Vcpu64) -> None:
    """pv/domain.c toggle_guest_mode: remember the GS base about to become inactive, swapgs,
    flip the kernel-mode flag, load the other L4; entering kernel mode refreshes the runstate
    and secondary time areas."""
    cpu = v.cpu
    if v.kernel_mode:
        v.gs_base_kernel = cpu.gs_base
    else:
        v.gs_base_user = cpu.gs_base
    cpu.swapgs()
    v.kernel_mode = not v.kernel_mode
    cpu.set_cr3(v.active_top_mfn)
    v.domain.trace.emit_mode(v, "kernel" if v.kernel_mode else "user")
    if v.kernel_mode:
        update_runstate_area(v.domain, v)
        update_secondary_time(v.domain, v)


def guest_rflags(v: Vcpu64, real: int, saved_mask: int) -> int:
    """RFLAGS as a frame shows it: IF = !saved mask, IOPL the virtual one only with
    VMASST_TYPE_architectural_iopl."""
    flags = real & ~(RFLAGS_IF | RFLAGS_IOPL)
    if not saved_mask:
        flags |= RFLAGS_IF
    if v.domain.vm_assist & (1 << C.Vmasst.architectural_iopl):
        flags |= (v.iopl & 3) << 12
    return flags


def _push(v: Vcpu64, sp: int, slots: list[int]) -> int:
    frame = struct.pack(f"<{len(slots)}Q", *(s & ((1 << 64) - 1) for s in slots))
    new_sp = sp - len(frame)
    try:
        v.write_virt(new_sp, frame)
    except GuestFault as e:
        raise DomainCrash(f"fault while writing the bounce frame at {e.va:#x}") from None
    return new_sp


def _stack_for_bounce(v: Vcpu64, r: dict[str, int]) -> tuple[int, int]:
    """The stack the frame goes on and the CS it records: in kernel mode the current RSP with
    CS's RPL cleared ("indicate kernel context to the guest"); from user mode the kernel
    stack, after switching to kernel mode. Frames are 16-byte aligned; a stack in Xen's hole
    crashes the domain (create_bounce_frame_bad_sp)."""
    if v.kernel_mode:
        sp, cs = r["rsp"], r["cs"] & ~3
    else:
        toggle_guest_mode(v)
        sp, cs = v.kernel_sp, r["cs"]
    sp &= ~0xF
    if HV64_START + 1 <= sp < HV64_END + 8 * 8:
        raise DomainCrash(f"bounce frame stack {sp:#x} is in the hypervisor's range")
    return sp, cs


def create_bounce_frame(v: Vcpu64, handler: int, error_code: int | None, mask_events: bool, *,
                        regs: dict[str, int] | None = None) -> None:
    """entry.S create_bounce_frame. Lowest address first: RCX, R11, [error code], RIP,
    CS | saved_mask << 32, RFLAGS, RSP, SS. Then RIP = handler, CS/SS = FLAT_KERNEL_CS64/SS64,
    AC, VM, RF, NT and TF cleared, and the exit is a sysretq."""
    r = regs or v.cpu_regs()
    saved_mask = v.upcall_mask
    sp, cs = _stack_for_bounce(v, r)
    if mask_events:
        v.upcall_mask = 1
    slots = [r["rcx"], r["r11"]]
    if error_code is not None:
        slots.append(error_code & 0xFFFFFFFF)
    slots += [r["rip"], (cs & 0xFFFF) | (saved_mask << 32), guest_rflags(v, r["rflags"], saved_mask),
              r["rsp"], r["ss"] & 0xFFFF]
    new_sp = _push(v, sp, slots)
    _enter_handler(v, handler, r["rflags"], new_sp)


def _enter_handler(v: Vcpu64, handler: int, rflags: int, sp: int) -> None:
    v.bounces += 1
    obs = v.domain.observer
    if obs is not None:
        obs.bounced(v)
    if not handler:
        raise DomainCrash("bounce to a null address (no handler registered)")
    rflags &= ~(RFLAGS_AC | RFLAGS_VM | RFLAGS_RF | RFLAGS_NT | RFLAGS_TF)
    v.exit_to(handler, C.FLAT_KERNEL_CS64, rflags, sp, C.FLAT_KERNEL_SS64, sysret=True)


def failsafe_callback(v: Vcpu64, target: dict[str, int]) -> None:
    """domain.c load_segments: a data selector would not load when Xen switched to the vcpu.
    The 11-slot frame: RCX, R11, DS, ES, FS, GS, RIP, CS | mask << 32, RFLAGS, RSP, SS; the
    selectors are the ones that were to be loaded."""
    v.domain.trace.emit_failsafe(v, target)
    saved_mask = v.upcall_mask
    rflags = guest_rflags(v, target["rflags"], saved_mask)
    sp, cs = _stack_for_bounce(v, target)
    slots = [target["rcx"], target["r11"]] + [target[s] & 0xFFFF for s in ("ds", "es", "fs", "gs")]
    slots += [target["rip"], (cs & 0xFFFF) | (saved_mask << 32), rflags, target["rsp"], target["ss"] & 0xFFFF]
    new_sp = _push(v, sp, slots)
    if v.failsafe_mask:
        v.upcall_mask = 1
    _enter_handler(v, v.failsafe_eip, target["rflags"] & ~RFLAGS_IOPL, new_sp)


def syscall_from_user(v: Vcpu64, r: dict[str, int], compat: bool) -> None:
    """entry.S lstar_enter/cstar_enter -> switch_to_kernel: a `syscall` in user mode goes to
    the syscall callback (syscall32 when it came from 32-bit code), events masked if
    registered so (VGCF_syscall_disables_events), in a frame with RCX/R11 as the CPU left
    them and CS/SS Xen's flat ones; DF is cleared for the handler (the PV ABI's fixed
    SYSCALL_MASK). No callback: #UD at the syscall."""
    frame = dict(r, cs=C.FLAT_USER_CS32 if compat else C.FLAT_KERNEL_CS64, ss=C.FLAT_KERNEL_SS64)
    target = v.syscall32_eip if compat else v.syscall_eip
    if not target:
        frame["rip"] = r["rip"] - 2
        v.bounce_vector(C.TRAP_invalid_op, None, regs=frame)
        return
    v.domain.trace.emit_user_syscall(v, r["rip"] - 2, r["rax"])
    create_bounce_frame(v, target, None, v.syscall_mask, regs=frame)
    v.cpu.set_reg("rflags", v.cpu.reg("rflags") & ~RFLAGS_DF)


def sysenter_from_user(v: Vcpu64, r: dict[str, int]) -> None:
    """entry.S sysenter_entry: the frame has RIP 0, CS 3, RSP 0 (SYSENTER saves nothing) and
    RFLAGS with IF set, VM and RF cleared and NT kept (since 4.15, 61d4a04349 "Don't deliver
    #GP for a SYSENTER with NT set": Xen clears NT in its own flags only); to the sysenter
    callback, or #GP(0) without one."""
    frame = dict(r, rip=0, pc=0, cs=3, rsp=0, ss=C.FLAT_USER_SS64,
                 rflags=(r["rflags"] | RFLAGS_IF) & ~(RFLAGS_VM | RFLAGS_RF))
    if not v.sysenter_eip:
        v.bounce_vector(C.TRAP_gp_fault, 0, regs=frame)
        return
    create_bounce_frame(v, v.sysenter_eip, None, v.sysenter_mask, regs=frame)


# Xen's flat selectors always load: an iret to them needs no descriptor check
FLAT_CS_SS = frozenset({(C.FLAT_USER_CS64, C.FLAT_USER_SS64), (C.FLAT_USER_CS32, C.FLAT_USER_SS64)})


def do_iret(v: Vcpu64) -> None:
    """pv/iret.c do_iret: the stack holds struct iret_context {rax, r11, rcx, flags, rip, cs,
    rflags, rsp, ss}. A CS with RPL 3 returns to user mode (crash without a user L4); CS/SS
    get RPL 3; RFLAGS loses IOPL/VM and gets IF; without VGCF_in_syscall R11/RCX are restored
    and the exit is an iretq, with it they keep the values of the hypercall's own syscall and
    the exit is a sysretq; the upcall mask follows RFLAGS.IF; RAX is the saved one."""
    L = v.domain.abi.iret_context
    sp = v.cpu.reg("rsp")
    try:
        ctx = L.parse(v.read_virt(sp, L.size()))
    except GuestFault:
        raise DomainCrash(f"fault while reading the iret context from the guest stack at {sp:#x}") from None
    if ctx.cs & 3 == 3:
        if not v.user_cr3_mfn:
            raise DomainCrash("iret to user mode with no user page tables (NEW_USER_BASEPTR)")
        if v.kernel_mode:
            toggle_guest_mode(v)
    if v.domain.vm_assist & (1 << C.Vmasst.architectural_iopl):
        v.iopl = (ctx.rflags >> 12) & 3
    rflags = (ctx.rflags & ~(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF
    cpu = v.cpu
    cpu.set_reg("rax", ctx.rax)
    in_syscall = bool(ctx.flags & C.VGCF_in_syscall)
    if not in_syscall:
        cpu.sysret_out.write(ctx.rcx, ctx.r11)
    v.upcall_mask = 0 if ctx.rflags & RFLAGS_IF else 1
    cs, ss = (ctx.cs | 3) & 0xFFFF, (ctx.ss | 3) & 0xFFFF
    if not in_syscall and (cs, ss) not in FLAT_CS_SS:
        target = dict(cpu.regs(), rip=ctx.rip, pc=ctx.rip, cs=cs, rflags=rflags, rsp=ctx.rsp, ss=ss,
                      rcx=ctx.rcx, r11=ctx.r11)
        fault = traps.iret_fault(v, target)
        if fault is not None:
            # restore_all_guest's iretq faults: that exception on its target (entry.S .Lft0 ->
            # handle_exception), which the guest gets as if raised there
            traps.bounce_exception(v, fault[0], fault[1], regs=target)
            return
    v.exit_to(ctx.rip, cs, rflags, ctx.rsp, ss, sysret=in_syscall)


def sysret_registers(rip: int, rflags: int, cs: int) -> tuple[int, int, int, int] | None:
    """restore_all_guest's sysret path: RCX = RIP, R11 = RFLAGS without IOPL/VM, with IF;
    CS/SS from XEN_MSR_STAR (sysretl for a 32-bit target). None: a non-canonical RIP, which
    Xen returns to with iretq instead."""
    if not canonical(rip):
        return None
    r11 = (rflags & ~(RFLAGS_IOPL | RFLAGS_VM)) | RFLAGS_IF
    if cs == C.FLAT_USER_CS32:
        return rip & 0xFFFFFFFF, r11, C.FLAT_USER_CS32, C.FLAT_KERNEL_SS64
    return rip, r11, C.FLAT_USER_CS64, C.FLAT_USER_SS64
