"""Page types, reference counts and pagetable validation, after xen/arch/x86/mm.c.

Each frame has one type at a time (none, L1, L2, L3, seg_desc, writable) and a
type count; the type can only change while the count is 0. Taking a pagetable
type validates the whole page (alloc_lN_table); dropping the last type
reference releases what the page referenced (free_lN_table). A writable L1
mapping holds a `writable` type reference, so a pagetable or GDT frame can
never be mapped writable and a frame mapped writable cannot become one.
Errors are Xen's: bad flags, foreign or wrongly typed frames give -EINVAL,
writes into Xen's slots -EPERM, frames that are not RAM (MMIO) -EPERM.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno
from xenwb.hypervisor.memory import MachineMemory
from xenwb.hypervisor.paging import NONPAE, PagingMode, read_pte
from xenwb.hypervisor.xenarea import HvGeometry, XenArea

EINVAL, EPERM, EBUSY = -Errno.EINVAL, -Errno.EPERM, -Errno.EBUSY
# High PTE bits (52-63) Xen leaves to software: x86_64/page.h BASE_DISALLOW_MASK
# (0xFF800198 & ~_PAGE_NX, in get_pte_flags() form) allows bits 52-62 in L1/L2;
# L1_DISALLOW_MASK adds _PAGE_GNTTAB (bit 62); COMPAT_L3_DISALLOW_MASK (0xFFFFF198)
# refuses every high bit of a PV32 L3 entry, NX included.
HIGH_ALLOWED = {"L1": 0x3FF << 52, "L2": 0x7FF << 52, "L3": 0}


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
    pae_xen_l2: bool = False       # the L2 under a PAE L3's slot 3 (holds Xen's slots)
    referrers: set[int] = field(default_factory=set)   # tables (mfn) that reference this frame


# Allowed PTE flags (mm.c: BASE_DISALLOW_MASK = 0xFFFFF198 minus NX; L1 may use G;
# PWT/PCD/PAT need I/O privileges a domU does not have; PSE is never allowed).
_BASE_ALLOWED = (C._PAGE_PRESENT | C._PAGE_RW | C._PAGE_USER | C._PAGE_ACCESSED | C._PAGE_DIRTY
                 | C._PAGE_AVAIL)
L1_ALLOWED = _BASE_ALLOWED | C._PAGE_GLOBAL
L2_ALLOWED = _BASE_ALLOWED
L3_ALLOWED_PAE = _BASE_ALLOWED   # compat L3: P, RW, US, A, D, AVAIL


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
        self.nx_ok = self.mode.pte_size == 8
        self.last_error = ""

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
            pi.validated = False
            self._release(mfn, pi.type)
            pi.pae_xen_l2 = False

    # -- whole-table validation (alloc_lN_table / free_lN_table) ---------------------
    def _entries(self, mfn: int) -> list[int]:
        n, sz = self.mode.entries, self.mode.pte_size
        frame = self.mem.frame(mfn)
        fmt = "<Q" if sz == 8 else "<I"
        import struct
        return [v for (v,) in struct.iter_unpack(fmt, frame[: n * sz])]

    def _write_entry(self, mfn: int, idx: int, pte: int) -> None:
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

    def _validate(self, mfn: int, t: PageType) -> None:
        if t == PageType.seg_desc:
            return  # descriptor checks are done by the descriptor-table code
        entries = self._entries(mfn)
        done: list[int] = []
        pi = self.page(mfn)
        try:
            for idx, pte in enumerate(entries):
                if t == PageType.l1:
                    self.get_page_from_l1e(pte, mfn)
                elif t == PageType.l2:
                    if not self.is_guest_l2_slot(pi, idx):
                        continue
                    self.get_page_from_l2e(pte, mfn)
                elif t == PageType.l3:
                    if idx >= 4:
                        continue
                    self.get_page_from_l3e(pte, mfn, idx)
                done.append(idx)
        except MMError as e:
            for idx in done:
                self._put_entry(t, entries[idx], mfn)
            raise self._fail(e.errno, f"{t.name} table mfn {mfn:#x} entry {idx}: {e.why}") from None
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
            if t == PageType.l2 and not self.is_guest_l2_slot(pi, idx):
                continue
            if t == PageType.l3 and idx >= 4:
                continue
            self._put_entry(t, pte, mfn)

    def _put_entry(self, t: PageType, pte: int, table: int) -> None:
        if t == PageType.l1:
            self.put_page_from_l1e(pte, table)
        elif t == PageType.l2:
            self.put_page_from_l2e(pte, table)
        elif t == PageType.l3:
            self.put_page_from_l3e(pte, table)

    # -- per-entry references ---------------------------------------------------------
    def _check_flags(self, pte: int, allowed: int, level: str) -> None:
        flags = pte & 0xFFF
        bad = flags & ~allowed
        if self.mode.pte_size == 8:
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
        mfn = self.mode.pte_mfn(pte)
        self.get_page(mfn)
        pi = self.page(mfn)
        if (mfn == table or (pi.type == PageType.l2 and pi.type_count)) and not pte & C._PAGE_RW:
            # linear (self-map) entry: read-only, to a validated L2 (pv-linear-pt)
            pi.referrers.add(table)
            return
        try:
            self.get_page_type(mfn, PageType.l1)
        except MMError:
            self.put_page(mfn)
            raise
        pi.referrers.add(table)

    def put_page_from_l2e(self, pte: int, table: int) -> None:
        if not pte & C._PAGE_PRESENT:
            return
        mfn = self.mode.pte_mfn(pte)
        pi = self.page(mfn)
        if not (pi.type == PageType.l2 or mfn == table):
            self.put_page_type(mfn)
        self.put_page(mfn)
        pi.referrers.discard(table)

    def get_page_from_l3e(self, pte: int, table: int, slot: int) -> None:
        if not pte & C._PAGE_PRESENT:
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
        if not pte & C._PAGE_PRESENT:
            return
        mfn = self.mode.pte_mfn(pte)
        self.put_page_type(mfn)
        self.put_page(mfn)
        self.page(mfn).referrers.discard(table)

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
            if idx >= 3:
                raise self._fail(EINVAL, f"L3 slot {idx} of a PAE guest cannot be changed")
            self.get_page_from_l3e(new, table, idx)
            self._write_entry(table, idx, new)
            self.put_page_from_l3e(old, table)
        else:
            raise self._fail(EINVAL, f"mfn {table:#x} is not a pagetable")
        return t

    # -- pinning and roots -------------------------------------------------------------
    def top_type(self) -> PageType:
        return PageType.l3 if self.mode.levels == 3 else PageType.l2

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
