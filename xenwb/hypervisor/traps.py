"""Reflecting exceptions and events into a PV guest: the width-independent rules
(xen/arch/x86/pv/traps.c pv_inject_event, entry.S test_guest_events) and the PV32 frames
as Xen's compat entry code builds them.

PV32 frame layouts: xen/arch/x86/x86_64/compat/entry.S (compat_create_bounce_frame),
xen/arch/x86/domain.c (load_segments: the failsafe frame), xen/arch/x86/pv/iret.c (compat_iret). The 64-bit frames are
in traps64.py; each vcpu class says which it pushes (Vcpu.bounce).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from xenwb.abi import constants as C
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.state import DomainCrash
from xenwb.hypervisor.xenarea import TRAMPOLINE_VA

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EFLAGS_IF = 1 << 9
EFLAGS_IOPL = 3 << 12
EFLAGS_TF, EFLAGS_NT, EFLAGS_RF, EFLAGS_VM, EFLAGS_AC = 1 << 8, 1 << 14, 1 << 16, 1 << 17, 1 << 18


def guest_eflags(vcpu: Vcpu, real: int, saved_mask: int) -> int:
    """EFLAGS as the guest sees it in a frame: IF = !mask, virtual IOPL only with
    VMASST architectural_iopl."""
    flags = (real & ~(EFLAGS_IF | EFLAGS_IOPL)) | 2
    if not saved_mask:
        flags |= EFLAGS_IF
    if vcpu.domain.vm_assist & (1 << C.Vmasst.architectural_iopl):
        flags |= (vcpu.iopl & 3) << 12
    return flags


def create_bounce_frame(vcpu: Vcpu, handler_cs: int, handler_eip: int, error_code: int | None,
                        mask_events: bool, *, regs: dict[str, int] | None = None,
                        extra_low: tuple[int, ...] = ()) -> None:
    """Push Xen's PV32 frame and continue at handler_cs:handler_eip.

    Lowest address first: [extra_low...] [ERRCODE] EIP, CS|saved_mask<<16, EFLAGS, [ESP, SS].
    From ring 2/3 the frame goes on kernel_ss:kernel_sp with the old SS:ESP.
    """
    r = regs or vcpu.cpu.regs()
    saved_mask = vcpu.upcall_mask
    from_user = bool(r["cs"] & 2)
    words = list(extra_low)
    if error_code is not None:
        words.append(error_code & 0xFFFFFFFF)
    words += [r["eip"], (r["cs"] & 0xFFFF) | (saved_mask << 16), guest_eflags(vcpu, r["eflags"], saved_mask)]
    if from_user:
        words += [r["esp"], r["ss"] & 0xFFFF]
        ss, sp = vcpu.kernel_ss, vcpu.kernel_sp
        if not ss & ~3:
            raise DomainCrash("bounce from user mode with no kernel stack (stack_switch not called)")
    else:
        ss, sp = r["ss"], r["esp"]
    frame = struct.pack(f"<{len(words)}I", *words)
    new_sp = (sp - len(frame)) & 0xFFFFFFFF
    try:
        vcpu.write_virt(new_sp, frame)
    except GuestFault as e:
        raise DomainCrash(f"fault while writing the bounce frame at {e.va:#x}") from None
    if mask_events:
        vcpu.upcall_mask = 1
    vcpu.bounces += 1
    obs = vcpu.domain.observer
    if obs is not None:
        obs.bounced(vcpu)
    eflags = (r["eflags"] & ~(EFLAGS_TF | EFLAGS_NT | EFLAGS_RF | EFLAGS_VM | EFLAGS_IOPL)) | EFLAGS_IF | 2
    vcpu.cpu.transfer(handler_eip, handler_cs | 1 if not handler_cs & 3 else handler_cs, eflags, new_sp,
                      ss if ss & 3 else ss | 1)


def bounce_exception(vcpu: Vcpu, vector: int, error_code: int | None = None, cr2: int | None = None,
                     regs: dict[str, int] | None = None, *, observed: bool = True) -> None:
    """pv_inject_event: reflect a hardware exception (or int n) through trap_ctxt[vector].
    A debugger catching the exception holds the delivery until the vcpu resumes (with the
    registers as they are then)."""
    obs = vcpu.domain.observer
    if observed and obs is not None and obs.exception(vcpu, vector, error_code, cr2):
        def deliver() -> None:
            vcpu.held_exception = None
            bounce_exception(vcpu, vector, error_code, cr2, observed=False)
            vcpu.return_to_guest()
        vcpu.held_exception = vector
        vcpu.hold_exit = deliver
        return
    ti = vcpu.trap_ctxt[vector]
    vcpu.domain.stats["faults"] += 1
    if vector == C.TRAP_page_fault and error_code is not None:
        # "Re-set error_code.user flag appropriately for the guest" (pv_inject_event)
        user = not vcpu.in_kernel_mode(regs or vcpu.cpu.regs())
        error_code = (error_code & ~C.PFEC_user_mode) | (C.PFEC_user_mode if user else 0)
    if vector == C.TRAP_page_fault and cr2 is not None:
        vcpu.cr2 = cr2
        vcpu.write_vcpu_info_cr2(cr2)
    if vector == C.TRAP_no_device:
        vcpu.set_virtual_ts(False)   # Xen clears the virtual CR0.TS before reflecting #NM
    vcpu.domain.trace.emit_fault(vcpu, vector, error_code, cr2, regs)
    if ti is None or not ti.registered(vcpu.word):
        pc = (regs or {}).get("pc", vcpu.cpu.pc)
        raise DomainCrash(f"{C.TRAP_NAMES.get(vector, f'vector {vector}')}"
                          f"{f' error code {error_code:#x}' if error_code is not None else ''}"
                          f"{f' cr2 {cr2:#x}' if cr2 is not None else ''} with no handler"
                          f" registered (bounce to a null {'address' if vcpu.word == 8 else 'selector'})"
                          f" at {pc:#x}")
    vcpu.bounce(ti.cs, ti.address, error_code, bool(ti.flags & 4), regs=regs)


def guest_regs(vcpu: Vcpu) -> tuple[dict[str, int], bool]:
    """The registers the guest will resume with, and whether a ring change is still on its
    way: after a transfer to another ring (iret to ring 3, a bounce from ring 3) the engine
    sits at the trampoline (or, in ring 0, at the vcpu's stub) and the guest's EIP, CS,
    EFLAGS, ESP and SS are in the trampoline's iret frame (xenarea.py)."""
    r = vcpu.cpu.regs()
    xen = vcpu.domain.xen
    if r["eip"] != TRAMPOLINE_VA and r["eip"] != xen.stub_va(vcpu.id):
        return r, False
    return iret_target(vcpu, r), True


def iret_target(vcpu: Vcpu, r: dict[str, int]) -> dict[str, int]:
    """r with the EIP, CS, EFLAGS, ESP and SS of the trampoline's iret frame: where the
    ring transition on its way returns to."""
    frame = vcpu.domain.mem.read(vcpu.domain.xen.frame_maddr(vcpu.id), 20)
    eip, cs, eflags, esp, ss = struct.unpack("<5I", frame)
    return dict(r, eip=eip, pc=eip, cs=cs & 0xFFFF, eflags=eflags, esp=esp, ss=ss & 0xFFFF)


def set_guest_regs(vcpu: Vcpu, **regs: int) -> None:
    """Change registers the guest resumes with (a debugger's write): inside a ring transition
    EIP, CS, EFLAGS, ESP and SS live in the trampoline's iret frame, the others in the CPU."""
    r, pending = guest_regs(vcpu)
    framed = {k: v for k, v in regs.items() if k in ("eip", "cs", "eflags", "esp", "ss")}
    if pending and framed:
        r.update(framed)
        xen = vcpu.domain.xen
        vcpu.domain.mem.write(xen.frame_maddr(vcpu.id), struct.pack(
            "<5I", r["eip"] & 0xFFFFFFFF, r["cs"], r["eflags"] & 0xFFFFFFFF, r["esp"] & 0xFFFFFFFF, r["ss"]))
        regs = {k: v for k, v in regs.items() if k not in framed}
    for name, value in regs.items():
        vcpu.cpu.set_reg(name, value)


def deliver_event_upcall(vcpu: Vcpu) -> bool:
    """compat_test_guest_events (x86_64/compat/entry.S), on every return to the guest: if
    evtchn_upcall_pending is set and evtchn_upcall_mask clear, bounce to the event callback
    with TBF_INTERRUPT (the mask is set, the old one saved in the frame). A null callback
    selector crashes the domain (compat_bounce_null_selector)."""
    if not vcpu.upcall_pending or vcpu.upcall_mask:
        return False
    r, pending = vcpu.guest_regs()
    if not vcpu.event_callback_registered():
        null = "address" if vcpu.word == 8 else "selector"
        raise DomainCrash(f"event upcall with no event callback registered (bounce to a null {null})")
    if pending:
        vcpu.prepare_rebounce()
    vcpu.domain.trace.emit_upcall(vcpu)
    vcpu.bounce(vcpu.event_cs, vcpu.event_eip, None, True, regs=r)
    return True


def failsafe_callback(vcpu: Vcpu, target: dict[str, int]) -> None:
    """Xen could not reload the guest's data selectors when it switched to the vcpu: bounce
    to the failsafe callback with DS, ES, FS, GS below the usual frame (domain.c load_segments)."""
    if not vcpu.failsafe_cs & ~3:
        raise DomainCrash(f"failed to reload the segments at {target['cs']:#x}:{target['eip']:#x} "
                          "and no failsafe callback is registered")
    vcpu.domain.trace.emit_failsafe(vcpu, target)
    segs = tuple(target.get(s, 0) & 0xFFFF for s in ("ds", "es", "fs", "gs"))
    create_bounce_frame(vcpu, vcpu.failsafe_cs, vcpu.failsafe_eip, None, vcpu.failsafe_mask,
                        regs=target, extra_low=segs)


def _entry_callback(vcpu: Vcpu, ctype: int) -> tuple[int, int, bool]:
    """The compat syscall32/sysenter callback: (cs, eip, disables events); zeros if none."""
    cs, eip, flags = vcpu.callbacks.get(ctype, (0, 0, 0))
    return cs, eip, bool(flags & C.CALLBACKF_mask_events)


def sysenter_entry(vcpu: Vcpu, r: dict[str, int]) -> None:
    """SYSENTER from a 32-bit PV guest (x86_64/entry.S sysenter_entry, compat/entry.S
    compat_sysenter). SYSENTER saves nothing, so the frame has EIP 0, CS 3 (a null ring-3
    selector), ESP 0, SS FLAT_COMPAT_USER_SS, and EFLAGS as the instruction left them (VM and
    RF cleared; NT kept: since 4.15, 61d4a04349 "Don't deliver #GP for a SYSENTER with NT
    set", Xen only clears it in its own flags). It goes to the sysenter callback (events
    masked if registered so, its selector or else the #GP handler's); with no callback
    address, to the #GP handler with error code 0, from that same frame."""
    frame = dict(r, eip=0, pc=0, cs=3, esp=0, ss=C.FLAT_USER_DS, eflags=r["eflags"] & ~(EFLAGS_VM | EFLAGS_RF))
    cs, eip, mask = _entry_callback(vcpu, C.CallbackType.sysenter)
    if not eip:
        bounce_exception(vcpu, C.TRAP_gp_fault, 0, regs=frame)
        return
    if not cs & ~3:
        gp = vcpu.trap_ctxt[C.TRAP_gp_fault]
        cs = gp.cs if gp is not None else 0
    if not cs & ~3:
        raise DomainCrash("SYSENTER callback with a null selector and no #GP handler (bounce to a null selector)")
    vcpu.domain.trace.emit_user_syscall(vcpu, r["eip"] - 2, r["eax"])
    create_bounce_frame(vcpu, cs, eip, None, mask, regs=frame)


def syscall_entry(vcpu: Vcpu, r: dict[str, int]) -> None:
    """SYSCALL from a 32-bit PV guest (x86_64/entry.S cstar_enter, compat/entry.S
    compat_syscall). r: the registers after the instruction (EIP past it; the CPU has put
    that EIP in ECX). The frame: that EIP, CS FLAT_COMPAT_USER_CS and SS FLAT_COMPAT_USER_SS
    whatever the guest ran with, its EFLAGS and ESP; to the syscall32 callback (events masked
    if registered so); with a null callback selector, #GP(0) with EIP back on the syscall."""
    frame = dict(r, cs=C.FLAT_USER_CS, ss=C.FLAT_USER_DS)
    cs, eip, mask = _entry_callback(vcpu, C.CallbackType.syscall32)
    if not cs & ~3:
        frame["eip"] = frame["pc"] = (r["eip"] - 2) & 0xFFFFFFFF
        bounce_exception(vcpu, C.TRAP_gp_fault, 0, regs=frame)
        return
    vcpu.domain.trace.emit_user_syscall(vcpu, r["eip"] - 2, r["eax"])
    create_bounce_frame(vcpu, cs, eip, None, mask, regs=frame)


def _iret_to_vm86(vcpu: Vcpu, r: dict[str, int], sp: int, eflags: int) -> None:
    """compat_iret: "Cannot return to VM86 mode: inject a GP fault instead". The VM86
    frame (EIP, CS, EFLAGS, ESP, SS, ES, DS, FS, GS) is copied below kernel_sp with a
    zero error code, and the vcpu enters its #GP handler."""
    try:
        words = struct.unpack("<9I", vcpu.read_virt(sp + 4, 36))
    except GuestFault:
        raise DomainCrash(f"iret hypercall: unreadable VM86 frame at {sp:#x}") from None
    ti = vcpu.trap_ctxt[C.TRAP_gp_fault]
    if ti is None or not ti.cs & ~3:
        raise DomainCrash("iret to VM86 mode with no #GP handler registered")
    ksp = (vcpu.kernel_sp - 40) & 0xFFFFFFFF
    try:
        vcpu.write_virt(ksp, struct.pack("<10I", 0, *words))
    except GuestFault:
        raise DomainCrash(f"fault while writing the VM86 #GP frame at {ksp:#x}") from None
    if ti.flags & 4:
        eflags &= ~EFLAGS_IF
    vcpu.upcall_mask = 0 if eflags & EFLAGS_IF else 1
    real = (r["eflags"] & ~(EFLAGS_VM | EFLAGS_RF | EFLAGS_NT | EFLAGS_TF | EFLAGS_IOPL)) | EFLAGS_IF | 2
    vcpu.domain.stats["faults"] += 1
    vcpu.cpu.transfer(ti.address, ti.cs, real, ksp, vcpu.kernel_ss)


def do_iret(vcpu: Vcpu) -> None:
    """HYPERVISOR_iret (compat_iret): the stack holds EAX, EIP, CS, EFLAGS, [ESP, SS]."""
    r = vcpu.cpu.regs()
    sp = r["esp"]
    try:
        eax, eip, cs, eflags = struct.unpack("<4I", vcpu.read_virt(sp, 16))
    except GuestFault:
        raise DomainCrash(f"iret hypercall: unreadable frame at {sp:#x}") from None
    cs &= 0xFFFF
    if eflags & EFLAGS_VM:
        vcpu.cpu.set_reg("eax", eax)
        _iret_to_vm86(vcpu, r, sp, eflags)
        return
    if not cs & 3:
        raise DomainCrash(f"iret hypercall to ring 0 (cs {cs:#x})")
    if cs & 3 == 1:
        esp, ss = sp + 16, r["ss"]
    else:
        try:
            esp, ss = struct.unpack("<2I", vcpu.read_virt(sp + 16, 8))
        except GuestFault:
            raise DomainCrash(f"iret hypercall: unreadable frame at {sp + 16:#x}") from None
        ss &= 0xFFFF
    if vcpu.domain.vm_assist & (1 << C.Vmasst.architectural_iopl):
        vcpu.iopl = (eflags >> 12) & 3
    vcpu.cpu.set_reg("eax", eax)
    vcpu.upcall_mask = 0 if eflags & EFLAGS_IF else 1
    real = (eflags & ~(EFLAGS_IOPL | EFLAGS_VM)) | EFLAGS_IF | 2
    target = dict(r, eip=eip, cs=cs, eflags=real, esp=esp, ss=ss, eax=eax)
    vcpu.pending_iret_target = target
    vcpu.cpu.transfer(eip, cs, real, esp, ss)


def descriptor_of(vcpu: Vcpu, sel: int) -> int | None:
    """The descriptor a selector names in the vcpu's GDT/LDT, or None when out of range."""
    idx = sel >> 3
    if sel & 4:
        if idx >= vcpu.ldt_ents:
            return None
        try:
            return struct.unpack("<Q", vcpu.debug_read(vcpu.ldt_base + idx * 8, 8))[0]
        except (GuestFault, struct.error):
            return None
    if idx >= C.FIRST_RESERVED_GDT_ENTRY:
        xen_gdt = vcpu.domain.xen.vcpu_xen_gdt[vcpu.id]
        return vcpu.domain.mem.read_u64((xen_gdt << 12) + (idx - C.FIRST_RESERVED_GDT_ENTRY) * 8)
    if idx >= vcpu.gdt_ents:
        return None
    mfn = vcpu.gdt_frames[idx // 512]
    return vcpu.domain.mem.read_u64((mfn << 12) + (idx % 512) * 8)


def data_segment_loadable(vcpu: Vcpu, sel: int, cpl: int) -> bool:
    """Would `mov sel, %ds` succeed at this CPL (the checks load_segments relies on)."""
    if not sel & ~3:
        return True                          # a null selector always loads
    d = descriptor_of(vcpu, sel)
    if d is None or not d >> 47 & 1 or not d >> 44 & 1:
        return False                         # out of range, not present, or a system descriptor
    typ = (d >> 40) & 0xF
    if typ & 8 and not typ & 2:
        return False                         # execute-only code
    dpl = (d >> 45) & 3
    conforming_code = typ & 8 and typ & 4
    return bool(conforming_code or dpl >= max(cpl, sel & 3))


def code_segment_loadable(vcpu: Vcpu, sel: int) -> bool:
    """Would an iret load sel into CS: a present code segment, DPL = RPL (<= RPL if conforming)."""
    d = descriptor_of(vcpu, sel) if sel & ~3 else None
    if d is None or not d >> 47 & 1 or not d >> 44 & 1 or not d >> 43 & 1:
        return False
    dpl, rpl = (d >> 45) & 3, sel & 3
    return dpl <= rpl if d >> 42 & 1 else dpl == rpl


def stack_segment_loadable(vcpu: Vcpu, sel: int) -> bool:
    """Would an iret load sel into SS: a present writable data segment, DPL = RPL."""
    d = descriptor_of(vcpu, sel) if sel & ~3 else None
    if d is None or not d >> 47 & 1 or not d >> 44 & 1 or d >> 43 & 1 or not d >> 41 & 1:
        return False
    return (d >> 45) & 3 == sel & 3


def iret_fault(vcpu: Vcpu, target: dict[str, int]) -> tuple[int, int] | None:
    """The fault (vector, error code) an iret to target's CS and SS raises, or None when they
    load (SDM IRET: a not-present CS #NP, SS #SS, anything else #GP; selector, RPL clear)."""
    for sel, loads, absent in ((target["cs"], code_segment_loadable, C.TRAP_no_segment),
                               (target["ss"], stack_segment_loadable, C.TRAP_stack_error)):
        if not loads(vcpu, sel):
            d = descriptor_of(vcpu, sel) if sel & ~3 else None
            present = d is None or d >> 47 & 1 or not d >> 44 & 1
            return (C.TRAP_gp_fault if present else absent), sel & 0xFFFC
    return None


def iret_fault_error_code(vcpu: Vcpu, target: dict[str, int]) -> int:
    """The error code of the fault an iret to target raises (SDM IRET: #GP/#NP/#SS(selector),
    RPL bits clear): the CS selector, else the SS selector, else 0 (e.g. a bad RIP)."""
    if not code_segment_loadable(vcpu, target["cs"]):
        return target["cs"] & 0xFFFC
    if not stack_segment_loadable(vcpu, target["ss"]):
        return target["ss"] & 0xFFFC
    return 0


def reload_segments(vcpu: Vcpu) -> bool:
    """Xen reloads DS/ES/FS/GS when it switches to a vcpu (domain.c load_segments); a
    selector that no longer loads sends the vcpu to its failsafe callback with the
    selectors in the frame. Returns True when the failsafe path was taken."""
    r = vcpu.cpu.regs()
    cpl = r["cs"] & 3
    if cpl == 0:
        return False                         # mid-transition inside the trampoline
    bad = [s for s in ("ds", "es", "fs", "gs") if not data_segment_loadable(vcpu, r[s], cpl)]
    if not bad:
        return False
    for s in bad:
        vcpu.cpu.set_reg(s, 0)               # what is left after the failed load
    failsafe_callback(vcpu, r)
    return True
