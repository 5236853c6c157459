"""`xenwb info` for 64-bit guests: the start-of-day layout it prints is the one the builder
really makes, checked against a built machine: start_info as the guest reads it at RSI (pt_base,
nr_pt_frames, mfn_list, first_p2m_pfn, nr_p2m_frames, mod_start, flags), vcpu 0's RSP/RSI, the
pfn of each region's first page through the M2P, the tables reachable from CR3 level by level,
and the end of the boot mapping. Two guests: pvdemo64 (p2m in the mapping) and a tiny kernel
with Linux's INIT_P2M and MOD_START_PFN notes, given a ramdisk (xg_dom_x86.c
alloc_p2m_list_x86_64, xg_dom_core.c: an unmapped module by pfn).
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from support import build_kernel, num_note, str_note, sym_note
from support.client import REPO
from support.harness import run_to_guest

from xenwb.abi import constants as C
from xenwb.examples import resolve_guest
from xenwb.hypervisor.paging import LONG, walk
from xenwb.info import describe
from xenwb.loader import load_guest
from xenwb.machine import Machine

BASE64 = 0xFFFF_FFFF_8000_0000
INIT_P2M_VA = 0x80_0000_0000
PAGE = 4096
NOTE_ENTRY, NOTE_VIRT_BASE, NOTE_PADDR_OFFSET, NOTE_XEN_VERSION, NOTE_GUEST_OS, NOTE_LOADER = 1, 3, 4, 5, 6, 8
NOTE_INIT_P2M, NOTE_MOD_START_PFN = 15, 16
REGION = re.compile(r"^  (\w+)\s+(0x[0-9a-f]{16}) - (0x[0-9a-f]{16})\s+pfn\s+(0x[0-9a-f]+)\s+(\d+) pages?", re.M)


def parse(text: str) -> dict:
    out: dict = {"regions": {m[0]: (int(m[1], 16), int(m[2], 16), int(m[3], 16), int(m[4]))
                             for m in REGION.findall(text)}}
    m = re.search(r"boot mapping ends at (0x[0-9a-f]+) \((\d+) pages\); tables: (\d+) L4, (\d+) L3, (\d+) L2, "
                  r"(\d+) L1 \(start_info.nr_pt_frames (\d+)\), L4 = pt_base (0x[0-9a-f]+)", text)
    assert m, text
    out["virt_end"], out["mapped"] = int(m[1], 16), int(m[2])
    out["tables"] = tuple(int(m[i]) for i in (3, 4, 5, 6))
    out["nr_pt_frames"], out["pt_base"] = int(m[7]), int(m[8], 16)
    m = re.search(r"initial rip (0x[0-9a-f]+), rsp (0x[0-9a-f]+), rsi = start_info (0x[0-9a-f]+)", text)
    out["rip"], out["rsp"], out["rsi"] = (int(m[i], 16) for i in (1, 2, 3))
    out["mfn_list"] = int(re.search(r"start_info.mfn_list (0x[0-9a-f]+)", text)[1], 16)
    if m := re.search(r"ramdisk\s+unmapped: pfn (0x[0-9a-f]+) - (0x[0-9a-f]+), (\d+) pages", text):
        out["module"] = (int(m[1], 16), int(m[2], 16), int(m[3]))
    if m := re.search(r"p2m list\s+(0x[0-9a-f]+) - (0x[0-9a-f]+)\s+pfn\s+(0x[0-9a-f]+)\s+(\d+) pages", text):
        out["p2m"] = (int(m[1], 16), int(m[2], 16), int(m[3], 16), int(m[4]))
        t = re.search(r"its tables: (\d+) L3, (\d+) L2, (\d+) L1 from pfn (0x[0-9a-f]+) .*first_p2m_pfn "
                      r"(0x[0-9a-f]+), nr_p2m_frames (\d+)", text)
        out["p2m_tables"] = (int(t[1]), int(t[2]), int(t[3]), int(t[4], 16))
        out["first_p2m_pfn"], out["nr_p2m_frames"] = int(t[5], 16), int(t[6])
    return out


def start_info(m: Machine):
    """start_info as the guest finds it: at RSI, through its own tables, at its first instruction."""
    run_to_guest(m)
    v = m.vcpus[0]
    r, _ = v.guest_regs()
    L = m.domain.abi.start_info
    return L.parse(v.read_virt(r["rsi"], L.size())), r


def pfn_of(m: Machine, va: int) -> int:
    w = walk(m.domain.mem, LONG, m.vcpus[0].cr3_mfn, va)
    assert w.mapped, f"{va:#x} is not mapped"
    return m.domain.physmap.m2p(w.mfn)


def tables_reached(m: Machine, lo: int, hi: int) -> dict[int, set[int]]:
    """Table frames (pfns) of each level on the walks of [lo, hi), page by page."""
    out: dict[int, set[int]] = {4: set(), 3: set(), 2: set(), 1: set()}
    for va in range(lo, hi, PAGE):
        for step in walk(m.domain.mem, LONG, m.vcpus[0].cr3_mfn, va).steps:
            out[step.level].add(m.domain.physmap.m2p(step.table_mfn))
    return out


def test_info_pvdemo64_is_what_the_builder_made() -> None:
    path = resolve_guest("pvdemo64")
    info = parse(describe(load_guest(path)))
    m = Machine(path)
    si, r = start_info(m)
    lay = info["regions"]
    assert list(lay) == ["kernel", "p2m", "start_info", "xenstore", "console", "pagetables", "stack"]
    base = m.image.virt_base
    for name, (va, end, pfn, pages) in lay.items():
        assert pfn == (va - base) // PAGE and end - va == pages * PAGE, name
        assert pfn_of(m, va) == pfn and pfn_of(m, end - 1) == pfn + pages - 1, name
    assert all(a[1] == b[0] for a, b in zip(lay.values(), list(lay.values())[1:], strict=False))
    assert (info["rsi"], info["rsp"], info["rip"]) == (r["rsi"], r["rsp"], r["rip"])
    assert info["rsi"] == lay["start_info"][0]
    assert (si.pt_base, si.nr_pt_frames, si.mfn_list) == (info["pt_base"], info["nr_pt_frames"], info["mfn_list"])
    assert si.mfn_list == lay["p2m"][0] and si.pt_base == lay["pagetables"][0]
    assert si.store_mfn == m.domain.physmap.mfn(lay["xenstore"][2])
    assert si.console_mfn == m.domain.physmap.mfn(lay["console"][2])
    assert si.nr_pages == 16384 and si.flags == C.SIF_VIRT_P2M_4TOOLS
    # the mapping ends where info says, and the tables that map it are the counted ones
    end = info["virt_end"]
    assert end % (4 << 20) == 0 and info["mapped"] == (end - base) // PAGE
    assert walk(m.domain.mem, LONG, m.vcpus[0].cr3_mfn, end - PAGE).mapped
    assert not walk(m.domain.mem, LONG, m.vcpus[0].cr3_mfn, end).mapped
    reached = tables_reached(m, base, end)
    assert tuple(len(reached[lv]) for lv in (4, 3, 2, 1)) == info["tables"] == (1, 1, 1, 2)
    pt_pfn = lay["pagetables"][2]
    ordered = [p for lv in (4, 3, 2, 1) for p in sorted(reached[lv])]
    assert ordered == list(range(pt_pfn, pt_pfn + sum(info["tables"])))        # L4, L3s, L2s, L1s
    assert sum(info["tables"]) == si.nr_pt_frames


@pytest.fixture(scope="module")
def linux_like(tmp_path_factory) -> Path:
    """A tiny x86_64 kernel with Linux's placement notes (INIT_P2M at L4 slot 1, MOD_START_PFN)."""
    notes = [str_note(NOTE_GUEST_OS, "linux"), str_note(NOTE_XEN_VERSION, "xen-3.0"),
             str_note(NOTE_LOADER, "generic"), num_note(NOTE_VIRT_BASE, BASE64, 8),
             num_note(NOTE_PADDR_OFFSET, 0, 8), sym_note(NOTE_ENTRY, "_start", 8),
             num_note(NOTE_INIT_P2M, INIT_P2M_VA, 8), num_note(NOTE_MOD_START_PFN, 1)]
    return build_kernel(tmp_path_factory.mktemp("k64"), bits=64, vbase=BASE64 + 0x1000000, lma_delta=BASE64,
                        name="linuxlike", phdr_notes=notes)


