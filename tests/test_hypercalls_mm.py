"""mmu_update (#1), mmuext_op (#26) and update_va_mapping (#14) against xen/arch/x86/mm.c.

Each test issues real hypercalls on a freshly built machine (PAE and non-PAE) and checks the
return value, the pagetable contents and the page types. Rules: ABI sheet sections 2.3-2.5 and 5;
sources named per test (do_mmu_update, mod_l1/l2/l3_entry, get_page_from_l1e, do_mmuext_op,
do_update_va_mapping in xen/arch/x86/mm.c).

Note on errno values: the ABI sheet (and x86_32 Xen 3.x, where every failing mod_lN_entry became
-EINVAL in do_mmu_update) gives -EINVAL for a writable mapping of a pagetable frame and for a
frame the domain does not own; current Xen returns -EBUSY for those two from get_page_from_l1e's
could_not_pin path. The tests follow the ABI sheet.
"""

from __future__ import annotations

import struct

import pytest
from support.harness import PAGE, Hv

from xenwb.abi import constants as C
from xenwb.abi.constants import Hypercall as H
from xenwb.abi.constants import MmuextCmd as X
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.mm import PageType

P, RW, US, PWT, PCD, A, D, PSE, G = 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x100
EINVAL, EPERM, EFAULT, EACCES, ENOSYS, EOPNOTSUPP = -22, -1, -14, -13, -38, -95
# Xen 4.17 mm.c get_page_from_l1e: a frame the domain may not map, or a writable mapping of a
# typed frame, ends at could_not_pin: -EBUSY (Xen 3.x, and the ABI sheet, said -EINVAL)
EBUSY = -16
NORMAL, MACHPHYS, PRESERVE_AD = 0, 1, 2


def l2_slot_maddr(hv: Hv, va: int) -> int:
    """Machine address of the L2 entry covering va in the current tables."""
    return [s for s in hv.walk(va).steps if s.level == 2][0].entry_maddr


# ================================================================ mmu_update
def test_normal_pt_update_maps_a_page(hv: Hv) -> None:
    """MMU_NORMAL_PT_UPDATE on an L1 entry: validated, written, takes effect."""
    target = hv.scratch_page()
    hv.v.write_virt(target, b"target page contents")
    window = hv.scratch_page()
    mfn = hv.mfn_of(target)
    ptr = hv.pte_maddr(window)
    rc, done = hv.mmu_update((ptr | NORMAL, hv.pte(mfn, P | A)))
    assert (rc, done) == (0, 1)
    assert hv.read_entry(ptr) == hv.pte(mfn, P | A)
    assert hv.get(window, 20) == b"target page contents"
    with pytest.raises(GuestFault):
        hv.v.write_virt(window, b"x")           # mapped read-only now


def test_writable_mapping_of_pagetable_frame_refused(hv: Hv) -> None:
    """A pagetable frame can never be mapped writable (mm.c get_page_from_l1e: the
    PGT_writable_page type cannot be taken: could_not_pin, -EBUSY); the entry is left unchanged."""
    window = hv.scratch_page()
    ptr = hv.pte_maddr(window)
    before = hv.read_entry(ptr)
    for mfn in hv.table_mfns():
        rc, done = hv.mmu_update((ptr, hv.pte(mfn, P | RW | A)))
        assert (rc, done) == (EBUSY, 0)
    assert hv.read_entry(ptr) == before
    # read-only is fine
    assert hv.mmu_update((ptr, hv.pte(hv.table_mfns()[-1], P | A)))[0] == 0


def test_mapping_a_frame_not_owned_refused(hv: Hv) -> None:
    """get_page_from_l1e: a Xen frame the domain does not own cannot be mapped (could_not_pin,
    -EBUSY); a frame that is not RAM at all is MMIO without iomem permission: -EPERM."""
    ptr = hv.pte_maddr(hv.scratch_page())
    before = hv.read_entry(ptr)
    xen_frame = hv.dom.xen.trampoline
    assert hv.mmu_update((ptr, hv.pte(xen_frame, P | A)))[0] == EBUSY
    assert hv.mmu_update((ptr, hv.pte(0xFEE00, P | RW | A)))[0] == EPERM
    assert hv.read_entry(ptr) == before


