"""Page types, reference counts and pagetable validation, and the hypercalls on them
(mmu_update, mmuext_op, update_va_mapping), after xen/arch/x86/mm.c.

Each frame has one type at a time (none, L1, L2, L3, seg_desc, writable) and a
type count; the type can only change while the count is 0. Taking a pagetable
type validates the whole page (alloc_lN_table); dropping the last type
reference releases what the page referenced (free_lN_table). A writable L1
mapping holds a `writable` type reference, so a pagetable or GDT frame can
never be mapped writable and a frame mapped writable cannot become one.
Errors are Xen's: bad flags, foreign or wrongly typed frames give -EINVAL,
writes into Xen's slots -EPERM, frames that are not RAM (MMIO) -EPERM.

The hypercalls process their lists in order and stop at the first failing entry; `done`
(when given) receives the count of entries completed; the call returns that entry's error.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from unicorn import x86_const as X

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, MmuextCmd
from xenwb.hypervisor.hypercall import PREEMPT_BATCH, create_continuation
from xenwb.hypervisor.memory import GuestFault, MachineMemory
from xenwb.hypervisor.paging import NONPAE, PagingMode, decode_flags, read_pte, walk
from xenwb.hypervisor.xenarea import HvGeometry, XenArea

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EPERM, EBUSY, EFAULT, ESRCH, EACCES, EOPNOTSUPP, ENOSYS, ENXIO = (
    -Errno.EINVAL, -Errno.EPERM, -Errno.EBUSY, -Errno.EFAULT, -Errno.ESRCH, -Errno.EACCES, -Errno.EOPNOTSUPP,
    -Errno.ENOSYS, -Errno.ENXIO)
# High PTE bits (52-63) Xen leaves to software: x86_64/page.h BASE_DISALLOW_MASK
# (0xFF800198 & ~_PAGE_NX, in get_pte_flags() form) allows bits 52-62 in L1/L2;
# L1_DISALLOW_MASK adds _PAGE_GNTTAB (bit 62); COMPAT_L3_DISALLOW_MASK (0xFFFFF198)
# refuses every high bit of a PV32 L3 entry, NX included. A 64-bit guest's L3 and L4
# entries have base_disallow_mask (mm.c l3_disallow_mask, L4_DISALLOW_MASK).
HIGH_ALLOWED = {"L1": 0x3FF << 52, "L2": 0x7FF << 52, "L3": 0}
HIGH_ALLOWED64 = {"L1": 0x3FF << 52, "L2": 0x7FF << 52, "L3": 0x7FF << 52, "L4": 0x7FF << 52}
PAGE_GUEST_KERNEL = 1 << 52      # x86_64/page.h _PAGE_GUEST_KERNEL: a kernel page of a 64-bit guest


class PageType(enum.IntEnum):
    none = 0
    l1 = 1
    l2 = 2
    l3 = 3
    l4 = 4
    seg_desc = 5
    writable = 6


PT_TYPES = (PageType.l1, PageType.l2, PageType.l3, PageType.l4)


class Sharing(enum.IntEnum):
    """Who may map a frame: the domain's own RAM, or a Xen frame shared with it."""

    owned = 0
    shared_rw = 1       # shared_info, grant frames: Xen-heap pages the guest maps writable


@dataclass(slots=True)
class PageInfo:
    sharing: Sharing = Sharing.owned
    type: PageType = PageType.none
    type_count: int = 0
    count: int = 0                 # general references: mappings and table entries
    pinned: bool = False
    validated: bool = False
    allocated: bool = True         # PGC_allocated: the domain's allocation reference
    pae_xen_l2: bool = False       # the L2 under a PAE L3's slot 3 (holds Xen's slots)
    referrers: set[int] = field(default_factory=set)   # tables (mfn) that reference this frame


# Allowed PTE flags (mm.c: BASE_DISALLOW_MASK = 0xFFFFF198 minus NX; L1 may use G;
# PWT/PCD/PAT need I/O privileges a domU does not have; PSE is never allowed).
_BASE_ALLOWED = (C._PAGE_PRESENT | C._PAGE_RW | C._PAGE_USER | C._PAGE_ACCESSED | C._PAGE_DIRTY
                 | C._PAGE_AVAIL)
L1_ALLOWED = _BASE_ALLOWED | C._PAGE_GLOBAL
L2_ALLOWED = _BASE_ALLOWED
L3_ALLOWED_PAE = _BASE_ALLOWED   # compat L3: P, RW, US, A, D, AVAIL
L3_ALLOWED64 = L4_ALLOWED = _BASE_ALLOWED


def adjust_guest_entry(pte: int, level: int) -> int:
    """pv/mm.h adjust_guest_l*e for a 64-bit guest, whose kernel runs at CPL 3: every present
    entry gets _PAGE_USER; an L1 entry written without it is a kernel page (bit 52), one
    written with it gets _PAGE_GLOBAL; L4 entries also get _PAGE_ACCESSED."""
    if not pte & C._PAGE_PRESENT:
        return pte
    if level == 1:
        if not pte & C._PAGE_USER:
            pte |= PAGE_GUEST_KERNEL | C._PAGE_USER
        if not pte & PAGE_GUEST_KERNEL:
            pte |= C._PAGE_GLOBAL | C._PAGE_USER
        return pte
    if level == 4:
        return pte | C._PAGE_ACCESSED | C._PAGE_USER
    return pte | C._PAGE_USER


class MMError(Exception):
    def __init__(self, errno: int, why: str) -> None:
        super().__init__(why)
        self.errno = errno
        self.why = why


