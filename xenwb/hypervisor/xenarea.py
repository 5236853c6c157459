"""What Xen keeps at the top of every 32-bit guest address space.

* The read-only M2P table at MACH2PHYS_VIRT_START (0xF5800000 PAE, 0xFC000000
  non-PAE), which guests read directly (xen/arch/x86/x86_64/mm.c, compat M2P;
  x86_32 Xen 3.2 for non-PAE).
* A per-domain area at 0xFFE00000 (x86_32 Xen's PERDOMAIN_VIRT_START idea):
  the per-vcpu GDT (guest frames 0..13 from set_gdt, then Xen's reserved page
  with FLAT_RING1/RING3 descriptors at 0xE019.. as in xen/arch/x86/desc.c), a
  TSS and, specific to the workbench, the ring-transition trampoline.

Ring transitions: unicorn refuses to load SS with another privilege level, so a
change of ring (start of day, iret to ring 3, bounce from ring 3 to ring 1) goes
through real hardware paths: the vcpu jumps to `lcall $GATE` in the trampoline
page, the call gate enters a ring-0 stub `mov $frame, %esp; iret`, and the iret
lands in the guest. The gate descriptor is present only while a transition is
armed, so the guest can never use it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from xenwb.abi import constants as C
from xenwb.hypervisor.memory import SHARED_M2P_ENTRY, MachineMemory
from xenwb.hypervisor.paging import NONPAE, PAE, PagingMode, canonical

PERDOMAIN_VA = 0xFFE00000
# Each vcpu's LDT shadow (Xen's LDT_VIRT_START, pv_ldt_ptes): 16 pages, mapped a page at a time
# on the first access (pv/mm.c pv_map_ldt_shadow_page), in the 2 MiB below the per-domain area.
LDT_SHADOW_VA = 0xFFC00000
LDT_SHADOW_PAGES = 16
PERDOMAIN_PAGES = 512                  # 0xFFE00000 .. 0xFFFFFFFF
TRAMPOLINE_VA = PERDOMAIN_VA           # page 0: shared transition code
VCPU_AREA_FIRST_PAGE = 32
VCPU_AREA_PAGES = 32
MAX_VCPUS = (PERDOMAIN_PAGES - VCPU_AREA_FIRST_PAGE) // VCPU_AREA_PAGES   # 15
GDT_PAGES = 16                          # 14 guest frames, Xen's page, spare

# Selectors the workbench adds in Xen's reserved GDT page (next to 0xE008..0xE033).
XEN_TSS_SEL = 0xE040
XENWB_RING0_CS = 0xE068                 # 32-bit ring-0 code for the transition stub
XENWB_RING0_DS = 0xE070
XENWB_GATE_SEL = 0xE078                 # DPL3 call gate, present only while armed
GDT_LIMIT = XENWB_GATE_SEL + 7

TSS_PAGE = 14 + 1                       # page index within a vcpu area (after the GDT)
STACK_PAGE = TSS_PAGE + 1               # the call gate's ring-0 stack
FRAME_OFFSET = 0x100                    # iret frame inside the TSS page
# The TSS (ESP0/SS0) and the iret frame sit on a page mapped read-only: a ring-1 guest
# reaches supervisor pages, and a TSS it could write would let it aim the gate's ring-0
# stack pushes anywhere. The stack page itself is writable, and what the guest leaves
# there is overwritten by the push and never read.
STUB_OFFSET = 0x100                     # ring-0 stubs in the trampoline page, 16 bytes each

L1_M2P_FLAGS = C._PAGE_PRESENT | C._PAGE_USER | C._PAGE_ACCESSED
XEN_L2_FLAGS = C._PAGE_PRESENT | C._PAGE_RW | C._PAGE_USER | C._PAGE_ACCESSED | C._PAGE_DIRTY
DESC_A, DESC_S, DESC_P = 1 << 40, 1 << 44, 1 << 47
GDT_WINDOW = 15 * 4096                  # the guest's 14 frames and Xen's page


def gdt_entry_maddr(guest_frames: list[int], xen_gdt: int, offset: int) -> int | None:
    """Machine address of the descriptor at byte `offset` of a vcpu's GDT: set_gdt's frames
    (pages 0-13; a page past them is Xen's zero page), Xen's reserved page 14; None elsewhere."""
    page = offset >> 12
    if page < len(guest_frames):
        return (guest_frames[page] << 12) + (offset & 0xFF8)
    if page == 14:
        return (xen_gdt << 12) + (offset & 0xFF8)
    return None


def set_accessed(mem: MachineMemory, maddr: int) -> bool:
    """What the CPU does when it loads a selector: set the accessed bit of a present code or
    data descriptor (Xen maps a vcpu's GDT frames writable in its own area, so the CPU's store
    goes through; the workbench maps them read-only and makes the store here). False when
    there is nothing to set."""
    d = mem.read_u64(maddr)
    if d & (DESC_P | DESC_S) != DESC_P | DESC_S or d & DESC_A:
        return False
    mem.write_u64(maddr, d | DESC_A)
    return True


HV_RW = C._PAGE_PRESENT | C._PAGE_RW | C._PAGE_ACCESSED | C._PAGE_DIRTY
HV_RO = C._PAGE_PRESENT | C._PAGE_ACCESSED


def seg_descriptor(base: int, limit: int, typ: int, dpl: int, s: int = 1, db: int = 1, g: int = 1) -> int:
    lo = (limit & 0xFFFF) | ((base & 0xFFFF) << 16)
    hi = ((base >> 16) & 0xFF) | (typ << 8) | (s << 12) | (dpl << 13) | (1 << 15) \
        | (((limit >> 16) & 0xF) << 16) | (db << 22) | (g << 23) | (((base >> 24) & 0xFF) << 24)
    return lo | (hi << 32)


def call_gate(selector: int, offset: int, dpl: int, present: bool) -> int:
    access = 0xC | (dpl << 5) | (0x80 if present else 0)
    return (offset & 0xFFFF) | (selector << 16) | (access << 40) | ((offset >> 16) << 48)


@dataclass(frozen=True)
class HvGeometry:
    """Where the hypervisor range lies and which top-level slots are Xen's.

    32-bit guests: Xen owns everything from hv_start to 4 GiB (the top slots of an L2).
    64-bit guests: Xen owns the hole [hv_start, hv_end), L4 slots 256-271
    (asm/x86_64/page.h is_guest_l4_slot); the rest of the canonical space is the guest's."""

    mode: PagingMode
    hv_start: int
    m2p_start: int
    m2p_end: int
    first_xen_l2_slot: int     # in the L2 for the top of the address space (32-bit)
    va_mask: int = 0xFFFFFFFF  # the guest's virtual addresses
    hv_end: int = 1 << 32
    xen_l4_slots: range = range(0)
    m2p_entry_size: int = 4    # bytes per M2P entry (an unsigned long of the guest's Xen)

    @property
    def xen_l2_slots(self) -> range:
        return range(self.first_xen_l2_slot, self.mode.entries)

    @property
    def long_mode(self) -> bool:
        return self.mode.levels == 4

    @property
    def word(self) -> int:
        """Bytes in the guest's unsigned long."""
        return 8 if self.mode.levels == 4 else 4

    def guest_range_ok(self, va: int, n: int) -> bool:
        """Xen's access_ok / __addr_ok: [va, va+n) lies in guest space (for 64-bit guests
        canonical and outside the hypervisor hole)."""
        end = va + max(n, 1) - 1
        if va < 0:
            return False
        if not self.long_mode:
            return va + n <= self.hv_start
        if end >= 1 << 64 or not canonical(va) or not canonical(end):
            return False
        if (va >> 47) != (end >> 47):
            return False                      # wraps across the non-canonical gap
        return end < self.hv_start or va >= self.hv_end


PAE_GEOMETRY = HvGeometry(PAE, C.HYPERVISOR_VIRT_START_PAE, C.MACH2PHYS_VIRT_START_PAE,
                          C.MACH2PHYS_COMPAT_VIRT_END, (C.HYPERVISOR_VIRT_START_PAE >> 21) & 511)
NONPAE_GEOMETRY = HvGeometry(NONPAE, C.HYPERVISOR_VIRT_START_NONPAE, C.MACH2PHYS_VIRT_START_NONPAE,
                             C.MACH2PHYS_VIRT_END_NONPAE, C.HYPERVISOR_VIRT_START_NONPAE >> 22)


class XenArea:
    """Builds and maintains Xen's frames: M2P, its L1 tables, per-vcpu GDT/TSS."""

    def __init__(self, mem: MachineMemory, geometry: HvGeometry) -> None:
        self.mem = mem
        self.geo = geometry
        mode = geometry.mode
        self.mode = mode
        # M2P table, u32 entries for every machine frame; Xen-heap frames read as shared.
        n = mem.max_mfn
        self.m2p_frames = [mem.alloc_xen_frame() for _ in range((4 * n + 4095) // 4096)]
        self.m2p_maddr = self.m2p_frames[0] << 12
        for i, mfn in enumerate(self.m2p_frames):
            assert mfn == self.m2p_frames[0] + i
        mem.write(self.m2p_maddr, b"\xff" * (4 * n))
        for mfn in range(0, n):
            if mem.is_xen_frame(mfn):
                mem.write_u32(self.m2p_maddr + 4 * mfn, SHARED_M2P_ENTRY)
        # L1 tables mapping the M2P read-only
        per_l1 = mode.entries
        self.m2p_l1s = []
        for first in range(0, len(self.m2p_frames), per_l1):
            l1 = mem.alloc_xen_frame()
            for i, f in enumerate(self.m2p_frames[first: first + per_l1]):
                self._write_pte(l1, i, (f << 12) | L1_M2P_FLAGS)
            self.m2p_l1s.append(l1)
        if geometry.m2p_start + len(self.m2p_l1s) * mode.level_span(2) > LDT_SHADOW_VA:
            raise MemoryError("guest memory too large for the M2P window")
        # the per-domain area: one L1 covering 0xFFE00000.. (non-PAE: the L1 of slot 1023,
        # which also covers the LDT shadows at 0xFFC00000; PAE: an L1 of their own)
        self.perdomain_l1 = mem.alloc_xen_frame()
        self.ldt_l1 = self.perdomain_l1 if mode is NONPAE else mem.alloc_xen_frame()
        self.zero_page = mem.alloc_xen_frame()
        self.trampoline = mem.alloc_xen_frame()
        self._map_perdomain(0, self.trampoline, HV_RO | C._PAGE_USER)
        self.mem.write(self.trampoline << 12, bytes([0x9A, 0, 0, 0, 0]) + struct.pack("<H", XENWB_GATE_SEL))
        self.vcpu_xen_gdt: dict[int, int] = {}
        self.guest_gdt: dict[int, list[int]] = {}       # set_gdt's frames, per vcpu
        self.vcpu_tss: dict[int, int] = {}

    # -- page-table helpers ----------------------------------------------------
    def _write_pte(self, table_mfn: int, index: int, pte: int) -> None:
        maddr = (table_mfn << 12) + index * self.mode.pte_size
        if self.mode.pte_size == 8:
            self.mem.write_u64(maddr, pte)
        else:
            self.mem.write_u32(maddr, pte)

    def _perdomain_index(self, page: int) -> int:
        # non-PAE: the L1 covers 0xFFC00000.., so the per-domain area starts at entry 512
        return page + (512 if self.mode is NONPAE else 0)

    def _map_perdomain(self, page: int, mfn: int, flags: int) -> None:
        self._write_pte(self.perdomain_l1, self._perdomain_index(page), (mfn << 12) | flags)

    def xen_l2_entries(self) -> dict[int, int]:
        """Slot -> entry for the hypervisor part of the top L2 (PAE: the L2 under L3[3])."""
        out = {}
        span = self.mode.level_span(2)
        first_m2p = (self.geo.m2p_start >> (22 if self.mode is NONPAE else 21)) & (self.mode.entries - 1)
        for i, l1 in enumerate(self.m2p_l1s):
            out[first_m2p + i] = (l1 << 12) | XEN_L2_FLAGS
        out[self.mode.entries - 1] = (self.perdomain_l1 << 12) | XEN_L2_FLAGS
        if self.ldt_l1 != self.perdomain_l1:
            out[self.mode.entries - 2] = (self.ldt_l1 << 12) | XEN_L2_FLAGS
        assert span
        return out

    # -- per-vcpu area -------------------------------------------------------
    def vcpu_page(self, vcpu: int, page: int) -> int:
        return VCPU_AREA_FIRST_PAGE + VCPU_AREA_PAGES * vcpu + page

    def gdt_va(self, vcpu: int) -> int:
        return PERDOMAIN_VA + self.vcpu_page(vcpu, 0) * 4096

    def tss_va(self, vcpu: int) -> int:
        return PERDOMAIN_VA + self.vcpu_page(vcpu, TSS_PAGE) * 4096

    def stub_va(self, vcpu: int) -> int:
        return TRAMPOLINE_VA + STUB_OFFSET + 16 * vcpu

    def stack_va(self, vcpu: int) -> int:
        return PERDOMAIN_VA + self.vcpu_page(vcpu, STACK_PAGE) * 4096

    def frame_maddr(self, vcpu: int) -> int:
        return (self.vcpu_tss[vcpu] << 12) + FRAME_OFFSET

    def setup_vcpu(self, vcpu: int) -> None:
        """Xen's GDT page, TSS and ring-0 stub for one vcpu; guest GDT frames unmapped."""
        if vcpu >= MAX_VCPUS:
            raise ValueError(f"at most {MAX_VCPUS} vcpus")
        xen_gdt = self.mem.alloc_xen_frame()
        tss = self.mem.alloc_xen_frame()
        self.vcpu_xen_gdt[vcpu], self.vcpu_tss[vcpu] = xen_gdt, tss
        for page in range(14):
            self._map_perdomain(self.vcpu_page(vcpu, page), self.zero_page, HV_RO)
        self._map_perdomain(self.vcpu_page(vcpu, 14), xen_gdt, HV_RO)
        self._map_perdomain(self.vcpu_page(vcpu, TSS_PAGE), tss, HV_RO)
        self._map_perdomain(self.vcpu_page(vcpu, STACK_PAGE), self.mem.alloc_xen_frame(), HV_RW)
        descs = dict(C.XEN_FLAT_DESCRIPTORS)
        descs[XENWB_RING0_CS] = seg_descriptor(0, 0xFFFFF, 0xB, 0)
        descs[XENWB_RING0_DS] = seg_descriptor(0, 0xFFFFF, 0x3, 0)
        descs[XEN_TSS_SEL] = seg_descriptor(self.tss_va(vcpu), 0x67, 0xB, 0, s=0, db=0, g=0)
        descs[XENWB_GATE_SEL] = call_gate(XENWB_RING0_CS, self.stub_va(vcpu), 3, present=False)
        for sel, d in descs.items():
            self.mem.write_u64((xen_gdt << 12) + (sel & 0xFF8) , d)
        # TSS: ESP0 / SS0 for the call gate's stack switch
        self.mem.write(tss << 12, struct.pack("<III", 0, self.stack_va(vcpu) + 0x1000, XENWB_RING0_DS))
        stub = bytes([0xBC]) + struct.pack("<I", self.tss_va(vcpu) + FRAME_OFFSET) + bytes([0xCF])
        self.mem.write((self.trampoline << 12) + STUB_OFFSET + 16 * vcpu, stub)

    def arm_gate(self, vcpu: int, armed: bool) -> None:
        d = call_gate(XENWB_RING0_CS, self.stub_va(vcpu), 3, present=armed)
        self.mem.write_u64((self.vcpu_xen_gdt[vcpu] << 12) + (XENWB_GATE_SEL & 0xFF8), d)

    def write_iret_frame(self, vcpu: int, eip: int, cs: int, eflags: int, esp: int, ss: int) -> None:
        self.mem.write(self.frame_maddr(vcpu), struct.pack("<5I", eip, cs, eflags, esp, ss))

    def mark_accessed(self, vcpu: int, offset: int) -> bool:
        """Set the accessed bit of the descriptor at `offset` in the vcpu's GDT (set_accessed)."""
        maddr = gdt_entry_maddr(self.guest_gdt.get(vcpu, []), self.vcpu_xen_gdt[vcpu], offset)
        return maddr is not None and set_accessed(self.mem, maddr)

    def ldt_va(self, vcpu: int) -> int:
        """Where the vcpu's LDT shadow starts (the LDTR base while an LDT is set)."""
        return LDT_SHADOW_VA + vcpu * LDT_SHADOW_PAGES * 4096

    def map_ldt_page(self, vcpu: int, page: int, mfn: int | None) -> None:
        """Map a guest frame read-only at one page of the vcpu's LDT shadow, or unmap it. (Xen
        maps it writable for the accessed bits; its descriptors got them at validation, and
        a ring-1 guest reaches supervisor pages here.)"""
        index = (self.ldt_va(vcpu) - LDT_SHADOW_VA) // 4096 + page
        self._write_pte(self.ldt_l1, index, 0 if mfn is None else (mfn << 12) | HV_RO)

    def map_guest_gdt(self, vcpu: int, frames: list[int]) -> None:
        """Map set_gdt's frames at the start of the vcpu's GDT (the rest: a zero page)."""
        self.guest_gdt[vcpu] = list(frames)
        for page in range(14):
            mfn = frames[page] if page < len(frames) else self.zero_page
            self._map_perdomain(self.vcpu_page(vcpu, page), mfn, HV_RO)
