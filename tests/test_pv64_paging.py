"""The workbench's 4-level walker (xenwb/hypervisor/paging.py, LONG) agrees with unicorn's own
MMU, and Xen's TLB flush operations reach unicorn's TLB.

The judge is the vcpu's engine itself (tests/support/harness64.Probe): one `mov (%rdi),%rax`,
`mov %rax,(%rdi)` or `jmp *%rdi` executed at CPL 3 through the live tables, a #PF going through
the real hook and Xen's bounce. For each address the walker's answer (frame, writable, user, NX)
must match what the engine could do; a tag written at the walker's machine address must be what
the engine reads. Both guest L4s are checked: the kernel's and a user L4 that maps another frame
at the same address. Then each flush op of do_mmuext_op / do_update_va_mapping (xen/arch/x86/mm.c)
must make the engine see an L1 change that mmu_update made without a flush (Xen does not flush on
an L1 update: the guest asks for it).
"""

from __future__ import annotations

import random
import struct

import pytest
from support.harness import run_to_guest
from support.harness64 import M2P_VA, NX, RW, TABLE, US, A, Hv64, P, Probe

from xenwb.abi.constants import MmuextCmd as X
from xenwb.hypervisor import traps64
from xenwb.hypervisor.paging import LONG, translate
from xenwb.hypervisor.xenarea64 import PERDOMAIN64_VA

LOW_VA = 0x0000_0080_0000_0000          # L4 slot 1
PF_P, PF_W, PF_U, PF_I = 1, 2, 4, 16


@pytest.fixture
def hvp() -> tuple[Hv64, Probe]:
    hv = Hv64.example("pvdemo64")
    run_to_guest(hv.m)
    return hv, Probe(hv)


def tag_for(va: int) -> int:
    return (va * 0x9E3779B97F4A7C15 + 0x1234567) & ((1 << 64) - 1)


def agree(hv: Hv64, probe: Probe, va: int) -> None:
    """The walker's verdict on va, in the current mode, against the engine's."""
    top = hv.v.active_top_mfn
    kernel = hv.v.kernel_mode
    w = hv.walk(va, top)
    readable = w.mapped and w.user            # the guest runs at CPL 3
    got = probe.read(va)
    assert got.ok == readable, f"{va:#x}: walker mapped={w.mapped} user={w.user}, engine {got}"
    if not readable:
        # Xen's #PF error code: present bit from the walk, U only for guest user mode
        assert got.error_code == (PF_P if w.mapped else 0) | (0 if kernel else PF_U), (hex(va), got)
        assert got.cr2 == va
        if not kernel:                        # the bounce went to kernel mode: back to user mode
            assert hv.v.kernel_mode
            traps64.toggle_guest_mode(hv.v)
        return
    assert translate(hv.dom.mem, LONG, top, va) == w.maddr
    mem = hv.dom.mem
    aligned = w.maddr & ~7
    old = mem.read(aligned, 8)
    mem.write(aligned, struct.pack("<Q", tag_for(va)))
    try:
        got = probe.read(va & ~7)
    finally:
        mem.write(aligned, old)
    assert got.ok and got.value == tag_for(va), f"{va:#x}: the engine read {got}, the walker says {w.maddr:#x}"


def sample_vas(hv: Hv64, rnd: random.Random) -> list[int]:
    lay = hv.layout
    vas = list(range(lay.virt_base, lay.virt_end, 4096))            # every page of the boot mapping
    vas += [M2P_VA + 8 * rnd.randrange(hv.dom.mem.max_mfn) for _ in range(50)]   # the RO M2P
    vas += [PERDOMAIN64_VA + off for off in (0, 0x200000, 0x200000 + 14 * 4096)]  # stub, GDT: supervisor
    vas += [0, 0x1000, LOW_VA, lay.virt_end, lay.virt_end + 0x123456, 0x7FFF_FFFF_F000,
            0xFFFF_8800_0000_0000, 0xFFFF_FFFF_FFFF_F000]
    return vas + [rnd.randrange(lay.virt_base, lay.virt_end) for _ in range(100)]


def test_walker_agrees_with_the_engine_on_the_kernel_tables(hvp) -> None:
    hv, probe = hvp
    for va in sample_vas(hv, random.Random(64)):
        agree(hv, probe, va)