class MM:
    """The domain's view of machine frames: ownership, types, validation."""

    def __init__(self, mem: MachineMemory, geo: HvGeometry, xen: XenArea) -> None:
        self.mem = mem
        self.geo = geo
        self.mode: PagingMode = geo.mode
        self.xen = xen
        self.pages: dict[int, PageInfo] = {}
        self.owned: set[int] = set()
        self.free_frames: list[int] = []        # released by the domain, for populate_physmap
        self.nx_ok = self.mode.pte_size == 8
        self.long = geo.long_mode               # a 64-bit guest's 4-level tables
        self.m2p_strict = False                 # VMASST_TYPE_m2p_strict (set by vm_assist)
        # bumped on every change to a pagetable entry (and on every type change of a table):
        # the vcpus' caches of guest-virtual translations are good while it stays the same
        self.generation = 0
        self.last_error = ""
        # called with the mfn when a frame the guest gave back loses its last reference
        self.on_free: Callable[[int], None] | None = None

    # -- ownership ---------------------------------------------------------------
    def page(self, mfn: int) -> PageInfo:
        pi = self.pages.get(mfn)
        if pi is None:
            pi = self.pages[mfn] = PageInfo()
        return pi

    def give(self, mfn: int) -> None:
        self.owned.add(mfn)
        self.pages[mfn] = PageInfo()

    def share(self, mfn: int, how: Sharing) -> None:
        self.pages[mfn] = PageInfo(sharing=how)

    def take_back(self, mfn: int) -> None:
        self.owned.discard(mfn)

    def remove_page(self, mfn: int) -> int:
        """guest_remove_page (common/memory.c) for a PV domain: 0, or -EINVAL for a frame that
        is not RAM, -ENXIO for one the domain does not own (get_page fails). The frame stays
        the domain's while referenced, so giving it back again meanwhile is a success."""
        if not self.mem.valid(mfn << 12) or mfn >= self.mem.max_mfn:
            return EINVAL
        if not self.is_owned(mfn):
            return ENXIO
        self.drop_allocation(mfn)
        return 0

    def drop_allocation(self, mfn: int) -> None:
        """put_page_alloc_ref: the domain gives the frame back; it is freed once its last
        mapping or type reference goes (put_page), not before (page_alloc.c
        free_domheap_pages: only then tot_pages drops and mark_page_free invalidates the M2P
        entry, what `on_free` does)."""
        pi = self.page(mfn)
        pi.allocated = False
        self._maybe_free(mfn, pi)

    def _maybe_free(self, mfn: int, pi: PageInfo) -> None:
        if not (pi.allocated or pi.count or pi.type_count or pi.pinned) and mfn in self.owned:
            self.owned.discard(mfn)
            self.free_frames.append(mfn)
            if self.on_free is not None:
                self.on_free(mfn)

    def mappable(self, mfn: int) -> bool:
        pi = self.pages.get(mfn)
        return mfn in self.owned or (pi is not None and pi.sharing != Sharing.owned)

    def is_owned(self, mfn: int) -> bool:
        return mfn in self.owned

    def _fail(self, errno: int, why: str) -> MMError:
        self.last_error = why
        return MMError(errno, why)

    # -- general refs ---------------------------------------------------------------
    def get_page(self, mfn: int) -> None:
        if not self.mappable(mfn):
            if not self.mem.valid(mfn << 12) or mfn >= self.mem.max_mfn:
                raise self._fail(EPERM, f"mfn {mfn:#x} is not RAM (no I/O memory permission)")
            raise self._fail(EINVAL, f"mfn {mfn:#x} is not owned by the domain")
        self.page(mfn).count += 1

    def put_page(self, mfn: int) -> None:
        pi = self.page(mfn)
        pi.count -= 1
        assert pi.count >= 0, f"refcount underflow on mfn {mfn:#x}"
        if not pi.allocated:
            self._maybe_free(mfn, pi)

    # -- type refs ------------------------------------------------------------------
    def get_page_type(self, mfn: int, t: PageType, *, xen_l2: bool = False) -> None:
        pi = self.page(mfn)
        if pi.sharing != Sharing.owned:
            if t == PageType.writable and pi.sharing == Sharing.shared_rw:
                return
            raise self._fail(EINVAL, f"mfn {mfn:#x} is a Xen frame and cannot become {t.name}")
        if pi.type_count:
            if pi.type != t:
                raise self._fail(EINVAL, f"mfn {mfn:#x} has type {pi.type.name} (count {pi.type_count}), "
                                         f"not {t.name}")
            if t == PageType.l2 and pi.pae_xen_l2 != xen_l2:
                raise self._fail(EINVAL, f"L2 mfn {mfn:#x} cannot be used both in L3 slot 3 and elsewhere")
            pi.type_count += 1
            return
        if t in PT_TYPES or t == PageType.seg_desc:
            self.generation += 1
            pi.type, pi.pae_xen_l2 = t, xen_l2
            pi.type_count = 1
            try:
                self._validate(mfn, t)
            except MMError:
                pi.type_count, pi.type, pi.pae_xen_l2 = 0, PageType.none, False
                raise
            pi.validated = True
        else:
            pi.type, pi.type_count = t, 1

    def put_page_type(self, mfn: int) -> None:
        pi = self.page(mfn)
        if pi.sharing != Sharing.owned:
            return
        pi.type_count -= 1
        assert pi.type_count >= 0, f"type count underflow on mfn {mfn:#x}"
        if pi.type_count == 0 and pi.validated:
            self.generation += 1
            pi.validated = False
            self._release(mfn, pi.type)
            pi.pae_xen_l2 = False
        if not pi.allocated:
            self._maybe_free(mfn, pi)

    # -- whole-table validation (alloc_lN_table / free_lN_table) ---------------------
    def _entries(self, mfn: int) -> list[int]:
        n, sz = self.mode.entries, self.mode.pte_size
        frame = self.mem.frame(mfn)
        fmt = "<Q" if sz == 8 else "<I"
        return [v for (v,) in struct.iter_unpack(fmt, frame[: n * sz])]

    def _write_entry(self, mfn: int, idx: int, pte: int) -> None:
        self.generation += 1
        maddr = (mfn << 12) + idx * self.mode.pte_size
        if self.mode.pte_size == 8:
            self.mem.write_u64(maddr, pte)
        else:
            self.mem.write_u32(maddr, pte)

    def is_guest_l2_slot(self, l2: PageInfo, idx: int) -> bool:
        """Xen's slots: 428..511 of the PAE slot-3 L2; 1008..1023 of every non-PAE L2."""
        if self.mode is NONPAE:
            return idx < self.geo.first_xen_l2_slot
        return not (l2.pae_xen_l2 and idx >= self.geo.first_xen_l2_slot)

    def is_guest_slot(self, t: PageType, pi: PageInfo, idx: int) -> bool:
        """Entries validation looks at: not Xen's L2 slots (32-bit), L3 slots 0-3 (PAE),
        not L4 slots 256-271 (is_guest_l4_slot)."""
        if t == PageType.l2:
            return self.long or self.is_guest_l2_slot(pi, idx)
        if t == PageType.l3:
            return self.long or idx < 4
        if t == PageType.l4:
            return idx not in self.geo.xen_l4_slots
        return True

    def _validate(self, mfn: int, t: PageType) -> None:
        if t == PageType.seg_desc:
            return  # descriptor checks are done by the descriptor-table code
        entries = self._entries(mfn)
        done: list[int] = []
        pi = self.page(mfn)
        try:
            for idx, pte in enumerate(entries):
                if not self.is_guest_slot(t, pi, idx):
                    continue
                if t == PageType.l1:
                    self.get_page_from_l1e(pte, mfn)
                elif t == PageType.l2:
                    self.get_page_from_l2e(pte, mfn)
                elif t == PageType.l3:
                    self.get_page_from_l3e(pte, mfn, idx)
                elif t == PageType.l4:
                    self.get_page_from_l4e(pte, mfn)
                done.append(idx)
        except MMError as e:
            for idx in done:
                self._put_entry(t, entries[idx], mfn)
            raise self._fail(e.errno, f"{t.name} table mfn {mfn:#x} entry {idx}: {e.why}") from None
        if self.long:
            # promote_lN_table writes each validated entry back adjusted (pv/mm.h)
            level = int(t)
            for idx in done:
                adj = adjust_guest_entry(entries[idx], level)
                if adj != entries[idx]:
                    self._write_entry(mfn, idx, adj)
            if t == PageType.l4:
                # init_xen_l4_slots: Xen's slots, the RO M2P only with m2p_strict
                for slot, pte in self.xen.xen_l4_entries(self.m2p_strict).items():
                    self._write_entry(mfn, slot, pte)
            return
        if t == PageType.l3:
            # Xen zeroes entries 4..511 of a compat L3 and requires slot 3 present
            for idx in range(4, self.mode.entries):
                if entries[idx]:
                    self._write_entry(mfn, idx, 0)
            if not entries[3] & C._PAGE_PRESENT:
                for idx in done:
                    self._put_entry(t, entries[idx], mfn)
                raise self._fail(EINVAL, f"L3 mfn {mfn:#x}: slot 3 is not present")
        if t == PageType.l2 and (self.mode is NONPAE or pi.pae_xen_l2):
            for slot, pte in self.xen.xen_l2_entries().items():
                self._write_entry(mfn, slot, pte)
            for slot in self.geo.xen_l2_slots:
                if slot not in self.xen.xen_l2_entries():
                    self._write_entry(mfn, slot, 0)

    def _release(self, mfn: int, t: PageType) -> None:
        if t == PageType.seg_desc:
            return
        pi = self.page(mfn)
        for idx, pte in enumerate(self._entries(mfn)):
            if not self.is_guest_slot(t, pi, idx):
                continue
            self._put_entry(t, pte, mfn)

    def _put_entry(self, t: PageType, pte: int, table: int) -> None:
        if t == PageType.l1:
            self.put_page_from_l1e(pte, table)
        elif t == PageType.l2:
            self.put_page_from_l2e(pte, table)
        elif t == PageType.l3:
            self.put_page_from_l3e(pte, table)
        elif t == PageType.l4:
            self.put_page_from_l4e(pte, table)

    # -- per-entry references ---------------------------------------------------------
    def _check_flags(self, pte: int, allowed: int, level: str) -> None:
        flags = pte & 0xFFF
        bad = flags & ~allowed
        if self.long:
            bad |= pte & (0x7FF << 52) & ~HIGH_ALLOWED64[level]      # NX is allowed at every level
        elif self.mode.pte_size == 8:
            if pte & C._PAGE_NX and (level == "L3" or not self.nx_ok):
                bad |= 1 << 63
            bad |= pte & (0x7FF << 52) & ~HIGH_ALLOWED[level]
        if bad:
            raise self._fail(EINVAL, f"bad {level} flags {bad:#x} in {pte:#x}")

    def get_page_from_l1e(self, pte: int, table: int) -> None:
        """mm.c get_page_from_l1e (Xen 4.17): bad flags -EINVAL, MMIO without permission
        -EPERM, a frame the domain may not map or a writable mapping of a typed frame
        ("could_not_pin") -EBUSY."""
        if not pte & C._PAGE_PRESENT:
            return
        self._check_flags(pte, L1_ALLOWED, "L1")
        mfn = self.mode.pte_mfn(pte)
        try:
            self.get_page(mfn)
        except MMError as e:
            raise self._fail(EBUSY if e.errno == EINVAL else e.errno, e.why) from None
        if pte & C._PAGE_RW:
            try:
                self.get_page_type(mfn, PageType.writable)
            except MMError:
                self.put_page(mfn)
                raise self._fail(EBUSY, f"mfn {mfn:#x} cannot be mapped writable "
                                        f"(it is a {self.page(mfn).type.name} page)") from None
        self.page(mfn).referrers.add(table)

    def put_page_from_l1e(self, pte: int, table: int) -> None:
        if not pte & C._PAGE_PRESENT:
            return
        mfn = self.mode.pte_mfn(pte)
        if pte & C._PAGE_RW:
            self.put_page_type(mfn)
        self.put_page(mfn)
        self.page(mfn).referrers.discard(table)

    def get_page_from_l2e(self, pte: int, table: int) -> None:
        if not pte & C._PAGE_PRESENT:
            return
        if pte & C._PAGE_PSE:
            raise self._fail(EINVAL, "superpage (PSE) L2 entries are not allowed for PV guests")
        self._check_flags(pte, L2_ALLOWED, "L2")
        self._get_lower_or_linear(pte, table, PageType.l2)

    def _get_lower_or_linear(self, pte: int, table: int, level: PageType, *, xen_l2: bool = False) -> None:
        """get_page_from_l{2,3,4}e: a reference to the next level's table; failing that (-EINVAL)
        a linear ("recursive") entry: read-only, to this table itself or to another validated
        table of the same level (mm.c define_get_linear_pagetable)."""
        mfn = self.mode.pte_mfn(pte)
        self.get_page(mfn)
        pi = self.page(mfn)
        linear = not pte & C._PAGE_RW and (mfn == table or (pi.type == level and pi.type_count))
        if linear and (level == PageType.l2 or self.long):
            pi.referrers.add(table)
            return
        try:
            self.get_page_type(mfn, PageType(level - 1), xen_l2=xen_l2)
        except MMError:
            self.put_page(mfn)
            raise
        pi.referrers.add(table)

    def _put_lower_or_linear(self, pte: int, table: int, level: PageType) -> None:
        if not pte & C._PAGE_PRESENT:
            return
        mfn = self.mode.pte_mfn(pte)
        pi = self.page(mfn)
        if not (pi.type == level or mfn == table):
            self.put_page_type(mfn)
        self.put_page(mfn)
        pi.referrers.discard(table)

    def put_page_from_l2e(self, pte: int, table: int) -> None:
        self._put_lower_or_linear(pte, table, PageType.l2)

    def get_page_from_l3e(self, pte: int, table: int, slot: int) -> None:
        if not pte & C._PAGE_PRESENT:
            return
        if self.long:
            if pte & C._PAGE_PSE:
                raise self._fail(EINVAL, "1 GiB (PSE) L3 entries are not allowed for PV guests")
            self._check_flags(pte, L3_ALLOWED64, "L3")
            self._get_lower_or_linear(pte, table, PageType.l3)
            return
        self._check_flags(pte, L3_ALLOWED_PAE, "L3")
        mfn = self.mode.pte_mfn(pte)
        self.get_page(mfn)
        try:
            self.get_page_type(mfn, PageType.l2, xen_l2=(slot == 3))
        except MMError:
            self.put_page(mfn)
            raise
        if slot == 3 and self.page(mfn).type_count != 1:
            # create_pae_xen_mappings: the L2 with Xen's slots cannot be shared by two L3s
            self.put_page_type(mfn)
            self.put_page(mfn)
            raise self._fail(EINVAL, f"L2 mfn {mfn:#x} is already the slot-3 L2 of another L3")
        self.page(mfn).referrers.add(table)

    def put_page_from_l3e(self, pte: int, table: int) -> None:
        if self.long:
            self._put_lower_or_linear(pte, table, PageType.l3)
            return
        if not pte & C._PAGE_PRESENT:
            return
        mfn = self.mode.pte_mfn(pte)
        self.put_page_type(mfn)
        self.put_page(mfn)
        self.page(mfn).referrers.discard(table)

    def get_page_from_l4e(self, pte: int, table: int) -> None:
        if not pte & C._PAGE_PRESENT:
            return
        if pte & C._PAGE_PSE:
            raise self._fail(EINVAL, f"bad L4 flags {C._PAGE_PSE:#x} in {pte:#x}")
        self._check_flags(pte, L4_ALLOWED, "L4")
        self._get_lower_or_linear(pte, table, PageType.l4)

    def put_page_from_l4e(self, pte: int, table: int) -> None:
        self._put_lower_or_linear(pte, table, PageType.l4)

    # -- single-entry updates (mod_lN_entry) -------------------------------------------
    def mod_entry(self, table: int, idx: int, new: int, *, preserve_ad: bool = False) -> PageType:
        """Validated write of entry idx in table frame `table`; returns the table type.

        The caller has checked that the frame is a pagetable (typed and in use).
        """
        pi = self.page(table)
        t = pi.type
        old = read_pte(self.mem, self.mode, (table << 12) + idx * self.mode.pte_size)
        if preserve_ad:
            new |= old & (C._PAGE_ACCESSED | C._PAGE_DIRTY)
        if self.long:
            new = adjust_guest_entry(new, int(t)) if t in PT_TYPES else new
        if t == PageType.l1:
            self.get_page_from_l1e(new, table)
            self._write_entry(table, idx, new)
            self.put_page_from_l1e(old, table)
        elif t == PageType.l2:
            if not self.is_guest_l2_slot(pi, idx):
                raise self._fail(EPERM, f"L2 slot {idx} of mfn {table:#x} belongs to Xen")
            self.get_page_from_l2e(new, table)
            self._write_entry(table, idx, new)
            self.put_page_from_l2e(old, table)
        elif t == PageType.l3:
            if idx >= 3 and not self.long:
                raise self._fail(EINVAL, f"L3 slot {idx} of a PAE guest cannot be changed")
            self.get_page_from_l3e(new, table, idx)
            self._write_entry(table, idx, new)
            self.put_page_from_l3e(old, table)
        elif t == PageType.l4:
            if idx in self.geo.xen_l4_slots:
                raise self._fail(EINVAL, f"L4 slot {idx} of mfn {table:#x} belongs to Xen")
            self.get_page_from_l4e(new, table)
            self._write_entry(table, idx, new)
            self.put_page_from_l4e(old, table)
        else:
            raise self._fail(EINVAL, f"mfn {table:#x} is not a pagetable")
        return t

    # -- pinning and roots -------------------------------------------------------------
    def top_type(self) -> PageType:
        return {4: PageType.l4, 3: PageType.l3}.get(self.mode.levels, PageType.l2)

    def pin(self, mfn: int, t: PageType) -> None:
        if not self.is_owned(mfn):
            raise self._fail(EINVAL, f"mfn {mfn:#x} is not owned by the domain")
        pi = self.page(mfn)
        if pi.pinned:
            raise self._fail(EINVAL, f"mfn {mfn:#x} is already pinned")
        self.get_page(mfn)
        try:
            self.get_page_type(mfn, t)
        except MMError:
            self.put_page(mfn)
            raise
        pi.pinned = True

    def unpin(self, mfn: int) -> None:
        pi = self.pages.get(mfn)
        if pi is None or not pi.pinned or not self.is_owned(mfn):
            raise self._fail(EINVAL, f"mfn {mfn:#x} is not pinned")
        pi.pinned = False
        self.put_page_type(mfn)
        self.put_page(mfn)

    def get_root(self, mfn: int) -> None:
        """A reference for CR3 (new_guest_cr3)."""
        if not self.is_owned(mfn):
            raise self._fail(EINVAL, f"mfn {mfn:#x} is not owned by the domain")
        self.get_page(mfn)
        try:
            self.get_page_type(mfn, self.top_type())
        except MMError:
            self.put_page(mfn)
            raise

    def put_root(self, mfn: int) -> None:
        self.put_page_type(mfn)
        self.put_page(mfn)

    # -- the read-only M2P slot of a 64-bit guest's L4 (mm.c fill_ro_mpt, zap_ro_mpt) -------
    def fill_ro_mpt(self, mfn: int) -> None:
        self.generation += 1
        slot = (mfn << 12) + 8 * 256
        if not self.mem.read_u64(slot):
            self.mem.write_u64(slot, self.xen.m2p_l4e)

    def zap_ro_mpt(self, mfn: int) -> None:
        self.generation += 1
        self.mem.write_u64((mfn << 12) + 8 * 256, 0)


