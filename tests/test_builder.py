"""The domain builder (xenwb/builder.py) against the rules of Xen's toolstack.

Every rule is checked on the machine the builder produced, by reading guest memory and machine
memory directly, for a PAE and a non-PAE guest. Rules (ABI sheet sections 1.2-1.8):
* layout and bootstrap tables: tools/libs/guest/xg_dom_x86.c (alloc_pgtables_pv, setup_pgtables_pv:
  L1 entries P|RW|A, table frames read-only, upper levels P|RW|A|D|USER; PAE L3 slot 3 present);
* start_info: xen/include/public/xen.h and xg_dom_x86.c (start_info_x86_32);
* pinning and shared_info: tools/libs/guest/xg_dom_boot.c (xc_dom_boot_image: pin the top table,
  evtchn_upcall_mask = 1 in every vcpu_info);
* the Xen slots and the M2P: xen/arch/x86/include/asm/config.h (compat M2P at 0xF5800000),
  xen/arch/x86/mm.c (init_xen_pae_l2_slots), x86_32 Xen 3.2 for the non-PAE layout;
* hypercall page: xen/arch/x86/pv/hypercall.c (hypercall_page_initialise_ring1_kernel);
* initial vcpu state: xg_dom_x86.c vcpu_x86_32 and xen/arch/x86/domain.c arch_set_info_guest.
"""

from __future__ import annotations

import struct

import pytest
from support.harness import PAGE, Hv, example_machine, expected_hypercall_page, run_to_guest

from xenwb.abi.structs import PV32
from xenwb.errors import XenwbError
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.mm import PageType
from xenwb.hypervisor.paging import translate

P, RW, US, A, D = 0x1, 0x2, 0x4, 0x20, 0x40
M2P_START = {True: 0xF5800000, False: 0xFC000000}
MAGIC = {True: b"xen-3.0-x86_32p", False: b"xen-3.0-x86_32"}


def start_info(hv: Hv):
    lay = hv.layout
    return PV32.start_info.parse(hv.get(lay.start_info.va, PV32.start_info.size()))


# ---------------------------------------------------------------- the boot mapping
def test_boot_mapping_protections(hv: Hv) -> None:
    """xg_dom_x86.c: every page of [virt_base, virt_pgtab_end) is mapped to p2m[pfn] with
    L1 flags P|RW|A, except the page-table frames, which are mapped without RW."""
    lay = hv.layout
    pt = lay.pagetables
    assert lay.mapped_pages * PAGE == lay.virt_end - lay.virt_base
    assert lay.virt_end % (4 << 20) == 0 and lay.virt_end - lay.stack.end >= 512 * 1024
    for va in range(lay.virt_base, lay.virt_end, PAGE):
        w = hv.walk(va)
        assert w.mapped, f"{va:#x} not mapped"
        assert w.mfn == hv.dom.physmap.mfn(lay.pfn(va))
        l1e = w.steps[-1].pte
        if pt.va <= va < pt.end:
            assert l1e & 0xFFF == P | A, f"pagetable page {va:#x}: L1 flags {l1e & 0xFFF:#x}"
            assert not w.writable
        else:
            assert l1e & 0xFFF == P | RW | A, f"{va:#x}: L1 flags {l1e & 0xFFF:#x}"
            assert w.writable
    # nothing mapped right after the boot mapping or below virt_base
    assert not hv.walk(lay.virt_end).mapped
    assert not hv.walk(lay.virt_base - PAGE).mapped


def test_upper_level_entries(hv: Hv) -> None:
    """L2 entries of the boot mapping carry P|RW|A|D|USER (xg_dom_x86.c L2_PROT)."""
    lay = hv.layout
    span = 2 << 20 if hv.pae else 4 << 20
    for va in range(lay.virt_base, lay.virt_end, span):
        l2 = [s for s in hv.walk(va).steps if s.level == 2][0]
        assert l2.pte & 0xFFF == P | RW | A | D | US
        assert hv.dom.mm.page(hv.mode.pte_mfn(l2.pte)).type == PageType.l1


