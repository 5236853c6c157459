"""The domain builder: lay out and start a PV domU the way Xen's toolstack does.

Source: tools/libs/guest/xg_dom_core.c, xg_dom_x86.c (layout, bootstrap tables,
start_info, vcpu_x86_32, vcpu_x86_64, setup_pgtables_pv), xg_dom_boot.c (pin, shared_info),
and xen/arch/x86/domain.c (arch_set_info_guest) for the initial vcpu state.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from xenwb.abi import constants as C
from xenwb.backends import ConsoleBackend, StoreBackend
from xenwb.errors import XenwbError
from xenwb.hypervisor.domain import Domain
from xenwb.hypervisor.memory import MachineMemory
from xenwb.hypervisor.mm import MMError, Sharing
from xenwb.hypervisor.state import VcpuState
from xenwb.hypervisor.time import update_vcpu_time
from xenwb.hypervisor.vcpu import Vcpu32
from xenwb.hypervisor.vcpu64 import Vcpu64
from xenwb.hypervisor.xenarea import MAX_VCPUS, NONPAE_GEOMETRY, PAE_GEOMETRY
from xenwb.hypervisor.xenarea64 import MAX_VCPUS64, PV64_GEOMETRY
from xenwb.layout import BootLayout, Mapping, compute_layout, compute_layout64, page_count
from xenwb.loader import EM_X86_64, GuestImage

# Bootstrap table protections (xg_dom_x86.c)
L1_PROT = C._PAGE_PRESENT | C._PAGE_RW | C._PAGE_ACCESSED
L2_PROT = C._PAGE_PRESENT | C._PAGE_RW | C._PAGE_ACCESSED | C._PAGE_DIRTY | C._PAGE_USER
L3_PROT_PAE = C._PAGE_PRESENT
STORE_EVTCHN = 1       # the toolstack allocates these ports before boot
CONSOLE_EVTCHN = 2


@dataclass
class BuiltDomain:
    """What the toolstack made: the domain, its start-of-day layout, and the backends
    (playing domain 0) behind its console and xenstore ports."""

    domain: Domain
    layout: BootLayout
    console: ConsoleBackend
    store: StoreBackend


@dataclass
class BuildConfig:
    memory_mib: int = 64
    cmdline: str = ""
    module: bytes | None = None
    vcpus: int = 1


def build_domain(image: GuestImage, cfg: BuildConfig) -> BuiltDomain:
    long = image.machine == EM_X86_64
    if not long and image.hv_start_low is not None and image.hv_start_low > C.HYPERVISOR_VIRT_START_PAE:
        raise XenwbError(f"{image.path}: HV_START_LOW {image.hv_start_low:#x} is above "
                         f"{C.HYPERVISOR_VIRT_START_PAE:#x} (-ERANGE)")
    # Features Xen can honour for a PV domU: pagetable writes through the ptwr assist,
    # PAE top tables above 4 GiB (extended-cr3). Anything else required is refused.
    if image.features_required & ~((1 << C.XenFeat.writable_page_tables) | (1 << C.XenFeat.pae_pgdir_above_4gb)):
        names = image.feature_names(image.features_required)
        raise XenwbError(f"{image.path}: the guest requires features this Xen does not offer: {', '.join(names)}")
    max_vcpus = MAX_VCPUS64 if long else MAX_VCPUS
    if not 1 <= cfg.vcpus <= max_vcpus:
        raise XenwbError(f"--vcpus must be between 1 and {max_vcpus}")
    if cfg.memory_mib < 4 or cfg.memory_mib > 1536:
        raise XenwbError("--memory must be between 4 and 1536 MiB")
    if len(cfg.cmdline.encode()) >= 1024:
        raise XenwbError("--cmdline is longer than 1023 bytes (start_info.cmd_line)")
    if long:
        return _build_domain64(image, cfg)
    nr_pages = cfg.memory_mib * 256
    layout = compute_layout(image, nr_pages, len(cfg.module or b""))
    if layout.mapped_pages > nr_pages:
        raise XenwbError(f"{cfg.memory_mib} MiB is too small: the boot mapping alone needs "
                         f"{layout.mapped_pages * 4 // 1024 + 1} MiB")
    geo = PAE_GEOMETRY if image.is_pae else NONPAE_GEOMETRY
    if layout.virt_end > geo.hv_start:
        raise XenwbError(f"{image.path}: the boot mapping reaches into the hypervisor range")
    mem = MachineMemory(nr_pages)
    dom = Domain(image, mem, geo, nr_pages)
    dom.cmdline = cfg.cmdline
    if image.pae_mode in ("extended-cr3", "bimodal"):
        dom.vm_assist |= 1 << C.Vmasst.pae_extended_cr3
    pm = dom.physmap
    for pfn in range(nr_pages):
        mfn = pm.mfn(pfn)
        dom.mm.give(mfn)
        pm.set_m2p(mfn, pfn)
    dom.mm.share(dom.shared_info_mfn, Sharing.shared_rw)
    # the M2P frames belong to Xen: a domU reads them through Xen's own read-only
    # mapping and may not map them itself

    def write_va(va: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            cur = va + pos
            pfn = layout.pfn(cur)
            chunk = min(len(data) - pos, 4096 - (cur & 0xFFF))
            mem.write((pm.mfn(pfn) << 12) | (cur & 0xFFF), data[pos: pos + chunk])
            pos += chunk

    # kernel image, placed by p_paddr (libelf elf_load_binary); BSS is already zero
    for seg in image.segments:
        write_va(seg.paddr + image.virt_offset, seg.data)
    _load_bsd_symtab(image, write_va)
    if cfg.module:
        write_va(layout.module.va, cfg.module)
    # p2m list
    write_va(layout.p2m.va, struct.pack(f"<{nr_pages}I", *pm.p2m))
    _build_pagetables(dom, layout, write_va)
    start_info = _fill_start_info(dom, layout, cfg, write_va)
    if image.hypercall_page is not None:
        dom.write_hypercall_page(pm.mfn(layout.pfn(image.hypercall_page)))
    top_mfn = pm.mfn(layout.pfn(layout.pagetables.va))
    _isolate_for_engines(dom, lambda va: pm.mfn(layout.pfn(va)))
    console, store = _boot_late(dom, cfg, start_info, top_mfn, Vcpu32)
    start_vcpu0(dom, dom.vcpus[0], layout, top_mfn)
    for v in dom.vcpus:
        update_vcpu_time(dom, v)
    return BuiltDomain(dom, layout, console, store)


def _isolate_for_engines(dom: Domain, va_to_mfn: Callable[[int], int]) -> None:
    """Before the vcpus' engines exist: the shared_info page and the frames of each of the
    kernel's segments get unicorn regions of their own (hypervisor/memory.py says why), so
    that watching the upcall mask of a vcpu_info in the kernel's data (where pvdemo and
    Linux register theirs) retranslates no kernel code and splits no region bigger than
    the segment holding it (measured on pvdemo-pae: its 200 KiB data region splits in
    about 63 us, the 8 MiB chunk around it in about 120 us)."""
    dom.mem.isolate(dom.shared_info_mfn << 12, 4096)
    image = dom.image
    for seg in image.segments:
        if not seg.memsz:
            continue
        start = (seg.paddr + image.virt_offset) & ~0xFFF
        mfns = [va_to_mfn(va) for va in range(start, seg.paddr + image.virt_offset + seg.memsz, 4096)]
        run = [mfns[0], mfns[0]]                   # machine-contiguous runs, either direction
        for mfn in mfns[1:] + [None]:
            if mfn is not None and mfn in (run[0] - 1, run[1] + 1):
                run = [min(run[0], mfn), max(run[1], mfn)]
                continue
            dom.mem.isolate(run[0] << 12, (run[1] - run[0] + 1) << 12)
            if mfn is not None:
                run = [mfn, mfn]


def _boot_late(dom: Domain, cfg: BuildConfig, start_info, top_mfn: int,
               vcpu_class: type[Vcpu32] | type[Vcpu64]) -> tuple[ConsoleBackend, StoreBackend]:
    """What both widths do once the image and tables are in place: pin the top-level table
    (MMUEXT_PIN_L*_TABLE, bootlate_pv), start every vcpu_info with events masked, wire the
    console and store, create the vcpus and announce them in xenstore."""
    try:
        dom.mm.pin(top_mfn, dom.mm.top_type())
    except MMError as e:
        raise XenwbError(f"bootstrap pagetables rejected: {e.why}") from None
    si_layout, vi = dom.abi.shared_info, dom.abi.vcpu_info
    for i in range(C.XEN_LEGACY_MAX_VCPUS):
        dom.mem.write((dom.shared_info_mfn << 12) + si_layout.offset("vcpu_info") + vi.size() * i
                      + vi.offset("evtchn_upcall_mask"), b"\x01")
    console, store = _connect_backends(dom, start_info)
    for vid in range(cfg.vcpus):
        dom.vcpus.append(vcpu_class(dom, vid))
    store.seed_vcpus(cfg.vcpus)            # xenstore cpu/<i>/availability
    return console, store


def _load_bsd_symtab(image: GuestImage, write_va: Callable[[int, bytes], None]) -> None:
    """elf_load_binary's last step, elf_load_bsdsyms: the symbol table after the image."""
    if image.bsd_symtab_load is not None:
        for paddr, data in image.bsd_symtab_load.pieces:
            write_va(paddr + image.virt_offset, data)


