"""The symbol table a XEN_ELFNOTE_BSD_SYMTAB kernel gets loaded after its image, laid out as
Xen's libelf lays it out (xen/common/libelf/libelf-loader.c: elf_init finds the table,
elf_parse_bsdsyms sizes it, elf_load_bsdsyms writes it; libelf-dominfo.c moves virt_kend):

    round_up(pend)       size (u32): bytes from the ELF header to the end of the strtab
    + 4                  an ELF header copied from the kernel's: e_shoff = 64, e_shnum = 3,
                         no program headers, e_shstrndx 0 (in libelf's 64-byte union)
    + 4 + 64             3 section headers: null, the SYMTAB (sh_link 2), its STRTAB, with
                         sh_offset relative to the ELF header
    round_up(+260)       the symtab (libelf places it after its whole packed header struct:
                         4 + 64 + 3 x 64 bytes, whatever the ELF class)
    round_up(...)        the strtab

`round_up` is libelf's elf_round_up: to 4 bytes (ELF32) or 8 (ELF64). The end libelf
reserves (bsd_symtab_pend) is computed with the class's own section header size, so for an
ELF32 kernel the strtab really ends 72 bytes past it; what falls outside the kernel segment
(virt_kstart .. virt_kend, in whole pages) is not written (elf_memcpy_safe). The parts libelf
leaves uninitialised (section header 0, the end of the header union) are zero here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SHT_SYMTAB, SHT_STRTAB = 2, 3
EV_CURRENT = 1
BSDSYM_SECTIONS = 3
SYMTAB_INDEX, STRTAB_INDEX = 1, 2
EHDR_UNION = 64                      # sizeof(elf_ehdr): union of Elf32_Ehdr and Elf64_Ehdr
SHDR_UNION = 64                      # sizeof(elf_shdr)
HEADER_STRUCT = 4 + EHDR_UNION + BSDSYM_SECTIONS * SHDR_UNION   # sizeof(struct elf_sym_header), packed
PAGE_SIZE = 4096


@dataclass(frozen=True)
class _Shdr:
    raw: bytes
    type: int
    offset: int
    size: int
    link: int


@dataclass(frozen=True)
class BsdSymtab:
    """Where libelf puts the symbol table (physical, as p_paddr) and what it writes there."""

    pstart: int                      # bsd_symtab_pstart
    pend: int                        # bsd_symtab_pend: the new end of the kernel (virt_kend)
    pieces: tuple[tuple[int, bytes], ...]   # (paddr, bytes) written by elf_load_bsdsyms


def _round_up(elfclass: int, addr: int) -> int:
    """libelf-tools.c elf_round_up."""
    r = (8 if elfclass == 64 else 4) - 1
    return (addr + r) & ~r


def _shdr(elfclass: int, blob: bytes, at: int) -> _Shdr | None:
    size = 64 if elfclass == 64 else 40
    raw = blob[at: at + size]
    if at < 0 or len(raw) < size:
        return None
    if elfclass == 64:
        _n, typ, _f, _a, off, sz, link = struct.unpack_from("<IIQQQQI", raw)
    else:
        _n, typ, _f, _a, off, sz, link = struct.unpack_from("<IIIIIII", raw)
    return _Shdr(raw, typ, off, sz, link)


def _set_shdr(elfclass: int, raw: bytes, offset: int, link: int | None = None) -> bytes:
    b = bytearray(raw)
    if elfclass == 64:
        struct.pack_into("<Q", b, 24, offset)
        if link is not None:
            struct.pack_into("<I", b, 40, link)
    else:
        struct.pack_into("<I", b, 16, offset)
        if link is not None:
            struct.pack_into("<I", b, 24, link)
    return bytes(b)


def _header(elfclass: int, ehdr: bytes) -> bytes:
    """The ELF header of the loaded table: the kernel's, with the fields libelf stores."""
    b = bytearray(EHDR_UNION)
    if elfclass == 64:
        b[:64] = ehdr[:64]
        struct.pack_into("<I", b, 20, EV_CURRENT)
        struct.pack_into("<QQ", b, 32, 0, EHDR_UNION)            # e_phoff, e_shoff
        struct.pack_into("<HHHHHH", b, 52, 64, 0, 0, 64, BSDSYM_SECTIONS, 0)
    else:
        b[:52] = ehdr[:52]
        struct.pack_into("<I", b, 20, EV_CURRENT)
        struct.pack_into("<II", b, 28, 0, EHDR_UNION)            # e_phoff, e_shoff
        struct.pack_into("<HHHHHH", b, 40, 52, 0, 0, 40, BSDSYM_SECTIONS, 0)
    return bytes(b)


