"""x86 paging as Xen PV guests use it: 2-level (non-PAE), 3-level PAE and 4-level long mode.

One walker serves the hypervisor (copy to/from guest), the gdb stub and the
pagetable plugin (walk: one address; mappings: the whole address space). It reads the
live tables in machine memory, as the CPU does: a PSE entry of a PAE or 4-level L2 is a
2 MiB page, of a 4-level L3 a 1 GiB page (Intel SDM vol. 3 4.4.2, 4.5.4; Xen refuses
both in a PV guest's tables, mm.c L2_DISALLOW_MASK / l3_disallow_mask, so only tables
Xen never validated have them); a non-PAE L2's PSE is followed as a table (Xen's PV
guests run with CR4.PSE clear).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from xenwb.abi import constants as C
from xenwb.hypervisor.memory import MachineMemory

FLAG_NAMES = [
    (C._PAGE_PRESENT, "P"), (C._PAGE_RW, "RW"), (C._PAGE_USER, "US"), (C._PAGE_PWT, "PWT"),
    (C._PAGE_PCD, "PCD"), (C._PAGE_ACCESSED, "A"), (C._PAGE_DIRTY, "D"), (C._PAGE_PSE, "PSE"),
    (C._PAGE_GLOBAL, "G"),
]


def decode_flags(pte: int, level: int = 0) -> list[str]:
    """The flag names of an entry; in an L1 entry bit 7 is PAT, not PSE (SDM vol. 3 4.5)."""
    return list(_flag_names(pte & _FLAG_BITS, level == 1))


_FLAG_BITS = 0xFFF | C._PAGE_NX        # what decode_flags reads of an entry


@functools.lru_cache(maxsize=1024)
def _flag_names(pte: int, l1: bool) -> tuple[str, ...]:
    names = [n for bit, n in FLAG_NAMES if pte & bit]
    if l1 and pte & C._PAGE_PSE:
        names[names.index("PSE")] = "PAT"
    avail = (pte >> 9) & 7
    if avail:
        names.append(f"AVL{avail}")
    if pte & C._PAGE_NX:
        names.append("NX")
    return tuple(names)


@dataclass(frozen=True)
class PagingMode:
    """Geometry of one paging mode."""

    name: str
    levels: int          # 2, 3 or 4
    pte_size: int        # 4 or 8
    entries: int         # per table page
    shifts: tuple[int, ...]  # VA shift per level, top first
    mfn_mask: int        # bits of a PTE that hold the frame address

    def index(self, va: int, level: int) -> int:
        """Index into the level-`level` table (levels numbered from 1 = L1)."""
        shift = self.shifts[self.levels - level]
        width = 2 if (self.levels == 3 and level == 3) else (self.entries.bit_length() - 1)
        return (va >> shift) & ((1 << width) - 1)

    def pte_mfn(self, pte: int) -> int:
        return (pte & self.mfn_mask) >> 12

    def level_span(self, level: int) -> int:
        """Bytes of VA one entry of a level-`level` table maps."""
        return 1 << self.shifts[self.levels - level]

    def is_superpage(self, level: int, pte: int) -> bool:
        """A present entry the CPU takes as a large page rather than a table: PSE in a
        PAE/4-level L2 (2 MiB) or a 4-level L3 (1 GiB)."""
        if not pte & C._PAGE_PSE or self.pte_size != 8:
            return False
        return level == 2 or (level == 3 and self.levels == 4)

    def canonical_va(self, va: int) -> int:
        """Bit 47 copied into bits 63..48 (4-level); other modes are 32-bit already."""
        if self.levels == 4 and va >> 47 & 1:
            return va | ~((1 << 48) - 1) & ((1 << 64) - 1)
        return va


NONPAE = PagingMode("non-PAE", 2, 4, 1024, (22, 12), 0xFFFFF000)
PAE = PagingMode("PAE", 3, 8, 512, (30, 21, 12), 0x000FFFFFFFFFF000)
LONG = PagingMode("4-level", 4, 8, 512, (39, 30, 21, 12), 0x000FFFFFFFFFF000)


def canonical(va: int) -> bool:
    """A 48-bit canonical address: bits 63..47 all equal (x86_64 is_canonical_address)."""
    return (va >> 47) in (0, 0x1FFFF)


def cr3_to_mfn(cr3: int, mode: PagingMode) -> int:
    """The top-level table's frame from a CR3 value (PAE L3 is 32-byte aligned)."""
    if mode is LONG:
        return (cr3 & LONG.mfn_mask) >> 12
    return (cr3 & 0xFFFFF000) >> 12


@dataclass
class WalkStep:
    level: int
    table_mfn: int
    index: int
    entry_maddr: int
    pte: int

    @property
    def present(self) -> bool:
        return bool(self.pte & C._PAGE_PRESENT)

    @property
    def flags(self) -> list[str]:
        return decode_flags(self.pte, self.level)


@dataclass
class Walk:
    va: int
    steps: list[WalkStep] = field(default_factory=list)
    mfn: int | None = None         # final frame, when mapped (the 4 KiB frame holding va)
    maddr: int | None = None
    writable: bool = False
    user: bool = False
    nx: bool = False
    page_size: int = 4096          # 2 MiB / 1 GiB when a superpage entry ended the walk

    @property
    def mapped(self) -> bool:
        return self.mfn is not None


def read_pte(mem: MachineMemory, mode: PagingMode, maddr: int) -> int:
    return mem.read_u64(maddr) if mode.pte_size == 8 else mem.read_u32(maddr)


