"""64-bit bounce and iret frames byte for byte, and kernel/user toggling.

The machine is stopped at pvdemo64's entry (the engine at CPL 3, kernel mode) with a trap table,
a user L4 (NEW_USER_BASEPTR) and a kernel stack (stack_switch). Frames are read back as 8-byte
slots. Rules (Xen 4.17):
* xen/arch/x86/x86_64/entry.S create_bounce_frame: from kernel mode on the current RSP with CS's
  RPL cleared, from user mode after toggle_guest_mode on kernel_sp; rounded down to 16; lowest
  address first RCX, R11, [error code, zero-extended], RIP, CS | saved_upcall_mask << 32,
  RFLAGS (IF = !saved mask, IOPL 0 unless architectural_iopl), RSP, SS; TBF_INTERRUPT masks
  events; then RIP = handler, CS/SS = FLAT_KERNEL_CS/SS, AC/VM/RF/NT/TF cleared, sysretq
  (RCX = RIP, R11 = RFLAGS); a stack in Xen's range or a null handler crash the domain;
* entry.S lstar_enter/switch_to_kernel: `syscall` in user mode -> the syscall callback, RCX/R11
  as the CPU left them, CS FLAT_KERNEL_CS64, DF cleared for the handler, events masked with
  VGCF_syscall_disables_events; no callback -> #UD on the syscall;
* xen/arch/x86/domain.c load_segments: the 11-slot failsafe frame RCX, R11, DS, ES, FS, GS, RIP,
  CS | mask << 32, RFLAGS, RSP, SS;
* xen/arch/x86/pv/iret.c do_iret: struct iret_context {rax, r11, rcx, flags, rip, cs, rflags,
  rsp, ss}; CS RPL 3 -> user mode (crash without a user L4); VGCF_in_syscall keeps the sysret
  exit (RCX = RIP, R11 = RFLAGS, CS/SS from XEN_MSR_STAR: 0xe033/0xe02b);
* xen/arch/x86/pv/domain.c toggle_guest_mode: swapgs, TF_kernel_mode, the other L4 in CR3.
"""

from __future__ import annotations

import struct

import pytest
from support.harness import run_to_guest
from support.harness64 import KERNEL_CS, KERNEL_SS, PROBE_SYSCALL, Hv64

from xenwb.abi import constants as C
from xenwb.abi.constants import Hypercall as H
from xenwb.abi.constants import MmuextCmd as X
from xenwb.abi.structs import PV64
from xenwb.hypervisor import traps, traps64
from xenwb.hypervisor.hypercall import PREEMPT_BATCH
from xenwb.hypervisor.state import DomainCrash

IF, DF, TF, NT, RF, AC, IOPL3 = 0x200, 0x400, 0x100, 0x4000, 0x10000, 0x40000, 0x3000
KCODE = 0xFFFF_FFFF_8000_0000
GP_H, PF_H, DE_H, UD_H = KCODE + 0x1300, KCODE + 0x1400, KCODE + 0x1000, KCODE + 0x1060
EVENT_H, FAILSAFE_H, SYSCALL_H = KCODE + 0x2000, KCODE + 0x2100, KCODE + 0x2200
USER_CS, USER_SS = 0xE033, 0xE02B          # Xen's flat ring-3 selectors (Linux: 0x33/0x2b)


class Ctx:
    """A machine at the entry with handlers, a user L4 and a kernel stack."""

    def __init__(self) -> None:
        hv = Hv64.example("pvdemo64")
        run_to_guest(hv.m)
        self.hv, self.v = hv, hv.v
        assert hv.set_trap_table((0, 0, KERNEL_CS, DE_H), (6, 0, KERNEL_CS, UD_H), (13, 0, KERNEL_CS, GP_H),
                                 (14, 4, KERNEL_CS, PF_H)) == 0
        self.kstack = hv.scratch_page() + 0xFF8          # not 16-byte aligned on purpose
        assert hv.call(H.stack_switch, KERNEL_SS, self.kstack) == 0
        self.user_l4 = hv.kernel_l4_copy()
        assert hv.mmuext((X.PIN_L4_TABLE, self.user_l4), (X.NEW_USER_BASEPTR, self.user_l4)) == (0, 2)
        self.kernel_l4 = hv.v.cr3_mfn

    def regs(self, **kw: int) -> dict[str, int]:
        r = self.v.cpu.regs()
        r.update(rcx=0x1111_2222_3333_4444, r11=0x5555_6666_7777_8888, rip=KCODE + 0x123, cs=KERNEL_CS,
                 rflags=0x246, rsp=self.hv.scratch_page() + 0x808, ss=KERNEL_SS)
        r.update(kw)
        r["pc"] = r["rip"]
        return r

    def slots(self, va: int, n: int) -> list[int]:
        return self.hv.u64s(va, n)


