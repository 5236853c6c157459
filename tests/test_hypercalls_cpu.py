"""Per-vcpu CPU state hypercalls: set_trap_table (#0), set_gdt (#2), update_descriptor (#10),
stack_switch (#3), set_callbacks (#4), callback_op (#30), fpu_taskswitch (#5),
set/get_debugreg (#8/#9), vm_assist (#21).

Rules: ABI sheet sections 2.6-2.9, from xen/arch/x86/pv/callback.c (compat_set_trap_table,
compat_register/unregister_guest_callback, compat_callback_op, compat_set_callbacks),
xen/arch/x86/pv/descriptor-tables.c (pv_set_gdt, check_descriptor, validate_segdesc_page,
do_update_descriptor), xen/arch/x86/pv/misc-hypercalls.c (do_stack_switch, do_fpu_taskswitch,
set_debugreg, do_get_debugreg) and xen/common/kernel.c (do_vm_assist).
"""

from __future__ import annotations

import struct

import pytest
from support.harness import PAGE, Hv

from xenwb.abi.constants import Hypercall as H
from xenwb.abi.structs import PV32
from xenwb.hypervisor.mm import PageType

P, RW, A = 0x1, 0x2, 0x20
EINVAL, EPERM, EFAULT, ENODEV, ENOSYS = -22, -1, -14, -19, -38
DESC_A = 1 << 40


def seg(base: int = 0, limit: int = 0xFFFFF, typ: int = 0x3, dpl: int = 1, s: int = 1, present: int = 1,
        l_bit: int = 0, db: int = 1, g: int = 1) -> int:
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = ((base >> 16) & 0xFF) | (typ << 8) | (s << 12) | (dpl << 13) | (present << 15) \
        | (((limit >> 16) & 0xF) << 16) | (l_bit << 21) | (db << 22) | (g << 23) | ((base >> 24) << 24)
    return lo | (hi << 32)


FLAT_DATA = seg()
CODE64 = seg(typ=0xB, l_bit=1, db=0)
TSS32 = seg(base=0x1000, limit=0x67, typ=0x9, s=0, db=0, g=0)


def gdt_frame(hv: Hv, descs: dict[int, int]) -> int:
    page = bytearray(PAGE)
    for i, d in descs.items():
        struct.pack_into("<Q", page, 8 * i, d)
    return hv.free_frame(bytes(page))


def set_gdt(hv: Hv, frames: list[int], entries: int) -> int:
    return hv.call(H.set_gdt, hv.put_u32(*frames) if frames else hv.put_u32(0), entries)


# ================================================================ set_trap_table
def test_set_trap_table_installs_entries(hv: Hv) -> None:
    """Entries merge into trap_ctxt by vector; RPL 0 selectors are raised to 1
    (fixup_guest_code_selector); the list ends at the first zero address."""
    assert hv.set_trap_table((14, 4, 0xE019, 0xC0001400), (13, 0, 0xE018, 0xC0001300),
                             (0x80, 3, 0xE019, 0xC0008000)) == 0
    t = hv.v.trap_ctxt
    assert (t[14].flags, t[14].cs, t[14].address) == (4, 0xE019, 0xC0001400)
    assert t[13].cs == 0xE019                  # RPL 0 -> 1
    assert (t[0x80].flags & 3, t[0x80].address) == (3, 0xC0008000)
    # a second call merges: 14 replaced, 13 kept
    assert hv.set_trap_table((14, 0, 0xE019, 0xC0002400)) == 0
    assert t[14].address == 0xC0002400 and hv.v.trap_ctxt[13].address == 0xC0001300
    # entries after the terminator are ignored
    data = bytes(PV32.trap_info(3, 3, 0xE019, 0xC0000300)) + bytes(8) + bytes(PV32.trap_info(4, 3, 0xE019, 0xC0000400))
    assert hv.call(H.set_trap_table, hv.put(data)) == 0
    assert hv.v.trap_ctxt[3] is not None and hv.v.trap_ctxt[4] is None


def test_set_trap_table_null_clears(hv: Hv) -> None:
    assert hv.set_trap_table((14, 0, 0xE019, 0xC0001400)) == 0
    assert hv.call(H.set_trap_table, 0) == 0
    assert all(t is None or not (t.cs & ~3) for t in hv.v.trap_ctxt)


