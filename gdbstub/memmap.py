"""qXfer:memory-map:read: the guest-virtual address space of one vcpu, from its pagetables.

The walk reads the live tables in machine memory level by level (skipping absent entries
whole), as xenwb.hypervisor.paging.translate does for one address, and coalesces
consecutive mapped pages of the same kind into one region of gdb's memory-map DTD
(Remote Protocol, "Memory Map Format"): ``ram`` where the guest may write, ``rom`` where it
may not (read-only mappings, and the hypervisor's range, which the debugger cannot write
either). gdb uses hardware breakpoints in ``rom`` regions (`breakpoint auto-hw`); the
stub honours them as it does software ones (neither touches guest memory).

gdb reads the map once per connection and, with a map present, refuses accesses outside it
(`mem inaccessible-by-default`). The guest's address space changes while gdb is attached
(new mappings appear; Linux's vmalloc, modules, user space), so the unmapped space of the
guest's part of the address space is listed too, as ``ram`` (an access there is answered
by the stub, with an error while nothing is mapped): the map tells gdb what is read-only,
and never makes a later mapping unreachable. gdb refuses to write ``rom`` regions: to patch
a read-only page from gdb, drop the map first (`delete mem`: every address is then RAM to
gdb again). The document is bounded: beyond MAX_REGIONS regions, adjacent ``ram`` regions
are merged, then the smallest ``rom`` ones become ``ram`` (which only lifts restrictions).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xenwb.hypervisor.memory import MachineMemory
    from xenwb.hypervisor.paging import PagingMode

MAX_REGIONS = 256
PAGE = 4096
_PRESENT, _RW = 0x1, 0x2

Region = tuple[int, int, bool]          # start, end (exclusive), writable


def mapped_ranges(mem: MachineMemory, mode: PagingMode, top_mfn: int, va_limit: int) -> list[Region]:
    """The mapped pages below va_limit, coalesced: (start, end, writable by the guest)."""
    runs: list[list[int]] = []          # [start, end, writable]
    fmt = "Q" if mode.pte_size == 8 else "I"

    def table(mfn: int, level: int, base: int, writable: bool) -> None:
        span = mode.level_span(level)
        count = mode.entries
        if level == mode.levels:        # the top level covers the whole space (PAE: 4 entries)
            count = min(count, max(1, va_limit // span))
        maddr = mfn << 12
        size = count * mode.pte_size
        if not mem.valid(maddr, size):
            return
        pae_top = mode.levels == 3 and level == 3       # PAE PDPTEs carry no RW bit
        for i, pte in enumerate(struct.unpack(f"<{count}{fmt}", mem.read(maddr, size))):
            if not pte & _PRESENT:
                continue
            va = base + i * span
            if va >= va_limit:
                break
            w = writable and (pae_top or bool(pte & _RW))
            child = mode.pte_mfn(pte)
            if level > 1:
                table(child, level - 1, va, w)
            elif mem.valid(child << 12, PAGE):
                if runs and runs[-1][1] == va and runs[-1][2] == w:
                    runs[-1][1] = va + PAGE
                else:
                    runs.append([va, va + PAGE, w])

    table(top_mfn, mode.levels, 0, True)
    return [(s, e, bool(w)) for s, e, w in runs]


def regions(ranges: list[Region], guest_end: int, max_regions: int = MAX_REGIONS) -> list[tuple[int, int, str]]:
    """gdb regions (start, length, type) for the mapped ranges: below guest_end every mapped
    range (ram where the guest may write, rom where not) and every gap between them (ram);
    at and above it, the hypervisor's mapped ranges (rom). At most max_regions: adjacent ram
    regions are merged first, then the smallest rom regions become ram."""
    parts: list[tuple[int, int, str]] = []          # guest part: (start, end, "rw"|"ro"|"gap")
    pos = 0
    for s, e, w in ranges:
        if s >= guest_end:
            break
        if s > pos:
            parts.append((pos, s, "gap"))
        parts.append((s, min(e, guest_end), "rw" if w else "ro"))
        pos = min(e, guest_end)
    if pos < guest_end:
        parts.append((pos, guest_end, "gap"))
    xen: list[list[int]] = []
    for s, e, _ in ranges:
        if e > guest_end:
            s = max(s, guest_end)
            if xen and xen[-1][1] == s:
                xen[-1][1] = e
            else:
                xen.append([s, e])
    room = max_regions - len(xen)
    if len(parts) > room:
        parts = _merge_ram(parts)
    if len(parts) > room:
        ro = sorted((p for p in parts if p[2] == "ro"), key=lambda p: p[1] - p[0])
        demote = {p[0] for p in ro[: len(ro) - max(0, (room - 1) // 2)]}
        parts = _merge_ram([(s, e, "gap" if s in demote and k == "ro" else k) for s, e, k in parts])
    while len(xen) > 1 and len(parts) + len(xen) > max_regions:
        i = min(range(len(xen) - 1), key=lambda j: xen[j + 1][0] - xen[j][1])
        xen[i][1] = xen.pop(i + 1)[1]
    return [(s, e - s, "rom" if k == "ro" else "ram") for s, e, k in parts] + [(s, e - s, "rom") for s, e in xen]


def _merge_ram(parts: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for s, e, k in parts:
        if out and k != "ro" and out[-1][2] != "ro":
            out[-1] = (out[-1][0], e, "gap")
        else:
            out.append((s, e, k))
    return out


def memory_map_xml(mem: MachineMemory, mode: PagingMode, top_mfn: int, guest_end: int, va_limit: int) -> bytes:
    """The qXfer:memory-map:read document for the tables rooted at top_mfn."""
    out = ['<?xml version="1.0"?>\n<!DOCTYPE memory-map PUBLIC "+//IDN gnu.org//DTD GDB Memory Map V1.0//EN" '
           '"http://sourceware.org/gdb/gdb-memory-map.dtd">\n<memory-map>\n']
    for start, length, kind in regions(mapped_ranges(mem, mode, top_mfn, va_limit), guest_end):
        out.append(f'  <memory type="{kind}" start="{start:#x}" length="{length:#x}"/>\n')
    out.append("</memory-map>\n")
    return "".join(out).encode()