def _connect_backends(dom: Domain, si) -> tuple[ConsoleBackend, StoreBackend]:
    """The toolstack's ports (libxl allocates them unbound; xenconsoled and xenstored, here
    the workbench's backends playing domain 0, bind them), and the grant entries it reserves
    for the rings (xc_dom_gnttab_seed)."""
    console = ConsoleBackend(dom, CONSOLE_EVTCHN, si.console_mfn)
    store = StoreBackend(dom, STORE_EVTCHN, si.store_mfn, console_port=CONSOLE_EVTCHN, console_mfn=si.console_mfn)
    dom.evtchn.connect_backend(STORE_EVTCHN, store)
    dom.evtchn.connect_backend(CONSOLE_EVTCHN, console)
    dom.gnttab.seed(si.console_mfn, si.store_mfn)
    return console, store


def _build_pagetables(dom: Domain, layout: BootLayout, write_va) -> None:
    mode = dom.mode
    pm = dom.physmap
    span = layout.tables
    tables_pfn = layout.pfn(layout.pagetables.va)
    pt_pfns = set(range(tables_pfn, tables_pfn + span.total))
    vbase, vend = layout.virt_base, layout.virt_end
    pfn_iter = iter(range(tables_pfn, tables_pfn + span.total))

    def pte_bytes(v: int) -> bytes:
        return struct.pack("<Q" if mode.pte_size == 8 else "<I", v)

    if mode.levels == 3:
        l3_pfn = next(pfn_iter)
        first_gib = vbase >> 30
        l2_pfn = {g: next(pfn_iter) for g in range(first_gib, 4)}
        for g, p in l2_pfn.items():
            write_va(vbase + l3_pfn * 4096 + g * 8, pte_bytes((pm.mfn(p) << 12) | L3_PROT_PAE))
    else:
        l2_only = next(pfn_iter)
        l2_pfn = {0: l2_only}
    span_l1 = mode.level_span(2)
    va = vbase & ~(span_l1 - 1)
    while va < vend:
        l1 = next(pfn_iter)
        if mode.levels == 3:
            l2 = l2_pfn[va >> 30]
            idx = (va >> 21) & 511
        else:
            l2 = l2_pfn[0]
            idx = va >> 22
        write_va(vbase + l2 * 4096 + idx * mode.pte_size, pte_bytes((pm.mfn(l1) << 12) | L2_PROT))
        entries = []
        for i in range(mode.entries):
            pva = va + i * 4096
            if vbase <= pva < vend:
                pfn = layout.pfn(pva)
                prot = L1_PROT & ~C._PAGE_RW if pfn in pt_pfns else L1_PROT
                entries.append((pm.mfn(pfn) << 12) | prot)
            else:
                entries.append(0)
        fmt = f"<{mode.entries}{'Q' if mode.pte_size == 8 else 'I'}"
        write_va(vbase + l1 * 4096, struct.pack(fmt, *entries))
        va += span_l1


