"""What Xen keeps in the hypervisor hole of every 64-bit guest address space.

L4 slots 256-271 (0xffff800000000000-0xffff87ffffffffff) are Xen's
(asm/x86_64/page.h is_guest_l4_slot); when an L4 is validated Xen writes its own
entries there (mm.c init_xen_l4_slots). Of them a guest sees only slot 256, the
read-only M2P (one unsigned long per machine frame, asm/config.h RO_MPT_VIRT_START).
The workbench puts its per-domain area in slot 260 (Xen's PERDOMAIN_VIRT_START):

* per vcpu (its own L1, one 2 MiB slot each): the GDT the CPU uses, 14 guest frames
  from set_gdt then Xen's page with the flat selectors at 0xe000 (desc.c
  boot_gdt: 0xe008 Xen CS, 0xe010 Xen DS, 0xe023/0xe02b/0xe033 the ring-3 flat
  segments), and a frame page for the iretq stub;
* page 0 of the area, shared: the iretq stub.

Why a stub: a 64-bit PV kernel runs at CPL 3 and unicorn enters CPL 3 only through a
real transfer (an iretq executed at CPL 0 with a ring-3 frame); a change between 64-bit
and 32-bit code (compat user mode) also needs one (measured, xen-pv64-abi.md section 12).
Every other change of CS/SS between 64-bit ring-3 segments is a register write.
The GDT pages are supervisor-only; the stub and the frame pages are user-readable
(the stub runs at CPL 3 for compat transitions) and read-only.
"""

from __future__ import annotations

import struct

from xenwb.abi import constants as C
from xenwb.hypervisor.memory import MachineMemory
from xenwb.hypervisor.paging import LONG
from xenwb.hypervisor.xenarea import HvGeometry, gdt_entry_maddr, set_accessed

HV64_START = 0xFFFF800000000000          # HYPERVISOR_VIRT_START (arch-x86/xen-x86_64.h)
HV64_END = 0xFFFF880000000000            # HYPERVISOR_VIRT_END
M2P64_START = 0xFFFF800000000000         # MACH2PHYS_VIRT_START
M2P64_END = 0xFFFF804000000000           # MACH2PHYS_VIRT_END
M2P_SLOT = 256
PERDOMAIN_SLOT = 260
PERDOMAIN64_VA = 0xFFFF000000000000 | (PERDOMAIN_SLOT << 39)   # 0xffff820000000000
VCPU_SPAN = 1 << 21                      # one L1 per vcpu
STUB_VA = PERDOMAIN64_VA                 # page 0 of slot 260's first L1: the iretq stub
GDT_PAGES = 16                           # 14 guest frames, Xen's page, a spare
FRAME_PAGE = GDT_PAGES                   # in a vcpu's area, after its GDT
GDT_LIMIT64 = (C.FIRST_RESERVED_GDT_ENTRY + 512) * 8 - 1
MAX_VCPUS64 = C.XEN_LEGACY_MAX_VCPUS

PV64_GEOMETRY = HvGeometry(LONG, HV64_START, M2P64_START, M2P64_END, 0, va_mask=(1 << 64) - 1,
                           hv_end=HV64_END, xen_l4_slots=range(256, 272), m2p_entry_size=8)

P, RW, US, A, D = (C._PAGE_PRESENT, C._PAGE_RW, C._PAGE_USER, C._PAGE_ACCESSED, C._PAGE_DIRTY)
TABLE_FLAGS = P | RW | US | A | D       # Xen's upper-level entries: the leaf decides
M2P_L4_FLAGS = P | US | A               # the guest-visible read-only M2P
XEN_GDT_DESCRIPTORS = {
    0xE008: 0x00AF9B000000FFFF,          # Xen 64-bit code, DPL 0
    0xE010: 0x00CF93000000FFFF,          # Xen data, DPL 0
    C.FLAT_USER_CS32: 0x00CFFB000000FFFF,   # 0xe023: ring-3 32-bit code (compat user)
    C.FLAT_RING3_DS32: 0x00CFF3000000FFFF,  # 0xe02b: ring-3 data
    C.FLAT_USER_CS64: 0x00AFFB000000FFFF,   # 0xe033: ring-3 64-bit code
}


def _index(va: int, level: int) -> int:
    return (va >> (12 + 9 * (level - 1))) & 511