def test_info_init_p2m_and_mod_start_pfn_are_what_the_builder_made(linux_like: Path) -> None:
    module = bytes(range(256)) * 70                              # 17920 bytes: 5 pages
    info = parse(describe(load_guest(linux_like), 64, len(module)))
    assert "p2m" not in info["regions"] and "module" not in info["regions"]       # neither is mapped
    m = Machine(linux_like, module=module)
    si, r = start_info(m)
    base = m.image.virt_base
    mapped_end = info["virt_end"]
    # the ramdisk: right after the boot mapping, by pfn, whole pages
    mod_first, mod_last, mod_pages = info["module"]
    assert mod_first == (mapped_end - base) // PAGE and mod_pages == 5 and mod_last == mod_first + 4
    assert si.flags & C.SIF_MOD_START_PFN and si.mod_start == mod_first and si.mod_len == mod_pages * PAGE
    dom = m.domain
    assert dom.mem.read(dom.physmap.mfn(mod_first) << 12, PAGE) == module[:PAGE]
    assert dom.mem.read(dom.physmap.mfn(mod_last) << 12, len(module) - 4 * PAGE) == module[4 * PAGE:]
    # the p2m list: after the ramdisk, mapped at INIT_P2M by tables of its own
    va, end, pfn, pages = info["p2m"]
    assert va == si.mfn_list == INIT_P2M_VA == info["mfn_list"] and pages == 16384 * 8 // PAGE
    assert pfn == mod_last + 1 == si.first_p2m_pfn == info["first_p2m_pfn"]
    assert si.nr_p2m_frames == info["nr_p2m_frames"] == pages + sum(info["p2m_tables"][:3])
    assert pfn_of(m, va) == pfn and pfn_of(m, end - 1) == pfn + pages - 1
    p2m = m.vcpus[0].read_virt(va, 8 * 16)
    assert list(struct.unpack("<16Q", p2m)) == [dom.physmap.mfn(i) for i in range(16)]
    reached = tables_reached(m, va, end)
    l3, l2, l1, tables_pfn = info["p2m_tables"]
    assert (len(reached[3]), len(reached[2]), len(reached[1])) == (l3, l2, l1) == (1, 1, 1)
    assert reached[4] == {pfn_of(m, si.pt_base)}                                 # the shared L4
    assert sorted(reached[3] | reached[2] | reached[1]) == list(range(tables_pfn, tables_pfn + 3)) \
        and tables_pfn == pfn + pages
    assert (info["rsi"], info["rsp"]) == (r["rsi"], r["rsp"])


def test_xenwb_info_cli_prints_the_64bit_layout() -> None:
    p = subprocess.run([sys.executable, "-m", "xenwb", "info", "pvdemo64"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "not computed" not in p.stdout and "start-of-day layout (64 MiB" in p.stdout
    assert re.search(r"^\s+pagetables\s+0xffffffff8[0-9a-f]{7}", p.stdout, re.M)
    assert re.search(r"tables: 1 L4, 1 L3, 1 L2, 2 L1 \(start_info.nr_pt_frames 5\)", p.stdout), p.stdout
