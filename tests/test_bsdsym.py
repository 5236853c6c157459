"""XEN_ELFNOTE_BSD_SYMTAB: the kernel's symbol table loaded after its image, as
xen/common/libelf/libelf-loader.c (elf_parse_bsdsyms, elf_load_bsdsyms) lays it out and
libelf-dominfo.c (elf_xen_addr_calc_check: virt_kend = bsd_symtab_pend) accounts for it."""

from __future__ import annotations

import struct

from elftools.elf.elffile import ELFFile
from support.harness import Hv

from xenwb.bsdsyms import bsd_symtab
from xenwb.examples import resolve_guest
from xenwb.loader import load_guest
from xenwb.machine import Machine, StopReason


def _sections(path) -> tuple[bytes, bytes]:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        return elf.get_section_by_name(".symtab").data(), elf.get_section_by_name(".strtab").data()


def test_guest_finds_its_symbol_table_after_its_image(guests) -> None:
    """The guest checks the size word, the ELF header and the section headers itself and that
    start_info lies past the table; here the bytes are compared with the file's .symtab and
    .strtab, and the kernel's end with elf_parse_bsdsyms's: for ELF32 libelf reserves 4 + 64 +
    3 x 40 header bytes but places the symtab after its whole 260-byte header struct."""
    g = guests["bsdsym"]
    hv = Hv(Machine(g.path))
    out: list[bytes] = []
    hv.dom.console_sink = out.append
    hv.m.set_limits(max_instructions=100_000)
    r = hv.m.run()
    assert r.reason is StopReason.shutdown and b"".join(out) == b"(d1) bsdsym: ok\n", b"".join(out)
    symtab, strtab = _sections(g.path)
    at = hv.u32(g.symbols["found"])
    assert at == (g.symbols["image_end"] + 3) & ~3
    size = hv.u32(at)
    sym_off = 260 - 4                                   # round_up(pstart + 260) - (pstart + 4)
    str_off = (sym_off + 4 + len(symtab) + 3 & ~3) - 4
    assert hv.get(at + 4 + sym_off, len(symtab)) == symtab
    assert hv.get(at + 4 + str_off, len(strtab)) == strtab
    assert size == str_off + len(strtab)
    shdrs = [struct.unpack("<10I", hv.get(at + 4 + 64 + 40 * i, 40)) for i in range(3)]
    assert shdrs[0] == (0,) * 10
    assert shdrs[1][1] == 2 and shdrs[1][4] == sym_off and shdrs[1][5] == len(symtab) and shdrs[1][6] == 2
    assert shdrs[2][1] == 3 and shdrs[2][4] == str_off and shdrs[2][5] == len(strtab)
    e_phoff, e_shoff = struct.unpack("<II", hv.get(at + 4 + 28, 8))
    e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx = struct.unpack("<6H", hv.get(at + 4 + 40, 12))
    assert (e_phoff, e_shoff, e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx) == \
        (0, 64, 52, 0, 0, 40, 3, 0)
    img = load_guest(g.path)
    reserved = 4 + 64 + 3 * 40 + (len(symtab) + 3 & ~3) + (len(strtab) + 3 & ~3)
    assert img.kernel_end == at + reserved                       # virt_kend: bsd_symtab_pend
    assert hv.dom.start_info_va >= img.kernel_end


def test_no_note_no_table(guests) -> None:
    """Without the note nothing follows the image and virt_kend is the segments' end."""
    img = load_guest(guests["hlt"].path)
    assert img.bsd_symtab_load is None
    assert img.kernel_end == max(s.paddr + s.memsz for s in img.segments) + img.virt_offset


def test_elf64_layout() -> None:
    """For ELF64 (pvdemo64, which has a symbol table) libelf rounds to 8 bytes and uses
    64-byte section headers: the symtab at round_up(pstart + 260, 8), the header's
    e_shentsize 64, and the reserved end 4 + 64 + 3 x 64 header bytes on."""
    path = resolve_guest("pvdemo64")
    blob = open(path, "rb").read()
    img = load_guest(path)
    lo = min(s.paddr for s in img.segments)
    hi = max(s.paddr + s.memsz for s in img.segments)
    t = bsd_symtab(64, blob, lo, hi)
    assert t is not None
    symtab, strtab = _sections(path)
    pstart = hi + 7 & ~7
    assert t.pstart == pstart
    r8 = lambda n: n + 7 & ~7                                       # noqa: E731
    assert t.pend == pstart + r8(r8(r8(4 + 64 + 3 * 64) + len(symtab)) + len(strtab))
    pieces = dict(t.pieces)
    sym_at = r8(pstart + 260)
    assert pieces[sym_at] == symtab and pieces[r8(sym_at + len(symtab))] == strtab
    head = pieces[pstart]
    assert head[4:8] == b"\x7fELF" and struct.unpack_from("<Q", head, 4 + 40)[0] == 64
    assert struct.unpack_from("<HH", head, 4 + 58) == (64, 3)
    shdr1 = pieces[pstart + 4 + 64 + 64]
    assert struct.unpack_from("<I", shdr1, 4)[0] == 2 and struct.unpack_from("<Q", shdr1, 24)[0] == sym_at - pstart - 4