def test_table_count_and_order(hv: Hv) -> None:
    """Top level first, then L2s, then L1s; pt_base/nr_pt_frames match (xg_dom_x86.c)."""
    mfns = hv.table_mfns()
    t = hv.layout.tables
    assert len(mfns) == t.total
    types = [hv.dom.mm.page(m).type for m in mfns]
    if hv.pae:
        assert types == [PageType.l3] + [PageType.l2] * t.l2 + [PageType.l1] * t.l1
    else:
        assert types == [PageType.l2] + [PageType.l1] * t.l1
    assert mfns[0] == hv.v.cr3_mfn


# ---------------------------------------------------------------- p2m / m2p
def test_p2m_is_a_permutation_not_identity_and_m2p_is_its_inverse(hv: Hv) -> None:
    pm = hv.dom.physmap
    n = hv.dom.nr_pages
    p2m = [pm.mfn(pfn) for pfn in range(n)]
    assert len(set(p2m)) == n
    assert any(mfn != pfn for pfn, mfn in enumerate(p2m)), "p2m is the identity"
    assert len({mfn - pfn for pfn, mfn in enumerate(p2m)}) > 1, "p2m is a constant offset"
    for pfn, mfn in enumerate(p2m):
        assert pm.m2p(mfn) == pfn


def test_p2m_list_in_guest_memory(hv: Hv) -> None:
    """start_info.mfn_list points at nr_pages u32 entries equal to the physmap (xen.h)."""
    si = start_info(hv)
    n = hv.dom.nr_pages
    raw = hv.get(si.mfn_list, 4 * n)
    assert list(struct.unpack(f"<{n}I", raw)) == [hv.dom.physmap.mfn(p) for p in range(n)]


def test_m2p_visible_read_only_at_mach2phys_virt_start(hv: Hv) -> None:
    """The guest reads the M2P at MACH2PHYS_VIRT_START (0xF5800000 PV32 / 0xFC000000 x86_32),
    read-only (config.h; x86_32 Xen 3.2 xen-x86_32.h)."""
    start = M2P_START[hv.pae]
    assert hv.dom.geo.m2p_start == start
    mem, mode, cr3 = hv.dom.mem, hv.mode, hv.v.cr3_mfn
    w = hv.walk(start)
    assert w.mapped and not w.writable
    assert translate(mem, mode, cr3, start, write=True) is None
    pm = hv.dom.physmap
    n = hv.dom.nr_pages
    top = max(pm.mfn(p) for p in range(n))
    raw = hv.v.debug_read(start, 4 * (top + 1))
    assert len(raw) == 4 * (top + 1)
    m2p = struct.unpack(f"<{top + 1}I", raw)
    for pfn in range(0, n, 7):
        assert m2p[pm.mfn(pfn)] == pfn
    # copy_from_guest refuses the hypervisor range even where it is mapped
    with pytest.raises(GuestFault):
        hv.v.read_virt(start, 4)


# ---------------------------------------------------------------- start_info
@pytest.mark.parametrize("guest", ["pvdemo-pae", "pvdemo-nonpae"])
def test_start_info_fields(guest: str) -> None:
    cmdline = "console=hvc0 xenwb.test=1"
    hv = Hv.example(guest, cmdline=cmdline, memory_mib=32)
    lay = hv.layout
    pm = hv.dom.physmap
    si = start_info(hv)
    assert si.magic == MAGIC[hv.pae]
    assert si.nr_pages == 32 * 256 == hv.dom.nr_pages
    assert si.shared_info == hv.dom.shared_info_mfn << 12     # a machine address, not a VA
    assert si.flags == 0                                       # a domU
    assert si.store_mfn == pm.mfn(lay.pfn(lay.xenstore.va))
    assert si.console_mfn == pm.mfn(lay.pfn(lay.console.va))
    assert 0 < si.store_evtchn < 1024 and 0 < si.console_evtchn < 1024
    assert si.store_evtchn != si.console_evtchn
    assert si.pt_base == lay.pagetables.va
    assert si.nr_pt_frames == lay.pagetables.pages == lay.tables.total
    assert si.mfn_list == lay.p2m.va
    assert si.mod_start == 0 and si.mod_len == 0
    assert si.cmd_line == cmdline.encode()
    # the console and xenstore pages start zeroed except for what the ring protocol defines
    assert hv.get(lay.xenstore.va, 2048) == bytes(2048)