def test_shared_info_may_be_mapped_writable(hv: Hv) -> None:
    """shared_info is a Xen page shared RW with the guest (ABI sheet 1.7)."""
    window = hv.scratch_page()
    rc, _ = hv.mmu_update((hv.pte_maddr(window), hv.pte(hv.dom.shared_info_mfn, P | RW | A | D)))
    assert rc == 0
    assert hv.get(window + 1, 1) == b"\x01"      # vcpu_info[0].evtchn_upcall_mask


def test_bad_l1_flags_refused(hv: Hv) -> None:
    """L1: PWT/PCD need I/O privileges a domU lacks (mm.c l1_disallow_mask) -> -EINVAL."""
    mfn = hv.mfn_of(hv.scratch_page())
    ptr = hv.pte_maddr(hv.scratch_page())
    assert hv.mmu_update((ptr, hv.pte(mfn, P | RW | A | PCD)))[0] == EINVAL
    assert hv.mmu_update((ptr, hv.pte(mfn, P | RW | A | PWT)))[0] == EINVAL
    # G and the AVAIL bits are allowed in an L1
    assert hv.mmu_update((ptr, hv.pte(mfn, P | RW | A | G | 0xE00)))[0] == 0


def test_high_available_bits_allowed_in_l1_and_l2(hv_pae: Hv) -> None:
    """x86_64/page.h: 'range [62:52] is available for software use'; L1_DISALLOW_MASK adds only
    bit 62 (_PAGE_GNTTAB), L2_DISALLOW_MASK none of them."""
    hv = hv_pae
    mfn = hv.mfn_of(hv.scratch_page())
    ptr = hv.pte_maddr(hv.scratch_page())
    assert hv.mmu_update((ptr, hv.pte(mfn, P | RW | A) | 1 << 55))[0] == 0
    l2ptr = l2_slot_maddr(hv, hv.layout.virt_end + (8 << 20))
    assert hv.mmu_update((l2ptr, hv.pte(hv.free_frame(), P | RW | A | D | US) | 1 << 52))[0] == 0


def test_nx_in_pae_l3_entry_refused(hv_pae: Hv) -> None:
    """mm.c get_page_from_l3e / mod_l3_entry: l3e flags & l3_disallow_mask(d) -> -EINVAL, with
    COMPAT_L3_DISALLOW_MASK = 0xFFFFF198 for a PV32 domain."""
    hv = hv_pae
    l3 = hv.v.cr3_mfn
    assert hv.mmu_update(((l3 << 12), hv.pte(hv.free_frame(), P) | 1 << 63))[0] == EINVAL
    assert hv.read_entry(l3 << 12) == 0


def test_pse_in_l2_refused(hv: Hv) -> None:
    """L2_DISALLOW_MASK includes PSE: PV guests get no superpages (mm.c get_page_from_l2e)."""
    hole = hv.layout.virt_end + (8 << 20)          # an empty guest L2 slot
    ptr = l2_slot_maddr(hv, hole)
    assert hv.read_entry(ptr) == 0
    l1 = hv.free_frame()
    assert hv.mmu_update((ptr, hv.pte(l1, P | RW | A | D | US | PSE)))[0] == EINVAL
    assert hv.read_entry(ptr) == 0
    # the same entry without PSE promotes the (empty) frame to an L1 table
    assert hv.mmu_update((ptr, hv.pte(l1, P | RW | A | D | US)))[0] == 0
    assert hv.dom.mm.page(l1).type == PageType.l1


def test_l2_entry_to_writable_frame_refused(hv: Hv) -> None:
    """A frame mapped writable (type writable) cannot become an L1 table (mm.c _get_page_type)."""
    page = hv.scratch_page()
    ptr = l2_slot_maddr(hv, hv.layout.virt_end + (8 << 20))
    assert hv.mmu_update((ptr, hv.pte(hv.mfn_of(page), P | RW | A | D | US)))[0] == EINVAL


