"""Per-vcpu CPU state hypercalls of a 64-bit PV guest, with Xen 4.17's rules and errnos:
set_trap_table (#0), set_gdt (#2), stack_switch (#3), set_callbacks (#4, three addresses),
update_descriptor (#10, u64 maddr + u64 descriptor), vm_assist (#21), set_segment_base (#25),
callback_op (#30), nmi_op (#28), fpu_taskswitch (#5), set/get_debugreg (#8/#9).

Sources: xen/arch/x86/pv/callback.c (do_set_trap_table: non-canonical -> -EINVAL;
register_guest_callback: non-canonical -> -EINVAL before the type, unknown type -ENOSYS;
unregister_guest_callback; do_set_callbacks ignores the results), pv/misc-hypercalls.c
(do_stack_switch, do_set_segment_base, set_debugreg: the upper 32 bits of DR6/DR7 are reserved,
-EINVAL), pv/descriptor-tables.c (check_descriptor for a 64-bit domain: DPL raised to 3, 64-bit
code allowed, call gates with DPL 0 and reserved bits b & 0xff, other system descriptors refused;
pv_set_gdt), asm/desc.h (__fixup_guest_selector: RPL 3), common/domain.c do_vm_assist
(PV64_VM_ASSIST_MASK).
"""

from __future__ import annotations

import struct

import pytest
from support.harness import PAGE, run_to_guest
from support.harness64 import KERNEL_CS, KERNEL_SS, MASK64, Hv64

from xenwb.abi.constants import CallbackType as CB
from xenwb.abi.constants import Hypercall as H
from xenwb.abi.structs import PV64
from xenwb.hypervisor.mm import PageType

EPERM, EFAULT, ENODEV, EINVAL, ENOSYS = -1, -14, -19, -22, -38
NONCANON = 0x0000_8000_0000_0000
KVA = 0xFFFF_FFFF_8000_1000              # some kernel text address
DESC_A = 1 << 40


def seg(base: int = 0, limit: int = 0xFFFFF, typ: int = 0x3, dpl: int = 3, s: int = 1, present: int = 1,
        l_bit: int = 0, db: int = 1, g: int = 1) -> int:
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = ((base >> 16) & 0xFF) | (typ << 8) | (s << 12) | (dpl << 13) | (present << 15) \
        | (((limit >> 16) & 0xF) << 16) | (l_bit << 21) | (db << 22) | (g << 23) | ((base >> 24) << 24)
    return lo | (hi << 32)


DATA = seg()
CODE64_DPL0 = seg(typ=0xB, dpl=0, l_bit=1, db=0)
TSS64 = seg(base=0x1000, limit=0x67, typ=0x9, s=0, db=0, g=0)


def gate(sel: int, offset: int, dpl: int = 3, reserved: int = 0) -> int:
    """The low half of a call gate (type 0xc)."""
    lo = (offset & 0xFFFF) | (sel << 16)
    hi = (offset & 0xFFFF0000) | (0xC << 8) | (dpl << 13) | (1 << 15) | reserved
    return lo | (hi << 32)


@pytest.fixture
def hv() -> Hv64:
    return Hv64.example("pvdemo64")


@pytest.fixture
def hvr() -> Hv64:
    """At the guest's entry point: the engine at CPL 3 in long mode (selectors load for real)."""
    hv = Hv64.example("pvdemo64")
    run_to_guest(hv.m)
    return hv


def gdt_frame(hv: Hv64, descs: dict[int, int]) -> int:
    page = bytearray(PAGE)
    for i, d in descs.items():
        struct.pack_into("<Q", page, 8 * i, d)
    return hv.free_frame(bytes(page))


def set_gdt(hv: Hv64, frames: list[int], entries: int) -> int:
    return hv.call(H.set_gdt, hv.put_u64(*frames) if frames else hv.put_u64(0), entries)


# ================================================================ set_trap_table
def test_set_trap_table_16_byte_entries(hv: Hv64) -> None:
    """trap_info {u8 vector, u8 flags, u16 cs, u64 address}: merged by vector, CS RPL raised to 3
    (fixup_guest_code_selector), the list ends at the first zero address."""
    assert hv.set_trap_table((14, 4, 0xE030, KVA + 0x140), (13, 0, KERNEL_CS, KVA + 0x130),
                             (0x80, 3, 0x10, KVA + 0x800)) == 0
    t = hv.v.trap_ctxt
    assert (t[14].flags, t[14].cs, t[14].address) == (4, 0xE033, KVA + 0x140)
    assert (t[0x80].cs, t[0x80].flags & 3) == (0x13, 3)
    assert hv.set_trap_table((14, 0, KERNEL_CS, KVA + 0x240)) == 0
    assert t[14].address == KVA + 0x240 and hv.v.trap_ctxt[13].address == KVA + 0x130
    data = bytes(PV64.trap_info(3, 3, KERNEL_CS, KVA)) + bytes(16) + bytes(PV64.trap_info(4, 3, KERNEL_CS, KVA))
    assert hv.call(H.set_trap_table, hv.put(data)) == 0
    assert hv.v.trap_ctxt[3] is not None and hv.v.trap_ctxt[4] is None


