"""Exception, event and failsafe bounce frames, and the iret hypercall, byte for byte.

xenwb.hypervisor.traps is driven directly on a machine stopped at the guest's entry point
(vcpu0 in ring 1), with a virtual IDT installed through set_trap_table. Rules (ABI sheet 4.1-4.3):
* xen/arch/x86/x86_64/compat/entry.S compat_create_bounce_frame: lowest address first
  [ERRCODE] EIP, CS | saved_upcall_mask << 16, EFLAGS (IF = !saved mask, IOPL 0 without
  architectural_iopl) [, ESP, SS when coming from ring 2/3, on kernel_ss:kernel_sp];
  TBF_INTERRUPT (trap_info flag 4) sets the upcall mask; TF/NT/RF/VM cleared;
* xen/arch/x86/pv/traps.c pv_inject_event: #PF writes CR2 into vcpu_info.arch.cr2; a null
  handler selector crashes the domain;
* compat_failsafe_callback: DS, ES, FS, GS below the frame, mask only with
  VGCF_failsafe_disables_events;
* xen/arch/x86/pv/iret.c compat_iret.
"""

from __future__ import annotations

import struct

import pytest
from support.harness import Hv, run_to_guest

from xenwb.abi.constants import Hypercall as H
from xenwb.abi.structs import PV32
from xenwb.hypervisor import traps
from xenwb.hypervisor.state import DomainCrash

KCS, KDS, UCS, UDS = 0xE019, 0xE021, 0xE02B, 0xE033
IF, IOPL3, TF, NT, RF = 0x200, 0x3000, 0x100, 0x4000, 0x10000
GP_HANDLER, PF_HANDLER, BP_HANDLER, DE_HANDLER = 0xC0001300, 0xC0001400, 0xC0001030, 0xC0001000
EVENT_CB, FAILSAFE_CB = 0xC0002000, 0xC0002100


@pytest.fixture(params=["pvdemo-pae", "pvdemo-nonpae"], ids=["pae", "nonpae"])
def hvb(request) -> Hv:
    """A machine at its entry point, in ring 1, with a virtual IDT:
    #DE (no error code), #GP (error code), #PF (error code, mask events), #BP (DPL 3)."""
    hv = Hv.example(request.param)
    run_to_guest(hv.m)
    assert hv.set_trap_table((0, 0, KCS, DE_HANDLER), (13, 0, KCS, GP_HANDLER), (14, 4, KCS, PF_HANDLER),
                             (3, 3, KCS, BP_HANDLER)) == 0
    return hv


def kregs(hv: Hv, esp: int, eflags: int = 0x246, eip: int = 0xC0000123) -> dict[str, int]:
    r = hv.v.cpu.regs()
    r.update(eip=eip, cs=KCS, eflags=eflags, esp=esp, ss=KDS)
    return r


def uregs(hv: Hv, esp: int, eflags: int = 0x246, eip: int = 0x08048123) -> dict[str, int]:
    r = hv.v.cpu.regs()
    r.update(eip=eip, cs=UCS, eflags=eflags, esp=esp, ss=UDS)
    return r


def words(hv: Hv, va: int, n: int) -> list[int]:
    return list(struct.unpack(f"<{n}I", hv.get(va, 4 * n)))


def stack(hv: Hv) -> int:
    return hv.scratch_page() + 0x800


# ---------------------------------------------------------------- kernel mode
@pytest.mark.parametrize("mask", [1, 0])
def test_kernel_fault_with_error_code(hvb: Hv, mask: int) -> None:
    hv = hvb
    hv.v.upcall_mask = mask
    sp = stack(hv)
    traps.bounce_exception(hv.v, 13, 0x1234, regs=kregs(hv, sp, eflags=IOPL3 | IF | 0x46))
    new_sp = sp - 16
    expect_eflags = 0x46 | (0 if mask else IF)            # IF = !saved mask, IOPL dropped
    assert words(hv, new_sp, 4) == [0x1234, 0xC0000123, KCS | mask << 16, expect_eflags]
    eip, cs, eflags, esp, ss = hv.guest_frame()
    assert (eip, cs, esp, ss) == (GP_HANDLER, KCS, new_sp, KDS)
    assert eflags & IF and not eflags & IOPL3
    assert hv.v.upcall_mask == mask                        # flag 4 not set for #GP


def test_kernel_fault_without_error_code(hvb: Hv) -> None:
    hv = hvb
    hv.v.upcall_mask = 0
    sp = stack(hv)
    traps.bounce_exception(hv.v, 0, regs=kregs(hv, sp, eflags=0x202 | TF | NT | RF))
    assert words(hv, sp - 12, 3) == [0xC0000123, KCS, 0x202 | TF | NT | RF]
    eip, cs, eflags, esp, ss = hv.guest_frame()
    assert (eip, esp) == (DE_HANDLER, sp - 12)
    assert not eflags & (TF | NT | RF)                     # cleared on entry like a real trap
    # nothing beyond the frame was touched
    assert hv.get(sp - 16, 4) == bytes(4) and hv.get(sp, 4) == bytes(4)