@pytest.fixture
def c() -> Ctx:
    return Ctx()


def resumed(c: Ctx) -> dict[str, int]:
    """The registers after the exit to the guest (Xen's restore_all_guest: sysret side effects)."""
    c.v.return_to_guest()
    r, _ = c.v.guest_regs()
    return r


# ---------------------------------------------------------------- kernel-mode exceptions
@pytest.mark.parametrize("mask", [0, 1])
def test_exception_with_error_code_from_kernel_mode(c: Ctx, mask: int) -> None:
    c.v.upcall_mask = mask
    r = c.regs(rflags=0x246 | IOPL3 | TF | NT | AC)
    traps.bounce_exception(c.v, 13, 0xFFFF_FFFF_0000_1234, regs=r)   # the error code is a u32
    base = (r["rsp"] & ~0xF) - 8 * 8
    assert c.slots(base, 8) == [r["rcx"], r["r11"], 0x1234, KCODE + 0x123, (KERNEL_CS & ~3) | mask << 32,
                                (0x246 | TF | NT | AC) & ~IF | (0 if mask else IF), r["rsp"], KERNEL_SS]
    out = resumed(c)
    assert (out["rip"], out["cs"], out["rsp"], out["ss"]) == (GP_H, KERNEL_CS, base, KERNEL_SS)
    assert not out["rflags"] & (TF | NT | AC | IOPL3) and out["rflags"] & IF
    assert (out["rcx"], out["r11"]) == (GP_H, out["rflags"])          # left by sysretq
    assert c.v.upcall_mask == mask                                     # #GP: no TI_IF
    assert c.v.kernel_mode and c.v.cpu.reg("cr3") == c.kernel_l4 << 12


def test_exception_without_error_code_and_mask_events(c: Ctx) -> None:
    """#DE: seven slots; #PF with TI_IF (flags 4) masks events and writes CR2 to vcpu_info."""
    c.v.upcall_mask = 0
    r = c.regs(rsp=c.hv.scratch_page() + 0x800)
    traps.bounce_exception(c.v, 0, None, regs=r)
    base = r["rsp"] - 7 * 8
    assert c.slots(base, 7) == [r["rcx"], r["r11"], KCODE + 0x123, KERNEL_CS & ~3, 0x246, r["rsp"], KERNEL_SS]
    assert c.v.guest_regs()[0]["rip"] == DE_H and c.v.upcall_mask == 0
    r = c.regs()
    traps.bounce_exception(c.v, 14, 2, 0xDEAD_0000, regs=r)
    base = (r["rsp"] & ~0xF) - 8 * 8
    assert c.slots(base, 8)[2:5] == [2, KCODE + 0x123, KERNEL_CS & ~3]
    assert c.v.upcall_mask == 1 and c.v.cr2 == 0xDEAD_0000
    assert c.hv.dom.mem.read_u64(c.v.vcpu_info_maddr + 0x10) == 0xDEAD_0000


def test_architectural_iopl_in_the_frame(c: Ctx) -> None:
    assert c.hv.call(H.vm_assist, 0, C.Vmasst.architectural_iopl) == 0
    c.v.iopl = 2
    r = c.regs(rsp=c.hv.scratch_page() + 0x800)
    traps.bounce_exception(c.v, 0, None, regs=r)
    assert c.slots(r["rsp"] - 7 * 8, 7)[4] & IOPL3 == 0x2000