def test_write_into_xen_l2_slots_refused(hv: Hv) -> None:
    """mod_l2_entry: !is_guest_l2_slot -> -EPERM (PAE: slots 428.. of the slot-3 L2;
    non-PAE: slots 1008..)."""
    first = hv.dom.geo.first_xen_l2_slot
    l2 = hv.table_mfns()[1] if hv.pae else hv.table_mfns()[0]
    ptr = (l2 << 12) + first * hv.pte_size
    before = hv.read_entry(ptr)
    assert hv.mmu_update((ptr, 0))[0] == EPERM
    assert hv.mmu_update((ptr, hv.pte(hv.free_frame(), P | A)))[0] == EPERM
    assert hv.read_entry(ptr) == before
    last = (l2 << 12) + (hv.mode.entries - 1) * hv.pte_size
    assert hv.mmu_update((last, 0))[0] == EPERM


def test_pae_l3_slot3_cannot_change(hv_pae: Hv) -> None:
    """mod_l3_entry: PV32 L3 slots >= 3 cannot be changed -> -EINVAL."""
    hv = hv_pae
    l3 = hv.v.cr3_mfn
    cur = hv.read_entry((l3 << 12) + 3 * 8)
    assert hv.mmu_update(((l3 << 12) + 3 * 8, cur))[0] == EINVAL
    assert hv.mmu_update(((l3 << 12) + 3 * 8, 0))[0] == EINVAL
    assert hv.read_entry((l3 << 12) + 3 * 8) == cur


def test_pae_l3_slot0_can_take_an_l2(hv_pae: Hv) -> None:
    """L3 slots 0-2 are the guest's: a new empty L2 can be hooked in (mod_l3_entry)."""
    hv = hv_pae
    l3 = hv.v.cr3_mfn
    l2 = hv.free_frame()
    assert hv.mmu_update(((l3 << 12), hv.pte(l2, P)))[0] == 0
    pi = hv.dom.mm.page(l2)
    assert pi.type == PageType.l2 and not pi.pae_xen_l2
    # PSE is no valid L3 flag either; 0x198 are the disallowed PV32 L3 bits
    assert hv.mmu_update(((l3 << 12) + 8, hv.pte(hv.free_frame(), P | PSE)))[0] == EINVAL


def test_machphys_update(hv: Hv) -> None:
    """MMU_MACHPHYS_UPDATE: M2P[ptr >> 12] = val for an owned frame; visible in the RO M2P."""
    mfn = hv.mfn_of(hv.scratch_page())
    rc, done = hv.mmu_update(((mfn << 12) | MACHPHYS, 0x1234))
    assert (rc, done) == (0, 1)
    assert hv.dom.physmap.m2p(mfn) == 0x1234
    raw = hv.v.debug_read(hv.dom.geo.m2p_start + 4 * mfn, 4)
    assert struct.unpack("<I", raw)[0] == 0x1234
    # a frame the domain does not own
    assert hv.mmu_update(((hv.dom.xen.trampoline << 12) | MACHPHYS, 1))[0] == EINVAL


def test_preserve_ad_keeps_accessed_and_dirty(hv: Hv) -> None:
    """MMU_PT_UPDATE_PRESERVE_AD ORs the A/D bits already in the PTE into the new value."""
    mfn = hv.mfn_of(hv.scratch_page())
    ptr = hv.pte_maddr(hv.scratch_page())
    assert hv.mmu_update((ptr, hv.pte(mfn, P | RW | A | D)))[0] == 0
    assert hv.mmu_update((ptr | PRESERVE_AD, hv.pte(mfn, P)))[0] == 0
    assert hv.read_entry(ptr) == hv.pte(mfn, P | A | D)
    # a normal update does not preserve them
    assert hv.mmu_update((ptr, hv.pte(mfn, P)))[0] == 0
    assert hv.read_entry(ptr) == hv.pte(mfn, P)