def test_kernel_fault_from_live_registers(hvb: Hv) -> None:
    """Without explicit regs the frame describes the vcpu's current state (the entry point)."""
    hv = hvb
    top = hv.layout.stack_top
    traps.bounce_exception(hv.v, 13, 0)
    assert words(hv, top - 16, 4) == [0, hv.m.image.entry, KCS | 1 << 16, 0x002]
    assert hv.guest_frame()[0] == GP_HANDLER and hv.guest_frame()[3] == top - 16


def test_mask_events_flag(hvb: Hv) -> None:
    """trap_info flag 4 (TBF_INTERRUPT): the upcall mask is set on entry; the frame keeps the old."""
    hv = hvb
    hv.v.upcall_mask = 0
    sp = stack(hv)
    traps.bounce_exception(hv.v, 14, 0x2, cr2=0xC0F00000, regs=kregs(hv, sp))
    assert words(hv, sp - 16, 4) == [0x2, 0xC0000123, KCS, 0x246]
    assert hv.v.upcall_mask == 1
    assert hv.guest_frame()[0] == PF_HANDLER


def test_page_fault_writes_cr2_to_vcpu_info(hvb: Hv) -> None:
    """pv_inject_event: #PF stores CR2 in the virtual CR2 and vcpu_info.arch.cr2 (offset 8)."""
    hv = hvb
    traps.bounce_exception(hv.v, 14, 0x6, cr2=0xDEADB000, regs=kregs(hv, stack(hv)))
    si = hv.shared_info_maddr()
    assert hv.dom.mem.read_u32(si + 8) == 0xDEADB000
    assert hv.v.cr2 == 0xDEADB000


def test_architectural_iopl_in_frame(hvb: Hv) -> None:
    """With VMASST architectural_iopl the frame's IOPL is the virtual IOPL."""
    hv = hvb
    assert hv.call(H.vm_assist, 0, 4) == 0
    assert hv.call(H.physdev_op, 6, hv.put_u32(1)) == 0
    hv.v.upcall_mask = 0
    sp = stack(hv)
    traps.bounce_exception(hv.v, 0, regs=kregs(hv, sp, eflags=0x202))
    assert words(hv, sp - 12, 3)[2] == 0x202 | 1 << 12


# ---------------------------------------------------------------- user mode
@pytest.mark.parametrize("vector,ec", [(13, 0x412), (0, None)])
def test_user_fault_uses_kernel_stack(hvb: Hv, vector: int, ec: int | None) -> None:
    """From ring 3 the frame goes on kernel_ss:kernel_sp (stack_switch) with ESP and SS."""
    hv = hvb
    kstack = hv.scratch_page() + 0x1000
    assert hv.call(H.stack_switch, KDS, kstack) == 0
    hv.v.upcall_mask = 0
    usp = 0xBFFFF000
    traps.bounce_exception(hv.v, vector, ec, regs=uregs(hv, usp, eflags=0x247))
    body = [0x08048123, UCS, 0x247, usp, UDS]
    expect = ([ec] if ec is not None else []) + body
    new_sp = kstack - 4 * len(expect)
    assert words(hv, new_sp, len(expect)) == expect
    eip, cs, eflags, esp, ss = hv.guest_frame()
    assert (eip, cs, esp, ss) == ({13: GP_HANDLER, 0: DE_HANDLER}[vector], KCS, new_sp, KDS)


def test_user_fault_without_kernel_stack_crashes(hvb: Hv) -> None:
    hv = hvb
    hv.v.kernel_ss = hv.v.kernel_sp = 0
    with pytest.raises(DomainCrash):
        traps.bounce_exception(hv.v, 13, 0, regs=uregs(hv, 0xBFFFF000))


# ---------------------------------------------------------------- no handler
def test_no_handler_crashes_the_domain(hvb: Hv) -> None:
    hv = hvb
    with pytest.raises(DomainCrash, match="#UD"):
        traps.bounce_exception(hv.v, 6, regs=kregs(hv, stack(hv)))
    # a null selector counts as no handler (PV32: cs & ~3 == 0)
    assert hv.set_trap_table((6, 0, 0, 0xC0001060)) == 0
    with pytest.raises(DomainCrash):
        traps.bounce_exception(hv.v, 6, regs=kregs(hv, stack(hv)))


def test_unwritable_frame_crashes(hvb: Hv) -> None:
    hv = hvb
    with pytest.raises(DomainCrash):
        traps.bounce_exception(hv.v, 13, 0, regs=kregs(hv, 0x2000))