# ================================================================ the hypercalls
MMU_UPDATE_PREEMPTED = 0x80000000


def _foreigndom_ok(fd: int) -> bool:
    dom = fd & 0xFFFF
    pt_owner = fd >> 16
    return dom in (C.DOMID_SELF, 1) and pt_owner in (0, 2)   # domain 1 is this domU


def _resumed_done(vcpu: Vcpu, count: int, done_ptr: int) -> int:
    """A continuation (count has MMU_UPDATE_PREEMPTED) goes on counting from *done."""
    if count & MMU_UPDATE_PREEMPTED and done_ptr:
        try:
            return vcpu.read_u32(done_ptr)
        except GuestFault:
            return 0
    return 0


def _write_done(vcpu: Vcpu, done_ptr: int, n: int) -> None:
    if done_ptr:
        try:
            vcpu.write_virt(done_ptr, struct.pack("<I", n))
        except GuestFault:
            pass


# ---------------------------------------------------------------- mmu_update
def pte_update(vcpu: Vcpu, ptr: int, val: int, preserve_ad: bool) -> int:
    """MMU_NORMAL_PT_UPDATE / PRESERVE_AD: a checked write to machine address ptr."""
    dom = vcpu.domain
    mm = dom.mm
    size = dom.mode.pte_size
    mfn = ptr >> 12
    if ptr % size:
        return EINVAL
    if not mm.is_owned(mfn):
        mm.last_error = f"mmu_update: mfn {mfn:#x} is not owned by the domain"
        return EINVAL
    pi = mm.page(mfn)
    idx = (ptr & 0xFFF) // size
    try:
        if pi.type in PT_TYPES and pi.type_count:
            mm.mod_entry(mfn, idx, val, preserve_ad=preserve_ad)
            if pi.type != PageType.l1:
                for v in dom.vcpus:
                    v.cpu.flush_tlb()
        elif pi.type_count == 0 or pi.type == PageType.writable:
            # a page of no special type is a plain writable page
            mm.get_page_type(mfn, PageType.writable)
            try:
                data = struct.pack("<Q" if size == 8 else "<I", val & ((1 << (8 * size)) - 1))
                dom.mem.write(ptr, data)
            finally:
                mm.put_page_type(mfn)
        else:
            mm.last_error = f"mmu_update: mfn {mfn:#x} is a {pi.type.name} page"
            return EINVAL
    except MMError as e:
        return e.errno
    return 0


