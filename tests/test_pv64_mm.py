"""4-level memory management of a 64-bit PV guest: mmu_update (#1), mmuext_op (#26) and
update_va_mapping (#14), with Xen 4.17's rules and errnos.

Sources (xen/arch/x86/mm.c, stable-4.17): get_page_from_l1e (-EBUSY for "could_not_pin": a
writable mapping of a typed frame or of a frame the domain does not own), get_page_from_l{2,3,4}e
(L*_DISALLOW_MASK -> -EINVAL; failing the type, a read-only linear entry to a validated table
of the same level, define_get_linear_pagetable), mod_l4_entry (slots 256-271,
!is_guest_l4_slot -> -EINVAL), promote_l4_table -> init_xen_l4_slots(..., m2p_strict),
new_guest_cr3 (fill_ro_mpt unless m2p_strict), do_mmuext_op (PIN_L1..L4, NEW_BASEPTR,
NEW_USER_BASEPTR with zap_ro_mpt under m2p_strict, the TLB flush ops, FLUSH_CACHE -EACCES and
FLUSH_CACHE_GLOBAL -EINVAL without cache-flush permission), do_update_va_mapping (va, u64 pte,
flags), xen/arch/x86/pv/mm.h adjust_guest_l*e (U forced, bit 52 for kernel pages, G for user
pages, A on L4 entries).
"""

from __future__ import annotations

import pytest
from support.harness64 import (
    GUEST_KERNEL,
    M2P_VA,
    NX,
    PAGE,
    PCD,
    PSE,
    PWT,
    RW,
    TABLE,
    US,
    A,
    D,
    G,
    Hv64,
    P,
)

from xenwb.abi.constants import Hypercall as H
from xenwb.abi.constants import MmuextCmd as X
from xenwb.abi.constants import Vmasst
from xenwb.hypervisor.mm import PageType

EPERM, ESRCH, EFAULT, EBUSY, EINVAL, ENOSYS, EACCES, EOPNOTSUPP = -1, -3, -14, -16, -22, -38, -13, -95
M2P_SLOT, PERDOMAIN_SLOT = 256, 260
LOW_VA = 0x0000_0080_0000_0000          # L4 slot 1: nothing of the builder's there
HIGH_GUEST_VA = 0xFFFF_8800_0000_0000   # L4 slot 272: the first guest slot above Xen's


@pytest.fixture
def hv() -> Hv64:
    return Hv64.example("pvdemo64")


def chain(hv: Hv64, va: int, leaf_mfn: int, leaf_flags: int = P | RW | A) -> tuple[int, int, int]:
    """A new L3 -> L2 -> L1 chain mapping va to leaf_mfn, hooked into the kernel L4 by mmu_update.
    Returns (l3, l2, l1) MFNs."""
    l1 = hv.new_table({(va >> 12) & 511: (leaf_mfn << 12) | leaf_flags})
    l2 = hv.new_table({(va >> 21) & 511: (l1 << 12) | TABLE})
    l3 = hv.new_table({(va >> 30) & 511: (l2 << 12) | TABLE})
    rc = hv.mmu_update((hv.entry_maddr(va, 4), (l3 << 12) | TABLE))
    assert rc == (0, 1), rc
    return l3, l2, l1


# ================================================================ mmu_update: L1 entries
def test_l1_update_maps_a_page_and_xen_adjusts_the_entry(hv: Hv64) -> None:
    """adjust_guest_l1e: without U the entry becomes a kernel page (U | bit 52); with U it
    becomes a global user page (U | G). The walk then reaches the new frame."""
    va = hv.scratch_page()
    maddr = hv.pte_maddr(va)
    frame = hv.free_frame(b"sixty-four")
    assert hv.mmu_update((maddr, (frame << 12) | P | RW | A)) == (0, 1)
    assert hv.read_entry(maddr) == (frame << 12) | P | RW | A | US | GUEST_KERNEL
    assert hv.mfn_of(va) == frame and hv.get(va, 10) == b"sixty-four"
    assert hv.mmu_update((maddr, (frame << 12) | P | US | A | NX)) == (0, 1)
    assert hv.read_entry(maddr) == (frame << 12) | P | US | A | NX | G
    assert hv.dom.mm.page(frame).type_count == 0          # the RW reference went with the RW mapping