def test_done_count_and_stop_at_first_error(hv: Hv) -> None:
    """do_mmu_update stops at the first failing request, returns its error, *done = completed."""
    a, b, c = (hv.pte_maddr(hv.scratch_page()) for _ in range(3))
    mfn = hv.mfn_of(hv.scratch_page())
    pt = hv.table_mfns()[0]
    before_c = hv.read_entry(c)
    rc, done = hv.mmu_update((a, hv.pte(mfn, P | A)), (b, hv.pte(pt, P | RW | A)), (c, hv.pte(mfn, P | A)))
    assert (rc, done) == (EBUSY, 1)
    assert hv.read_entry(a) == hv.pte(mfn, P | A)
    assert hv.read_entry(c) == before_c
    rc, done = hv.mmu_update((a, 0), (b, 0), (c, 0))
    assert (rc, done) == (0, 3)


def test_mmu_update_plain_writable_page(hv: Hv) -> None:
    """A frame of no special type is treated as an ordinary writable page (do_mmu_update)."""
    page = hv.scratch_page()
    mfn = hv.mfn_of(page)
    rc, _ = hv.mmu_update(((mfn << 12) + 16, 0x11223344))
    assert rc == 0
    assert hv.u32(page + 16) == 0x11223344


def test_mmu_update_bad_foreigndom(hv: Hv) -> None:
    """A foreign domain the caller has no rights over -> -ESRCH (mm.c get_pg_owner)."""
    ptr = hv.pte_maddr(hv.scratch_page())
    assert hv.mmu_update((ptr, 0), foreigndom=7)[0] == -3


# ================================================================ mmuext_op
def empty_l3_with_slot3(hv: Hv) -> int:
    l2 = hv.free_frame()
    return hv.free_frame(struct.pack("<4Q", 0, 0, 0, hv.pte(l2, P)))


def test_pin_and_unpin_l1_l2(hv: Hv) -> None:
    """PIN_Lx takes a validated type reference and the pinned bit; pinning twice -> -EINVAL;
    UNPIN drops it; UNPIN of an unpinned frame -> -EINVAL (do_mmuext_op)."""
    mm = hv.dom.mm
    for cmd, t in ((X.PIN_L1_TABLE, PageType.l1), (X.PIN_L2_TABLE, PageType.l2)):
        f = hv.free_frame()
        assert hv.mmuext((cmd, f)) == (0, 1)
        assert mm.page(f).pinned and mm.page(f).type == t and mm.page(f).validated
        assert hv.mmuext((cmd, f)) == (EINVAL, 0)
        assert hv.mmuext((X.UNPIN_TABLE, f)) == (0, 1)
        assert not mm.page(f).pinned and mm.page(f).type_count == 0
        assert hv.mmuext((X.UNPIN_TABLE, f)) == (EINVAL, 0)
        # once unpinned and unreferenced the frame may be mapped writable again
        assert hv.mmu_update((hv.pte_maddr(hv.scratch_page()), hv.pte(f, P | RW | A)))[0] == 0


def test_pinned_table_cannot_be_mapped_writable(hv: Hv) -> None:
    f = hv.free_frame()
    assert hv.mmuext((X.PIN_L1_TABLE, f))[0] == 0
    assert hv.mmu_update((hv.pte_maddr(hv.scratch_page()), hv.pte(f, P | RW | A)))[0] == EBUSY


def test_pin_validates_contents(hv: Hv) -> None:
    """Pinning an L1 that maps a pagetable frame writable fails validation (alloc_l1_table passes
    get_page_from_l1e's -EBUSY up)."""
    fmt = "<Q" if hv.pae else "<I"
    bad = hv.free_frame(struct.pack(fmt, hv.pte(hv.table_mfns()[0], P | RW | A)))
    assert hv.mmuext((X.PIN_L1_TABLE, bad)) == (EBUSY, 0)
    assert hv.dom.mm.page(bad).type_count == 0
    good = hv.free_frame(struct.pack(fmt, hv.pte(hv.table_mfns()[0], P | A)))
    assert hv.mmuext((X.PIN_L1_TABLE, good)) == (0, 1)