def walk(mem: MachineMemory, mode: PagingMode, top_mfn: int, va: int) -> Walk:
    """Translate va through the tables rooted at top_mfn, recording every level."""
    w = Walk(va)
    table = top_mfn
    writable = user = True
    nx = False
    for level in range(mode.levels, 0, -1):
        idx = mode.index(va, level)
        maddr = (table << 12) + idx * mode.pte_size
        if not mem.valid(maddr, mode.pte_size):
            return w
        pte = read_pte(mem, mode, maddr)
        w.steps.append(WalkStep(level, table, idx, maddr, pte))
        if not pte & C._PAGE_PRESENT:
            return w
        if not (mode.levels == 3 and level == 3):   # PAE PDPTEs carry no RW/US
            writable &= bool(pte & C._PAGE_RW)
            user &= bool(pte & C._PAGE_USER)
        nx |= bool(pte & C._PAGE_NX) if mode.pte_size == 8 else False
        if mode.is_superpage(level, pte):
            size = mode.level_span(level)
            base = pte & mode.mfn_mask & ~(size - 1)
            w.page_size = size
            w.maddr = base | (va & (size - 1))
            w.mfn = w.maddr >> 12
            w.writable, w.user, w.nx = writable, user, nx
            return w
        table = mode.pte_mfn(pte)
    w.mfn = table
    w.maddr = (table << 12) | (va & 0xFFF)
    w.writable, w.user, w.nx = writable, user, nx
    return w


def translate(mem: MachineMemory, mode: PagingMode, top_mfn: int, va: int, write: bool = False) -> int | None:
    """Machine address of va, or None when unmapped (or read-only, for a write)."""
    table = top_mfn
    for level in range(mode.levels, 0, -1):
        maddr = (table << 12) + mode.index(va, level) * mode.pte_size
        if not mem.valid(maddr, mode.pte_size):
            return None
        pte = read_pte(mem, mode, maddr)
        if not pte & 1:
            return None
        if write and not pte & 2 and not (level == 3 and mode.levels == 3):
            return None
        if mode.is_superpage(level, pte):
            size = mode.level_span(level)
            return (pte & mode.mfn_mask & ~(size - 1)) | (va & (size - 1))
        table = mode.pte_mfn(pte)
    return (table << 12) | (va & 0xFFF)


class Mapping(NamedTuple):
    """One present 4 KiB leaf mapping, with the access the whole walk grants."""

    va: int                   # canonical (sign-extended on 4-level)
    entry_maddr: int          # the leaf entry's machine address
    pte: int
    mfn: int                  # the (first) frame mapped
    writable: bool
    user: bool
    nx: bool
    size = 4096               # class attributes, not fields: bytes mapped and the leaf's level
    level = 1


class Mapping2M(Mapping):
    """A 2 MiB page: a PSE entry of a PAE or 4-level L2."""

    __slots__ = ()
    size = 1 << 21
    level = 2


class Mapping1G(Mapping):
    """A 1 GiB page: a PSE entry of a 4-level L3."""

    __slots__ = ()
    size = 1 << 30
    level = 3


LARGE_MAPPINGS = {2: Mapping2M, 3: Mapping1G}


# on_table(level, mfn, va, entry_maddr): a table the traversal is about to read (the root
# with entry_maddr None); returning False skips it and everything under it.
TableVisitor = Callable[[int, int, int, "int | None"], bool]


def mappings(mem: MachineMemory, mode: PagingMode, top_mfn: int,
             on_table: TableVisitor | None = None) -> Iterator[Mapping]:
    """Every present leaf mapping of the tables rooted at top_mfn, in VA order: the walk
    above done for the whole address space at once (a superpage entry is one Mapping of
    its size; a table outside machine memory is skipped)."""
    fmt = "<Q" if mode.pte_size == 8 else "<I"
    size, levels, mask = mode.pte_size, mode.levels, mode.mfn_mask
    P, RW, US, NX = C._PAGE_PRESENT, C._PAGE_RW, C._PAGE_USER, C._PAGE_NX
    has_nx = size == 8

    def entries(mfn: int, level: int) -> Iterator[tuple[int, tuple[int]]]:
        n = 4 if levels == 3 and level == 3 else mode.entries
        return enumerate(struct.iter_unpack(fmt, mem.frame(mfn)[: n * size]))

    if not mem.valid(top_mfn << 12) or (on_table is not None and not on_table(levels, top_mfn, 0, None)):
        return
    # depth first in VA order, one frame per table on an explicit stack (a leaf is yielded
    # from here, not through a generator per level)
    stack = [(entries(top_mfn, levels), levels, 0, True, True, False, top_mfn)]
    while stack:
        it, level, va0, rw, us, nx, mfn = stack[-1]
        pae_l3 = levels == 3 and level == 3
        span = mode.level_span(level)
        for i, (pte,) in it:
            if not pte & P:
                continue
            e_rw, e_us = (rw, us) if pae_l3 else (rw and bool(pte & RW), us and bool(pte & US))
            e_nx = nx or (has_nx and bool(pte & NX))
            va = va0 + i * span
            if level == 1:
                yield Mapping(mode.canonical_va(va), (mfn << 12) + i * size, pte, (pte & mask) >> 12, e_rw, e_us, e_nx)
            elif mode.is_superpage(level, pte):
                yield LARGE_MAPPINGS[level](mode.canonical_va(va), (mfn << 12) + i * size, pte,
                                            (pte & mask & ~(span - 1)) >> 12, e_rw, e_us, e_nx)
            else:
                child = (pte & mask) >> 12
                if not mem.valid(child << 12):
                    continue
                if on_table is not None and not on_table(level - 1, child, mode.canonical_va(va),
                                                         (mfn << 12) + i * size):
                    continue
                stack.append((entries(child, level - 1), level - 1, va, e_rw, e_us, e_nx, child))
                break
        else:
            stack.pop()