def test_write_and_fetch_permissions_agree(hvp) -> None:
    """RO pages (the boot tables, the M2P) fault on a write with P|W; an NX page faults on a
    fetch with P|I; a plain RW page takes the write and runs code."""
    hv, probe = hvp
    rw = hv.scratch_page()
    assert hv.walk(rw).writable and probe.write(rw, 77).ok and hv.u64(rw) == 77
    for va in (hv.layout.pagetables.va, M2P_VA):
        w = hv.walk(va)
        assert w.mapped and not w.writable and translate(hv.dom.mem, LONG, hv.v.cr3_mfn, va, True) is None
        got = probe.write(va, 1)
        assert not got.ok and got.error_code == PF_P | PF_W, (hex(va), got)
    nx = hv.scratch_page()
    assert hv.uvm(nx, (hv.mfn_of(nx) << 12) | P | RW | A | NX, 2) == 0
    assert hv.walk(nx).nx
    got = probe.fetch(nx)
    assert not got.ok and got.error_code == PF_P | PF_I and got.cr2 == nx
    assert probe.fetch(rw).ok and probe.fetch(rw).value == rw + 1


def test_walker_agrees_through_a_new_chain_and_a_recursive_entry(hvp) -> None:
    """Tables the guest adds by mmu_update (L4 slot 1: L3 -> L2 -> L1) and a read-only recursive
    L4 entry (slot 300): the engine reads the L4 itself through it, like the walker."""
    hv, probe = hvp
    frame = hv.free_frame()
    l1 = hv.new_table({0: (frame << 12) | P | RW | A, 7: (frame << 12) | P | A})
    l2 = hv.new_table({0: (l1 << 12) | TABLE})
    l3 = hv.new_table({0: (l2 << 12) | TABLE})
    l4 = hv.v.cr3_mfn
    assert hv.mmu_update(((l4 << 12) + 8, (l3 << 12) | TABLE), ((l4 << 12) + 8 * 300, (l4 << 12) | P | A)) == (0, 2)
    hv.v.cpu.flush_tlb()
    for va in (LOW_VA, LOW_VA + 0x123, LOW_VA + 7 * 4096, LOW_VA + 4096, LOW_VA + (1 << 21)):
        agree(hv, probe, va)
    self_map = 0xFFFF_0000_0000_0000 | 300 << 39 | 300 << 30 | 300 << 21 | 300 << 12
    for va in (self_map, self_map + 8 * 511, 0xFFFF_0000_0000_0000 | 300 << 39 | 300 << 30 | 300 << 21 | 1 << 12):
        agree(hv, probe, va)
    got = probe.read(self_map + 8 * 300)
    assert got.ok and got.value == hv.entry(l4, 300)
    assert not probe.write(self_map, 0).ok                   # linear entries are read-only


def user_l4_with_other_frame(hv: Hv64, frame: int) -> int:
    """A user L4: the kernel's guest slots, except slot 1 mapping `frame` at LOW_VA."""
    l1 = hv.new_table({0: (frame << 12) | P | RW | A | US})
    l2 = hv.new_table({0: (l1 << 12) | TABLE})
    l3 = hv.new_table({0: (l2 << 12) | TABLE})
    data = hv.copy_table(hv.v.cr3_mfn, skip=hv.dom.geo.xen_l4_slots)
    data[8:16] = struct.pack("<Q", (l3 << 12) | TABLE)
    user = hv.free_frame(bytes(data))
    assert hv.mmuext((X.PIN_L4_TABLE, user), (X.NEW_USER_BASEPTR, user)) == (0, 2)
    return user


def test_walker_agrees_in_user_mode_with_the_user_l4(hvp) -> None:
    """After the toggle to user mode (CR3 = the user L4) the engine sees the user L4's frame at
    LOW_VA, the walker on active_top_mfn too, and debug reads follow; back in kernel mode the
    kernel's mapping (none at LOW_VA) again."""
    hv, probe = hvp
    frame = hv.free_frame(struct.pack("<Q", 0xFEEDFACE))
    user = user_l4_with_other_frame(hv, frame)
    traps64.toggle_guest_mode(hv.v)
    assert not hv.v.kernel_mode and hv.v.active_top_mfn == user and hv.v.cpu.reg("cr3") == user << 12
    got = probe.read(LOW_VA)
    assert got.ok and got.value == 0xFEEDFACE
    assert hv.v.debug_read(LOW_VA, 8) == struct.pack("<Q", 0xFEEDFACE)
    for va in sample_vas(hv, random.Random(65))[::7] + [LOW_VA, LOW_VA + 8]:
        agree(hv, probe, va)
    # a fault in user mode toggles back to kernel mode (Xen's bounce): U set in the error code
    got = probe.read(0x1000)
    assert not got.ok and got.error_code == PF_U and hv.v.kernel_mode
    assert hv.v.cpu.reg("cr3") == hv.v.cr3_mfn << 12
    assert not probe.read(LOW_VA).ok and hv.v.debug_read(LOW_VA, 8) == b""