def test_pin_l3(hv_pae: Hv) -> None:
    """PIN_L3 of a PV32 L3: slot 3 must be present (alloc_l3_table), entries 4..511 are zeroed."""
    hv = hv_pae
    assert hv.mmuext((X.PIN_L3_TABLE, hv.free_frame())) == (EINVAL, 0)   # slot 3 empty
    l3 = empty_l3_with_slot3(hv)
    hv.dom.mem.write((l3 << 12) + 8 * 100, struct.pack("<Q", 0x1234567))
    assert hv.mmuext((X.PIN_L3_TABLE, l3)) == (0, 1)
    assert hv.dom.mem.read_u64((l3 << 12) + 8 * 100) == 0
    l2 = hv.mode.pte_mfn(hv.dom.mem.read_u64((l3 << 12) + 24))
    assert hv.dom.mm.page(l2).pae_xen_l2
    assert hv.dom.mem.read_u64((l2 << 12) + 8 * 428) & P       # Xen's M2P slots filled in


def test_pae_slot3_l2_cannot_be_shared(hv_pae: Hv) -> None:
    """xen/arch/x86/mm.c pae_xen_mappings_check: 'PAE L3 3rd slot is shared' -> -EINVAL."""
    hv = hv_pae
    boot_l2 = hv.table_mfns()[1]
    l3 = hv.free_frame(struct.pack("<4Q", 0, 0, 0, hv.pte(boot_l2, P)))
    assert hv.mmuext((X.PIN_L3_TABLE, l3)) == (EINVAL, 0)


def test_pin_l3_ignored_on_nonpae(hv_nonpae: Hv) -> None:
    """Xen 3.2 xen/arch/x86/mm.c do_mmuext_op, pin_page: (cmd - PIN_L1) > CONFIG_PAGING_LEVELS - 1
    -> break with okay = 1: nothing pinned, rc 0."""
    hv = hv_nonpae
    f = hv.free_frame()
    assert hv.mmuext((X.PIN_L3_TABLE, f)) == (0, 1)
    assert not hv.dom.mm.page(f).pinned


def test_linear_pagetable_entries(hv: Hv) -> None:
    """pv-linear-pt (mm.c get_l2_linear_pagetable): an L2 entry pointing to its own L2 is
    accepted read-only; with RW it would let the guest write its page tables -> -EINVAL."""
    l2 = hv.v.cr3_mfn if not hv.pae else hv.table_mfns()[1]
    slot = (hv.layout.virt_end >> (22 if not hv.pae else 21)) + 8
    if hv.pae:
        slot &= 511
    ptr = (l2 << 12) + slot * hv.pte_size
    assert hv.read_entry(ptr) == 0
    assert hv.mmu_update((ptr, hv.pte(l2, P | RW | A | D | US)))[0] == EINVAL
    assert hv.mmu_update((ptr, hv.pte(l2, P | A | US)))[0] == 0
    assert hv.mmu_update((ptr, 0))[0] == 0


def test_pin_l4_is_a_noop_on_pv32(hv: Hv) -> None:
    """do_mmuext_op: MMUEXT_PIN_L4_TABLE on a 32-bit PV domain breaks out with rc 0."""
    f = hv.free_frame()
    assert hv.mmuext((X.PIN_L4_TABLE, f)) == (0, 1)
    assert not hv.dom.mm.page(f).pinned


def test_slot3_l2_cannot_be_pinned_as_plain_l2(hv_pae: Hv) -> None:
    """The pae_xen_l2 type differs from a plain L2: _get_page_type refuses -> -EINVAL."""
    hv = hv_pae
    assert hv.mmuext((X.PIN_L2_TABLE, hv.table_mfns()[1])) == (EINVAL, 0)


def test_new_baseptr(hv_pae: Hv) -> None:
    """NEW_BASEPTR validates the new top table on demand; a frame that cannot be typed as one
    (mapped writable, or no slot 3) -> -EINVAL; a good L3 becomes CR3."""
    hv = hv_pae
    old = hv.v.cr3_mfn
    assert hv.mmuext((X.NEW_BASEPTR, hv.mfn_of(hv.scratch_page()))) == (EINVAL, 0)
    assert hv.mmuext((X.NEW_BASEPTR, hv.free_frame())) == (EINVAL, 0)
    assert hv.v.cr3_mfn == old
    # a copy of the boot L3 with a fresh slot-3 L2 holding the same guest entries
    boot_l2 = hv.table_mfns()[1]
    l2 = hv.free_frame(hv.dom.mem.read(boot_l2 << 12, 428 * 8))
    l3 = hv.free_frame(struct.pack("<4Q", 0, 0, 0, hv.pte(l2, P)))
    assert hv.mmuext((X.NEW_BASEPTR, l3)) == (0, 1)
    assert hv.v.cr3_mfn == l3 and hv.v.cpu.reg("cr3") >> 12 == l3
    assert hv.dom.mm.page(l3).type == PageType.l3
    # the old table is still pinned, so it keeps its type
    assert hv.dom.mm.page(old).type == PageType.l3 and hv.dom.mm.page(old).pinned
    assert hv.get(hv.layout.start_info.va, 15) == b"xen-3.0-x86_32p"


