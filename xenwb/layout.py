"""The start-of-day virtual layout of a PV domU, computed as Xen's domain builder does.

Source: tools/libs/guest/xg_dom_core.c (xc_dom_alloc_segment, virt_alloc_end) and
xg_dom_x86.c (alloc_pgtables_pv, count_pgtables, L1/L2/L3 protections).
Every element is page-aligned and VA = virt_base + pfn * 4096.
"""

from __future__ import annotations

from dataclasses import dataclass

from xenwb.abi.constants import PAGE_SIZE
from xenwb.loader import GuestImage

MB = 1 << 20


def round_up(v: int, align: int) -> int:
    return (v + align - 1) & ~(align - 1)


@dataclass(frozen=True)
class Region:
    name: str
    va: int
    size: int   # bytes, a multiple of the page size

    @property
    def end(self) -> int:
        return self.va + self.size

    @property
    def pages(self) -> int:
        return self.size // PAGE_SIZE


@dataclass(frozen=True)
class PagetableSpan:
    """How many tables of each level map [virt_base, virt_end)."""

    levels: int          # 2 (non-PAE) or 3 (PAE)
    l3: int
    l2: int
    l1: int

    @property
    def total(self) -> int:
        return self.l3 + self.l2 + self.l1


@dataclass(frozen=True)
class BootLayout:
    virt_base: int
    nr_pages: int
    pae: bool
    kernel: Region
    module: Region | None
    p2m: Region
    start_info: Region
    xenstore: Region
    console: Region
    pagetables: Region
    stack: Region
    virt_end: int                 # end of the boot mapping (virt_pgtab_end)
    tables: PagetableSpan

    def pfn(self, va: int) -> int:
        return (va - self.virt_base) // PAGE_SIZE

    @property
    def regions(self) -> list[Region]:
        rs = [self.kernel]
        if self.module:
            rs.append(self.module)
        return rs + [self.p2m, self.start_info, self.xenstore, self.console, self.pagetables, self.stack]

    @property
    def mapped_pages(self) -> int:
        return (self.virt_end - self.virt_base) // PAGE_SIZE

    @property
    def stack_top(self) -> int:
        return self.stack.end


def count_tables(virt_base: int, virt_end: int, pae: bool) -> PagetableSpan:
    """Tables needed to map [virt_base, virt_end) (xg_dom_x86.c count_pgtables).

    PAE: one L3, one L2 per GiB from the first mapped GiB up to and including
    the top GiB (L3 slot 3 must always hold an L2), one L1 per 2 MiB.
    Non-PAE: one L2, one L1 per 4 MiB.
    """
    if pae:
        l2 = 4 - (virt_base >> 30)
        l1 = (round_up(virt_end, 2 * MB) - (virt_base & ~(2 * MB - 1))) // (2 * MB)
        return PagetableSpan(3, 1, l2, l1)
    l1 = (round_up(virt_end, 4 * MB) - (virt_base & ~(4 * MB - 1))) // (4 * MB)
    return PagetableSpan(2, 0, 1, l1)


def compute_layout(image: GuestImage, nr_pages: int, module_size: int = 0) -> BootLayout:
    """Place kernel, module, p2m, start_info, xenstore, console, tables and stack."""
    vbase = image.virt_base
    pae = image.is_pae
    cursor = vbase

    def alloc(name: str, size: int) -> Region:
        nonlocal cursor
        r = Region(name, cursor, round_up(max(size, 1), PAGE_SIZE))
        cursor = r.end
        return r

    # kernel: from virt_base (padding up to the kernel start is part of it) to the end of its image
    kernel = Region("kernel", image.kernel_start, round_up(image.kernel_end, PAGE_SIZE) - image.kernel_start)
    cursor = kernel.end
    module = alloc("module", module_size) if module_size else None
    p2m = alloc("p2m", nr_pages * 4)
    start_info = alloc("start_info", PAGE_SIZE)
    xenstore = alloc("xenstore", PAGE_SIZE)
    console = alloc("console", PAGE_SIZE)
    virt_alloc_end = cursor

    # Solve for the table count: the tables must map the whole region, themselves included,
    # plus the stack page and 512 KiB of slack, rounded up to 4 MiB.
    extra = 1 + (512 * 1024) // PAGE_SIZE
    pages = extra
    while True:
        virt_end = round_up(virt_alloc_end + pages * PAGE_SIZE, 4 * MB)
        span = count_tables(vbase, virt_end, pae)
        if span.total + extra <= pages:
            break
        pages += 1
    pagetables = alloc("pagetables", span.total * PAGE_SIZE)
    stack = alloc("stack", PAGE_SIZE)
    return BootLayout(vbase, nr_pages, pae, kernel, module, p2m, start_info, xenstore, console,
                      pagetables, stack, virt_end, span)