def machphys_update(vcpu: Vcpu, ptr: int, val: int) -> int:
    """MMU_MACHPHYS_UPDATE: m2p[ptr >> 12] = val for a frame the domain owns."""
    dom = vcpu.domain
    mfn = ptr >> 12
    if not dom.mm.is_owned(mfn):
        dom.mm.last_error = f"machphys_update: mfn {mfn:#x} is not owned by the domain"
        return EINVAL
    dom.physmap.set_m2p(mfn, val & dom.physmap.invalid)
    return 0


def do_mmu_update(vcpu: Vcpu, reqs: int, count: int, done_ptr: int, foreigndom: int, *_: int) -> int:
    if vcpu.in_multicall and count & MMU_UPDATE_PREEMPTED:
        return EINVAL
    done = _resumed_done(vcpu, count, done_ptr)
    count &= ~MMU_UPDATE_PREEMPTED
    if not _foreigndom_ok(foreigndom):
        return ESRCH
    L = vcpu.domain.abi.mmu_update
    rc = 0
    for i in range(count):
        if i == PREEMPT_BATCH and not vcpu.in_multicall:
            _write_done(vcpu, done_ptr, done)
            return create_continuation(vcpu, reqs + i * 16, (count - i) | MMU_UPDATE_PREEMPTED, done_ptr,
                                       foreigndom)
        try:
            req = L.parse(vcpu.read_virt(reqs + i * 16, 16))
        except GuestFault:
            rc = EFAULT
            break
        # mm.c: cmd = req.ptr & (sizeof(l1_pgentry_t) - 1): 3 bits with 8-byte PTEs, 2 without
        cmd = req.ptr & (vcpu.domain.mode.pte_size - 1)
        ptr = req.ptr & ~(vcpu.domain.mode.pte_size - 1)
        if cmd in (C.MMU_NORMAL_PT_UPDATE, C.MMU_PT_UPDATE_PRESERVE_AD, C.MMU_PT_UPDATE_NO_TRANSLATE):
            rc = pte_update(vcpu, ptr, req.val, cmd == C.MMU_PT_UPDATE_PRESERVE_AD)
        elif cmd == C.MMU_MACHPHYS_UPDATE:
            rc = machphys_update(vcpu, ptr, req.val)
        else:
            rc = ENOSYS
        if rc:
            break
        done += 1
    _write_done(vcpu, done_ptr, done)
    return rc