def test_module_is_placed_at_mod_start() -> None:
    module = bytes(range(256)) * 40 + b"END"
    hv = Hv.example("pvdemo-pae", module=module)
    si = start_info(hv)
    assert hv.layout.module is not None
    assert si.mod_start == hv.layout.module.va
    assert si.mod_len == len(module)
    assert hv.get(si.mod_start, len(module)) == module
    # the module follows the kernel and precedes the p2m (xg_dom_core.c element order)
    assert hv.layout.kernel.end <= si.mod_start < hv.layout.p2m.va


def test_too_small_memory_is_refused() -> None:
    with pytest.raises(XenwbError):
        example_machine("pvdemo-pae", memory_mib=2)
    # 4 MiB of RAM cannot hold a boot mapping that a 4 MiB module pushes past 4 MiB
    with pytest.raises(XenwbError, match="too small"):
        example_machine("pvdemo-pae", memory_mib=4, module=bytes(4 << 20))


# ---------------------------------------------------------------- pinned top table, Xen slots
def test_top_table_pinned_and_validated(hv: Hv) -> None:
    """xg_dom_boot.c pins the top table: PIN_L3 (x86_32p) or PIN_L2 (x86_32)."""
    top = hv.v.cr3_mfn
    pi = hv.dom.mm.page(top)
    assert top == hv.dom.physmap.mfn(hv.layout.pfn(hv.layout.pagetables.va))
    assert pi.pinned and pi.validated and pi.type_count >= 1
    assert pi.type == (PageType.l3 if hv.pae else PageType.l2)
    assert hv.v.cpu.reg("cr3") >> 12 == top


def test_pae_l3_slot3_and_xen_slots(hv_pae: Hv) -> None:
    """PV32: L3[3] present; its L2 is the pae_xen_l2 holding Xen's slots 428..511, which map
    the compat M2P (mm.c init_xen_pae_l2_slots); L3 entries 4..511 are zero."""
    hv = hv_pae
    mem = hv.dom.mem
    l3 = hv.v.cr3_mfn
    l3e = [mem.read_u64((l3 << 12) + 8 * i) for i in range(512)]
    assert l3e[3] & P
    assert all(e == 0 for e in l3e[4:])
    l2 = hv.mode.pte_mfn(l3e[3])
    assert l2 == hv.table_mfns()[1]
    pi = hv.dom.mm.page(l2)
    assert pi.type == PageType.l2 and pi.pae_xen_l2
    first = (0xF5800000 >> 21) & 511
    assert first == 428 == hv.dom.geo.first_xen_l2_slot
    l2e = [mem.read_u64((l2 << 12) + 8 * i) for i in range(512)]
    assert l2e[428] & P and hv.mode.pte_mfn(l2e[428]) == hv.dom.xen.m2p_l1s[0]
    assert l2e[511] & P


def test_nonpae_xen_slots(hv_nonpae: Hv) -> None:
    """x86_32 Xen: slots 1008..1023 (0xFC000000 and up) of every L2 belong to Xen."""
    hv = hv_nonpae
    mem = hv.dom.mem
    l2 = hv.v.cr3_mfn
    l2e = [mem.read_u32((l2 << 12) + 4 * i) for i in range(1024)]
    assert hv.dom.geo.first_xen_l2_slot == 1008 == 0xFC000000 >> 22
    assert l2e[1008] & P and hv.mode.pte_mfn(l2e[1008]) == hv.dom.xen.m2p_l1s[0]
    assert l2e[1023] & P
    assert l2e[0xC0000000 >> 22] & P