def test_new_baseptr_nonpae(hv_nonpae: Hv) -> None:
    hv = hv_nonpae
    assert hv.mmuext((X.NEW_BASEPTR, hv.mfn_of(hv.scratch_page()))) == (EINVAL, 0)
    l2 = hv.free_frame(hv.dom.mem.read(hv.v.cr3_mfn << 12, 1008 * 4))
    assert hv.mmuext((X.NEW_BASEPTR, l2)) == (0, 1)
    assert hv.v.cr3_mfn == l2
    assert hv.get(hv.layout.start_info.va, 14) == b"xen-3.0-x86_32"


def test_tlb_flush_ops(hv: Hv) -> None:
    mask = hv.put_u32(1)
    ops = [(X.TLB_FLUSH_LOCAL,), (X.INVLPG_LOCAL, hv.layout.virt_base), (X.TLB_FLUSH_MULTI, 0, mask),
           (X.INVLPG_MULTI, hv.layout.virt_base, mask), (X.TLB_FLUSH_ALL,), (X.INVLPG_ALL, hv.layout.virt_base)]
    assert hv.mmuext(*ops) == (0, len(ops))


def test_flush_cache_needs_permission(hv: Hv) -> None:
    """Without cache_flush_permitted: MMUEXT_FLUSH_CACHE -> -EACCES, MMUEXT_FLUSH_CACHE_GLOBAL
    -> -EINVAL (mm.c do_mmuext_op, reached through compat_mmuext_op)."""
    assert hv.mmuext((X.FLUSH_CACHE,)) == (EACCES, 0)
    assert hv.mmuext((X.FLUSH_CACHE_GLOBAL,)) == (EINVAL, 0)


def test_set_ldt(hv: Hv) -> None:
    """MMUEXT_SET_LDT: linear_addr page aligned and nr_ents <= 8192, else -EINVAL."""
    base = hv.scratch_page()
    assert hv.mmuext((X.SET_LDT, base + 8, 1)) == (EINVAL, 0)
    assert hv.mmuext((X.SET_LDT, base, 8193)) == (EINVAL, 0)
    assert hv.mmuext((X.SET_LDT, base, 16)) == (0, 1)
    assert (hv.v.ldt_base, hv.v.ldt_ents) == (base, 16)
    assert hv.mmuext((X.SET_LDT, 0, 0)) == (0, 1)
    assert hv.v.ldt_ents == 0


def test_superpage_ops_and_unknown_cmd(hv: Hv) -> None:
    """MARK/UNMARK_SUPER -> -EOPNOTSUPP; an unknown command -> -ENOSYS (do_mmuext_op)."""
    assert hv.mmuext((X.MARK_SUPER, hv.free_frame())) == (EOPNOTSUPP, 0)
    assert hv.mmuext((X.UNMARK_SUPER, hv.free_frame())) == (EOPNOTSUPP, 0)
    assert hv.mmuext((99,)) == (ENOSYS, 0)


def test_mmuext_stops_at_first_error(hv: Hv) -> None:
    f1, f2 = hv.free_frame(), hv.free_frame()
    rc, done = hv.mmuext((X.PIN_L1_TABLE, f1), (X.UNPIN_TABLE, f2), (X.PIN_L1_TABLE, f2))
    assert (rc, done) == (EINVAL, 1)
    assert hv.dom.mm.page(f1).pinned and not hv.dom.mm.page(f2).pinned