def test_bad_stack_or_no_handler_crashes(c: Ctx) -> None:
    with pytest.raises(DomainCrash):                       # create_bounce_frame_bad_sp
        traps.bounce_exception(c.v, 0, None, regs=c.regs(rsp=0xFFFF_8000_0000_1000))
    with pytest.raises(DomainCrash):                       # no trap_info for #BR
        traps.bounce_exception(c.v, 5, None, regs=c.regs())
    with pytest.raises(DomainCrash):                       # unwritable frame (the M2P is RO)
        traps.bounce_exception(c.v, 0, None, regs=c.regs(rsp=c.hv.layout.pagetables.va + 0x800))


# ---------------------------------------------------------------- user mode
def to_user(c: Ctx, gs_user: int = 0x6000, gs_kernel: int = KCODE + 0x9000) -> None:
    """The iret hypercall to user mode (CS RPL 3), through the real `syscall` on the engine."""
    hv = c.hv
    assert hv.call(H.set_segment_base, 2, gs_kernel) == 0
    assert hv.call(H.set_segment_base, 1, gs_user) == 0
    code = hv.scratch_page()
    hv.v.write_virt(code, PROBE_SYSCALL)
    stack = hv.scratch_page() + 0x800
    target = hv.scratch_page()
    ctx = PV64.iret_context(rax=0xAAAA, r11=0x1111, rcx=0x2222, flags=0, rip=target, cs=USER_CS,
                            rflags=0x202, rsp=0x7FFF_0000_1000, ss=USER_SS)
    hv.v.write_virt(stack, bytes(ctx))
    cpu = hv.v.cpu
    cpu.set_reg("rsp", stack)
    cpu.set_reg("rax", H.iret)
    cpu.pc = code
    cpu.uc.emu_start(code, target, count=2)
    assert cpu.pc == target and not hv.v.kernel_mode


def test_kernel_to_user_toggle(c: Ctx) -> None:
    """toggle_guest_mode on the iret to CS 0xe033: kernel_mode off, CR3 = the user L4, swapgs
    (the user's GS base active, the kernel's in MSR_SHADOW_GS_BASE)."""
    to_user(c)
    cpu = c.v.cpu
    assert cpu.reg("cr3") == c.user_l4 << 12 and c.v.active_top_mfn == c.user_l4
    assert cpu.gs_base == 0x6000 and cpu.reg("k_gs_base") == KCODE + 0x9000
    assert c.v.gs_base_kernel == KCODE + 0x9000
    r, _ = c.v.guest_regs()
    assert (r["cs"], r["ss"], r["rsp"], r["rax"], r["rcx"], r["r11"]) == (
        USER_CS, USER_SS, 0x7FFF_0000_1000, 0xAAAA, 0x2222, 0x1111)
    assert r["rflags"] & IF and c.v.upcall_mask == 0


def test_exception_from_user_mode_toggles_to_kernel(c: Ctx) -> None:
    """The frame goes on kernel_sp (rounded down to 16), CS keeps RPL 3, the #PF error code gets
    U; CR3 back to the kernel L4 and GS swapped back, the user's base remembered."""
    to_user(c)
    cpu = c.v.cpu
    cpu.gs_base = 0x6100                          # the user moved its GS base meanwhile
    r, _ = c.v.guest_regs()
    r = dict(r, rcx=0xC, r11=0x11)
    traps.bounce_exception(c.v, 14, 0, 0x1000, regs=r)
    base = (c.kstack & ~0xF) - 8 * 8
    assert c.slots(base, 8) == [0xC, 0x11, C.PFEC_user_mode, r["rip"], USER_CS, (r["rflags"] & ~IOPL3) | IF,
                                0x7FFF_0000_1000, USER_SS]
    assert c.v.kernel_mode and cpu.reg("cr3") == c.kernel_l4 << 12
    assert cpu.gs_base == KCODE + 0x9000 and cpu.reg("k_gs_base") == 0x6100 and c.v.gs_base_user == 0x6100
    out = resumed(c)
    assert (out["rip"], out["rsp"], out["cs"]) == (PF_H, base, KERNEL_CS) and c.v.upcall_mask == 1