# ---------------------------------------------------------------- shared_info, hypercall page
def test_shared_info_events_masked(hv: Hv) -> None:
    """xg_dom_boot.c: shared_info zeroed, evtchn_upcall_mask = 1 in all 32 vcpu_info."""
    si = hv.dom.mem.read(hv.shared_info_maddr(), PV32.shared_info.size())
    for i in range(32):
        vi = si[64 * i: 64 * (i + 1)]
        assert vi[1] == 1, f"vcpu_info[{i}].evtchn_upcall_mask"
        assert vi[0] == 0 and vi[4:8] == bytes(4)
    off = PV32.shared_info.offset("evtchn_pending")
    assert si[off: off + 128] == bytes(128)


@pytest.mark.parametrize("guest", ["pvdemo-pae", "pvdemo-nonpae-note"])
def test_hypercall_page_bytes(guest: str) -> None:
    hv = Hv.example(guest)
    va = hv.m.image.hypercall_page
    assert va is not None and va % PAGE == 0
    assert hv.get(va, PAGE) == expected_hypercall_page()
    assert hv.dom.hypercall_page_mfn == hv.mfn_of(va)


def test_no_hypercall_page_without_the_note(hv_nonpae: Hv) -> None:
    """Without XEN_ELFNOTE_HYPERCALL_PAGE nothing is filled before boot (the guest uses the MSR)."""
    hv = hv_nonpae
    assert hv.m.image.hypercall_page is None
    assert hv.dom.hypercall_page_mfn is None
    sym = hv.m.image.lookup("hypercall_page")
    assert sym is not None
    assert hv.get(sym.address, PAGE) == b"\xcc" * PAGE


# ---------------------------------------------------------------- vcpu0
def test_vcpu0_initial_state(hv: Hv) -> None:
    """vcpu_x86_32 + arch_set_info_guest: EIP=entry, ESP=stack top, ESI=start_info,
    other GPRs 0, EFLAGS 0x202, CS 0xE019, SS/DS/ES/FS/GS 0xE021, kernel_ss:sp = SS:ESP,
    DR6 0xFFFF0FF0, DR7 0x400, empty trap table, no callbacks, events masked."""
    lay = hv.layout
    v = hv.v
    eip, cs, eflags, esp, ss = hv.guest_frame()
    assert eip == hv.m.image.entry
    assert (cs, ss) == (0xE019, 0xE021)
    assert eflags == 0x202
    assert esp == lay.stack_top == lay.stack.end
    r = v.cpu.regs()
    assert r["esi"] == lay.start_info.va
    assert all(r[g] == 0 for g in ("eax", "ebx", "ecx", "edx", "edi", "ebp"))
    assert all(r[s] == 0xE021 for s in ("ds", "es", "fs", "gs"))
    assert (v.kernel_ss, v.kernel_sp) == (0xE021, lay.stack_top)
    assert v.debugreg[6] == 0xFFFF0FF0 and v.debugreg[7] == 0x400
    assert all(t is None for t in v.trap_ctxt)
    assert v.event_cs == 0 and v.failsafe_cs == 0
    assert v.gdt_ents == 0 and v.iopl == 0
    assert v.upcall_mask == 1


def test_vcpu0_enters_guest_at_entry_in_ring1(hv: Hv) -> None:
    run_to_guest(hv.m)
    r = hv.v.cpu.regs()
    assert r["eip"] == hv.m.image.entry
    assert (r["cs"], r["ss"]) == (0xE019, 0xE021)
    assert r["esp"] == hv.layout.stack_top
    assert r["esi"] == hv.layout.start_info.va
    assert r["eflags"] & 0x200