# ------------------------------------------------------------------------------------ TLB flushes
FLUSHES = {
    "TLB_FLUSH_LOCAL": lambda hv, va, m: hv.mmuext((X.TLB_FLUSH_LOCAL,)),
    "INVLPG_LOCAL": lambda hv, va, m: hv.mmuext((X.INVLPG_LOCAL, va)),
    "TLB_FLUSH_MULTI": lambda hv, va, m: hv.mmuext((X.TLB_FLUSH_MULTI, 0, m)),
    "INVLPG_MULTI": lambda hv, va, m: hv.mmuext((X.INVLPG_MULTI, va, m)),
    "TLB_FLUSH_ALL": lambda hv, va, m: hv.mmuext((X.TLB_FLUSH_ALL,)),
    "INVLPG_ALL": lambda hv, va, m: hv.mmuext((X.INVLPG_ALL, va)),
    "NEW_BASEPTR-same": lambda hv, va, m: hv.mmuext((X.NEW_BASEPTR, hv.v.cr3_mfn)),
}


def _stale_after_l1_update(hv: Hv64, probe: Probe) -> tuple[int, int, int]:
    """A page the engine has read (its TLB holds the translation), then remapped by mmu_update
    without a flush: the engine still reads the old frame. Returns (va, old tag, new tag)."""
    va = hv.scratch_page()
    hv.v.write_virt(va, struct.pack("<Q", 0xA1D))
    assert probe.read(va).value == 0xA1D
    new = hv.free_frame(struct.pack("<Q", 0xBEE))
    assert hv.mmu_update((hv.pte_maddr(va), (new << 12) | P | RW | A)) == (0, 1)
    assert hv.u64(va) == 0xBEE                                  # the tables say: the new frame
    assert probe.read(va).value == 0xA1D, "precondition: unicorn keeps the stale translation"
    return va, 0xA1D, 0xBEE


@pytest.mark.parametrize("op", list(FLUSHES))
def test_each_mmuext_flush_reaches_the_engine(hvp, op: str) -> None:
    hv, probe = hvp
    va, _, new = _stale_after_l1_update(hv, probe)
    assert FLUSHES[op](hv, va, hv.put_u64(1)) == (0, 1)
    assert probe.read(va).value == new


@pytest.mark.parametrize("flags", [1, 2, 1 | 4, 2 | 4, "multi-1", "multi-2"],
                         ids=["TLB_FLUSH", "INVLPG", "TLB_FLUSH|ALL", "INVLPG|ALL", "TLB_FLUSH|MULTI", "INVLPG|MULTI"])
def test_update_va_mapping_flush_flags_reach_the_engine(hvp, flags) -> None:
    """update_va_mapping's flush: the new entry is what the engine uses at once; UVMF_NONE
    leaves the stale one."""
    hv, probe = hvp
    va = hv.scratch_page()
    hv.v.write_virt(va, struct.pack("<Q", 0xA1D))
    assert probe.read(va).value == 0xA1D
    new = hv.free_frame(struct.pack("<Q", 0xBEE))
    if isinstance(flags, str):
        flags = hv.put_u64(1) | int(flags[-1])
    assert hv.uvm(va, (new << 12) | P | RW | A, flags) == 0
    assert probe.read(va).value == 0xBEE


def test_update_va_mapping_without_flush_leaves_the_engine_stale(hvp) -> None:
    hv, probe = hvp
    va = hv.scratch_page()
    hv.v.write_virt(va, struct.pack("<Q", 0xA1D))
    assert probe.read(va).value == 0xA1D
    new = hv.free_frame(struct.pack("<Q", 0xBEE))
    assert hv.uvm(va, (new << 12) | P | RW | A, 0) == 0
    assert probe.read(va).value == 0xA1D, "UVMF_NONE: the guest did not ask for a flush"