def decode_mmu_update(vcpu: Vcpu, reqs: int, count: int, done: int, fd: int) -> dict[str, Any]:
    L = vcpu.domain.abi.mmu_update
    items = []
    n = count & ~MMU_UPDATE_PREEMPTED
    for i in range(min(n, 64)):
        try:
            req = L.parse(vcpu.read_virt(reqs + i * 16, 16))
        except GuestFault:
            items.append({"unreadable": f"{reqs + i * 16:#x}"})
            break
        mask = vcpu.domain.mode.pte_size - 1
        cmd = req.ptr & mask
        item: dict[str, Any] = {"cmd": C.MMU_UPDATE_NAMES.get(cmd, str(cmd)), "ptr": f"{req.ptr & ~mask:#x}",
                                "val": f"{req.val:#x}"}
        if cmd != C.MMU_MACHPHYS_UPDATE:
            item["flags"] = decode_flags(req.val)
        items.append(item)
    return {"reqs": f"{reqs:#x}", "count": n, "done": f"{done:#x}", "foreigndom": f"{fd:#x}", "req": items}


# ---------------------------------------------------------------- update_va_mapping
def _l1_slot_for(vcpu: Vcpu, va: int) -> tuple[int, int] | None:
    """(L1 mfn, index) of the entry mapping va in the current kernel tables."""
    dom = vcpu.domain
    w = walk(dom.mem, dom.mode, vcpu.cr3_mfn, va)
    l1_steps = [s for s in w.steps if s.level == 2]
    if not l1_steps or not l1_steps[0].present:
        return None
    l2e = l1_steps[0].pte
    if l2e & C._PAGE_PSE:
        return None
    return dom.mode.pte_mfn(l2e), dom.mode.index(va, 1)


