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
    from xenwb.hypervisor.xenarea import HvGeometry

MAX_REGIONS = 256
PAGE = 4096
_PRESENT, _RW = 0x1, 0x2
CANONICAL_HIGH = 0xFFFF_0000_0000_0000        # bits 63-48 of an upper-half address

Region = tuple[int, int, bool]          # start, end (exclusive), writable


def mapped_ranges(mem: MachineMemory, mode: PagingMode, top_mfn: int, va_limit: int) -> list[Region]:
    """The mapped pages below va_limit, coalesced: (start, end, writable by the guest). With
    4-level paging the upper half of the top table maps canonical addresses (bits 63-48 set),
    so the ranges come in address order: the lower half first."""
    runs: list[list[int]] = []          # [start, end, writable]
    fmt = "Q" if mode.pte_size == 8 else "I"
    sign_extend = mode.levels == 4

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
            if sign_extend and level == mode.levels and i >= mode.entries // 2:
                va |= CANONICAL_HIGH
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


def regions(ranges: list[Region], guest_end: int | None = None, max_regions: int = MAX_REGIONS, *,
            guest_spans: list[tuple[int, int]] | None = None) -> list[tuple[int, int, str]]:
    """gdb regions (start, length, type), in address order, for the mapped ranges: inside the
    guest's part of the address space (guest_spans; [0, guest_end) for a 32-bit guest) every
    mapped range (ram where the guest may write, rom where not) and every gap between them
    (ram); outside it, the hypervisor's mapped ranges (rom). Nothing for what lies in neither
    (the non-canonical hole of a 64-bit space). At most max_regions: adjacent ram regions are
    merged first, then the smallest rom regions become ram."""
    spans = guest_spans if guest_spans is not None else [(0, guest_end or 0)]
    parts: list[tuple[int, int, str]] = []          # guest part: (start, end, "rw"|"ro"|"gap")
    for lo, hi in spans:
        pos = lo
        for s, e, w in ranges:
            s, e = max(s, lo), min(e, hi)
            if s >= e:
                continue
            if s > pos:
                parts.append((pos, s, "gap"))
            parts.append((s, e, "rw" if w else "ro"))
            pos = e
        if pos < hi:
            parts.append((pos, hi, "gap"))
    xen: list[list[int]] = []
    for s, e, _ in ranges:
        for piece in _outside(s, e, spans):
            if xen and xen[-1][1] == piece[0]:
                xen[-1][1] = piece[1]
            else:
                xen.append(list(piece))
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
    out = [(s, e - s, "rom" if k == "ro" else "ram") for s, e, k in parts] + [(s, e - s, "rom") for s, e in xen]
    return sorted(out)


def _outside(s: int, e: int, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The pieces of [s, e) outside every span."""
    pieces = [(s, e)]
    for lo, hi in spans:
        pieces = [q for a, b in pieces for q in ((a, min(b, lo)), (max(a, hi), b)) if q[0] < q[1]]
    return pieces


def _merge_ram(parts: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for s, e, k in parts:
        if out and k != "ro" and out[-1][2] != "ro" and out[-1][1] == s:
            out[-1] = (out[-1][0], e, "gap")
        else:
            out.append((s, e, k))
    return out


def guest_spans_of(geo: HvGeometry) -> list[tuple[int, int]]:
    """The guest's part of the address space: below HYPERVISOR_VIRT_START for a 32-bit guest;
    for a 64-bit one the canonical lower half and everything above HYPERVISOR_VIRT_END."""
    if geo.mode.levels == 4:
        return [(0, 1 << 47), (geo.hv_end, geo.va_mask + 1)]
    return [(0, geo.hv_start)]


def memory_map_xml(mem: MachineMemory, mode: PagingMode, top_mfn: int, guest_spans: list[tuple[int, int]],
                   va_limit: int) -> bytes:
    """The qXfer:memory-map:read document for the tables rooted at top_mfn."""
    out = ['<?xml version="1.0"?>\n<!DOCTYPE memory-map PUBLIC "+//IDN gnu.org//DTD GDB Memory Map V1.0//EN" '
           '"http://sourceware.org/gdb/gdb-memory-map.dtd">\n<memory-map>\n']
    for start, length, kind in regions(mapped_ranges(mem, mode, top_mfn, va_limit), guest_spans=guest_spans):
        out.append(f'  <memory type="{kind}" start="{start:#x}" length="{length:#x}"/>\n')
    out.append("</memory-map>\n")
    return "".join(out).encode()