class XenArea64:
    """Builds and maintains Xen's frames for a 64-bit domain: the M2P and its tables, the
    per-domain area (GDTs, the iretq stub and its frames)."""

    def __init__(self, mem: MachineMemory, geometry: HvGeometry) -> None:
        self.mem = mem
        self.geo = geometry
        self.mode = LONG
        n = mem.max_mfn
        self.m2p_frames = [mem.alloc_xen_frame() for _ in range((8 * n + 4095) // 4096)]
        self.m2p_maddr = self.m2p_frames[0] << 12
        for i, mfn in enumerate(self.m2p_frames):
            assert mfn == self.m2p_frames[0] + i
        mem.write(self.m2p_maddr, b"\xff" * (8 * n))
        shared = (1 << 64) - 2                  # SHARED_M2P_ENTRY
        for mfn in range(n):
            if mem.is_xen_frame(mfn):
                mem.write_u64(self.m2p_maddr + 8 * mfn, shared)
        # read-only M2P in slot 256: L3 -> L2s -> L1s (a frame per 4 KiB of table)
        self.m2p_l3 = mem.alloc_xen_frame()
        l2: int | None = None
        l1: int | None = None
        for i, f in enumerate(self.m2p_frames):
            va = M2P64_START + i * 4096
            if l2 is None or (_index(va, 2) == 0 and _index(va, 1) == 0):
                l2 = mem.alloc_xen_frame()
                self._pte(self.m2p_l3, _index(va, 3), (l2 << 12) | M2P_L4_FLAGS)
            if l1 is None or _index(va, 1) == 0:
                l1 = mem.alloc_xen_frame()
                self._pte(l2, _index(va, 2), (l1 << 12) | M2P_L4_FLAGS)
            self._pte(l1, _index(va, 1), (f << 12) | M2P_L4_FLAGS)
        # the per-domain area in slot 260
        self.perdomain_l3 = mem.alloc_xen_frame()
        self.perdomain_l2 = mem.alloc_xen_frame()
        self._pte(self.perdomain_l3, 0, (self.perdomain_l2 << 12) | TABLE_FLAGS)
        self.stub_l1 = mem.alloc_xen_frame()
        self._pte(self.perdomain_l2, 0, (self.stub_l1 << 12) | TABLE_FLAGS)
        self.stub = mem.alloc_xen_frame()
        self._pte(self.stub_l1, 0, (self.stub << 12) | P | US | A)
        mem.write(self.stub << 12, b"\x48\xcf")       # iretq
        self.zero_page = mem.alloc_xen_frame()
        self.vcpu_l1: dict[int, int] = {}
        self.vcpu_xen_gdt: dict[int, int] = {}
        self.guest_gdt: dict[int, list[int]] = {}       # set_gdt's frames, per vcpu
        self.vcpu_frame: dict[int, int] = {}

    def _pte(self, table: int, index: int, pte: int) -> None:
        self.mem.write_u64((table << 12) + 8 * index, pte)

    # -- what validation writes into a guest L4 ------------------------------------------
    @property
    def m2p_l4e(self) -> int:
        return (self.m2p_l3 << 12) | M2P_L4_FLAGS

    @property
    def perdomain_l4e(self) -> int:
        return (self.perdomain_l3 << 12) | TABLE_FLAGS

    def xen_l4_entries(self, with_m2p: bool) -> dict[int, int]:
        """Slot -> entry for Xen's part of a guest L4 (init_xen_l4_slots): the per-domain
        area always, the read-only M2P when asked (fill_ro_mpt)."""
        out = {slot: 0 for slot in self.geo.xen_l4_slots}
        out[PERDOMAIN_SLOT] = self.perdomain_l4e
        if with_m2p:
            out[M2P_SLOT] = self.m2p_l4e
        return out

    # -- per-vcpu area ----------------------------------------------------------------
    def area_va(self, vcpu: int) -> int:
        return PERDOMAIN64_VA + (vcpu + 1) * VCPU_SPAN

    def gdt_va(self, vcpu: int) -> int:
        return self.area_va(vcpu)

    def frame_va(self, vcpu: int) -> int:
        return self.area_va(vcpu) + FRAME_PAGE * 4096

    def frame_maddr(self, vcpu: int) -> int:
        return self.vcpu_frame[vcpu] << 12

    def setup_vcpu(self, vcpu: int) -> None:
        """Xen's GDT page and the stub's frame page for one vcpu; guest GDT frames unmapped."""
        if vcpu >= MAX_VCPUS64:
            raise ValueError(f"at most {MAX_VCPUS64} vcpus")
        l1 = self.mem.alloc_xen_frame()
        self.vcpu_l1[vcpu] = l1
        self._pte(self.perdomain_l2, vcpu + 1, (l1 << 12) | TABLE_FLAGS)
        xen_gdt = self.mem.alloc_xen_frame()
        frame = self.mem.alloc_xen_frame()
        self.vcpu_xen_gdt[vcpu], self.vcpu_frame[vcpu] = xen_gdt, frame
        for page in range(14):
            self._pte(l1, page, (self.zero_page << 12) | P | A)
        self._pte(l1, 14, (xen_gdt << 12) | P | A)
        self._pte(l1, FRAME_PAGE, (frame << 12) | P | US | A)
        for sel, d in XEN_GDT_DESCRIPTORS.items():
            self.mem.write_u64((xen_gdt << 12) + (sel & 0xFF8), d)

    def mark_accessed(self, vcpu: int, offset: int) -> bool:
        """Set the accessed bit of the descriptor at `offset` in the vcpu's GDT (set_accessed)."""
        maddr = gdt_entry_maddr(self.guest_gdt.get(vcpu, []), self.vcpu_xen_gdt[vcpu], offset)
        return maddr is not None and set_accessed(self.mem, maddr)

    def map_guest_gdt(self, vcpu: int, frames: list[int]) -> None:
        """Map set_gdt's frames at the start of the vcpu's GDT (the rest: a zero page)."""
        self.guest_gdt[vcpu] = list(frames)
        l1 = self.vcpu_l1[vcpu]
        for page in range(14):
            mfn = frames[page] if page < len(frames) else self.zero_page
            self._pte(l1, page, (mfn << 12) | P | A)

    def write_iret_frame(self, vcpu: int, rip: int, cs: int, rflags: int, rsp: int, ss: int) -> None:
        self.mem.write(self.frame_maddr(vcpu), struct.pack("<5Q", rip, cs, rflags, rsp, ss))

    def read_iret_frame(self, vcpu: int) -> tuple[int, int, int, int, int]:
        return struct.unpack("<5Q", self.mem.read(self.frame_maddr(vcpu), 40))