def flush_by_flags(vcpu: Vcpu, flags: int, va: int) -> int:
    """UVMF flush semantics: TLB_FLUSH or INVLPG, local / all / a vcpu bitmap."""
    dom = vcpu.domain
    kind = flags & C.UVMF_FLUSHTYPE_MASK
    if kind == C.UVMF_NONE:
        return 0
    sel = flags & ~C.UVMF_FLUSHTYPE_MASK
    if sel == C.UVMF_LOCAL:
        targets = [vcpu]
    elif sel == C.UVMF_ALL:
        targets = dom.vcpus
    else:
        try:
            mask = vcpu.read_ulong(sel)
        except GuestFault:
            return EFAULT
        targets = [v for v in dom.vcpus if mask >> v.id & 1]
    for v in targets:
        v.cpu.flush_tlb()
    return 0


def update_va_mapping(vcpu: Vcpu, va: int, pte: int, flags: int) -> int:
    dom = vcpu.domain
    if not dom.geo.guest_range_ok(va, 1):
        dom.mm.last_error = f"update_va_mapping: va {va:#x} is in the hypervisor range"
        return EINVAL
    slot = _l1_slot_for(vcpu, va)
    if slot is None:
        dom.mm.last_error = f"update_va_mapping: no L1 table maps va {va:#x}"
        return EINVAL
    l1, idx = slot
    pi = dom.mm.pages.get(l1)
    if pi is None or pi.type != PageType.l1 or not pi.type_count:
        return EINVAL
    try:
        dom.mm.mod_entry(l1, idx, pte)
    except MMError as e:
        return e.errno
    return flush_by_flags(vcpu, flags, va)


def do_update_va_mapping(vcpu: Vcpu, va: int, lo: int, hi: int, flags: int, _unused: int = 0) -> int:
    pte = lo | (hi << 32) if vcpu.domain.pae else lo
    return update_va_mapping(vcpu, va, pte, flags)


def do_update_va_mapping_otherdomain(vcpu: Vcpu, va: int, lo: int, hi: int, flags: int, domid: int) -> int:
    if domid & 0xFFFF not in (C.DOMID_SELF, vcpu.domain.domid):
        return ESRCH
    return do_update_va_mapping(vcpu, va, lo, hi, flags)


def do_update_va_mapping64(vcpu: Vcpu, va: int, pte: int, flags: int, *_: int) -> int:
    """The 64-bit ABI: (va, u64 pte, flags) in three registers."""
    return update_va_mapping(vcpu, va, pte, flags)


def do_update_va_mapping_otherdomain64(vcpu: Vcpu, va: int, pte: int, flags: int, domid: int, *_: int) -> int:
    if domid & 0xFFFF not in (C.DOMID_SELF, vcpu.domain.domid):
        return ESRCH
    return update_va_mapping(vcpu, va, pte, flags)