def test_writable_mapping_of_a_pagetable_frame_is_ebusy(hv: Hv64) -> None:
    """get_page_from_l1e: a writable mapping of an L4/L3/L2/L1 frame -> could_not_pin -> -EBUSY;
    read-only is fine."""
    va = hv.scratch_page()
    maddr = hv.pte_maddr(va)
    for level, mfns in hv.boot_tables().items():
        before = hv.read_entry(maddr)
        assert hv.mmu_update((maddr, (mfns[0] << 12) | P | RW | A)) == (EBUSY, 0), level
        assert hv.read_entry(maddr) == before
        assert hv.mmu_update((maddr, (mfns[0] << 12) | P | A)) == (0, 1), level


def test_frame_not_owned_is_ebusy_and_mmio_eperm(hv: Hv64) -> None:
    """A frame of Xen's (not shared with the guest) -> could_not_pin -> -EBUSY; beyond RAM
    (MMIO, no iomem permission) -> -EPERM."""
    maddr = hv.pte_maddr(hv.scratch_page())
    xen = hv.dom.xen.m2p_frames[0]
    assert hv.mmu_update((maddr, (xen << 12) | P | A)) == (EBUSY, 0)
    assert hv.mmu_update((maddr, (hv.dom.mem.max_mfn + 5 << 12) | P | A)) == (EPERM, 0)


@pytest.mark.parametrize("bad", [PWT, PCD, PSE, 1 << 62], ids=["PWT", "PCD", "PAT", "GNTTAB"])
def test_bad_l1_flags(hv: Hv64, bad: int) -> None:
    """L1_DISALLOW_MASK of a domU without I/O caps: PWT, PCD, PAT (bit 7) and _PAGE_GNTTAB
    (bit 62) -> -EINVAL; the software bits 52-61 and NX are allowed."""
    maddr = hv.pte_maddr(hv.scratch_page())
    frame = hv.free_frame()
    assert hv.mmu_update((maddr, (frame << 12) | P | A | bad)) == (EINVAL, 0)
    assert hv.mmu_update((maddr, (frame << 12) | P | A | (0x3FF << 52) | NX)) == (0, 1)


def test_shared_info_may_be_mapped_writable(hv: Hv64) -> None:
    va = hv.scratch_page()
    assert hv.mmu_update((hv.pte_maddr(va), (hv.dom.shared_info_mfn << 12) | P | RW | A)) == (0, 1)
    assert hv.mfn_of(va) == hv.dom.shared_info_mfn


def test_preserve_ad(hv: Hv64) -> None:
    """MMU_PT_UPDATE_PRESERVE_AD keeps the old entry's A/D bits."""
    va = hv.scratch_page()
    maddr = hv.pte_maddr(va)
    frame = hv.free_frame()
    hv.dom.mem.write_u64(maddr, hv.read_entry(maddr) | A | D)
    assert hv.mmu_update((maddr | 2, (frame << 12) | P | RW)) == (0, 1)
    assert hv.read_entry(maddr) & (A | D) == A | D and hv.mfn_of(va) == frame


def test_machphys_update_shows_in_the_guest_m2p(hv: Hv64) -> None:
    """MMU_MACHPHYS_UPDATE: the 8-byte M2P entry the guest reads at 0xffff800000000000."""
    mfn = hv.free_frame()
    assert hv.mmu_update(((mfn << 12) | 1, 0x1234)) == (0, 1)
    # what the guest's own loads see (copy_from_guest refuses Xen's range: __addr_ok)
    assert hv.v.debug_read(M2P_VA + 8 * mfn, 8) == (0x1234).to_bytes(8, "little")
    assert hv.mmu_update(((hv.dom.xen.m2p_frames[0] << 12) | 1, 0)) == (EINVAL, 0)   # not the guest's


def test_done_count_stops_at_first_error_and_bad_foreigndom(hv: Hv64) -> None:
    m1, m2 = hv.pte_maddr(hv.scratch_page()), hv.pte_maddr(hv.scratch_page())
    f = hv.free_frame()
    l4 = hv.boot_tables()[4][0]
    assert hv.mmu_update((m1, (f << 12) | P | A), (m2, (l4 << 12) | P | RW | A), (m2, (f << 12) | P | A)) \
        == (EBUSY, 1)
    assert hv.mmu_update((m1, 0), foreigndom=5) == (ESRCH, 0xDEADBEEF)
    assert hv.mmu_update((m1 | 4, 0)) == (ENOSYS, 0)          # cmd 4: ptr & 7 on 64-bit