def test_syscall_from_user_mode_on_the_engine(c: Ctx) -> None:
    """A real `syscall` in user mode with DF set: to the syscall callback (mask_events) on
    kernel_sp; RCX/R11 slots = what the CPU left (next RIP, RFLAGS); RIP slot = next RIP, CS slot
    FLAT_KERNEL_CS64, RSP/SS the user's; the handler runs with DF clear and events masked."""
    hv = c.hv
    cb = bytes(PV64.callback_register(C.CallbackType.syscall, C.CALLBACKF_mask_events, 0, SYSCALL_H))
    assert hv.call(H.callback_op, 0, hv.put(cb)) == 0
    to_user(c)
    cpu = c.v.cpu
    code = cpu.pc                                  # the user code page (mapped in the user L4 too)
    hv.dom.mem.write(hv.walk(code, c.user_l4).maddr, PROBE_SYSCALL)
    cpu.set_reg("rflags", 0x202 | DF)
    cpu.set_reg("rax", 39)
    cpu.uc.emu_start(code, SYSCALL_H, count=2)
    assert cpu.pc == SYSCALL_H and c.v.kernel_mode
    base = (c.kstack & ~0xF) - 7 * 8
    assert c.slots(base, 7) == [code + 2, 0x202 | DF, code + 2, KERNEL_CS, 0x202 | DF, 0x7FFF_0000_1000, USER_SS]
    assert cpu.reg("rsp") == base and not cpu.reg("rflags") & DF and c.v.upcall_mask == 1
    assert cpu.reg("rax") == 39 and cpu.reg("cr3") == c.kernel_l4 << 12


def test_syscall_from_user_without_callback_is_ud(c: Ctx) -> None:
    """switch_to_kernel, syscall_no_callback: #UD through trap_ctxt[6] with RIP back on the
    syscall, DF not cleared."""
    to_user(c)
    cpu = c.v.cpu
    code = cpu.pc
    c.hv.dom.mem.write(c.hv.walk(code, c.user_l4).maddr, PROBE_SYSCALL)
    cpu.set_reg("rflags", 0x202 | DF)
    cpu.uc.emu_start(code, UD_H, count=2)
    assert cpu.pc == UD_H
    base = (c.kstack & ~0xF) - 7 * 8
    assert c.slots(base, 7)[2:] == [code, KERNEL_CS, 0x202 | DF, 0x7FFF_0000_1000, USER_SS]
    assert cpu.reg("rflags") & DF


# ---------------------------------------------------------------- event upcall, failsafe
def test_event_upcall_frame(c: Ctx) -> None:
    """test_guest_events: pending and unmasked -> the event callback, seven slots, TBF_INTERRUPT
    (mask set, the old one 0 in the CS slot); nothing while masked or with nothing pending."""
    assert c.hv.call(H.set_callbacks, EVENT_H, FAILSAFE_H, SYSCALL_H) == 0
    v = c.v
    v.upcall_pending, v.upcall_mask = 1, 1
    assert not traps.deliver_event_upcall(v)
    v.upcall_pending, v.upcall_mask = 0, 0
    assert not traps.deliver_event_upcall(v)
    v.upcall_pending = 1
    r, _ = v.guest_regs()
    assert traps.deliver_event_upcall(v)
    base = (r["rsp"] & ~0xF) - 7 * 8
    assert c.slots(base, 7) == [r["rcx"], r["r11"], r["rip"], r["cs"] & ~3, (r["rflags"] & ~IOPL3) | IF, r["rsp"],
                                r["ss"]]
    assert v.upcall_mask == 1 and v.guest_regs()[0]["rip"] == EVENT_H