def test_set_trap_table_non_canonical_is_einval(hv: Hv64) -> None:
    """is_canonical_address(cur.address) fails -> -EINVAL; the entries before it are in."""
    assert hv.set_trap_table((1, 0, KERNEL_CS, KVA), (2, 0, KERNEL_CS, NONCANON), (3, 0, KERNEL_CS, KVA)) == EINVAL
    t = hv.v.trap_ctxt
    assert t[1] is not None and t[1].address == KVA and t[2] is None and t[3] is None
    assert hv.set_trap_table((5, 0, KERNEL_CS, 0xFFFF_7FFF_FFFF_FFFF)) == EINVAL


def test_set_trap_table_null_clears_and_bad_pointer(hv: Hv64) -> None:
    assert hv.set_trap_table((14, 0, KERNEL_CS, KVA)) == 0
    assert hv.call(H.set_trap_table, 0) == 0
    assert all(t is None or not t.address for t in hv.v.trap_ctxt)
    assert hv.call(H.set_trap_table, 0x1000) == EFAULT
    assert hv.call(H.set_trap_table, NONCANON) == EFAULT


# ================================================================ callbacks
def test_set_callbacks_three_addresses(hv: Hv64) -> None:
    """do_set_callbacks(event, failsafe, syscall): three registrations with flags 0 (the
    disables-events flags cleared); a non-canonical one is ignored, the call still returns 0."""
    v = hv.v
    v.failsafe_mask = v.syscall_mask = True
    assert hv.call(H.set_callbacks, KVA + 0x10, KVA + 0x20, KVA + 0x30) == 0
    assert (v.event_eip, v.failsafe_eip, v.syscall_eip) == (KVA + 0x10, KVA + 0x20, KVA + 0x30)
    assert not v.failsafe_mask and not v.syscall_mask
    assert hv.call(H.set_callbacks, NONCANON, KVA + 0x21, NONCANON) == 0
    assert (v.event_eip, v.failsafe_eip, v.syscall_eip) == (KVA + 0x10, KVA + 0x21, KVA + 0x30)


def register(hv: Hv64, ctype: int, address: int, flags: int = 0) -> int:
    return hv.call(H.callback_op, 0, hv.put(bytes(PV64.callback_register(ctype, flags, 0, address))))


def unregister(hv: Hv64, ctype: int) -> int:
    return hv.call(H.callback_op, 1, hv.put(bytes(PV64.callback_unregister(ctype))))


def test_callback_op_register_every_type(hv: Hv64) -> None:
    v = hv.v
    assert PV64.callback_register.size() == 16
    assert register(hv, CB.event, KVA + 1) == 0 and v.event_eip == KVA + 1
    assert register(hv, CB.failsafe, KVA + 2, 1) == 0 and (v.failsafe_eip, v.failsafe_mask) == (KVA + 2, True)
    assert register(hv, CB.failsafe, KVA + 2, 0) == 0 and not v.failsafe_mask
    assert register(hv, CB.syscall, KVA + 3, 1) == 0 and (v.syscall_eip, v.syscall_mask) == (KVA + 3, True)
    assert register(hv, CB.syscall32, KVA + 4, 1) == 0 and (v.syscall32_eip, v.syscall32_mask) == (KVA + 4, True)
    assert register(hv, CB.sysenter, KVA + 5) == 0 and (v.sysenter_eip, v.sysenter_mask) == (KVA + 5, False)
    assert register(hv, CB.nmi, KVA + 6) == 0
    nmi = v.trap_ctxt[2]                             # register_guest_nmi_callback
    assert (nmi.address, nmi.cs, nmi.flags) == (KVA + 6, KERNEL_CS, 4)