def _fill_start_info(dom: Domain, layout: BootLayout, cfg: BuildConfig, write_va) -> Any:
    si = dom.abi.start_info()
    si.magic = dom.image.guest_type.encode()
    si.nr_pages = dom.nr_pages
    si.shared_info = dom.shared_info_mfn << 12
    si.flags = 0
    si.store_mfn = dom.physmap.mfn(layout.pfn(layout.xenstore.va))
    si.store_evtchn = STORE_EVTCHN
    si.console_mfn = dom.physmap.mfn(layout.pfn(layout.console.va))
    si.console_evtchn = CONSOLE_EVTCHN
    si.pt_base = layout.pagetables.va
    si.nr_pt_frames = layout.tables.total
    si.mfn_list = layout.p2m.va
    si.mod_start = layout.module.va if layout.module else 0
    si.mod_len = len(cfg.module or b"")
    si.cmd_line = cfg.cmdline.encode()[:1023]
    write_va(layout.start_info.va, bytes(si))
    dom.start_info_va = layout.start_info.va
    return si


def start_vcpu0(dom: Domain, v: Vcpu32, layout: BootLayout, top_mfn: int) -> None:
    """vcpu_x86_32 + arch_set_info_guest: ring-1 entry with ESI = start_info."""
    dom.mm.get_root(top_mfn)
    v.cr3_mfn = top_mfn
    cpu = v.cpu
    cpu.start_paging(top_mfn)
    for seg in ("ds", "es", "fs", "gs"):
        cpu.set_reg(seg, C.FLAT_RING1_DS)
    for r in ("eax", "ebx", "ecx", "edx", "edi", "ebp"):
        cpu.set_reg(r, 0)
    cpu.set_reg("esi", layout.start_info.va)
    v.kernel_ss, v.kernel_sp = C.FLAT_RING1_SS, layout.stack_top
    v.debugreg[6], v.debugreg[7] = 0xFFFF0FF0, 0x400
    cpu.transfer(dom.image.entry, C.FLAT_RING1_CS, 0x202, layout.stack_top, C.FLAT_RING1_SS)
    v.state = VcpuState.running
    v.runstate_state = 0
    v.initialised = True