def test_set_trap_table_bad_pointer(hv: Hv) -> None:
    assert hv.call(H.set_trap_table, 0x1000) == EFAULT


# ================================================================ set_gdt
def test_set_gdt_too_many_entries(hv: Hv) -> None:
    """entries > FIRST_RESERVED_GDT_ENTRY (7168) -> -EINVAL."""
    f = gdt_frame(hv, {})
    assert set_gdt(hv, [f] * 14, 7169) == EINVAL
    assert hv.v.gdt_ents == 0


def test_set_gdt_ok(hv: Hv) -> None:
    """A frame of valid descriptors becomes a seg_desc page; DPL 0 is raised to 1
    (check_descriptor); the frame can then not be mapped writable."""
    f = gdt_frame(hv, {1: seg(dpl=0), 2: seg(typ=0xB, dpl=1), 3: seg(dpl=3)})
    assert set_gdt(hv, [f], 4) == 0
    assert hv.v.gdt_frames == [f] and hv.v.gdt_ents == 4
    pi = hv.dom.mm.page(f)
    assert pi.type == PageType.seg_desc and pi.type_count >= 1
    d1 = hv.dom.mem.read_u64((f << 12) + 8)
    assert (d1 >> 45) & 3 == 1
    assert (d1 & ~DESC_A) == (seg(dpl=1) & ~DESC_A)
    assert hv.mmu_update((hv.pte_maddr(hv.scratch_page()), hv.pte(f, P | RW | A)))[0] == -16  # EBUSY, 4.17
    # a second set_gdt releases the old frame
    g = gdt_frame(hv, {})
    assert set_gdt(hv, [g], 1) == 0
    assert hv.dom.mm.page(f).type_count == 0
    assert set_gdt(hv, [], 0) == 0 and hv.v.gdt_ents == 0


def test_set_gdt_writable_frame_refused(hv: Hv) -> None:
    """A frame mapped writable cannot take the seg_desc type -> -EINVAL."""
    page = hv.scratch_page()
    assert set_gdt(hv, [hv.mfn_of(page)], 1) == EINVAL
    assert hv.dom.mm.page(hv.mfn_of(page)).type == PageType.writable


@pytest.mark.parametrize("bad", [TSS32, CODE64, seg(typ=0xE, s=0)], ids=["tss", "code64", "interrupt-gate"])
def test_set_gdt_bad_descriptor_refused(hv: Hv, bad: int) -> None:
    """check_descriptor: system descriptors other than call gates, and L=1 code, are refused."""
    f = gdt_frame(hv, {1: FLAT_DATA, 2: bad})
    assert set_gdt(hv, [f], 3) == EINVAL
    assert hv.dom.mm.page(f).type_count == 0 and hv.v.gdt_ents == 0


def test_set_gdt_not_owned(hv: Hv) -> None:
    assert set_gdt(hv, [hv.dom.xen.trampoline], 1) == EINVAL


def test_set_gdt_validates_the_whole_frame(hv: Hv) -> None:
    """xen/arch/x86/pv/descriptor-tables.c validate_segdesc_page: all 512 descriptors of every
    GDT frame are checked, whatever `entries` says."""
    f = gdt_frame(hv, {1: FLAT_DATA, 100: TSS32})
    assert set_gdt(hv, [f], 2) == EINVAL


def test_set_gdt_widens_base0_segments_past_hv_start(hv_pae: Hv) -> None:
    """check_descriptor (PV32): 'Older PAE Linux guests use segments which are limited to
    0xf6800000. Extend these' -- base 0 and limit > 0xF5800000 becomes limit 0xFFFFF (G=1)."""
    hv = hv_pae
    limited = seg(limit=0xF67FF)                   # (0xF67FF + 1) << 12 = 0xF6800000
    f = gdt_frame(hv, {1: limited})
    assert set_gdt(hv, [f], 2) == 0
    d = hv.dom.mem.read_u64((f << 12) + 8)
    assert (d & 0xFFFF) | (((d >> 48) & 0xF) << 16) == 0xFFFFF


