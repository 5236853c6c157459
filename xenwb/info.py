"""`xenwb info GUEST`: the Xen notes and the start-of-day layout the builder will use."""

from __future__ import annotations

import argparse

from xenwb.builder import module_size
from xenwb.errors import XenwbError
from xenwb.examples import resolve_guest
from xenwb.layout import compute_layout, compute_layout64, page_count
from xenwb.loader import GuestImage, load_guest


def describe(img: GuestImage, memory_mib: int = 64, module_size: int = 0) -> str:
    entry_sym = img.symbolize(img.entry)
    entry = f"{img.entry:#010x}" + (f" <{entry_sym}>" if entry_sym else "") + f" ({img.entry_source})"
    lines = [f"guest:          {img.path}"]
    lines += [f"unpacked:       {p.describe()}" for p in img.packing]
    lines += [f"ELF:            ELF{img.elfclass} {img.machine}, notes from {img.notes_source}",
              f"guest type:     {img.guest_type}",
              f"guest OS:       {img.guest_os} {img.guest_version}".rstrip(),
              f"loader:         {img.loader or '(none)'}",
              f"Xen version:    {img.xen_version or '(none)'}",
              f"PAE mode:       {img.pae_mode}",
              f"virt base:      {img.virt_base:#010x}",
              f"paddr offset:   {img.paddr_offset:#010x}",
              f"entry:          {entry}",
              "hypercall page: " + (f"{img.hypercall_page:#010x} (filled by the builder)"
                                    if img.hypercall_page is not None else "none (the guest writes the MSR)"),
              f"features:       {' '.join(img.feature_names(img.features_supported)) or '(none)'}",
              f"  required:     {' '.join(img.feature_names(img.features_required)) or '(none)'}",
              f"kernel:         [{img.kernel_start:#010x}, {img.kernel_end:#010x})",
              f"symbols:        {_symbols_line(img)}"]
    if img.init_p2m is not None:
        lines.append(f"p2m list:       mapped at {img.init_p2m:#x} (INIT_P2M), outside the kernel mapping")
    if img.mod_start_pfn:
        lines.append("ramdisk:        may stay unmapped, given by its first pfn (MOD_START_PFN)")
    lines.append("notes:")
    for n in img.notes:
        if isinstance(n.value, int):
            v = f"{n.value:#x}"
            if img.notes_source == "__xen_guest":
                v += f" (from {n.raw.decode('latin-1')!r})"
        else:
            v = repr(n.value) if isinstance(n.value, str) else n.value.hex()
        lines.append(f"  {n.type_name:<18} {v}")
    if img.machine == "EM_386":
        nr_pages = memory_mib * 256
        lay = compute_layout(img, nr_pages, module_size)
        if lay.mapped_pages > nr_pages:          # as build_domain refuses it
            raise XenwbError(f"{memory_mib} MiB is too small: the boot mapping alone needs "
                             f"{lay.mapped_pages * 4 // 1024 + 1} MiB")
        lines.append(f"start-of-day layout ({memory_mib} MiB, {nr_pages} pages, pfn = (va - virt_base) / 4096):")
        for r in lay.regions:
            lines.append(f"  {r.name:<11} {r.va:#010x} - {r.end:#010x}  pfn {lay.pfn(r.va):#7x}  "
                         f"{r.pages:5d} page{'s' if r.pages != 1 else ''}")
        t = lay.tables
        lines.append(f"  boot mapping ends at {lay.virt_end:#010x} ({lay.mapped_pages} pages); "
                     f"tables: {t.l3} L3, {t.l2} L2, {t.l1} L1")
        lines.append(f"  initial esp {lay.stack_top:#010x}, esi = start_info {lay.start_info.va:#010x}")
    else:
        lines += _layout64(img, memory_mib, module_size)
    return "\n".join(lines)


def _layout64(img: GuestImage, memory_mib: int, module_size: int) -> list[str]:
    """The x86_64 builder's layout (xg_dom_x86.c, xenwb.layout.compute_layout64): the mapped
    regions from virt_base, the four levels of boot tables, the padded end of the mapping, then
    what lies past it: the unmapped ramdisk (MOD_START_PFN) and the p2m list at INIT_P2M with
    its own tables; the registers vcpu 0 starts with."""
    nr_pages = memory_mib * 256
    lay = compute_layout64(img, nr_pages, module_size)
    needed = page_count(lay)
    if needed > nr_pages:                          # as _build_domain64 refuses it
        raise XenwbError(f"{memory_mib} MiB is too small: the boot mapping alone needs "
                         f"{needed * 4 // 1024 + 1} MiB")
    out = [f"start-of-day layout ({memory_mib} MiB, {nr_pages} pages, pfn = (va - virt_base) / 4096):"]
    for r in lay.regions:
        out.append(f"  {r.name:<11} {r.va:#018x} - {r.end:#018x}  pfn {lay.pfn(r.va):#7x}  "
                   f"{r.pages:5d} page{'s' if r.pages != 1 else ''}")
    t = lay.tables
    out.append(f"  boot mapping ends at {lay.virt_end:#018x} ({lay.mapped_pages} pages); "
               f"tables: {t.l4} L4, {t.l3} L3, {t.l2} L2, {t.l1} L1 (start_info.nr_pt_frames {t.total}), "
               f"L4 = pt_base {lay.pagetables.va:#x}")
    if lay.module is not None and lay.module_pfn is not None:
        out.append(f"  ramdisk     unmapped: pfn {lay.module_pfn:#x} - {lay.module_pfn + lay.module.pages - 1:#x}, "
                   f"{lay.module.pages} pages (MOD_START_PFN: start_info.mod_start = its first pfn, "
                   "flags SIF_MOD_START_PFN)")
    if lay.p2m_pfn is not None:
        p2m_map = lay.mappings[1]
        lv = p2m_map.lvls
        out.append(f"  p2m list    {lay.p2m.va:#018x} - {lay.p2m.end:#018x}  pfn {lay.p2m_pfn:#7x}  "
                   f"{lay.p2m.pages:5d} pages (INIT_P2M: outside the kernel mapping)")
        out.append(f"              its tables: {lv[2].count} L3, {lv[1].count} L2, {lv[0].count} L1 from pfn "
                   f"{lv[3].pfn:#x} (the L4 is shared); start_info.first_p2m_pfn {lay.p2m_pfn:#x}, "
                   f"nr_p2m_frames {lay.p2m.pages + p2m_map.pgtables}")
    out.append(f"  populated: {needed} pages; start_info.mfn_list {lay.p2m.va:#x}")
    out.append(f"  initial rip {img.entry:#018x}, rsp {lay.stack_top:#018x}, "
               f"rsi = start_info {lay.start_info.va:#018x}")
    return out


def _symbols_line(img: GuestImage) -> str:
    if not img.symbols_source:
        return "0"
    if not img.symbols:
        return (f"0 in the kernel's range from {img.symbols_source} (Debian ships a placeholder System.map; "
                "the real one is in linux-image-*-dbg: scripts/fetch-linux --symbols)")
    return f"{len(img.symbols)} from {img.symbols_source}"


def cmd_info(args: argparse.Namespace) -> int:
    img = load_guest(resolve_guest(args.guest), symbols=args.symbols)
    size = module_size(args.module, args.memory) if args.module else 0
    print(describe(img, args.memory, size))
    return 0