# ================================================================ mmu_update: L2-L4 entries
def test_new_chain_of_tables_in_a_free_l4_slot(hv: Hv64) -> None:
    """An L3/L2/L1 chain hooked into L4 slot 1 validates every level: the frames take their
    types, the entries get U (and the L4 entry A), and the page is reachable."""
    frame = hv.free_frame(b"low")
    l3, l2, l1 = chain(hv, LOW_VA, frame)
    mm = hv.dom.mm
    assert [mm.page(m).type for m in (l3, l2, l1)] == [PageType.l3, PageType.l2, PageType.l1]
    assert hv.entry(hv.v.cr3_mfn, 1) == (l3 << 12) | TABLE
    assert hv.entry(l1, 0) == (frame << 12) | P | RW | A | US | GUEST_KERNEL
    assert hv.get(LOW_VA, 3) == b"low"
    # the L4 entry goes away: every level is released
    assert hv.mmu_update((hv.entry_maddr(LOW_VA, 4), 0)) == (0, 1)
    assert [mm.page(m).type_count for m in (l3, l2, l1)] == [0, 0, 0]
    assert not hv.walk(LOW_VA).mapped


@pytest.mark.parametrize("slot", [256, 257, 260, 265, 271])
def test_l4_xen_slots_refused(hv: Hv64, slot: int) -> None:
    """mod_l4_entry: !is_guest_l4_slot(d, slot) -> -EINVAL, the entry unchanged."""
    l4 = hv.v.cr3_mfn
    old = hv.entry(l4, slot)
    l3 = hv.new_table()
    assert hv.mmu_update(((l4 << 12) + 8 * slot, (l3 << 12) | TABLE)) == (EINVAL, 0)
    assert hv.entry(l4, slot) == old
    assert hv.mmu_update(((l4 << 12) + 8 * slot, 0)) == (EINVAL, 0)


@pytest.mark.parametrize("slot", [255, 272])
def test_l4_slots_next_to_xens_are_the_guests(hv: Hv64, slot: int) -> None:
    l4 = hv.v.cr3_mfn
    l3 = hv.new_table()
    assert hv.mmu_update(((l4 << 12) + 8 * slot, (l3 << 12) | P | RW | A)) == (0, 1)
    assert hv.entry(l4, slot) == (l3 << 12) | P | RW | A | US
    assert hv.dom.mm.page(l3).type == PageType.l3


@pytest.mark.parametrize("level,bad", [(2, PSE), (3, PSE), (4, PSE), (2, G), (3, PWT), (4, PCD)],
                         ids=["L2-PSE", "L3-PSE", "L4-PSE", "L2-G", "L3-PWT", "L4-PCD"])
def test_bad_upper_level_flags(hv: Hv64, level: int, bad: int) -> None:
    """L2/L3/L4_DISALLOW_MASK (base_disallow_mask): PSE (no superpages for PV), G, PWT, PCD -> -EINVAL."""
    va = hv.layout.virt_base
    maddr = hv.entry_maddr(va, level)
    old = hv.read_entry(maddr)
    lower = old >> 12 & ((1 << 40) - 1)
    assert hv.mmu_update((maddr, (lower << 12) | TABLE | bad)) == (EINVAL, 0)
    assert hv.read_entry(maddr) == old


def test_upper_level_entry_must_point_to_the_next_level(hv: Hv64) -> None:
    """get_page_from_l4e with a frame mapped writable (type writable) or an L1 -> -EINVAL."""
    l4 = hv.v.cr3_mfn
    slot = (l4 << 12) + 8 * 1
    assert hv.mmu_update((slot, (hv.mfn_of(hv.scratch_page()) << 12) | TABLE)) == (EINVAL, 0)
    assert hv.mmu_update((slot, (hv.boot_tables()[1][0] << 12) | TABLE)) == (EINVAL, 0)
    assert hv.entry(l4, 1) == 0