def test_update_descriptor(hv: Hv) -> None:
    """do_update_descriptor: 8-byte aligned machine address, valid descriptor; writes into a
    GDT frame in use or into a writable-typeable frame."""
    f = gdt_frame(hv, {1: FLAT_DATA})
    assert set_gdt(hv, [f], 4) == 0
    ma = (f << 12) + 16
    d = seg(base=0xC0001000, limit=0xFF, g=0)
    assert hv.call(H.update_descriptor, ma, 0, d & 0xFFFFFFFF, d >> 32) == 0
    assert hv.dom.mem.read_u64(ma) & ~DESC_A == d & ~DESC_A
    assert hv.call(H.update_descriptor, ma + 4, 0, d & 0xFFFFFFFF, d >> 32) == EINVAL    # misaligned
    assert hv.call(H.update_descriptor, ma, 0, TSS32 & 0xFFFFFFFF, TSS32 >> 32) == EINVAL
    assert hv.call(H.update_descriptor, ma, 0, CODE64 & 0xFFFFFFFF, CODE64 >> 32) == EINVAL
    # an ordinary page of the guest
    page = hv.scratch_page()
    pma = hv.mfn_of(page) << 12
    assert hv.call(H.update_descriptor, pma + 8, 0, d & 0xFFFFFFFF, d >> 32) == 0
    assert struct.unpack("<Q", hv.get(page + 8, 8))[0] & ~DESC_A == d & ~DESC_A
    # a pagetable frame is neither a GDT page nor writable-typeable
    tma = hv.table_mfns()[-1] << 12
    assert hv.call(H.update_descriptor, tma, 0, d & 0xFFFFFFFF, d >> 32) == EINVAL


# ================================================================ stack_switch, callbacks
def test_stack_switch(hv: Hv) -> None:
    """do_stack_switch: kernel_ss (RPL raised to 1) and kernel_sp; returns 0."""
    assert hv.call(H.stack_switch, 0xE021, 0xC0123450) == 0
    assert (hv.v.kernel_ss, hv.v.kernel_sp) == (0xE021, 0xC0123450)
    assert hv.call(H.stack_switch, 0xE020, 0xC0123460) == 0
    assert hv.v.kernel_ss == 0xE021


def test_set_callbacks(hv: Hv) -> None:
    """compat_set_callbacks registers event and failsafe (cs:eip) and returns 0."""
    assert hv.call(H.set_callbacks, 0xE019, 0xC0001000, 0xE018, 0xC0002000) == 0
    v = hv.v
    assert (v.event_cs, v.event_eip) == (0xE019, 0xC0001000)
    assert (v.failsafe_cs, v.failsafe_eip) == (0xE019, 0xC0002000)   # RPL 0 raised
    assert not v.failsafe_mask


def register(hv: Hv, ctype: int, eip: int, flags: int = 0, cs: int = 0xE019) -> int:
    return hv.call(H.callback_op, 0, hv.put(bytes(PV32.callback_register(ctype, flags, cs, eip))))


def unregister(hv: Hv, ctype: int) -> int:
    return hv.call(H.callback_op, 1, hv.put(bytes(PV32.callback_unregister(ctype))))


def test_callback_op_register(hv: Hv) -> None:
    """compat_register_guest_callback: event, failsafe, syscall32, sysenter and nmi register;
    other types (syscall=2 is PV64 only, unknown) -> -ENOSYS."""
    v = hv.v
    assert register(hv, 0, 0xC0001000) == 0
    assert (v.event_cs, v.event_eip) == (0xE019, 0xC0001000)
    assert register(hv, 1, 0xC0002000, flags=1) == 0
    assert (v.failsafe_eip, v.failsafe_mask) == (0xC0002000, True)
    assert register(hv, 1, 0xC0002000, flags=0) == 0
    assert not v.failsafe_mask
    assert register(hv, 7, 0xC0003000, flags=1) == 0          # syscall32
    assert register(hv, 5, 0xC0004000) == 0                    # sysenter
    assert register(hv, 4, 0xC0005000) == 0                    # nmi -> trap_ctxt[2]
    assert v.trap_ctxt[2].address == 0xC0005000 and v.trap_ctxt[2].flags & 4
    assert register(hv, 2, 0xC0006000) == ENOSYS
    assert register(hv, 99, 0xC0006000) == ENOSYS
    assert register(hv, 0, 0xC0007000, cs=0xE018) == 0
    assert v.event_cs == 0xE019                                # fixup_guest_code_selector