@pytest.mark.parametrize("mask_flag", [0, 1])
def test_failsafe_frame_11_slots(c: Ctx, mask_flag: int) -> None:
    hv = c.hv
    cb = bytes(PV64.callback_register(C.CallbackType.failsafe, mask_flag, 0, FAILSAFE_H))
    assert hv.call(H.callback_op, 0, hv.put(cb)) == 0
    c.v.upcall_mask = 0
    t = c.regs(ds=0x2B, es=0x10, fs=0x63, gs=0x1234)
    traps64.failsafe_callback(c.v, t)
    base = (t["rsp"] & ~0xF) - 11 * 8
    assert c.slots(base, 11) == [t["rcx"], t["r11"], 0x2B, 0x10, 0x63, 0x1234, t["rip"], KERNEL_CS & ~3,
                                 0x246, t["rsp"], KERNEL_SS]
    out = c.v.guest_regs()[0]
    assert (out["rip"], out["rsp"], out["cs"]) == (FAILSAFE_H, base, KERNEL_CS)
    assert c.v.upcall_mask == mask_flag


def test_failsafe_taken_when_a_selector_no_longer_loads(c: Ctx) -> None:
    """load_segments: %ds of a GDT that was replaced by an empty one -> failsafe with DS."""
    hv = c.hv
    assert hv.call(H.set_callbacks, EVENT_H, FAILSAFE_H, SYSCALL_H) == 0
    page = bytearray(4096)
    struct.pack_into("<Q", page, 8 * 5, 0x00CFF3000000FFFF)       # a DPL-3 data segment
    f = hv.free_frame(bytes(page))
    assert hv.call(H.set_gdt, hv.put_u64(f), 8) == 0
    c.v.cpu.set_reg("ds", 0x2B)
    assert hv.call(H.set_gdt, hv.put_u64(hv.free_frame()), 8) == 0
    rsp = c.v.cpu.reg("rsp")
    assert c.v.reload_segments()
    base = (rsp & ~0xF) - 11 * 8
    assert c.slots(base, 11)[2] == 0x2B and c.v.cpu.reg("ds") == 0
    assert c.v.guest_regs()[0]["rip"] == FAILSAFE_H


# ---------------------------------------------------------------- iret
def iret(c: Ctx, **kw: int) -> int:
    """iret_context on a stack, the hypercall through a real `syscall` at a kernel code page;
    runs until the target. Returns the context's VA."""
    hv = c.hv
    fields = dict(rax=0xA0A0, r11=0xB0B0, rcx=0xC0C0, flags=0, rip=hv.scratch_page(), cs=KERNEL_CS & ~3,
                  rflags=0x202 | IOPL3, rsp=KCODE + 0x77_7770, ss=KERNEL_SS)
    fields.update(kw)
    sp = hv.scratch_page() + 0x400
    hv.v.write_virt(sp, bytes(PV64.iret_context(**fields)))
    code = hv.scratch_page()
    hv.v.write_virt(code, PROBE_SYSCALL)
    cpu = hv.v.cpu
    cpu.set_reg("rsp", sp)
    cpu.set_reg("rax", H.iret)
    cpu.pc = code
    cpu.uc.emu_start(code, fields["rip"], count=2)
    assert cpu.pc == fields["rip"], f"stopped at {cpu.pc:#x}"
    return sp


@pytest.mark.parametrize("rflags,mask", [(0x202, 0), (0x002, 1)])
def test_iret_to_kernel_without_in_syscall(c: Ctx, rflags: int, mask: int) -> None:
    """Flags 0 (Linux 6.1's way): R11/RCX restored from the frame, an iretq exit (CS/SS from
    the frame, RPL forced to 3); RAX restored; IOPL stripped, IF set; mask = !IF."""
    c.v.upcall_mask = 1 - mask
    iret(c, rflags=rflags | IOPL3)
    r = c.v.cpu.regs()
    assert (r["rax"], r["r11"], r["rcx"]) == (0xA0A0, 0xB0B0, 0xC0C0)
    assert (r["cs"], r["ss"], r["rsp"]) == (KERNEL_CS, KERNEL_SS, KCODE + 0x77_7770)
    assert r["rflags"] & IF and not r["rflags"] & IOPL3
    assert c.v.upcall_mask == mask and c.v.kernel_mode