def find_symtab(elfclass: int, blob: bytes, shoff: int, shnum: int, shentsize: int) -> _Shdr | None:
    """elf_init: the first SHT_SYMTAB section; the search ends at one whose sh_link is out of range."""
    for i in range(1, shnum):
        sh = _shdr(elfclass, blob, shoff + i * shentsize)
        if sh is None:
            return None
        if sh.type != SHT_SYMTAB:
            continue
        if not 0 < sh.link < shnum:
            return None
        return sh
    return None


def bsd_symtab(elfclass: int, blob: bytes, pstart_kernel: int, pend_kernel: int) -> BsdSymtab | None:
    """elf_parse_bsdsyms + elf_load_bsdsyms for the ELF in blob whose loadable segments span
    [pstart_kernel, pend_kernel); None when it has no usable symbol table."""
    if elfclass == 64:
        shoff, = struct.unpack_from("<Q", blob, 40)
        shentsize, shnum = struct.unpack_from("<HH", blob, 58)
    else:
        shoff, = struct.unpack_from("<I", blob, 32)
        shentsize, shnum = struct.unpack_from("<HH", blob, 46)
    symtab = find_symtab(elfclass, blob, shoff, shnum, shentsize)
    if symtab is None:
        return None
    strtab = _shdr(elfclass, blob, shoff + symtab.link * shentsize)
    if strtab is None or strtab.type != SHT_STRTAB:
        return None
    shdr_size = 64 if elfclass == 64 else 40
    # elf_parse_bsdsyms: what the kernel's end moves to
    pstart = _round_up(elfclass, pend_kernel)
    sz = _round_up(elfclass, 4 + EHDR_UNION + BSDSYM_SECTIONS * shdr_size)
    sz = _round_up(elfclass, sz + symtab.size)
    sz = _round_up(elfclass, sz + strtab.size)
    pend = pstart + sz
    # elf_load_bsdsyms: what is written
    elf_header_base = pstart + 4
    symtab_base = _round_up(elfclass, pstart + HEADER_STRUCT)
    strtab_base = _round_up(elfclass, symtab_base + symtab.size)
    sections = [bytes(shdr_size),
                _set_shdr(elfclass, symtab.raw, symtab_base - elf_header_base, STRTAB_INDEX),
                _set_shdr(elfclass, strtab.raw, strtab_base - elf_header_base)]
    size = strtab_base + strtab.size - elf_header_base
    dest_end = pstart_kernel + (pend - pstart_kernel + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    symtab_data = blob[symtab.offset: symtab.offset + symtab.size]
    strtab_data = blob[strtab.offset: strtab.offset + strtab.size]
    pieces = [(symtab_base, symtab_data, len(symtab_data) == symtab.size),
              (strtab_base, strtab_data, len(strtab_data) == strtab.size),
              (pstart, struct.pack("<I", size & 0xFFFFFFFF) + _header(elfclass, blob), True)]
    pieces += [(pstart + 4 + EHDR_UNION + shdr_size * i, s, True) for i, s in enumerate(sections)]
    # elf_memcpy_safe copies nothing from outside the file or to outside the kernel segment
    kept = tuple((at, data) for at, data, whole in pieces if whole and at + len(data) <= dest_end)
    return BsdSymtab(pstart, pend, kept)