def test_linear_entries_read_only(hv: Hv64) -> None:
    """define_get_linear_pagetable: a recursive L4 entry is allowed read-only only; the walk
    through it shows the L4 itself. An L3 entry to another validated L3, read-only, too."""
    l4 = hv.v.cr3_mfn
    slot = 300
    maddr = (l4 << 12) + 8 * slot
    assert hv.mmu_update((maddr, (l4 << 12) | P | RW | A)) == (EINVAL, 0)
    assert hv.mmu_update((maddr, (l4 << 12) | P | A)) == (0, 1)
    self_map = 0xFFFF_0000_0000_0000 | slot << 39 | slot << 30 | slot << 21 | slot << 12
    assert hv.get(self_map, PAGE) == hv.dom.mem.read(l4 << 12, PAGE)
    # an L3 entry pointing to the boot L3 (a validated L3), read-only
    boot_l3 = hv.boot_tables()[3][0]
    l3 = hv.new_table({5: (boot_l3 << 12) | P | A})
    assert hv.mmu_update(((l4 << 12) + 8, (l3 << 12) | TABLE)) == (0, 1)
    assert hv.dom.mm.page(l3).type == PageType.l3
    # writable, the same entry is refused
    assert hv.mmu_update(((l3 << 12) + 8 * 5, (boot_l3 << 12) | P | RW | A)) == (EINVAL, 0)


# ================================================================ mmuext_op: pinning and bases
def test_pin_l1_to_l4_and_unpin(hv: Hv64) -> None:
    """PIN_L{1,2,3,4}_TABLE give each frame its type (validated); pinning twice -> -EINVAL;
    UNPIN_TABLE releases, unpinning what is not pinned -> -EINVAL."""
    l1 = hv.new_table({0: (hv.free_frame() << 12) | P | A})
    l2 = hv.new_table({0: (l1 << 12) | TABLE})
    l3 = hv.new_table({0: (l2 << 12) | TABLE})
    l4 = hv.new_table({1: (l3 << 12) | TABLE})
    ops = [(X.PIN_L1_TABLE, l1), (X.PIN_L2_TABLE, l2), (X.PIN_L3_TABLE, l3), (X.PIN_L4_TABLE, l4)]
    assert hv.mmuext(*ops) == (0, 4)
    mm = hv.dom.mm
    for mfn, t in zip((l1, l2, l3, l4), (PageType.l1, PageType.l2, PageType.l3, PageType.l4), strict=True):
        assert mm.page(mfn).pinned and mm.page(mfn).type == t
    assert mm.page(l1).type_count == 2                 # pinned and referenced by l2
    assert hv.mmuext((X.PIN_L4_TABLE, l4)) == (EINVAL, 0)
    assert hv.mmuext((X.UNPIN_TABLE, l4), (X.UNPIN_TABLE, l4)) == (EINVAL, 1)
    assert mm.page(l4).type_count == 0 and mm.page(l3).type_count == 1      # l3 still pinned


def test_pin_l4_writes_xens_slots(hv: Hv64) -> None:
    """promote_l4_table -> init_xen_l4_slots: whatever the guest had in slots 256-271 is
    replaced; without m2p_strict slot 256 (RO M2P) is left blank; slot 260 is the per-domain area."""
    l4 = hv.new_table({s: 0xBAD000 | P for s in range(256, 272)} | {511: 0})
    assert hv.mmuext((X.PIN_L4_TABLE, l4)) == (0, 1)
    assert hv.entry(l4, M2P_SLOT) == 0
    assert hv.entry(l4, PERDOMAIN_SLOT) == hv.dom.xen.perdomain_l4e
    assert all(hv.entry(l4, s) == 0 for s in range(256, 272) if s != PERDOMAIN_SLOT)


def test_pin_l4_refuses_a_bad_entry(hv: Hv64) -> None:
    """Validation of a guest slot: an entry to a frame mapped writable is no L3 -> -EINVAL,
    and nothing stays referenced."""
    l3 = hv.new_table()
    rw = hv.mfn_of(hv.scratch_page())
    l4 = hv.new_table({0: (l3 << 12) | TABLE, 3: (rw << 12) | TABLE})
    assert hv.mmuext((X.PIN_L4_TABLE, l4)) == (EINVAL, 0)
    assert hv.dom.mm.page(l4).type_count == 0 and hv.dom.mm.page(l3).type_count == 0


def test_new_baseptr_fills_the_m2p_and_switches(hv: Hv64) -> None:
    """NEW_BASEPTR (new_guest_cr3): a validated L4 becomes the kernel base; without m2p_strict
    fill_ro_mpt puts the RO M2P in slot 256; CR3 follows; the old base is released."""
    old = hv.v.cr3_mfn
    old_count = hv.dom.mm.page(old).type_count
    l4 = hv.kernel_l4_copy()
    assert hv.mmuext((X.PIN_L4_TABLE, l4)) == (0, 1)
    assert hv.entry(l4, M2P_SLOT) == 0
    assert hv.mmuext((X.NEW_BASEPTR, l4)) == (0, 1)
    assert hv.v.cr3_mfn == l4 and hv.v.cpu.reg("cr3") == l4 << 12
    assert hv.entry(l4, M2P_SLOT) == hv.dom.xen.m2p_l4e
    assert hv.dom.mm.page(old).type_count == old_count - 1
    assert hv.v.debug_read(M2P_VA + 8 * hv.mfn_of(hv.layout.virt_base), 8) == bytes(8)  # pfn 0, new base
    # the same base again: nothing changes
    assert hv.mmuext((X.NEW_BASEPTR, l4)) == (0, 1)
    assert hv.dom.mm.page(l4).type_count == 2