def _uvmf_name(flags: int) -> str:
    kind = ["NONE", "TLB_FLUSH", "INVLPG", "?"][flags & 3]
    sel = flags & ~3
    return f"{kind}|{'LOCAL' if sel == 0 else 'ALL' if sel == 4 else f'MULTI({sel:#x})'}"


def decode_uvm(geo: HvGeometry, va: int, lo: int, hi: int, flags: int) -> dict[str, Any]:
    if geo.word == 8:
        pte, flags = lo, hi                     # (va, pte, flags)
    else:
        pte = lo | (hi << 32) if geo.mode.pte_size == 8 else lo      # PAE: the PTE in two halves
    return {"va": f"{va:#x}", "pte": f"{pte:#x}", "mfn": f"{geo.mode.pte_mfn(pte):#x}",
            "pte_flags": decode_flags(pte), "flags": _uvmf_name(flags)}


# ---------------------------------------------------------------- mmuext_op
def new_baseptr(vcpu: Vcpu, mfn: int) -> int:
    """MMUEXT_NEW_BASEPTR / mov to CR3 (mm.c new_guest_cr3): switch to a validated top-level
    table; a 64-bit guest's L4 gets the read-only M2P unless VMASST m2p_strict (fill_ro_mpt)."""
    dom = vcpu.domain
    if mfn == vcpu.cr3_mfn:
        vcpu.cpu.set_cr3(vcpu.active_top_mfn)
        return 0
    try:
        dom.mm.get_root(mfn)
    except MMError:
        return EINVAL
    if dom.is_64 and not dom.mm.m2p_strict:
        dom.mm.fill_ro_mpt(mfn)
    old = vcpu.cr3_mfn
    vcpu.cr3_mfn = mfn
    vcpu.cpu.set_cr3(vcpu.active_top_mfn)
    if old:
        dom.mm.put_root(old)
    return 0


def new_user_baseptr(vcpu: Vcpu, mfn: int) -> int:
    """MMUEXT_NEW_USER_BASEPTR (64-bit only): the L4 for user mode; 0 clears it. It must
    validate as a root; with m2p_strict its M2P slot is zapped (zap_ro_mpt)."""
    dom = vcpu.domain
    old = vcpu.user_cr3_mfn
    if old == mfn:
        return 0
    if mfn:
        try:
            dom.mm.get_root(mfn)
        except MMError as e:
            return e.errno
        if dom.mm.m2p_strict:
            dom.mm.zap_ro_mpt(mfn)
    vcpu.user_cr3_mfn = mfn
    if not vcpu.kernel_mode:
        vcpu.cpu.set_cr3(vcpu.active_top_mfn)
    if old:
        dom.mm.put_root(old)
    return 0


def _vcpumask(vcpu: Vcpu, ptr: int) -> list | int:
    try:
        mask = vcpu.read_ulong(ptr)
    except GuestFault:
        return EFAULT
    return [v for v in vcpu.domain.vcpus if mask >> v.id & 1]


def mmuext_one(vcpu: Vcpu, cmd: int, arg1: int, arg2: int) -> int:
    dom = vcpu.domain
    mm = dom.mm
    try:
        if cmd in (MmuextCmd.PIN_L1_TABLE, MmuextCmd.PIN_L2_TABLE, MmuextCmd.PIN_L3_TABLE,
                   MmuextCmd.PIN_L4_TABLE):
            level = cmd - MmuextCmd.PIN_L1_TABLE + 1
            if level > dom.mode.levels:
                # levels the guest's paging does not have are ignored: PIN_L4 for a compat
                # guest on 64-bit Xen, PIN_L3/L4 on non-PAE x86_32 Xen (do_mmuext_op)
                return 0
            mm.pin(arg1, PageType(level))
            return 0
        if cmd == MmuextCmd.UNPIN_TABLE:
            mm.unpin(arg1)
            return 0
        if cmd == MmuextCmd.NEW_BASEPTR:
            return new_baseptr(vcpu, arg1)
        if cmd in (MmuextCmd.TLB_FLUSH_LOCAL, MmuextCmd.INVLPG_LOCAL):
            vcpu.cpu.flush_tlb()
            return 0
        if cmd in (MmuextCmd.TLB_FLUSH_MULTI, MmuextCmd.INVLPG_MULTI):
            # both take the vCPU bitmap in arg2.vcpumask; an unreadable one is -EINVAL (mm.c)
            targets = _vcpumask(vcpu, arg2)
            if isinstance(targets, int):
                return EINVAL
            for v in targets:
                v.cpu.flush_tlb()
            return 0
        if cmd in (MmuextCmd.TLB_FLUSH_ALL, MmuextCmd.INVLPG_ALL):
            for v in dom.vcpus:
                v.cpu.flush_tlb()
            return 0
        if cmd == MmuextCmd.FLUSH_CACHE:
            return EACCES                   # a domU has no cache-flush permission
        if cmd == MmuextCmd.FLUSH_CACHE_GLOBAL:
            # mm.c do_mmuext_op: without cache_flush_permitted() this one is -EINVAL, not -EACCES
            return EINVAL
        if cmd == MmuextCmd.SET_LDT:
            return set_ldt(vcpu, arg1, arg2)
        if cmd == MmuextCmd.NEW_USER_BASEPTR:
            if not dom.is_64:
                return EINVAL               # PV64 only
            return new_user_baseptr(vcpu, arg1)
        if cmd == MmuextCmd.CLEAR_PAGE:
            return _with_writable(vcpu, arg1, lambda: dom.mem.zero_frame(arg1))
        if cmd == MmuextCmd.COPY_PAGE:
            if not mm.is_owned(arg2):
                return EINVAL
            pi = mm.page(arg2)
            if pi.type_count and pi.type != PageType.writable and pi.type != PageType.none:
                pass   # reading any owned frame is allowed
            return _with_writable(vcpu, arg1, lambda: dom.mem.write(arg1 << 12, bytes(dom.mem.frame(arg2))))
        if cmd in (MmuextCmd.MARK_SUPER, MmuextCmd.UNMARK_SUPER):
            return EOPNOTSUPP
    except MMError as e:
        return e.errno
    return dom.unimplemented(f"mmuext_op command {cmd}")