def test_iret_with_in_syscall_exits_by_sysret(c: Ctx) -> None:
    """VGCF_in_syscall: RCX/R11 are not restored, the exit is a sysretq: RCX = RIP, R11 = RFLAGS,
    CS/SS = FLAT_USER_CS64/SS64 whatever the frame said."""
    c.hv.call(H.vm_assist, 0, C.Vmasst.architectural_iopl)
    target = c.hv.scratch_page()
    iret(c, flags=C.VGCF_in_syscall, rip=target, cs=0x10, ss=0x18)
    r = c.v.cpu.regs()
    assert r["rcx"] == target and r["r11"] == r["rflags"] and r["rflags"] & IF
    assert (r["cs"], r["ss"], r["rax"]) == (0xE033, 0xE02B, 0xA0A0)
    assert c.v.iopl == 3                                      # architectural_iopl takes the frame's


def test_iret_to_user_with_in_syscall(c: Ctx) -> None:
    hv = c.hv
    target = hv.scratch_page()
    iret(c, flags=C.VGCF_in_syscall, rip=target, cs=0x33, ss=0x2B, rsp=0x7FFF_0000_2000)
    r = c.v.cpu.regs()
    assert not c.v.kernel_mode and r["cr3"] == c.user_l4 << 12
    assert (r["rcx"], r["cs"], r["ss"], r["rsp"]) == (target, 0xE033, 0xE02B, 0x7FFF_0000_2000)


def test_iret_to_user_without_user_l4_crashes(c: Ctx) -> None:
    assert c.hv.mmuext((X.NEW_USER_BASEPTR, 0)) == (0, 1)
    sp = c.hv.scratch_page() + 0x400
    c.hv.v.write_virt(sp, bytes(PV64.iret_context(rip=KCODE, cs=0x33, rflags=0x202, rsp=0x1000, ss=0x2B)))
    c.v.cpu.set_reg("rsp", sp)
    with pytest.raises(DomainCrash):
        traps64.do_iret(c.v)
    c.v.cpu.set_reg("rsp", 0x1000)
    with pytest.raises(DomainCrash):                        # the frame is unreadable
        traps64.do_iret(c.v)


def test_iret_as_a_multicall_entry(c: Ctx) -> None:
    """multicall.c: an iret entry ends the batch (mc_exit) and the multicall returns its result,
    do_iret's restored RAX, which is what the guest then finds in RAX (pv/iret.c: "Saved %rax
    gets written back"); the entry's result field gets it too."""
    hv = c.hv
    target = hv.scratch_page()
    sp = hv.scratch_page() + 0x400
    hv.v.write_virt(sp, bytes(PV64.iret_context(rax=0xA0A0, r11=1, rcx=2, rip=target, cs=KERNEL_CS & ~3,
                                                rflags=0x202, rsp=KCODE + 0x5550, ss=KERNEL_SS)))
    entries = bytes(PV64.multicall_entry(op=H.iret)) + bytes(PV64.multicall_entry(op=H.xen_version))
    calls = hv.put(entries)
    code = hv.scratch_page()
    hv.v.write_virt(code, PROBE_SYSCALL)
    cpu = hv.v.cpu
    cpu.set_reg("rsp", sp)
    cpu.set_reg("rax", H.multicall)
    cpu.set_reg("rdi", calls)
    cpu.set_reg("rsi", 2)
    cpu.pc = code
    cpu.uc.emu_start(code, target, count=2)
    assert cpu.pc == target and cpu.reg("rsp") == KCODE + 0x5550
    assert cpu.reg("rax") == 0xA0A0
    assert hv.u64(calls + 8) == 0xA0A0
    assert hv.u64(calls + 64 + 8) == 0                  # the entry after the iret did not run


# ---------------------------------------------------------------- the sysret exit of a hypercall
def syscall_at(c: Ctx, **regs: int) -> int:
    """One real `syscall` (a hypercall in kernel mode) on the engine; returns its address."""
    code = c.hv.scratch_page()
    c.v.write_virt(code, PROBE_SYSCALL + b"\x90")
    cpu = c.v.cpu
    for name, value in regs.items():
        cpu.set_reg(name, value)
    cpu.pc = code
    cpu.uc.emu_start(code, code + 2, count=1)
    return code


