"""Machine memory: host buffers shared by every vcpu engine, and the p2m/m2p.

Machine addresses are unicorn's physical addresses. Two regions exist:
the Xen heap (frames Xen owns: shared_info, the M2P table, Xen's own page
tables, per-vcpu GDT/TSS pages) and guest RAM (frames owned by the domain).
Python reads and writes both directly through the buffers, without unicorn.

Each engine maps them as several unicorn regions, not two. Protecting one page (the
upcall-mask watch, upcall_mask.py) makes unicorn split the region holding it: it unmaps
that whole region, flushing its TLB page by page and dropping every translation of code
in it (memory_unmap in unicorn's softmmu/memory.c), then maps the pieces. Measured on the
example boot (unicorn 2.1.4): with guest RAM as one 64 MiB region, watching the
registered vcpu_info cost 0.86 ms for the split and about as much again to retranslate
the kernel, whose text shared the region. So the regions are chunks of about
sqrt(pages) pages (each region costs every later flatview rebuild a few microseconds,
each page of a split region a TLB flush), cut also where the toolstack asks
(`isolate`): around the shared_info page and the kernel's executable frames.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import mmap
import struct
from dataclasses import dataclass

from unicorn import UC_PROT_ALL, Uc

from xenwb.abi.constants import PAGE_SHIFT, PAGE_SIZE

XEN_HEAP_MFN = 0x100            # Xen heap: machine 1 MiB ..
XEN_HEAP_PAGES = 0xF00          # .. 16 MiB
GUEST_MFN_BASE = 0x1000         # guest RAM: machine 16 MiB upwards
INVALID_M2P_ENTRY = 0xFFFFFFFF  # ~0 in a 32-bit M2P
SHARED_M2P_ENTRY = 0xFFFFFFFE   # Xen-heap frames shared with the guest


class GuestFault(Exception):
    """A guest-virtual access failed: unmapped, or not permitted."""

    def __init__(self, va: int, write: bool = False) -> None:
        super().__init__(f"{'write to' if write else 'read from'} unmapped guest address {va:#x}")
        self.va = va
        self.write = write


@dataclass
class RamRegion:
    base: int        # machine address
    buf: mmap.mmap
    view: memoryview
    size: int

    def ptr(self) -> int:
        return ctypes.addressof(ctypes.c_char.from_buffer(self.buf))


class MachineMemory:
    """Machine RAM as host buffers, mapped into each engine with mem_map_ptr."""

    def __init__(self, guest_pages: int) -> None:
        self.regions: list[RamRegion] = []
        self.xen = self._add(XEN_HEAP_MFN << PAGE_SHIFT, XEN_HEAP_PAGES * PAGE_SIZE)
        self.ram = self._add(GUEST_MFN_BASE << PAGE_SHIFT, guest_pages * PAGE_SIZE)
        self._xen_next = XEN_HEAP_MFN
        self.max_mfn = GUEST_MFN_BASE + guest_pages   # one past the highest machine frame
        self.cuts: set[int] = set()     # machine addresses where engine regions must start

    def _add(self, base: int, size: int) -> RamRegion:
        buf = mmap.mmap(-1, size)
        r = RamRegion(base, buf, memoryview(buf), size)
        self.regions.append(r)
        return r

    def isolate(self, maddr: int, size: int) -> None:
        """Engines created from now on map [maddr, maddr+size) in regions of its own (whole
        pages): a split elsewhere leaves its translations alone, and a protection of it
        splits nothing bigger."""
        self.cuts.update((maddr & ~(PAGE_SIZE - 1), (maddr + size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)))

    def engine_regions(self) -> list[tuple[int, int, int]]:
        """(machine address, size, index in self.regions) of every region an
        engine maps: chunks of a power of two of about sqrt(40 x pages) pages (>= 2 MiB),
        cut at `cuts`."""
        pages = sum(r.size for r in self.regions) >> PAGE_SHIFT
        chunk = max(512, 1 << max(0, math.isqrt(40 * pages) - 1).bit_length()) << PAGE_SHIFT
        out = []
        for i, r in enumerate(self.regions):
            end = r.base + r.size
            starts = set(range(r.base, end, chunk)) | {c for c in self.cuts if r.base < c < end}
            bounds = sorted(starts) + [end]
            out += [(a, b - a, i) for a, b in itertools.pairwise(bounds)]
        return out

    def map_into(self, uc: Uc) -> None:
        ptrs = [r.ptr() for r in self.regions]
        for maddr, size, i in self.engine_regions():
            uc.mem_map_ptr(maddr, size, UC_PROT_ALL, ptrs[i] + maddr - self.regions[i].base)

    def alloc_xen_frame(self) -> int:
        """A zeroed Xen-heap frame (bump allocator: Xen frames are never freed here)."""
        mfn = self._xen_next
        if mfn >= XEN_HEAP_MFN + XEN_HEAP_PAGES:
            raise MemoryError("Xen heap exhausted")
        self._xen_next += 1
        return mfn

    def is_xen_frame(self, mfn: int) -> bool:
        return XEN_HEAP_MFN <= mfn < self._xen_next

    def is_guest_frame(self, mfn: int) -> bool:
        return GUEST_MFN_BASE <= mfn < self.max_mfn

    def valid(self, maddr: int, size: int = 1) -> bool:
        return self._locate(maddr, size) is not None

    def locate(self, maddr: int, size: int) -> tuple[memoryview, int] | None:
        """(buffer, offset) of size bytes of RAM at maddr, or None where they are not RAM."""
        return self._locate(maddr, size)

    # -- raw access by machine address -----------------------------------
    def _locate(self, maddr: int, size: int) -> tuple[memoryview, int] | None:
        r = self.ram
        off = maddr - r.base
        if 0 <= off and off + size <= r.size:
            return r.view, off
        for r in self.regions:
            off = maddr - r.base
            if 0 <= off and off + size <= r.size:
                return r.view, off
        return None

    def _where(self, maddr: int, size: int) -> tuple[memoryview, int]:
        loc = self._locate(maddr, size)
        if loc is None:
            raise ValueError(f"machine address {maddr:#x}+{size:#x} is not RAM")
        return loc

    def read(self, maddr: int, size: int) -> bytes:
        view, off = self._where(maddr, size)
        return bytes(view[off: off + size])

    def write(self, maddr: int, data: bytes) -> None:
        view, off = self._where(maddr, len(data))
        view[off: off + len(data)] = data

    def read_u32(self, maddr: int) -> int:
        view, off = self._where(maddr, 4)
        return struct.unpack_from("<I", view, off)[0]

    def write_u32(self, maddr: int, v: int) -> None:
        view, off = self._where(maddr, 4)
        struct.pack_into("<I", view, off, v & 0xFFFFFFFF)

    def read_u64(self, maddr: int) -> int:
        view, off = self._where(maddr, 8)
        return struct.unpack_from("<Q", view, off)[0]

    def write_u64(self, maddr: int, v: int) -> None:
        view, off = self._where(maddr, 8)
        struct.pack_into("<Q", view, off, v & 0xFFFFFFFFFFFFFFFF)

    def frame(self, mfn: int) -> memoryview:
        view, off = self._where(mfn << PAGE_SHIFT, PAGE_SIZE)
        return view[off: off + PAGE_SIZE]

    def zero_frame(self, mfn: int) -> None:
        self.frame(mfn)[:] = bytes(PAGE_SIZE)


class PhysMap:
    """The domain's p2m (pfn -> mfn) and the machine-wide m2p (mfn -> pfn).

    The builder gives the domain frames in reverse machine order, so the p2m is
    never the identity (nor a constant offset): a guest that confuses pfns and
    mfns breaks here as it would on Xen.
    """

    def __init__(self, mem: MachineMemory, nr_pages: int, m2p_base: int, entry_size: int = 4) -> None:
        self.mem = mem
        self.nr_pages = nr_pages
        self.m2p_base = m2p_base    # machine address of the M2P table
        self.entry_size = entry_size  # 4 (32-bit guests' M2P) or 8 (unsigned long on x86_64)
        self.invalid = (1 << (8 * entry_size)) - 1      # INVALID_M2P_ENTRY: ~0
        self.shared = self.invalid - 1                   # SHARED_M2P_ENTRY: ~0 - 1
        self.p2m = [GUEST_MFN_BASE + nr_pages - 1 - pfn for pfn in range(nr_pages)]

    def mfn(self, pfn: int) -> int:
        return self.p2m[pfn]

    def m2p(self, mfn: int) -> int:
        if self.entry_size == 8:
            return self.mem.read_u64(self.m2p_base + 8 * mfn)
        return self.mem.read_u32(self.m2p_base + 4 * mfn)

    def set_m2p(self, mfn: int, pfn: int) -> None:
        if self.entry_size == 8:
            self.mem.write_u64(self.m2p_base + 8 * mfn, pfn)
        else:
            self.mem.write_u32(self.m2p_base + 4 * mfn, pfn)

    def pfn(self, mfn: int) -> int | None:
        v = self.m2p(mfn) if 0 <= mfn < self.mem.max_mfn else self.invalid
        return None if v in (self.invalid, self.shared) else v

    def m2p_snapshot(self) -> list[int | None]:
        """pfn() of every machine frame at once, as the M2P is now (for whole-table readers)."""
        n = self.mem.max_mfn
        fmt = f"<{n}{'Q' if self.entry_size == 8 else 'I'}"
        raw = struct.unpack(fmt, self.mem.read(self.m2p_base, n * self.entry_size))
        bad = (self.invalid, self.shared)
        return [None if v in bad else v for v in raw]
