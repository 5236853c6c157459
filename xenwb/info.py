"""`xenwb info GUEST`: the Xen notes and the start-of-day layout the builder will use."""

from __future__ import annotations

import argparse

from xenwb.builder import module_size
from xenwb.errors import XenwbError
from xenwb.examples import resolve_guest
from xenwb.layout import compute_layout
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
        lines.append("start-of-day layout: not computed for 64-bit guests yet")
    return "\n".join(lines)


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

