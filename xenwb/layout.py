"""The start-of-day virtual layout of a PV domU, computed as Xen's domain builder does.

Source: tools/libs/guest/xg_dom_core.c (xc_dom_build_image, xc_dom_alloc_segment,
virt_alloc_end) and xg_dom_x86.c (alloc_pgtables_pv, count_pgtables, setup_pgtables_pv,
alloc_p2m_list_x86_64, L1..L4 protections). Every element of the boot mapping is
page-aligned and VA = virt_base + pfn * 4096; a 64-bit guest's p2m list with
XEN_ELFNOTE_INIT_P2M and its ramdisk with MOD_START_PFN lie past that mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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

    levels: int          # 2 (non-PAE), 3 (PAE) or 4 (x86_64)
    l3: int
    l2: int
    l1: int
    l4: int = 0

    @property
    def total(self) -> int:
        return self.l4 + self.l3 + self.l2 + self.l1


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
    mappings: list[Mapping] = field(default_factory=list)   # 64-bit: the builder's mappings
    p2m_pfn: int | None = None    # INIT_P2M: the p2m list's first pfn (outside the boot mapping)
    module_pfn: int | None = None  # MOD_START_PFN: the unmapped ramdisk's first pfn

    def pfn(self, va: int) -> int:
        if self.p2m_pfn is not None and self.p2m.va <= va < self.p2m.end:
            return self.p2m_pfn + (va - self.p2m.va) // PAGE_SIZE
        return (va - self.virt_base) // PAGE_SIZE

    @property
    def regions(self) -> list[Region]:
        rs = [self.kernel]
        if self.module and self.module_pfn is None:
            rs.append(self.module)
        if self.p2m_pfn is None:
            rs.append(self.p2m)
        return rs + [self.start_info, self.xenstore, self.console, self.pagetables, self.stack]

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


# ---------------------------------------------------------------- x86_64
VIRT_MASK64 = (1 << 48) - 1       # bits_to_mask(VIRT_BITS_X86_64)
LEVELS64 = 4


@dataclass
class Level:
    """The tables of one level a mapping needs: they map [frm, to] and sit at pfn.. pfn+count-1."""

    frm: int
    to: int
    pfn: int
    count: int


@dataclass
class Mapping:
    """One mapping of the builder (xc_dom_x86_mapping): a VA range mapped to consecutive pfns
    from `pfn`, and its tables per level (lvls[0] = the L1s ... lvls[3] = the L4)."""

    frm: int
    to: int
    pfn: int
    lvls: list[Level]
    pgtables: int

    @property
    def table_pfns(self) -> range:
        top = self.lvls[LEVELS64 - 1].pfn
        return range(top, top + self.pgtables)


def count_pgtables(maps: list[Mapping], frm: int, to: int, pfn_alloc_end: int) -> Mapping:
    """xg_dom_x86.c count_pgtables: the tables a new mapping of [frm, to] needs at each level,
    top level first, given the mappings that exist (a level range already covered needs none;
    the L4 belongs to the first mapping)."""
    m = Mapping(frm & VIRT_MASK64, to & VIRT_MASK64, 0, [Level(0, 0, 0, 0)] * LEVELS64, 0)
    lvls = [Level(0, 0, 0, 0) for _ in range(LEVELS64)]
    for lv in range(LEVELS64 - 1, -1, -1):
        pfn = pfn_alloc_end + m.pgtables
        if lv == LEVELS64 - 1:
            if not maps:
                lvls[lv] = Level(0, VIRT_MASK64, pfn, 1)
                m.pgtables += 1
            else:
                lvls[lv] = Level(0, 0, pfn, 0)
            continue
        bits = 12 + (lv + 1) * 9
        mask = (1 << bits) - 1
        f, t = m.frm & ~mask, m.to | mask
        for other in maps:
            o = other.lvls[lv]
            if o.frm == o.to:
                continue
            if f >= o.frm and t <= o.to:
                f = t = 0
                break
            if o.frm <= f <= o.to:
                f = o.to + 1
            if o.frm <= t <= o.to:
                t = o.frm - 1
        count = ((t - f) >> bits) + 1 if f < t else 0
        lvls[lv] = Level(f, t, pfn, count)
        m.pgtables += count
    m.lvls = lvls
    return m


def compute_layout64(image: GuestImage, nr_pages: int, module_size: int = 0) -> BootLayout:
    """xc_dom_build_image for x86_64: kernel, [ramdisk], [p2m], start_info, xenstore,
    console, the tables (L4, L3s, L2s, L1s), the boot stack; the mapping padded to a 4 MiB
    boundary; then the unmapped ramdisk (MOD_START_PFN) and the p2m list at INIT_P2M with
    its own L3/L2/L1 tables (alloc_p2m_list_x86_64)."""
    vbase = image.virt_base
    cursor = vbase

    def alloc(name: str, size: int) -> Region:
        nonlocal cursor
        r = Region(name, cursor, round_up(max(size, 1), PAGE_SIZE))
        cursor = r.end
        return r

    kernel = Region("kernel", image.kernel_start, round_up(image.kernel_end, PAGE_SIZE) - image.kernel_start)
    cursor = kernel.end
    unmapped_module = bool(module_size and image.mod_start_pfn)
    module = alloc("module", module_size) if module_size and not unmapped_module else None
    p2m_size = round_up(nr_pages * 8, PAGE_SIZE)
    p2m_base = image.init_p2m
    if p2m_base is not None and (p2m_base >= vbase or p2m_base & (PAGE_SIZE - 1)):
        p2m_base = None                   # xc_dom_build_image: only below virt_base, page-aligned
    p2m = alloc("p2m", p2m_size) if p2m_base is None else None
    start_info = alloc("start_info", PAGE_SIZE)
    xenstore = alloc("xenstore", PAGE_SIZE)
    console = alloc("console", PAGE_SIZE)
    virt_alloc_end = cursor
    extra = 1 + (512 * 1024) // PAGE_SIZE          # the boot stack and 512 KiB of padding
    pages = extra
    while True:
        try_end = (virt_alloc_end + pages * PAGE_SIZE) | (4 * MB - 1)
        first = count_pgtables([], vbase, try_end, (virt_alloc_end - vbase) // PAGE_SIZE)
        pages = first.pgtables + extra
        if virt_alloc_end + pages * PAGE_SIZE <= try_end + 1:
            break
    first.pfn = 0
    virt_end = try_end + 1
    pagetables = alloc("pagetables", first.pgtables * PAGE_SIZE)
    stack = alloc("stack", PAGE_SIZE)
    next_pfn = (virt_end - vbase) // PAGE_SIZE    # xc_dom_alloc_pad: the mapping is populated
    module_pfn = None
    if unmapped_module:
        module_pfn = next_pfn
        module = Region("module", 0, round_up(module_size, PAGE_SIZE))
        next_pfn += module.pages
    maps = [first]
    p2m_pfn = None
    if p2m_base is not None:
        second = count_pgtables(maps, p2m_base, p2m_base + p2m_size - 1, next_pfn)
        second.pfn = next_pfn
        for lv in second.lvls:
            lv.pfn += p2m_size // PAGE_SIZE
        maps.append(second)
        p2m = Region("p2m", p2m_base, p2m_size)
        p2m_pfn = next_pfn
    t = first.lvls
    span = PagetableSpan(4, t[2].count, t[1].count, t[0].count, t[3].count)
    assert p2m is not None
    return BootLayout(vbase, nr_pages, True, kernel, module, p2m, start_info, xenstore, console, pagetables,
                      stack, virt_end, span, maps, p2m_pfn, module_pfn)


def layout_for(image: GuestImage, nr_pages: int, module_size: int = 0) -> BootLayout:
    """The start-of-day layout for the guest's width."""
    if image.elfclass == 64:
        return compute_layout64(image, nr_pages, module_size)
    return compute_layout(image, nr_pages, module_size)


def page_count(layout: BootLayout) -> int:
    """Pages the builder populates: the boot mapping, the unmapped ramdisk, the INIT_P2M list
    and its tables."""
    n = layout.mapped_pages
    if layout.module_pfn is not None and layout.module:
        n += layout.module.pages
    if layout.p2m_pfn is not None:
        n += layout.p2m.pages + layout.mappings[1].pgtables
    return n