def test_callback_op_register_errors(hv: Hv64) -> None:
    """Non-canonical -> -EINVAL (checked before the type); sysenter_deprecated (3) and unknown
    types -> -ENOSYS; an unknown cmd -> -ENOSYS (the native do_callback_op); a bad pointer
    -> -EFAULT."""
    assert register(hv, CB.event, NONCANON) == EINVAL
    assert register(hv, 99, NONCANON) == EINVAL
    assert register(hv, CB.sysenter_deprecated, KVA) == ENOSYS
    assert register(hv, 6, KVA) == ENOSYS
    assert hv.v.event_eip == 0
    assert hv.call(H.callback_op, 2, hv.put(bytes(16))) == ENOSYS
    assert hv.call(H.callback_op, 0, 0x1000) == EFAULT
    assert hv.call(H.callback_op, 1, 0x1000) == EFAULT


def test_callback_op_unregister(hv: Hv64) -> None:
    """unregister_guest_callback: event, failsafe, syscall, syscall32, sysenter -> -EINVAL;
    nmi -> 0 and trap_ctxt[2] cleared; unknown -> -ENOSYS."""
    assert register(hv, CB.event, KVA) == 0 and register(hv, CB.nmi, KVA) == 0
    for t in (CB.event, CB.failsafe, CB.syscall, CB.syscall32, CB.sysenter):
        assert unregister(hv, t) == EINVAL, t
    assert hv.v.event_eip == KVA
    assert unregister(hv, CB.nmi) == 0
    assert hv.v.trap_ctxt[2] is None or not hv.v.trap_ctxt[2].address
    assert unregister(hv, 99) == ENOSYS and unregister(hv, CB.sysenter_deprecated) == ENOSYS


def test_nmi_op(hv: Hv64) -> None:
    """do_nmi_op: XENNMI_register_callback {handler_address}, non-canonical -> -EINVAL;
    unregister; unknown cmd -> -ENOSYS."""
    assert hv.call(H.nmi_op, 0, hv.put_u64(KVA + 0x22, 0)) == 0
    assert hv.v.trap_ctxt[2].address == KVA + 0x22 and hv.v.trap_ctxt[2].flags == 4
    assert hv.call(H.nmi_op, 0, hv.put_u64(NONCANON, 0)) == EINVAL
    assert hv.call(H.nmi_op, 1, 0) == 0
    assert hv.v.trap_ctxt[2] is None or not hv.v.trap_ctxt[2].address
    assert hv.call(H.nmi_op, 7, 0) == ENOSYS
    assert hv.call(H.nmi_op, 0, 0x1000) == EFAULT


# ================================================================ stack_switch
def test_stack_switch(hv: Hv64) -> None:
    """do_stack_switch(ss, rsp): RPL below 3 raised (__fixup_guest_selector); a 64-bit RSP."""
    assert hv.call(H.stack_switch, KERNEL_SS, KVA + 0xFF0) == 0
    assert (hv.v.kernel_ss, hv.v.kernel_sp) == (KERNEL_SS, KVA + 0xFF0)
    assert hv.call(H.stack_switch, 0xE028, 0x0000_7FFF_0000_1000) == 0
    assert (hv.v.kernel_ss, hv.v.kernel_sp) == (0xE02B, 0x0000_7FFF_0000_1000)


# ================================================================ set_segment_base
def test_set_segment_base_fs_and_gs(hvr: Hv64) -> None:
    """SEGBASE_FS -> the FS base; SEGBASE_GS_KERNEL -> the active GS base (kernel mode);
    SEGBASE_GS_USER -> the shadow GS base (MSR_SHADOW_GS_BASE) and gs_base_user."""
    hv, cpu = hvr, hvr.v.cpu
    assert hv.call(H.set_segment_base, 0, 0x7000_1000) == 0
    assert cpu.fs_base == 0x7000_1000 and cpu.reg("fs_base") == 0x7000_1000
    assert hv.call(H.set_segment_base, 2, KVA + 0x100) == 0
    assert cpu.gs_base == KVA + 0x100
    assert hv.call(H.set_segment_base, 1, 0x6000_2000) == 0
    assert cpu.shadow_gs_base == 0x6000_2000 and hv.v.gs_base_user == 0x6000_2000
    assert cpu.gs_base == KVA + 0x100 and cpu.reg("k_gs_base") == 0x6000_2000
    # `which` is an unsigned int: the upper half of RDI is ignored
    assert hv.call(H.set_segment_base, 1 << 32, 0x7000_2000) == 0 and cpu.fs_base == 0x7000_2000


@pytest.mark.parametrize("which", [0, 1, 2])
def test_set_segment_base_non_canonical(hvr: Hv64, which: int) -> None:
    cpu = hvr.v.cpu
    before = (cpu.fs_base, cpu.gs_base, cpu.shadow_gs_base)
    assert hvr.call(H.set_segment_base, which, NONCANON) == EINVAL
    assert (cpu.fs_base, cpu.gs_base, cpu.shadow_gs_base) == before