# ---------------------------------------------------------------- x86_64
L1_PROT64 = C._PAGE_PRESENT | C._PAGE_RW | C._PAGE_ACCESSED
UPPER_PROT64 = C._PAGE_PRESENT | C._PAGE_RW | C._PAGE_ACCESSED | C._PAGE_DIRTY | C._PAGE_USER


def _build_domain64(image: GuestImage, cfg: BuildConfig) -> BuiltDomain:
    """xc_dom_build_image for an x86_64 guest (xg_dom_x86.c: alloc_pgtables_x86_64,
    alloc_p2m_list_x86_64, setup_pgtables_x86_64, start_info_x86_64, vcpu_x86_64)."""
    nr_pages = cfg.memory_mib * 256
    module = cfg.module or b""
    layout = compute_layout64(image, nr_pages, len(module))
    if page_count(layout) > nr_pages:
        raise XenwbError(f"{cfg.memory_mib} MiB is too small: the boot mapping alone needs "
                         f"{page_count(layout) * 4 // 1024 + 1} MiB")
    mem = MachineMemory(nr_pages)
    dom = Domain(image, mem, PV64_GEOMETRY, nr_pages)
    dom.cmdline = cfg.cmdline
    pm = dom.physmap
    for pfn in range(nr_pages):
        mfn = pm.mfn(pfn)
        dom.mm.give(mfn)
        pm.set_m2p(mfn, pfn)
    dom.mm.share(dom.shared_info_mfn, Sharing.shared_rw)

    def write_pfn(pfn: int, data: bytes) -> None:
        for off in range(0, len(data), 4096):
            mem.write(pm.mfn(pfn + off // 4096) << 12, data[off: off + 4096])

    def write_va(va: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            cur = va + pos
            chunk = min(len(data) - pos, 4096 - (cur & 0xFFF))
            mem.write((pm.mfn(layout.pfn(cur)) << 12) | (cur & 0xFFF), data[pos: pos + chunk])
            pos += chunk

    for seg in image.segments:                     # placed by p_paddr (libelf elf_load_binary)
        write_va(seg.paddr + image.virt_offset, seg.data)
    _load_bsd_symtab(image, write_va)
    flags = C.SIF_VIRT_P2M_4TOOLS
    if module:
        if layout.module_pfn is not None:
            write_pfn(layout.module_pfn, module)
            flags |= C.SIF_MOD_START_PFN
        else:
            write_va(layout.module.va, module)
    p2m = struct.pack(f"<{nr_pages}Q", *pm.p2m)
    if layout.p2m_pfn is not None:
        write_pfn(layout.p2m_pfn, p2m)
    else:
        write_va(layout.p2m.va, p2m)
    _setup_pgtables64(dom, layout.mappings)
    start_info = _fill_start_info64(dom, layout, cfg, flags, write_va)
    if image.hypercall_page is not None:
        dom.write_hypercall_page(pm.mfn(layout.pfn(image.hypercall_page)))
    top_mfn = pm.mfn(layout.mappings[0].lvls[3].pfn)
    _isolate_for_engines(dom, lambda va: pm.mfn(layout.pfn(va)))
    console, store = _boot_late(dom, cfg, start_info, top_mfn, Vcpu64)
    start_vcpu0_64(dom, dom.vcpus[0], layout, top_mfn)
    for v in dom.vcpus:
        update_vcpu_time(dom, v)
    return BuiltDomain(dom, layout, console, store)


def _setup_pgtables64(dom: Domain, maps: list[Mapping]) -> None:
    """setup_pgtables_pv: fill every mapping's tables, top level first; an L1 entry mapping a
    page-table page of any mapping is read-only (get_pg_prot)."""
    pm = dom.physmap
    table_pfns = [m.table_pfns for m in maps]
    for lv in range(3, -1, -1):
        for m1 in maps:
            t = m1.lvls[lv]
            if not t.count:
                continue
            frm, to = t.frm, t.to
            shift = 12 + lv * 9
            entries: dict[int, int] = {}
            for m2 in maps:
                if lv > 0:
                    src = m2.lvls[lv - 1]
                    if not src.count:
                        continue
                    sfrm, sto, spfn = src.frm, src.to, src.pfn
                else:
                    sfrm, sto, spfn = m2.frm, m2.to, m2.pfn
                if sfrm >= to or sto <= frm:
                    continue
                p_s = (max(frm, sfrm) - frm) >> shift
                p_e = (min(to, sto) - frm) >> shift
                pfn = ((max(frm, sfrm) - sfrm) >> shift) + spfn
                for p in range(p_s, p_e + 1):
                    if lv > 0:
                        prot = UPPER_PROT64
                    else:
                        prot = L1_PROT64 & ~C._PAGE_RW if any(pfn in r for r in table_pfns) else L1_PROT64
                    entries[p] = (pm.mfn(pfn) << 12) | prot
                    pfn += 1
            for p, pte in entries.items():
                dom.mem.write_u64((pm.mfn(t.pfn + p // 512) << 12) + 8 * (p % 512), pte)


def _fill_start_info64(dom: Domain, layout: BootLayout, cfg: BuildConfig, flags: int, write_va) -> Any:
    si = dom.abi.start_info()
    si.magic = dom.image.guest_type.encode()
    si.nr_pages = dom.nr_pages
    si.shared_info = dom.shared_info_mfn << 12
    si.flags = flags
    si.store_mfn = dom.physmap.mfn(layout.pfn(layout.xenstore.va))
    si.store_evtchn = STORE_EVTCHN
    si.console_mfn = dom.physmap.mfn(layout.pfn(layout.console.va))
    si.console_evtchn = CONSOLE_EVTCHN
    si.pt_base = layout.pagetables.va
    si.nr_pt_frames = layout.mappings[0].pgtables
    si.mfn_list = layout.p2m.va
    if layout.p2m_pfn is not None:
        si.first_p2m_pfn = layout.p2m_pfn
        si.nr_p2m_frames = layout.p2m.pages + layout.mappings[1].pgtables
    if cfg.module:
        if layout.module_pfn is not None:
            si.mod_start, si.mod_len = layout.module_pfn, layout.module.size   # pfn; whole pages
        else:
            si.mod_start, si.mod_len = layout.module.va, len(cfg.module)
    si.cmd_line = cfg.cmdline.encode()[:1023]
    write_va(layout.start_info.va, bytes(si))
    dom.start_info_va = layout.start_info.va
    return si


def start_vcpu0_64(dom: Domain, v: Vcpu64, layout: BootLayout, top_mfn: int) -> None:
    """vcpu_x86_64 + arch_set_info_guest: RIP = entry, RSP past the boot stack, RSI =
    start_info, CS/SS FLAT_KERNEL_CS64/SS64 (0xe033/0xe02b), data selectors NUL, RFLAGS IF,
    kernel mode, CR3 = the pinned L4 (with the RO M2P: fill_ro_mpt), no user L4."""
    dom.mm.get_root(top_mfn)
    if not dom.mm.m2p_strict:
        dom.mm.fill_ro_mpt(top_mfn)
    v.cr3_mfn = top_mfn
    cpu = v.cpu
    cpu.start_paging(top_mfn)
    for r in ("rax", "rbx", "rcx", "rdx", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"):
        cpu.set_reg(r, 0)
    for seg in ("ds", "es", "fs", "gs"):
        cpu.set_reg(seg, 0)
    cpu.set_reg("rsi", layout.start_info.va)
    v.kernel_ss, v.kernel_sp = C.FLAT_KERNEL_SS64, layout.stack_top
    v.debugreg[6], v.debugreg[7] = 0xFFFF0FF0, 0x400
    v.exit_to(dom.image.entry, C.FLAT_KERNEL_CS64, 0x202, layout.stack_top, C.FLAT_KERNEL_SS64, sysret=False)
    v.state = VcpuState.running
    v.runstate_state = 0
    v.initialised = True


MODULE_MAX_BYTES = 1 << 30      # the most a module (ramdisk) file may have


def _module_limit(memory_mib: int | None) -> tuple[int, str]:
    """The most bytes a module may have, and the reason as the user sees it."""
    if memory_mib is not None and 0 < memory_mib << 20 < MODULE_MAX_BYTES:
        return memory_mib << 20, f"the guest's {memory_mib} MiB of memory"
    return MODULE_MAX_BYTES, f"the {MODULE_MAX_BYTES >> 20} MiB limit for a module"


def _open_module(path: str, memory_mib: int | None) -> int:
    """Open a module file: a regular file within the limit (checked on the open file, before any read)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise XenwbError(f"{path}: cannot read module: {e.strerror or e}") from None
    st = os.fstat(fd)
    limit, what = _module_limit(memory_mib)
    why = None
    if stat.S_ISDIR(st.st_mode):
        why = "it is a directory"
    elif not stat.S_ISREG(st.st_mode):
        why = "not a regular file"
    elif st.st_size > limit:
        why = f"{st.st_size} bytes, more than {what}"
    if why is not None:
        os.close(fd)
        raise XenwbError(f"{path}: cannot use as module: {why}")
    return fd


def module_size(path: str, memory_mib: int | None = None) -> int:
    """The size of a module file, checked as load_module checks it (nothing is read)."""
    fd = _open_module(path, memory_mib)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def load_module(path: str | None, memory_mib: int | None = None) -> bytes | None:
    """A module (ramdisk) file's bytes: a regular file of at most 1 GiB and at most the guest's
    memory, checked before anything is read."""
    if not path:
        return None
    fd = _open_module(path, memory_mib)
    limit, what = _module_limit(memory_mib)
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)            # the file may have grown since the check
    except OSError as e:
        raise XenwbError(f"{path}: cannot read module: {e.strerror or e}") from None
    if len(data) > limit:
        raise XenwbError(f"{path}: cannot use as module: more than {what}")
    return data