def _with_writable(vcpu: Vcpu, mfn: int, fn) -> int:
    mm = vcpu.domain.mm
    if not mm.is_owned(mfn):
        return EINVAL
    try:
        mm.get_page_type(mfn, PageType.writable)
    except MMError as e:
        return e.errno
    try:
        fn()
    finally:
        mm.put_page_type(mfn)
    return 0


def set_ldt(vcpu: Vcpu, base: int, ents: int) -> int:
    """MMUEXT_SET_LDT (mm.c): the base counts only with entries; it must be page aligned and
    __addr_ok (for a 64-bit guest: outside the hypervisor hole; any 32-bit address is), at most
    8192 entries, else -EINVAL. A new LDT drops the old one's shadow mappings (pv_destroy_ldt)
    and loads the LDTR (load_LDT) with the vcpu's LDT shadow in Xen's area, whose pages are
    mapped on first use (ldt.py), and the limit of `ents` descriptors; no LDT, no LDT selector
    resolves."""
    dom = vcpu.domain
    ptr = base if ents else 0
    if ptr & 0xFFF or ents > 8192 or (vcpu.word == 8 and not dom.geo.guest_range_ok(ptr, 1)):
        return EINVAL
    if (vcpu.ldt_base, vcpu.ldt_ents) == (ptr, ents):
        return 0
    destroy_ldt(vcpu)
    vcpu.ldt_base, vcpu.ldt_ents = ptr, ents
    if not ents:
        vcpu.cpu.uc.reg_write(X.UC_X86_REG_LDTR, (0, 0, 0, 0))
    else:
        vcpu.cpu.uc.reg_write(X.UC_X86_REG_LDTR, (0, dom.xen.ldt_va(vcpu.id), ents * 8 - 1, 0x8200))
    vcpu.cpu.flush_tlb()
    return 0


def destroy_ldt(vcpu: Vcpu) -> None:
    """pv_destroy_ldt: unmap the LDT shadow's pages, dropping their page and type references."""
    mm = vcpu.domain.mm
    for page, mfn in enumerate(vcpu.ldt_mapped):
        if mfn is None:
            continue
        vcpu.domain.xen.map_ldt_page(vcpu.id, page, None)
        vcpu.ldt_mapped[page] = None
        mm.put_page_type(mfn)
        mm.put_page(mfn)
    vcpu.cpu.flush_tlb()


def do_mmuext_op(vcpu: Vcpu, ops: int, count: int, done_ptr: int, foreigndom: int, *_: int) -> int:
    if vcpu.in_multicall and count & MMU_UPDATE_PREEMPTED:
        return EINVAL
    done = _resumed_done(vcpu, count, done_ptr)
    count &= ~MMU_UPDATE_PREEMPTED
    if not _foreigndom_ok(foreigndom):
        return ESRCH
    L = vcpu.domain.abi.mmuext_op
    size = L.size()
    rc = 0
    for i in range(count):
        if i == PREEMPT_BATCH and not vcpu.in_multicall:
            _write_done(vcpu, done_ptr, done)
            return create_continuation(vcpu, ops + i * size, (count - i) | MMU_UPDATE_PREEMPTED, done_ptr,
                                       foreigndom)
        try:
            op = L.parse(vcpu.read_virt(ops + i * size, size))
        except GuestFault:
            rc = EFAULT
            break
        rc = mmuext_one(vcpu, op.cmd, op.arg1, op.arg2)
        if rc:
            break
        done += 1
    _write_done(vcpu, done_ptr, done)
    return rc


def decode_mmuext(vcpu: Vcpu, ops: int, count: int, done: int, fd: int) -> dict[str, Any]:
    L = vcpu.domain.abi.mmuext_op
    size = L.size()
    n = count & ~MMU_UPDATE_PREEMPTED
    items = []
    for i in range(min(n, 64)):
        try:
            op = L.parse(vcpu.read_virt(ops + i * size, size))
        except GuestFault:
            items.append({"unreadable": f"{ops + i * size:#x}"})
            break
        try:
            name = MmuextCmd(op.cmd).name
        except ValueError:
            name = str(op.cmd)
        items.append({"cmd": name, "arg1": f"{op.arg1:#x}", "arg2": f"{op.arg2:#x}"})
    return {"ops": f"{ops:#x}", "count": n, "done": f"{done:#x}", "foreigndom": f"{fd:#x}", "op": items}


def decode_update_va_mapping(geo: HvGeometry, va: int, lo: int, hi: int, fl: int, *_: int) -> Any:
    return decode_uvm(geo, va, lo, hi, fl)


def decode_update_va_mapping_otherdomain(geo: HvGeometry, va: int, lo: int, hi: int, fl: int, domid: int,
                                         *_: int) -> Any:
    """(va, pte, flags, domid) on the 64-bit ABI, (va, lo, hi, flags, domid) on the compat one."""
    if geo.word == 8:
        out, dom = decode_uvm(geo, va, lo, hi, fl), fl
    else:
        out, dom = decode_uvm(geo, va, lo, hi, fl), domid
    dom &= 0xFFFF
    out["domid"] = "DOMID_SELF" if dom == C.DOMID_SELF else str(dom)
    return out


def decode_mmuext_op(vcpu: Vcpu, ops: int, count: int, done: int, fd: int) -> Any:
    return decode_mmuext(vcpu, ops, count, done, fd)