# ---------------------------------------------------------------- events and failsafe
def test_event_upcall_frame(hvb: Hv) -> None:
    """Upcall: the exception frame without error code at event_callback_cs:eip, mask set;
    nothing happens while masked or without a pending event."""
    hv = hvb
    assert hv.call(H.set_callbacks, KCS, EVENT_CB, KCS, FAILSAFE_CB) == 0
    hv.v.upcall_pending = 1
    hv.v.upcall_mask = 1
    assert not traps.deliver_event_upcall(hv.v)
    hv.v.upcall_mask = 0
    hv.v.upcall_pending = 0
    assert not traps.deliver_event_upcall(hv.v)
    hv.v.upcall_pending = 1
    eip0, _, _, sp, _ = hv.guest_frame()
    assert traps.deliver_event_upcall(hv.v)
    assert words(hv, sp - 12, 3) == [eip0, KCS, 0x202]
    assert hv.v.upcall_mask == 1
    assert hv.guest_frame()[0] == EVENT_CB and hv.guest_frame()[3] == sp - 12


@pytest.mark.parametrize("mask_flag", [0, 1])
def test_failsafe_frame(hvb: Hv, mask_flag: int) -> None:
    """compat_failsafe_callback: DS, ES, FS, GS, EIP, CS|mask<<16, EFLAGS; ESP = the DS slot;
    the mask is set only when registered with CALLBACKF_mask_events."""
    hv = hvb
    cb = bytes(PV32.callback_register(1, mask_flag, KCS, FAILSAFE_CB))
    assert hv.call(H.callback_op, 0, hv.put(cb)) == 0
    hv.v.upcall_mask = 0
    sp = stack(hv)
    target = kregs(hv, sp, eip=0xC0000500)
    target.update(ds=0xE021, es=0x0010, fs=0xE033, gs=0)
    traps.failsafe_callback(hv.v, target)
    assert words(hv, sp - 28, 7) == [0xE021, 0x0010, 0xE033, 0, 0xC0000500, KCS, 0x246]
    eip, cs, _, esp, _ = hv.guest_frame()
    assert (eip, cs, esp) == (FAILSAFE_CB, KCS, sp - 28)
    assert hv.v.upcall_mask == mask_flag


def test_failsafe_without_callback_crashes(hvb: Hv) -> None:
    with pytest.raises(DomainCrash):
        traps.failsafe_callback(hvb.v, kregs(hvb, stack(hvb)))


# ---------------------------------------------------------------- iret hypercall
def iret(hv: Hv, frame: list[int]) -> None:
    sp = stack(hv)
    hv.v.write_virt(sp, struct.pack(f"<{len(frame)}I", *frame))
    hv.v.cpu.set_reg("esp", sp)
    traps.do_iret(hv.v)
    return sp


@pytest.mark.parametrize("eflags,mask", [(0x202, 0), (0x002, 1)])
def test_iret_to_ring1(hvb: Hv, eflags: int, mask: int) -> None:
    """compat_iret: EAX, EIP, CS, EFLAGS from the stack; ring 1 -> ESP += 16, SS kept;
    upcall_mask = !EFLAGS.IF; IOPL stripped and IF forced in the real EFLAGS."""
    hv = hvb
    hv.v.upcall_mask = 1 - mask
    sp = iret(hv, [0xA5A5A5A5, 0xC0000777, KCS, eflags | IOPL3])
    eip, cs, real, esp, ss = hv.guest_frame()
    assert (eip, cs, esp, ss) == (0xC0000777, KCS, sp + 16, KDS)
    assert real & IF and not real & IOPL3
    assert hv.v.cpu.reg("eax") == 0xA5A5A5A5
    assert hv.v.upcall_mask == mask


def test_iret_to_ring3(hvb: Hv) -> None:
    hv = hvb
    iret(hv, [7, 0x08048000, UCS, 0x202, 0xBFFFE000, UDS])
    eip, cs, _, esp, ss = hv.guest_frame()
    assert (eip, cs, esp, ss) == (0x08048000, UCS, 0xBFFFE000, UDS)
    assert hv.v.upcall_mask == 0


def test_iret_to_ring0_crashes(hvb: Hv) -> None:
    with pytest.raises(DomainCrash):
        iret(hvb, [0, 0xC0000777, 0xE018, 0x202])


def test_iret_unreadable_frame_crashes(hvb: Hv) -> None:
    hvb.v.cpu.set_reg("esp", 0x3000)
    with pytest.raises(DomainCrash):
        traps.do_iret(hvb.v)


def test_iret_to_vm86_injects_gp(hvb: Hv) -> None:
    """xen/arch/x86/pv/iret.c compat_iret: 'Cannot return to VM86 mode: inject a GP fault
    instead' -- the vcpu continues at trap_ctxt[13] on kernel_ss:kernel_sp - 40."""
    hv = hvb
    ksp = hv.scratch_page() + 0x1000
    assert hv.call(H.stack_switch, KDS, ksp) == 0
    iret(hv, [0, 0x1000, 0x0, 0x20202, 0x2000, 0x0, 0, 0, 0, 0])
    eip, cs, _, esp, ss = hv.guest_frame()
    assert (eip, cs, esp, ss) == (GP_HANDLER, KCS, ksp - 40, KDS)