def test_hypercall_exit_is_a_sysret(c: Ctx) -> None:
    """RCX = the return RIP, R11 = RFLAGS, the result in RAX, RFLAGS unchanged (IF set)."""
    code = syscall_at(c, rax=H.xen_version, rdi=0, rsi=0, rcx=0x1111, r11=0x2222, rflags=0x246)
    r = c.v.cpu.regs()
    assert r["rip"] == code + 2 and (r["rcx"], r["r11"], r["rflags"]) == (code + 2, 0x246, 0x246)
    assert r["rax"] == (C.XEN_MAJOR << 16) | C.XEN_MINOR and (r["cs"], r["ss"]) == (KERNEL_CS, KERNEL_SS)


def test_hypercall_from_a_guest_code_selector_returns_on_stars(c: Ctx) -> None:
    """A kernel on its own GDT's CS 0x13 / SS 0x1b (as Linux and pvdemo64's APs run): sysretq
    loads CS/SS from XEN_MSR_STAR, so the guest comes back on 0xe033/0xe02b."""
    page = bytearray(4096)
    struct.pack_into("<QQ", page, 16, 0x00AFFB000000FFFF, 0x00CFF3000000FFFF)   # 0x10 code64, 0x18 data
    f = c.hv.free_frame(bytes(page))
    assert c.hv.call(H.set_gdt, c.hv.put_u64(f), 8) == 0
    c.v.cpu.set_reg("cs", 0x13)
    c.v.cpu.set_reg("ss", 0x1B)
    assert (c.v.cpu.reg("cs"), c.v.cpu.reg("ss")) == (0x13, 0x1B)
    code = syscall_at(c, rax=H.xen_version, rdi=0, rsi=0)
    r = c.v.cpu.regs()
    assert (r["cs"], r["ss"], r["rip"], r["rcx"]) == (KERNEL_CS, KERNEL_SS, code + 2, code + 2)


def test_preempted_hypercall_exits_on_the_syscall(c: Ctx) -> None:
    """A continuation (_pv_hypercall: RIP back by 2, arguments rewritten): the sysret leaves
    RCX = that RIP, so the guest re-executes the syscall."""
    hv = c.hv
    va = hv.scratch_page()
    maddr = hv.pte_maddr(va)
    entry = hv.read_entry(maddr)
    reqs = hv.put(b"".join(struct.pack("<QQ", maddr, entry) for _ in range(PREEMPT_BATCH + 5)))
    done = hv.put_u32(0)
    code = syscall_at(c, rax=H.mmu_update, rdi=reqs, rsi=PREEMPT_BATCH + 5, rdx=done, r10=0x7FF0)
    r = c.v.cpu.regs()
    assert r["rip"] == code and r["rcx"] == code
    assert r["rsi"] == 5 | 0x80000000 and r["rdi"] == reqs + 16 * PREEMPT_BATCH
    assert hv.u32(done) == PREEMPT_BATCH


def test_iret_to_a_selector_that_does_not_load_is_gp_on_its_target(c: Ctx) -> None:
    """The stub's iretq faults on a user CS beyond the GDT: Xen 4.17 reports #GP(selector) on
    the iret's target (entry.S .Lft0 -> handle_exception), on the kernel stack, as if raised
    there: error code 0x1000, RIP and CS the target's (issue 12 item 3)."""
    hv = c.hv
    target = hv.scratch_page() + 0x100
    sp = hv.scratch_page() + 0x400
    hv.v.write_virt(sp, bytes(PV64.iret_context(rax=0, r11=0, rcx=0, flags=0, rip=target, cs=0x1003,
                                                rflags=0x202, rsp=0x7FFF_0000_2000, ss=0x2B)))
    code = hv.scratch_page()
    hv.v.write_virt(code, PROBE_SYSCALL)
    cpu = hv.v.cpu
    cpu.set_reg("rsp", sp)
    cpu.set_reg("rax", H.iret)
    cpu.pc = code
    cpu.uc.emu_start(code, GP_H, count=50)
    assert cpu.pc == GP_H and c.v.kernel_mode
    rcx, r11, ec, rip, csw, _rflags, rsp, ss = c.slots(cpu.regs()["rsp"], 8)
    assert (ec, rip, csw & 0xFFFF, rsp, ss) == (0x1000, target, 0x1003, 0x7FFF_0000_2000, 0x2B)