def test_new_baseptr_refused(hv: Hv64) -> None:
    """get_page_and_type_from_mfn(PGT_root_page_table) fails: a writable page, an L1, a frame
    of Xen's -> -EINVAL; the base stays."""
    base = hv.v.cr3_mfn
    for mfn in (hv.mfn_of(hv.scratch_page()), hv.boot_tables()[1][0], hv.dom.xen.m2p_l3):
        assert hv.mmuext((X.NEW_BASEPTR, mfn)) == (EINVAL, 0)
    assert hv.v.cr3_mfn == base


def test_new_user_baseptr(hv: Hv64) -> None:
    """NEW_USER_BASEPTR: the user L4 (guest_table_user) changes without touching CR3 in kernel
    mode; it keeps slot 256 blank (no fill_ro_mpt); 0 clears it and releases the frame; a frame
    that is not an L4 -> -EINVAL."""
    user = hv.kernel_l4_copy()
    assert hv.mmuext((X.NEW_USER_BASEPTR, user)) == (0, 1)
    assert hv.v.user_cr3_mfn == user and hv.v.cpu.reg("cr3") == hv.v.cr3_mfn << 12
    mm = hv.dom.mm
    assert mm.page(user).type == PageType.l4 and mm.page(user).type_count == 1
    assert hv.entry(user, M2P_SLOT) == 0
    assert hv.mmuext((X.NEW_USER_BASEPTR, hv.boot_tables()[2][0])) == (EINVAL, 0)
    assert hv.v.user_cr3_mfn == user
    assert hv.mmuext((X.NEW_USER_BASEPTR, 0)) == (0, 1)
    assert hv.v.user_cr3_mfn == 0 and mm.page(user).type_count == 0


def test_m2p_strict(hv: Hv64) -> None:
    """VMASST_TYPE_m2p_strict (32): new L4s are created with the RO M2P (init_xen_l4_slots(...,
    true)), a user base loses it (zap_ro_mpt), NEW_BASEPTR no longer fills it."""
    assert hv.call(H.vm_assist, 0, Vmasst.m2p_strict) == 0
    kern = hv.kernel_l4_copy()
    user = hv.kernel_l4_copy()
    assert hv.mmuext((X.PIN_L4_TABLE, kern), (X.PIN_L4_TABLE, user)) == (0, 2)
    assert hv.entry(kern, M2P_SLOT) == hv.entry(user, M2P_SLOT) == hv.dom.xen.m2p_l4e
    assert hv.mmuext((X.NEW_USER_BASEPTR, user)) == (0, 1)
    assert hv.entry(user, M2P_SLOT) == 0
    assert hv.mmuext((X.NEW_BASEPTR, kern)) == (0, 1)
    assert hv.entry(kern, M2P_SLOT) == hv.dom.xen.m2p_l4e
    blank = hv.new_table()
    assert hv.call(H.vm_assist, 1, Vmasst.m2p_strict) == 0
    assert hv.mmuext((X.PIN_L4_TABLE, blank)) == (0, 1)
    assert hv.entry(blank, M2P_SLOT) == 0


def test_pin_l3_validates_all_512_entries(hv: Hv64) -> None:
    """A 64-bit L3 is a whole table (a PAE guest's has 4 entries): slot 511 is validated too,
    and two entries to one L2 take two type references."""
    l2 = hv.new_table()
    l3 = hv.new_table({i: (l2 << 12) | P | A for i in (0, 511)})
    assert hv.mmuext((X.PIN_L3_TABLE, l3)) == (0, 1)
    assert hv.dom.mm.page(l2).type == PageType.l2 and hv.dom.mm.page(l2).type_count == 2