def test_set_segment_base_unknown_which(hvr: Hv64) -> None:
    assert hvr.call(H.set_segment_base, 4, 0) == EINVAL
    assert hvr.call(H.set_segment_base, 0xFFFFFFFF, 0) == EINVAL


def test_set_segment_base_gs_user_sel(hvr: Hv64) -> None:
    """SEGBASE_GS_USER_SEL: the selector (RPL forced to 3) is loaded into the user %gs between two
    swapgs; the user GS base comes from its descriptor; the kernel's GS base stays active. A
    selector that does not load leaves NUL (and base 0); 0-3 load NUL."""
    hv, cpu = hvr, hvr.v.cpu
    f = gdt_frame(hv, {12: seg(base=0x0012_3000, dpl=3), 13: seg(base=0x4000, present=0)})
    assert set_gdt(hv, [f], 16) == 0
    assert hv.call(H.set_segment_base, 2, KVA) == 0
    assert hv.call(H.set_segment_base, 3, 0x60) == 0            # RPL 0 -> 0x63
    assert cpu.reg("gs") == 0x63
    assert cpu.shadow_gs_base == hv.v.gs_base_user == 0x0012_3000
    assert cpu.gs_base == KVA
    assert hv.call(H.set_segment_base, 3, 0x68) == 0            # not present: NUL
    assert cpu.reg("gs") == 0 and cpu.shadow_gs_base == 0 and cpu.gs_base == KVA
    assert hv.call(H.set_segment_base, 3, 0xFFFF_0000_0000_0063) == 0   # (uint16_t)base
    assert cpu.reg("gs") == 0x63 and cpu.shadow_gs_base == 0x0012_3000


# ================================================================ set_gdt, update_descriptor
def test_set_gdt_64bit_frames_and_descriptors(hvr: Hv64) -> None:
    """frame_list of xen_ulong_t (8 bytes); check_descriptor for a 64-bit domain: DPL 0-2
    raised to 3, 64-bit code accepted; the frame becomes a descriptor page and the CPU's GDT:
    its selectors load on the engine."""
    hv = hvr
    f = gdt_frame(hv, {2: CODE64_DPL0, 3: seg(dpl=0), 5: DATA})
    assert set_gdt(hv, [f], 16) == 0
    assert hv.v.gdt_frames == [f] and hv.v.gdt_ents == 16
    assert hv.dom.mm.page(f).type == PageType.seg_desc
    d2 = hv.dom.mem.read_u64((f << 12) + 16)
    assert (d2 >> 45) & 3 == 3 and d2 >> 53 & 1                # DPL 3, still L=1
    assert d2 & ~DESC_A == seg(typ=0xB, dpl=3, l_bit=1, db=0) & ~DESC_A
    hv.v.cpu.set_reg("ds", 0x1B)                               # a real load through the new GDT
    assert hv.v.cpu.reg("ds") == 0x1B
    assert hv.mmu_update((hv.pte_maddr(hv.scratch_page()), (f << 12) | 0x23)) == (-16, 0)   # EBUSY


@pytest.mark.parametrize("bad", [TSS64, seg(typ=0xE, s=0), gate(0x10, KVA, reserved=1)],
                         ids=["tss", "interrupt-gate", "gate-reserved-bits"])
def test_set_gdt_refuses_system_descriptors(hv: Hv64, bad: int) -> None:
    f = gdt_frame(hv, {1: DATA, 2: bad})
    assert set_gdt(hv, [f], 3) == EINVAL
    assert hv.dom.mm.page(f).type_count == 0 and hv.v.gdt_ents == 0


def test_set_gdt_errors(hv: Hv64) -> None:
    f = gdt_frame(hv, {})
    assert set_gdt(hv, [f] * 14, 7169) == EINVAL                 # > FIRST_RESERVED_GDT_ENTRY
    assert set_gdt(hv, [hv.mfn_of(hv.scratch_page())], 1) == EINVAL      # mapped writable
    assert set_gdt(hv, [hv.dom.xen.m2p_frames[0]], 1) == EINVAL          # not the guest's
    assert hv.call(H.set_gdt, 0x1000, 1) == EFAULT
    assert hv.v.gdt_ents == 0