def test_clear_and_copy_page(hv: Hv) -> None:
    src = hv.free_frame(b"copy me" * 100)
    dst = hv.free_frame(b"\xff" * PAGE)
    assert hv.mmuext((X.COPY_PAGE, dst, src)) == (0, 1)
    assert hv.dom.mem.read(dst << 12, 700) == b"copy me" * 100
    assert hv.mmuext((X.CLEAR_PAGE, dst)) == (0, 1)
    assert hv.dom.mem.read(dst << 12, PAGE) == bytes(PAGE)
    # a pagetable frame cannot be written through CLEAR_PAGE
    assert hv.mmuext((X.CLEAR_PAGE, hv.table_mfns()[-1]))[0] == EINVAL


# ================================================================ update_va_mapping
def test_update_va_mapping_map_and_unmap(hv: Hv) -> None:
    """do_update_va_mapping writes the L1 entry of va in the current tables; 0 unmaps."""
    target = hv.scratch_page()
    hv.v.write_virt(target, b"mapped twice")
    va = hv.scratch_page()
    mfn = hv.mfn_of(target)
    assert hv.uvm(va, hv.pte(mfn, P | RW | A | D), C.UVMF_INVLPG) == 0
    assert hv.get(va, 12) == b"mapped twice"
    assert hv.read_pte(va) == hv.pte(mfn, P | RW | A | D)
    assert hv.uvm(va, 0, C.UVMF_INVLPG) == 0
    with pytest.raises(GuestFault):
        hv.get(va, 1)
    # the unmapped frame lost its mapping reference
    assert hv.uvm(va, hv.pte(mfn, P | A), C.UVMF_TLB_FLUSH | C.UVMF_ALL) == 0


def test_update_va_mapping_hypervisor_range(hv: Hv) -> None:
    """A VA in the hypervisor range -> -EINVAL."""
    mfn = hv.mfn_of(hv.scratch_page())
    hv_start = hv.dom.geo.hv_start
    assert hv.uvm(hv_start, hv.pte(mfn, P | A)) == EINVAL
    assert hv.uvm(0xFFFFF000, hv.pte(mfn, P | A)) == EINVAL


def test_update_va_mapping_rw_pagetable_refused(hv: Hv) -> None:
    va = hv.scratch_page()
    before = hv.read_pte(va)
    for mfn in hv.table_mfns():
        assert hv.uvm(va, hv.pte(mfn, P | RW | A), C.UVMF_INVLPG) == EBUSY
    assert hv.read_pte(va) == before


def test_update_va_mapping_no_l1(hv: Hv) -> None:
    """No L1 table maps va (empty L2 slot) -> -EINVAL."""
    mfn = hv.mfn_of(hv.scratch_page())
    assert hv.uvm(0x10000000, hv.pte(mfn, P | A)) == EINVAL


def test_update_va_mapping_uvmf_flags(hv: Hv) -> None:
    """UVMF: flush type in bits 0-1, LOCAL=0 / ALL=4, any other value a pointer to a vcpu bitmap;
    a bad bitmap pointer gives -EFAULT (vcpumask_to_pcpumask)."""
    mfn = hv.mfn_of(hv.scratch_page())
    va = hv.scratch_page()
    mask = hv.put_u32(1)
    for flags in (C.UVMF_NONE, C.UVMF_TLB_FLUSH, C.UVMF_INVLPG, C.UVMF_TLB_FLUSH | C.UVMF_ALL,
                  C.UVMF_INVLPG | C.UVMF_ALL, C.UVMF_INVLPG | mask, C.UVMF_TLB_FLUSH | mask):
        assert hv.uvm(va, hv.pte(mfn, P | A), flags) == 0, hex(flags)
    assert hv.uvm(va, hv.pte(mfn, P | A), C.UVMF_INVLPG | 0x1000) == EFAULT


def test_update_va_mapping_otherdomain(hv: Hv) -> None:
    mfn = hv.mfn_of(hv.scratch_page())
    va = hv.scratch_page()
    assert hv.call(H.update_va_mapping_otherdomain, va, hv.pte(mfn, P | A), 0, 0, 0x7FF0) == 0
    assert hv.call(H.update_va_mapping_otherdomain, va, hv.pte(mfn, P | A), 0, 0, 5) == -3