def test_callback_op_unregister(hv: Hv) -> None:
    """compat_unregister_guest_callback: event/failsafe/syscall32/sysenter -> -EINVAL; nmi -> 0;
    compat_callback_op: unknown cmd -> -EINVAL; bad pointer -> -EFAULT."""
    assert register(hv, 4, 0xC0005000) == 0
    for t in (0, 1, 5, 7):
        assert unregister(hv, t) == EINVAL
    assert unregister(hv, 4) == 0
    assert hv.v.trap_ctxt[2] is None or not hv.v.trap_ctxt[2].cs & ~3
    assert hv.call(H.callback_op, 5, hv.put(bytes(16))) == EINVAL
    assert hv.call(H.callback_op, 0, 0x1000) == EFAULT


def test_callback_op_unregister_unknown_type(hv: Hv) -> None:
    """xen/arch/x86/pv/callback.c compat_unregister_guest_callback: default -> -ENOSYS."""
    assert unregister(hv, 99) == ENOSYS
    assert unregister(hv, 2) == ENOSYS         # CALLBACKTYPE_syscall is not a compat type


# ================================================================ fpu_taskswitch, debug registers
def test_fpu_taskswitch(hv: Hv) -> None:
    assert hv.call(H.fpu_taskswitch, 1) == 0
    assert hv.v.virtual_ts and hv.v.cpu.reg("cr0") & 8
    assert hv.call(H.fpu_taskswitch, 0) == 0
    assert not hv.v.virtual_ts and not hv.v.cpu.reg("cr0") & 8


def test_debug_registers(hv: Hv) -> None:
    """set_debugreg/do_get_debugreg: reset values DR6 0xFFFF0FF0 / DR7 0x400; DR7.GD -> -EPERM;
    a register number past 7 -> -ENODEV."""
    assert hv.call(H.get_debugreg, 6) & 0xFFFFFFFF == 0xFFFF0FF0
    assert hv.call(H.get_debugreg, 7) == 0x400
    assert hv.call(H.set_debugreg, 0, 0xC0001000) == 0
    assert hv.call(H.get_debugreg, 0) & 0xFFFFFFFF == 0xC0001000
    assert hv.call(H.set_debugreg, 7, 1 << 13) == EPERM
    assert hv.call(H.set_debugreg, 7, 0x1) == 0
    assert hv.call(H.get_debugreg, 7) & 0x401 == 0x401         # bit 10 reads as 1
    assert hv.call(H.set_debugreg, 8, 0) == ENODEV
    assert hv.call(H.get_debugreg, 8) == ENODEV
    assert hv.call(H.set_debugreg, 0xFFFF, 0) == ENODEV


def test_dr4_dr5_alias_dr6_dr7_without_cr4_de(hv: Hv) -> None:
    """xen/arch/x86/pv/misc-hypercalls.c set_debugreg: case 4/5 fall through to 6/7 unless
    v->arch.pv.ctrlreg[4] & X86_CR4_DE (clear for a new PV vcpu)."""
    assert hv.call(H.set_debugreg, 5, 0x1) == 0
    assert hv.call(H.get_debugreg, 7) & 1
    assert hv.call(H.set_debugreg, 4, 0) == 0


# ================================================================ vm_assist
def test_vm_assist(hv: Hv) -> None:
    """do_vm_assist: type >= BITS_PER_LONG or not in the PV32 valid mask -> -EINVAL;
    cmd other than enable/disable -> -ENOSYS."""
    dom = hv.dom
    assert hv.call(H.vm_assist, 0, 2) == 0
    assert dom.vm_assist & (1 << 2)
    assert hv.call(H.vm_assist, 1, 2) == 0
    assert not dom.vm_assist & (1 << 2)
    for t in (0, 1, 3, 4, 5):
        assert hv.call(H.vm_assist, 0, t) == 0, t
    assert hv.call(H.vm_assist, 0, 6) == EINVAL
    assert hv.call(H.vm_assist, 0, 32) == EINVAL            # m2p_strict: PV64 only
    assert hv.call(H.vm_assist, 0, 200) == EINVAL
    assert hv.call(H.vm_assist, 2, 2) == ENOSYS
