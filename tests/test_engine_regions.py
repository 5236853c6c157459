"""The unicorn regions each engine maps machine RAM as (hypervisor/memory.py): they tile the
RAM exactly, are cut where the toolstack asked, and keep the kernel's text apart, so that
watching the upcall mask of a vcpu_info in the kernel's data drops no translated code."""

from __future__ import annotations

import itertools

from unicorn import UC_PROT_ALL

from xenwb.examples import resolve_guest
from xenwb.hypervisor.memory import PAGE_SIZE, MachineMemory
from xenwb.machine import Machine


def _tiles(mem: MachineMemory, regions: list[tuple[int, int]]) -> bool:
    """Do (start, size) regions cover every RAM region of mem exactly, without overlap?"""
    def merged(spans: list[tuple[int, int]]) -> list[list[int]]:
        out: list[list[int]] = []
        for start, size in sorted(spans):
            if out and out[-1][1] == start:
                out[-1][1] = start + size
            else:
                out.append([start, start + size])
        return out
    overlap = any(a + n > b for (a, n), (b, _m) in itertools.pairwise(sorted(regions)))
    return not overlap and merged(regions) == merged([(r.base, r.size) for r in mem.regions])


def test_regions_tile_the_ram_in_sqrt_sized_chunks() -> None:
    for mib in (4, 64, 512):
        mem = MachineMemory(mib * 256)
        regs = mem.engine_regions()
        assert _tiles(mem, [(a, n) for a, n, _ in regs])
        sizes = {n for _a, n, _ in regs}
        big = max(sizes)
        assert big >= 2 << 20 and big & (big - 1) == 0
        assert len(regs) < 120                   # few regions: every flatview rebuild walks them all
    assert max(n for _a, n, _ in MachineMemory(512 * 256).engine_regions()) > \
        max(n for _a, n, _ in MachineMemory(64 * 256).engine_regions())


def test_isolate_cuts_regions_at_whole_pages() -> None:
    mem = MachineMemory(64 * 256)
    mem.isolate(mem.ram.base + 0x123456, 10)
    regs = mem.engine_regions()
    assert _tiles(mem, [(a, n) for a, n, _ in regs])
    page = (mem.ram.base + 0x123456) & ~(PAGE_SIZE - 1)
    assert (page, PAGE_SIZE) in [(a, n) for a, n, _ in regs]


def test_kernel_text_and_shared_info_have_regions_of_their_own() -> None:
    m = Machine(resolve_guest("pvdemo-pae"), vcpus=2)
    dom = m.domain
    v0 = m.vcpus[0]
    text = set()
    for seg in dom.image.segments:
        if seg.executable:
            base = seg.paddr + dom.image.virt_offset
            text |= {v0.virt_to_maddr(va) >> 12 for va in range(base & ~0xFFF, base + seg.memsz, PAGE_SIZE)}
    assert text
    for v in m.vcpus:
        regions = [(r[0], r[1] + 1) for r in v.cpu.uc.mem_regions() if r[0] >= dom.mem.xen.base]
        assert _tiles(dom.mem, [(a, b - a) for a, b in regions])
        assert (dom.shared_info_mfn << 12, (dom.shared_info_mfn + 1) << 12) in regions
        for a, b in regions:
            frames = set(range(a >> 12, b >> 12))
            assert not frames & text or frames <= text, f"region {a:#x}-{b:#x} mixes kernel text and data"
        assert {r[2] for r in v.cpu.uc.mem_regions()} == {UC_PROT_ALL}


def test_watching_the_registered_vcpu_info_splits_no_text_region() -> None:
    m = Machine(resolve_guest("pvdemo-pae"))
    before = {(r[0], r[1]) for r in m.vcpus[0].cpu.uc.mem_regions()}
    m.domain.trace.subscribe_records(lambda rec: None, kinds={"mask"})
    m.run()
    after = {(r[0], r[1]) for r in m.vcpus[0].cpu.uc.mem_regions()}
    split = before - after                       # regions unicorn unmapped to protect a page
    assert split                                 # the guest registered a vcpu_info: its region was split
    v0 = m.vcpus[0]
    dom = m.domain
    text_maddrs = {v0.virt_to_maddr(seg.paddr + dom.image.virt_offset)
                   for seg in dom.image.segments if seg.executable}
    for lo, hi in split:
        assert not any(lo <= t <= hi for t in text_maddrs)


def test_the_split_for_a_vcpu_info_in_the_kernels_data_stays_inside_that_segment() -> None:
    """pvdemo registers its vcpu_info in its bss: the region split to watch it holds only
    frames of that data segment, not a RAM chunk of megabytes around it."""
    m = Machine(resolve_guest("pvdemo-pae"))
    v0, dom = m.vcpus[0], m.domain
    data = set()                                 # the frames the builder loaded it into
    for seg in dom.image.segments:
        if not seg.executable:
            base = seg.paddr + dom.image.virt_offset
            data |= {v0.virt_to_maddr(va) >> 12 for va in range(base & ~0xFFF, base + seg.memsz, PAGE_SIZE)}
    before = {(r[0], r[1]) for r in v0.cpu.uc.mem_regions()}
    m.domain.trace.subscribe_records(lambda rec: None, kinds={"mask"})
    m.run()
    split = before - {(r[0], r[1]) for r in v0.cpu.uc.mem_regions()}
    assert (v0.vcpu_info_maddr >> 12) in data and len(split) == 1
    (lo, hi), = split
    assert set(range(lo >> 12, (hi + 1) >> 12)) <= data