def test_flush_cache_and_other_ops(hv: Hv64) -> None:
    """do_mmuext_op without cache-flush permission: FLUSH_CACHE -> -EACCES, FLUSH_CACHE_GLOBAL
    -> -EINVAL; MARK/UNMARK_SUPER -> -EOPNOTSUPP; unknown -> -ENOSYS; SET_LDT checks."""
    assert hv.mmuext((X.FLUSH_CACHE,)) == (EACCES, 0)
    assert hv.mmuext((X.FLUSH_CACHE_GLOBAL,)) == (EINVAL, 0)
    assert hv.mmuext((X.MARK_SUPER, hv.free_frame())) == (EOPNOTSUPP, 0)
    assert hv.mmuext((99,)) == (ENOSYS, 0)
    base = hv.scratch_page()
    assert hv.mmuext((X.SET_LDT, base + 8, 1)) == (EINVAL, 0)
    assert hv.mmuext((X.SET_LDT, base, 8193)) == (EINVAL, 0)
    assert hv.mmuext((X.SET_LDT, M2P_VA, 1)) == (EINVAL, 0)                 # !__addr_ok
    assert hv.mmuext((X.SET_LDT, base, 16)) == (0, 1)
    assert (hv.v.ldt_base, hv.v.ldt_ents) == (base, 16)


def test_clear_and_copy_page(hv: Hv64) -> None:
    src = hv.free_frame(b"64-bit copy" * 50)
    dst = hv.free_frame(b"\xff" * PAGE)
    assert hv.mmuext((X.COPY_PAGE, dst, src)) == (0, 1)
    assert hv.dom.mem.read(dst << 12, 550) == b"64-bit copy" * 50
    assert hv.mmuext((X.CLEAR_PAGE, dst)) == (0, 1)
    assert hv.dom.mem.read(dst << 12, PAGE) == bytes(PAGE)
    assert hv.mmuext((X.CLEAR_PAGE, hv.v.cr3_mfn)) == (EINVAL, 0)


def test_flush_multi_bad_vcpumask(hv: Hv64) -> None:
    """TLB_FLUSH_MULTI / INVLPG_MULTI with an unreadable vcpumask -> -EINVAL (vcpumask_to_pcpumask)."""
    assert hv.mmuext((X.TLB_FLUSH_MULTI, 0, 0x1000)) == (EINVAL, 0)
    assert hv.mmuext((X.INVLPG_MULTI, hv.layout.virt_base, 0x1000)) == (EINVAL, 0)


# ================================================================ update_va_mapping
def test_update_va_mapping_three_arguments(hv: Hv64) -> None:
    """(va, u64 pte, flags): a pte with bits above 32 (NX, bit 52 region) arrives whole, and the
    flags are the third argument; then unmap."""
    va = hv.scratch_page()
    frame = hv.free_frame(b"uvm64")
    pte = (frame << 12) | P | RW | A | NX
    assert hv.uvm(va, pte, 2) == 0                                  # UVMF_INVLPG
    assert hv.read_pte(va) == pte | US | GUEST_KERNEL
    assert hv.walk(va).nx and hv.get(va, 5) == b"uvm64"
    assert hv.uvm(va, (frame << 12) | P | US | A, 1) == 0           # UVMF_TLB_FLUSH, user page: G
    assert hv.read_pte(va) == (frame << 12) | P | US | A | G
    assert hv.uvm(va, 0, 0) == 0 and not hv.walk(va).mapped


def test_update_va_mapping_errors(hv: Hv64) -> None:
    """-EBUSY for a writable mapping of a pagetable; -EINVAL with no L1 for the va or a va in
    Xen's range; the vcpu bitmap of UVMF_MULTI unreadable -> -EFAULT."""
    va = hv.scratch_page()
    assert hv.uvm(va, (hv.v.cr3_mfn << 12) | P | RW | A) == EBUSY
    assert hv.uvm(LOW_VA, (hv.free_frame() << 12) | P | A) == EINVAL
    assert hv.uvm(M2P_VA, 0) == EINVAL
    assert hv.uvm(0xFFFF_8100_0000_0000, 0) == EINVAL
    assert hv.uvm(va, (hv.free_frame() << 12) | P | A, 0x1000 | 1) == EFAULT


def test_update_va_mapping_otherdomain(hv: Hv64) -> None:
    va = hv.scratch_page()
    f = hv.free_frame()
    assert hv.call(H.update_va_mapping_otherdomain, va, (f << 12) | P | A, 0, 0x7FF0) == 0
    assert hv.mfn_of(va) == f
    assert hv.call(H.update_va_mapping_otherdomain, va, 0, 0, 7) == ESRCH