def test_call_gate_in_gdt(hv: Hv64) -> None:
    """A call gate to a guest selector is kept with DPL 0 and its DPL moved into the target
    selector's RPL (so its use traps for emulation); to a Xen selector other than
    FLAT_KERNEL_CS it is refused; its second half (type 0) is harmless."""
    f = gdt_frame(hv, {4: gate(0x10, KVA, dpl=3), 5: KVA >> 32})
    assert set_gdt(hv, [f], 8) == 0
    d = hv.dom.mem.read_u64((f << 12) + 32)
    assert (d >> 45) & 3 == 0 and (d >> 16) & 0xFFFF == 0x13
    g = gdt_frame(hv, {4: gate(0xE010, KVA)})
    assert set_gdt(hv, [g], 8) == EINVAL
    ok = gdt_frame(hv, {4: gate(KERNEL_CS, KVA)})
    assert set_gdt(hv, [ok], 8) == 0


def test_update_descriptor_u64_arguments(hv: Hv64) -> None:
    """update_descriptor(u64 maddr, u64 desc): into a GDT frame in use, or a plain page; the
    checked value is stored (DPL 3); misaligned, TSS, not owned, a page-table frame -> -EINVAL."""
    f = gdt_frame(hv, {1: DATA})
    assert set_gdt(hv, [f], 8) == 0
    ma = (f << 12) + 16
    d = seg(base=0x0040_0000, limit=0xFF, g=0, dpl=0)
    assert hv.call(H.update_descriptor, ma, d) == 0
    assert hv.dom.mem.read_u64(ma) & ~DESC_A == seg(base=0x0040_0000, limit=0xFF, g=0, dpl=3) & ~DESC_A
    assert hv.call(H.update_descriptor, ma + 4, d) == EINVAL
    assert hv.call(H.update_descriptor, ma, TSS64) == EINVAL
    assert hv.call(H.update_descriptor, ma, CODE64_DPL0) == 0               # 64-bit code is fine
    page = hv.scratch_page()
    assert hv.call(H.update_descriptor, (hv.mfn_of(page) << 12) + 8, DATA) == 0
    assert hv.u64(page + 8) == DATA
    assert hv.call(H.update_descriptor, hv.v.cr3_mfn << 12, DATA) == EINVAL
    assert hv.call(H.update_descriptor, hv.dom.xen.m2p_frames[0] << 12, DATA) == EINVAL


# ================================================================ vm_assist, fpu, debug registers
def test_vm_assist_pv64_mask(hv: Hv64) -> None:
    """PV64_VM_ASSIST_MASK: 0-5 and m2p_strict (32); 31 and >= 64 -> -EINVAL; cmd 7 -> -ENOSYS.
    Both arguments are unsigned int (hypercall-defs.c): only the registers' low 32 bits count."""
    for t in (0, 1, 2, 3, 4, 5, 32):
        assert hv.call(H.vm_assist, 0, t) == 0, t
        assert hv.dom.vm_assist >> t & 1
    assert hv.call(H.vm_assist, 1, 32) == 0 and not hv.dom.mm.m2p_strict
    for t in (6, 31, 33, 64, (1 << 40) | 33):
        assert hv.call(H.vm_assist, 0, t) == EINVAL, t
    assert hv.call(H.vm_assist, 7, 2) == ENOSYS
    assert hv.call(H.vm_assist, 1 << 32, 1 << 40) == 0 and hv.dom.vm_assist & 1     # enable, type 0


def test_fpu_taskswitch(hv: Hv64) -> None:
    assert hv.call(H.fpu_taskswitch, 1) == 0
    assert hv.v.virtual_ts and hv.v.cpu.reg("cr0") & 8
    assert hv.call(H.fpu_taskswitch, 0) == 0
    assert not hv.v.virtual_ts and not hv.v.cpu.reg("cr0") & 8


def test_debug_registers_64bit(hv: Hv64) -> None:
    """set_debugreg: DR0-3 take any address outside Xen's range (breakpoint_addr_ok = __addr_ok,
    else -EPERM); DR6/DR7 with any of the upper 32 bits set -> -EINVAL; DR7.GD -> -EPERM."""
    assert hv.call(H.set_debugreg, 0, KVA) == 0 and hv.call(H.get_debugreg, 0) & MASK64 == KVA
    assert hv.call(H.set_debugreg, 1, 0x0000_7FFF_FFFF_F000) == 0
    assert hv.call(H.set_debugreg, 2, 0xFFFF_8000_0000_1000) == EPERM
    assert hv.call(H.set_debugreg, 7, 1 << 32 | 1) == EINVAL
    assert hv.call(H.set_debugreg, 6, 1 << 40) == EINVAL
    assert hv.call(H.get_debugreg, 7) == 0x400
    assert hv.call(H.set_debugreg, 7, 1 << 13) == EPERM
    assert hv.call(H.set_debugreg, 7, 1) == 0 and hv.call(H.get_debugreg, 7) == 0x401
    assert hv.call(H.set_debugreg, 8, 0) == ENODEV
