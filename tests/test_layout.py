"""xenwb.layout.compute_layout: the start-of-day virtual layout of a PV32 domU.

Rules (ABI sheet section 1.3, tools/libs/guest/xg_dom_core.c + xg_dom_x86.c): every element is
page-aligned and they follow each other in the order kernel, module, p2m, start_info, xenstore,
console, page tables, stack; the boot mapping ends on a 4 MiB boundary at least 512 KiB after the
stack; the page tables are exactly the ones needed to map [virt_base, virt_end), themselves
included. The table count is recomputed here independently:
  non-PAE: 1 L2 + one L1 per 4 MiB;
  PAE:     1 L3 + one L2 per GiB from virt_base's GiB up to GiB 3 (L3 slot 3 always holds an L2)
           + one L1 per 2 MiB.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import build_kernel, have_tool, num_note, str_note, sym_note

from xenwb.layout import compute_layout, count_tables
from xenwb.loader import GuestImage, Segment, load_guest

PAGE = 4096
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
ORDER = ["kernel", "module", "p2m", "start_info", "xenstore", "console", "pagetables", "stack"]


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def needed_tables(virt_base: int, virt_end: int, pae: bool) -> tuple[int, int, int]:
    """(L3, L2, L1) page-table pages that map [virt_base, virt_end)."""
    if pae:
        return 1, 4 - virt_base // GiB, ceil_div(virt_end, 2 * MiB) - virt_base // (2 * MiB)
    return 0, 1, ceil_div(virt_end, 4 * MiB) - virt_base // (4 * MiB)


def image(*, virt_base: int, kernel_start: int, kernel_size: int, pae: bool) -> GuestImage:
    """A synthetic 32-bit image: one PT_LOAD of kernel_size bytes at kernel_start (PADDR_OFFSET 0)."""
    seg = Segment(paddr=kernel_start - virt_base, vaddr=kernel_start, data=b"\x90" * min(kernel_size, 64),
                  memsz=kernel_size, flags=5)
    return GuestImage(path=Path("synthetic"), elfclass=32, machine="EM_386", elf_entry=kernel_start,
                      segments=[seg], notes=[], notes_source="PT_NOTE", virt_base=virt_base, paddr_offset=0,
                      entry=kernel_start, pae_mode="extended-cr3" if pae else "no")


def check_layout(img: GuestImage, nr_pages: int, module_size: int) -> None:
    lay = compute_layout(img, nr_pages, module_size)
    pae = img.is_pae
    vbase = img.virt_base
    assert lay.virt_base == vbase and lay.nr_pages == nr_pages and lay.pae == pae

    # order, alignment, contiguity
    regions = lay.regions
    names = [r.name for r in regions]
    assert names == [n for n in ORDER if module_size or n != "module"]
    for r in regions:
        assert r.va % PAGE == 0 and r.size % PAGE == 0 and r.size > 0, r
        assert r.pages == r.size // PAGE
    for a, b in zip(regions, regions[1:], strict=False):
        assert a.end == b.va, f"{a.name} ends at {a.end:#x} but {b.name} starts at {b.va:#x}"

    # sizes of each element
    assert lay.kernel.va == img.kernel_start
    assert lay.kernel.end == ceil_div(img.kernel_end, PAGE) * PAGE
    if module_size:
        assert lay.module is not None and lay.module.size == ceil_div(module_size, PAGE) * PAGE
    else:
        assert lay.module is None
    assert lay.p2m.size == ceil_div(nr_pages * 4, PAGE) * PAGE          # u32 entries for PV32
    for r in (lay.start_info, lay.xenstore, lay.console, lay.stack):
        assert r.size == PAGE
    assert lay.stack_top == lay.stack.end

    # end of the boot mapping
    assert lay.virt_end % (4 * MiB) == 0
    assert lay.virt_end >= lay.stack.end + 512 * KiB
    assert lay.mapped_pages == (lay.virt_end - vbase) // PAGE
    assert lay.pfn(lay.stack.va) == (lay.stack.va - vbase) // PAGE
    if pae:
        assert lay.virt_end <= 4 * GiB

    # the tables map exactly [virt_base, virt_end) ...
    l3, l2, l1 = needed_tables(vbase, lay.virt_end, pae)
    assert (lay.tables.l3, lay.tables.l2, lay.tables.l1) == (l3, l2, l1)
    assert lay.tables.levels == (3 if pae else 2)
    tables = lay.pagetables.pages
    assert tables == l3 + l2 + l1 == lay.tables.total

    # ... and no fewer would do: with one table page less, the stack and the 512 KiB slack move
    # down a page, and the mapping that would need is still more than tables - 1 pages.
    stack_end_short = lay.pagetables.va + (tables - 1) * PAGE + PAGE
    virt_end_short = ceil_div(stack_end_short + 512 * KiB, 4 * MiB) * 4 * MiB
    assert sum(needed_tables(vbase, virt_end_short, pae)) > tables - 1
    assert sum(needed_tables(vbase, lay.virt_end, pae)) > tables - 1


CASES = [
    # (pae, virt_base, kernel offset from virt_base, kernel size, nr_pages, module size)
    (False, 0xC0000000, 0, 0x5010, 16 * 1024, 0),
    (False, 0xC0000000, 0x100000, 0x2F1234, 64 * 1024, 5 * MiB + 1),
    (False, 0, 0, 0x20000, 256 * 1024, 0),                 # Mini-OS style, virt_base 0, 1 GiB
    (False, 0x400000, 0, 0x1000, 4 * 1024, 123),
    (True, 0xC0000000, 0, 0x5010, 16 * 1024, 0),
    (True, 0xC0000000, 0x100000, 0x2F1234, 64 * 1024, 5 * MiB + 1),
    (True, 0, 0, 0x20000, 32 * 1024, 0),                   # 4 L2s: GiB 0..3
    (True, 0x40000000, 0x1000, 0x30000, 32 * 1024, 0),     # 3 L2s
    (True, 0x80000000, 0, 0x30000, 512 * 1024, 16 * MiB),   # 2 GiB of memory: a 2 MiB p2m
    (True, 0xC0000000, 0, 0x1000, 1, 0),                   # the smallest domain
]


@pytest.mark.parametrize(("pae", "vbase", "koff", "ksize", "nr_pages", "module"), CASES)
def test_layout(pae: bool, vbase: int, koff: int, ksize: int, nr_pages: int, module: int) -> None:
    check_layout(image(virt_base=vbase, kernel_start=vbase + koff, kernel_size=ksize, pae=pae), nr_pages, module)


@pytest.mark.parametrize("pae", [False, True], ids=["nonpae", "pae"])
def test_layout_sweep(pae: bool) -> None:
    """Sizes around the points where the tables spill into the next 4 MiB (or the next 2 MiB L1
    span), so the iterative table count is exercised both ways."""
    img = image(virt_base=0xC0000000, kernel_start=0xC0000000, kernel_size=0x3000, pae=pae)
    for kpages in range(0, 3 * 1024 + 1, 7):       # kernel end moves page by page through 12 MiB
        img.segments[0].memsz = 0x3000 + kpages * PAGE
        check_layout(img, nr_pages=8 * 1024, module_size=0)
    for nr_pages in range(1, 1 << 20, 4093):        # p2m from 1 page to 4 MiB
        check_layout(img, nr_pages=nr_pages, module_size=0)


@pytest.mark.parametrize("pae", [False, True], ids=["nonpae", "pae"])
def test_count_tables_matches_independent_count(pae: bool) -> None:
    for vbase in (0, 0x400000, 0x40000000, 0x80200000, 0xC0000000, 0xC0400000):
        for end_4m in range(1, 40):
            vend = (vbase // (4 * MiB) + end_4m) * 4 * MiB
            if pae and vend > 4 * GiB:
                continue
            span = count_tables(vbase, vend, pae)
            assert (span.l3, span.l2, span.l1) == needed_tables(vbase, vend, pae), (hex(vbase), hex(vend))
            assert span.total == sum(needed_tables(vbase, vend, pae))


def test_pae_virt_base_gib_decides_l2_count() -> None:
    """L3 slot 3 always holds an L2, so a low mapping still gets L2s up to GiB 3."""
    for vbase, l2 in ((0, 4), (0x40000000, 3), (0x80000000, 2), (0xC0000000, 1)):
        lay = compute_layout(image(virt_base=vbase, kernel_start=vbase, kernel_size=PAGE, pae=True), 1024, 0)
        assert lay.tables.l2 == l2
        assert lay.tables.l3 == 1


@pytest.mark.skipif(not all(have_tool(t) for t in ("gcc", "ld")), reason="gcc/binutils not available")
@pytest.mark.parametrize("pae", ["yes", "no"])
def test_layout_of_a_built_kernel(tmp_path: Path, pae: str) -> None:
    notes = [str_note(5, "xen-3.0"), str_note(8, "generic"), str_note(6, "xenwb-test"),
             num_note(3, 0xC0000000), num_note(4, 0xC0000000), sym_note(2, "hypercall_page"),
             str_note(9, pae)]
    img = load_guest(build_kernel(tmp_path, phdr_notes=notes))
    assert img.is_pae == (pae == "yes")
    check_layout(img, nr_pages=32 * 1024, module_size=3 * MiB + 5)
    lay = compute_layout(img, 32 * 1024, 0)
    assert lay.kernel.va == 0xC0000000 and img.hypercall_page is not None
    assert lay.kernel.va <= img.hypercall_page < lay.kernel.end
