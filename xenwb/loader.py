"""Guest kernel loader: segments, Xen notes and symbols, read as Xen's libelf reads them.

The file may be an ELF, a gzip'ed ELF or a bzImage (unpacked by xenwb/bzimage.py, as the toolstack does).
Symbols come from the ELF's symbol table or from a System.map.

Sources: xen/common/libelf/{libelf-dominfo.c, libelf-loader.c, libelf-tools.c},
tools/libs/guest/{xg_dom_elfloader.c, xg_dom_core.c}, xen/include/public/elfnote.h.
"""

from __future__ import annotations

import bisect
import io
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

from xenwb.abi import constants as C
from xenwb.abi.constants import XenFeat
from xenwb.abi.elfnotes import FEATURE_NAMES, NUMERIC_NOTES, STRING_NOTES, ElfNote
from xenwb.bsdsyms import BsdSymtab, bsd_symtab
from xenwb.bzimage import Packing, unpack_kernel
from xenwb.errors import GuestImageError

EM_386 = "EM_386"
EM_X86_64 = "EM_X86_64"
SHT_SYMTAB, SHT_NOTE = 2, 7
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2
STB_GLOBAL = 1
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
MAX_GUEST_FILE = 1 << 30        # tools/include/xenguest.h XC_DOM_DECOMPRESS_MAX, the toolstack's kernel size limit


@dataclass
class Segment:
    """One PT_LOAD segment, placed by p_paddr as libelf does."""

    paddr: int
    vaddr: int
    data: bytes      # p_filesz bytes
    memsz: int
    flags: int

    @property
    def writable(self) -> bool:
        return bool(self.flags & P_FLAGS.PF_W)

    @property
    def executable(self) -> bool:
        return bool(self.flags & P_FLAGS.PF_X)


@dataclass
class Note:
    type: int
    value: int | str | bytes
    raw: bytes

    @property
    def type_name(self) -> str:
        try:
            return ElfNote(self.type).name
        except ValueError:
            return f"UNKNOWN({self.type:#x})"


@dataclass
class Symbol:
    address: int
    size: int
    name: str


@dataclass
class GuestImage:
    """A parsed PV guest kernel: what the domain builder needs to load it."""

    path: Path
    elfclass: int                        # 32 or 64
    machine: str                         # EM_386 / EM_X86_64
    elf_entry: int
    segments: list[Segment]
    notes: list[Note]
    notes_source: str                    # "PT_NOTE", "SHT_NOTE" or "__xen_guest"
    virt_base: int = 0
    paddr_offset: int = 0
    entry: int = 0
    entry_source: str = ""               # "ENTRY note", "VIRT_ENTRY" (legacy string) or "e_entry"
    hypercall_page: int | None = None    # VA, or None (the guest uses the MSR)
    xen_version: str = ""
    guest_os: str = ""
    guest_version: str = ""
    loader: str = ""
    pae_mode: str = "no"                 # "no", "yes", "extended-cr3", "bimodal"
    features_supported: int = 0          # XENFEAT bitmap the kernel can use
    features_required: int = 0           # bitmap of features marked with '!'
    bsd_symtab: bool = False
    bsd_symtab_load: BsdSymtab | None = None   # the symbol table loaded after the image (bsdsyms.py)
    hv_start_low: int | None = None
    suspend_cancel: bool = False
    init_p2m: int | None = None
    mod_start_pfn: bool = False
    l1_mfn_valid: list[tuple[int, int]] = field(default_factory=list)
    packing: list[Packing] = field(default_factory=list)   # layers unpacked to reach the ELF (bzImage, gzip)
    symbols: list[Symbol] = field(default_factory=list)     # sorted by address
    symbols_source: str = ""             # "ELF symbol table", a System.map path, or "" (none)
    _sym_addrs: list[int] = field(default_factory=list, repr=False)
    _by_name: dict[str, Symbol] | None = field(default=None, repr=False)
    _lines: list[tuple[int, str, int]] | None = field(default=None, repr=False)
    _line_addrs: list[int] = field(default_factory=list, repr=False)

    # -- derived ---------------------------------------------------------------
    @property
    def virt_offset(self) -> int:
        return self.virt_base - self.paddr_offset

    @property
    def kernel_start(self) -> int:
        """First kernel VA: min(p_paddr) + virt_offset (libelf elf_xen_addr_calc_check)."""
        return min(s.paddr for s in self.segments) + self.virt_offset

    @property
    def kernel_end(self) -> int:
        """virt_kend: the end of the loadable segments, or of the BSD symbol table loaded after
        them (libelf-dominfo.c elf_xen_addr_calc_check)."""
        if self.bsd_symtab_load is not None:
            return self.bsd_symtab_load.pend + self.virt_offset
        return max(s.paddr + s.memsz for s in self.segments) + self.virt_offset

    @property
    def is_pae(self) -> bool:
        return self.pae_mode != "no"

    @property
    def guest_type(self) -> str:
        """The start_info magic / capability string (xg_dom_elfloader.c)."""
        if self.machine == EM_X86_64:
            return "xen-3.0-x86_64"
        return "xen-3.0-x86_32p" if self.is_pae else "xen-3.0-x86_32"

    def feature_names(self, bitmap: int) -> list[str]:
        """XENFEAT names of the bits set in bitmap (public/features.h), ``bitN`` for bits it does not name."""
        return [XenFeat(b).name if b in XenFeat._value2member_map_ else f"bit{b}"
                for b in range(bitmap.bit_length()) if bitmap >> b & 1]

    def note(self, kind: ElfNote) -> Note | None:
        for n in self.notes:
            if n.type == kind:
                return n
        return None

    # -- symbols ---------------------------------------------------------------
    def symbol_at(self, addr: int) -> tuple[Symbol, int] | None:
        """The symbol covering addr (or the nearest one before it) and the offset."""
        i = bisect.bisect_right(self._sym_addrs, addr) - 1
        if i < 0:
            return None
        sym = self.symbols[i]
        if sym.size and addr >= sym.address + sym.size:
            # past the end of a sized symbol: still name it if nothing follows closely
            if addr - sym.address > 0x10000:
                return None
        return sym, addr - sym.address

    def symbolize(self, addr: int) -> str | None:
        hit = self.symbol_at(addr)
        if hit is None:
            return None
        sym, off = hit
        return f"{sym.name}+{off:#x}" if off else sym.name

    def line_at(self, addr: int) -> tuple[str, int, int, int] | None:
        """(file, line, start, end) of the source line whose code holds addr (DWARF .debug_line).
        A packed kernel (bzImage, gzip) has none: its ELF is stripped and not a file of its own."""
        if self._lines is None:
            self._lines = [] if self.packing else _line_table(self.path)
            self._line_addrs = [e[0] for e in self._lines]
        i = bisect.bisect_right(self._line_addrs, addr) - 1
        if i < 0 or i + 1 >= len(self._lines):
            return None
        start, file, line = self._lines[i]
        end = self._lines[i + 1][0]
        if not start <= addr < end or end - start > 0x10000:
            return None
        return file, line, start, end

    def lookup(self, name: str) -> Symbol | None:
        """The lowest-addressed symbol of that name."""
        if self._by_name is None:
            self._by_name = {}
            for s in self.symbols:
                self._by_name.setdefault(s.name, s)
        return self._by_name.get(name)


def _read_num(desc: bytes) -> int:
    """libelf elf_note_numeric: 1, 2, 4 or 8 bytes little-endian, anything else is 0."""
    if len(desc) in (1, 2, 4, 8):
        return int.from_bytes(desc, "little")
    return 0


def _read_str(desc: bytes) -> str:
    return desc.split(b"\0", 1)[0].decode("latin-1")


def strtoull(text: str) -> int:
    """C strtoull(text, NULL, 0): optional 0x/0 prefix, digits until the first non-digit."""
    t = text.strip()
    base = 10
    if t[:2].lower() == "0x":
        base, t = 16, t[2:]
    elif t[:1] == "0" and len(t) > 1:
        base, t = 8, t[1:]
    digits = "0123456789abcdef"[:base]
    n = 0
    for ch in t.lower():
        d = digits.find(ch)
        if d < 0:
            break
        n = n * base + d
    return n & 0xFFFFFFFFFFFFFFFF


def _iter_notes(blob: bytes) -> list[tuple[bytes, int, bytes]]:
    """Walk an ELF note area. A note running past the area is cut short, not refused,
    the way libelf's bounded reads treat it (GRUB ships such a PAE_MODE note)."""
    out = []
    off = 0
    while off + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, off)
        off += 12
        name = blob[off: off + namesz]
        off += (namesz + 3) & ~3
        desc = blob[off: off + descsz]
        off += (descsz + 3) & ~3
        out.append((name.rstrip(b"\0"), ntype, desc))
    return out


def _parse_xen_notes(raw: list[tuple[bytes, int, bytes]]) -> list[Note]:
    notes = []
    for name, ntype, desc in raw:
        if name != b"Xen":
            continue
        value: int | str | bytes
        if ntype in STRING_NOTES:
            value = _read_str(desc)
        elif ntype in NUMERIC_NOTES:
            value = _read_num(desc)
        else:
            value = desc
        notes.append(Note(ntype, value, desc))
    return notes


def _legacy_notes(text: str) -> list[Note]:
    """Translate the old ``__xen_guest`` string into notes holding the values libelf derives from it
    (libelf-dominfo.c elf_xen_parse_guest_info); ``raw`` keeps the text of each item.

    HYPERCALL_PAGE is a page number there: the note holds its address, VIRT_BASE + number * 4096
    (the number alone when the string has no VIRT_BASE)."""
    items: dict[str, str] = {}
    for item in text.split(","):
        if item:
            key, _, val = item.partition("=")
            items[key] = val
    notes: list[Note] = []
    strings = {"LOADER": ElfNote.LOADER, "GUEST_OS": ElfNote.GUEST_OS, "GUEST_VER": ElfNote.GUEST_VERSION,
               "XEN_VER": ElfNote.XEN_VERSION, "FEATURES": ElfNote.FEATURES}
    numbers = {"VIRT_BASE": ElfNote.VIRT_BASE, "VIRT_ENTRY": ElfNote.ENTRY, "ELF_PADDR_OFFSET": ElfNote.PADDR_OFFSET}
    for key, val in items.items():
        if key in strings:
            notes.append(Note(strings[key], val, val.encode()))
        elif key in numbers:
            notes.append(Note(numbers[key], strtoull(val), val.encode()))
        elif key == "PAE":
            mode = "extended-cr3" if val == "yes[extended-cr3]" else ("yes" if val.startswith("yes") else "no")
            notes.append(Note(ElfNote.PAE_MODE, mode, val.encode()))
        elif key == "BSD_SYMTAB":
            notes.append(Note(ElfNote.BSD_SYMTAB, "yes", val.encode()))
        elif key == "HYPERCALL_PAGE":
            base = strtoull(items["VIRT_BASE"]) if "VIRT_BASE" in items else 0
            addr = ((strtoull(val) << 12) + base) & 0xFFFFFFFFFFFFFFFF
            notes.append(Note(ElfNote.HYPERCALL_PAGE, addr, val.encode()))
    return notes


def _parse_features(text: str) -> tuple[int, int]:
    """FEATURES note: names separated by '|', '!' marks a required feature."""
    supported = required = 0
    for name in filter(None, (t.strip() for t in text.split("|"))):
        req = name.startswith("!")
        name = name.lstrip("!")
        bit = FEATURE_NAMES.get(name)
        if bit is None:
            if req:
                raise GuestImageError(f"unknown required feature {name!r} in the FEATURES note")
            continue
        supported |= 1 << bit
        if req:
            required |= 1 << bit
    return supported, required


def load_guest(path: str | Path, symbols: str | Path | None = None) -> GuestImage:
    """Parse a PV guest kernel: an ELF, a gzip'ed ELF or a bzImage. Raises GuestImageError with a one-line reason.

    Symbols come from ``symbols`` (a System.map) if given, else from the ELF's symbol table, else from a
    System.map found next to the kernel (see ``find_system_map``)."""
    path = Path(path)
    blob = _read_guest_file(path)
    try:
        elf_blob, packing = unpack_kernel(blob)
    except GuestImageError as e:
        raise GuestImageError(f"{path}: {e}") from None
    if elf_blob[:4] != b"\x7fELF":
        what = "not an ELF file" if not packing else f"the {packing[-1].container} does not hold an ELF file"
        raise GuestImageError(f"{path}: {what}")
    try:
        img = _load(path, elf_blob)
    except (ELFError, struct.error, ValueError, IndexError, KeyError, AssertionError) as e:
        if isinstance(e, GuestImageError):
            raise
        raise GuestImageError(f"{path}: malformed or truncated ELF ({e})") from None
    img.packing = packing
    map_path = Path(symbols) if symbols is not None else None
    if map_path is None and not img.symbols:
        map_path = find_system_map(path)
    if map_path is not None:
        img.symbols = read_system_map(map_path, img.kernel_start, img.kernel_end)
        img.symbols_source = str(map_path)
    img._sym_addrs = [s.address for s in img.symbols]
    return img


def _read_guest_file(path: Path) -> bytes:
    """The guest file's bytes, refused before reading unless it is a regular file of at most MAX_GUEST_FILE
    bytes (the toolstack's limit on a kernel, XC_DOM_DECOMPRESS_MAX in xenguest.h)."""
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise GuestImageError(f"{path}: is a directory, not a kernel file")
        if not stat.S_ISREG(st.st_mode):
            raise GuestImageError(f"{path}: not a regular file")
        if st.st_size > MAX_GUEST_FILE:
            raise GuestImageError(f"{path}: {st.st_size:,} bytes, more than the {MAX_GUEST_FILE:,} a kernel may have")
        with open(path, "rb") as fh:
            blob = fh.read(MAX_GUEST_FILE + 1)
    except OSError as e:
        raise GuestImageError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(blob) > MAX_GUEST_FILE:
        raise GuestImageError(f"{path}: grew past {MAX_GUEST_FILE:,} bytes while being read")
    return blob


def _load(path: Path, blob: bytes) -> GuestImage:
    elf = ELFFile(io.BytesIO(blob))
    machine = elf["e_machine"]
    if machine not in (EM_386, EM_X86_64):
        raise GuestImageError(f"{path}: ELF for {machine}, not x86 (EM_386 or EM_X86_64)")
    if elf["e_type"] != "ET_EXEC":
        raise GuestImageError(f"{path}: not an executable ELF ({elf['e_type']})")

    segments = []
    note_blobs = []
    for i, seg in enumerate(elf.iter_segments()):
        ptype = seg["p_type"]
        off, filesz, memsz = seg["p_offset"], seg["p_filesz"], seg["p_memsz"]
        # libelf elf_phdr_is_loadable: a PT_LOAD with none of R, W, X is not loaded
        loadable = ptype == "PT_LOAD" and seg["p_flags"] & (P_FLAGS.PF_R | P_FLAGS.PF_W | P_FLAGS.PF_X)
        if (loadable or ptype == "PT_NOTE") and off + filesz > len(blob):
            raise GuestImageError(f"{path}: truncated ELF (a {ptype} segment runs past the end of the file)")
        if loadable:
            if filesz > memsz:
                # libelf would copy p_filesz bytes into a p_memsz-byte segment (elf_load_image): broken
                raise GuestImageError(f"{path}: program header {i}: p_filesz {filesz:#x} is larger than "
                                      f"p_memsz {memsz:#x}")
            segments.append(Segment(seg["p_paddr"], seg["p_vaddr"], blob[off: off + filesz], memsz, seg["p_flags"]))
        elif ptype == "PT_NOTE" and off:      # libelf skips note segments with p_offset 0 (old binutils)
            note_blobs.append(blob[off: off + filesz])
    if not segments:
        raise GuestImageError(f"{path}: no loadable segments")

    sections = _section_headers(path, elf, blob)
    notes: list[Note] = []
    source = ""
    for nb in note_blobs:
        notes += _parse_xen_notes(_iter_notes(nb))
    if notes:
        source = "PT_NOTE"
    else:
        for sec in sections:
            if sec.type == SHT_NOTE:
                notes += _parse_xen_notes(_iter_notes(sec.data(blob)))
        if notes:
            source = "SHT_NOTE"
        else:
            guest_info = next((sec for sec in sections if sec.name == "__xen_guest"), None)
            if guest_info is not None:
                notes = _legacy_notes(_read_str(guest_info.data(blob)))
                source = "__xen_guest"
    if not notes:
        raise GuestImageError(f"{path}: no Xen ELF notes (not a Xen PV kernel)")

    img = GuestImage(path=path, elfclass=elf.elfclass, machine=machine, elf_entry=elf["e_entry"],
                     segments=segments, notes=notes, notes_source=source)
    _apply_notes(img)
    if img.bsd_symtab:
        img.bsd_symtab_load = bsd_symtab(elf.elfclass, blob, min(s.paddr for s in segments),
                                         max(s.paddr + s.memsz for s in segments))
    _check(img, path)
    img.symbols = _elf_symbols(elf.elfclass, sections, blob)
    if img.symbols:
        img.symbols_source = "ELF symbol table"
    return img


def _apply_notes(img: GuestImage) -> None:
    """Fill the image from its notes (libelf elf_xen_parse_note), then apply libelf's defaults
    (elf_xen_addr_calc_check): VIRT_BASE 0; PADDR_OFFSET 0, or VIRT_BASE for the legacy string;
    the entry from e_entry unless a note gave one, 0 included."""
    virt_base = paddr_offset = entry = None
    for n in img.notes:
        t, v = n.type, n.value
        if t == ElfNote.VIRT_BASE:
            virt_base = int(v)  # type: ignore[arg-type]
        elif t == ElfNote.PADDR_OFFSET:
            paddr_offset = int(v)  # type: ignore[arg-type]
        elif t == ElfNote.ENTRY:
            entry = int(v)  # type: ignore[arg-type]
        elif t == ElfNote.HYPERCALL_PAGE:
            img.hypercall_page = int(v)  # type: ignore[arg-type]
        elif t == ElfNote.XEN_VERSION:
            img.xen_version = str(v)
        elif t == ElfNote.GUEST_OS:
            img.guest_os = str(v)
        elif t == ElfNote.GUEST_VERSION:
            img.guest_version = str(v)
        elif t == ElfNote.LOADER:
            img.loader = str(v)
        elif t == ElfNote.PAE_MODE:
            s = str(v)
            if img.notes_source == "__xen_guest":
                img.pae_mode = s          # already translated from the PAE= item
            elif "bimodal" in s:
                img.pae_mode = "bimodal"
            elif s == "yes":              # libelf: "yes" means PAE with extended-cr3
                img.pae_mode = "extended-cr3"
            else:
                img.pae_mode = "no"
        elif t == ElfNote.FEATURES:
            sup, req = _parse_features(str(v))
            img.features_supported |= sup
            img.features_required |= req
        elif t == ElfNote.SUPPORTED_FEATURES:
            # elf_note_numeric_array(note, 4, 0): the first 32-bit word, if the size is a multiple of 4
            if n.raw and len(n.raw) % 4 == 0:
                img.features_supported |= int.from_bytes(n.raw[:4], "little")
        elif t == ElfNote.BSD_SYMTAB:
            img.bsd_symtab = str(v).startswith("yes")
        elif t == ElfNote.HV_START_LOW:
            img.hv_start_low = int(v)  # type: ignore[arg-type]
        elif t == ElfNote.SUSPEND_CANCEL:
            img.suspend_cancel = bool(v)
        elif t == ElfNote.INIT_P2M:
            img.init_p2m = int(v)  # type: ignore[arg-type]
        elif t == ElfNote.MOD_START_PFN:
            img.mod_start_pfn = bool(v)
        elif t == ElfNote.L1_MFN_VALID and isinstance(v, bytes):
            w = 8 if img.elfclass == 64 else 4
            vals = [int.from_bytes(v[i:i + w], "little") for i in range(0, len(v) - w + 1, w)]
            img.l1_mfn_valid = list(zip(vals[0::2], vals[1::2], strict=False))
    if paddr_offset is not None and virt_base is None:
        raise GuestImageError(f"{img.path}: ELF_PADDR_OFFSET is set but VIRT_BASE is not")
    img.virt_base = virt_base or 0
    if paddr_offset is None:
        paddr_offset = img.virt_base if img.notes_source == "__xen_guest" else 0
    img.paddr_offset = paddr_offset
    img.entry = img.elf_entry if entry is None else entry
    img.entry_source = ("e_entry" if entry is None
                        else "VIRT_ENTRY" if img.notes_source == "__xen_guest" else "ENTRY note")
    if img.machine == EM_X86_64:
        img.pae_mode = "yes"


def _check(img: GuestImage, path: Path) -> None:
    """The refusals of libelf (elf_xen_note_check, elf_xen_addr_calc_check), plus the builder's hypercall
    page. Required features are the builder's to judge (it refuses those Xen does not offer a domU)."""
    if img.machine == EM_386 and img.elfclass != 32:
        raise GuestImageError(f"{path}: EM_386 in a 64-bit ELF")
    if not img.guest_os.startswith("linux") and not img.loader.startswith("generic"):
        raise GuestImageError(f"{path}: LOADER note must be 'generic' for a non-Linux guest")
    if not img.xen_version.startswith("xen-3.0"):
        raise GuestImageError(f"{path}: XEN_VERSION {img.xen_version!r} is not xen-3.0")
    if img.virt_base > img.kernel_start:
        raise GuestImageError(f"{path}: VIRT_BASE {img.virt_base:#x} is above the kernel start {img.kernel_start:#x}")
    if not (img.kernel_start <= img.entry <= img.kernel_end):    # libelf allows the end address itself
        raise GuestImageError(f"{path}: entry point {img.entry:#x} ({img.entry_source}) is outside the kernel "
                              f"[{img.kernel_start:#x}, {img.kernel_end:#x}]")
    if img.init_p2m is not None and img.kernel_start <= img.init_p2m < img.kernel_end:
        raise GuestImageError(f"{path}: INIT_P2M {img.init_p2m:#x} is inside the kernel "
                              f"[{img.kernel_start:#x}, {img.kernel_end:#x})")
    if img.hypercall_page is not None and not (img.kernel_start <= img.hypercall_page < img.kernel_end):
        raise GuestImageError(f"{path}: HYPERCALL_PAGE {img.hypercall_page:#x} is outside the kernel")
    if img.machine == EM_386 and img.kernel_end > C.HYPERVISOR_VIRT_START_PAE:
        raise GuestImageError(f"{path}: kernel ends at {img.kernel_end:#x}, inside the hypervisor range")


@dataclass
class _Section:
    """The fields of one section header that the loader reads, and the section's name."""

    name: str
    type: int
    offset: int
    size: int
    link: int

    def data(self, blob: bytes) -> bytes:
        """The section's bytes; a section running past the file is cut short, as libelf's bounded reads."""
        return blob[self.offset: self.offset + self.size]


def _section_headers(path: Path, elf: ELFFile, blob: bytes) -> list[_Section]:
    """Every section header, read directly: pyelftools would interpret (and choke on) the sections
    themselves, which libelf only looks at by type and name (libelf-loader.c elf_init)."""
    shoff, shnum, shentsize = elf["e_shoff"], elf["e_shnum"], elf["e_shentsize"]
    if not shoff or not shnum:
        return []
    fmt = "<IIQQQQIIQQ" if elf.elfclass == 64 else "<IIIIIIIIII"
    if shentsize < struct.calcsize(fmt):
        raise GuestImageError(f"{path}: section header entries of {shentsize} bytes are too small")
    if shoff + shnum * shentsize > len(blob):
        raise GuestImageError(f"{path}: truncated ELF (the section headers run past the end of the file)")
    raw = [struct.unpack_from(fmt, blob, shoff + i * shentsize) for i in range(shnum)]
    names_at = raw[elf["e_shstrndx"]][4] if elf["e_shstrndx"] < shnum else None
    out = []
    for sh_name, sh_type, _flags, _addr, sh_offset, sh_size, sh_link, _info, _align, _entsize in raw:
        name = "" if names_at is None else _read_str(blob[names_at + sh_name: names_at + sh_name + 256])
        out.append(_Section(name, sh_type, sh_offset, sh_size, sh_link))
    return out


def _elf_symbols(elfclass: int, sections: list[_Section], blob: bytes) -> list[Symbol]:
    """Function, object and untyped symbols of the first SHT_SYMTAB section, chosen by type whatever its
    name, as libelf's elf_init does; a symbol table whose string table link is out of range is ignored."""
    tab = next((s for s in sections[1:] if s.type == SHT_SYMTAB), None)
    if tab is None or not 0 < tab.link < len(sections):
        return []
    strings = sections[tab.link].data(blob)
    if elfclass == 64:
        fmt, order = "<IBBHQQ", (0, 4, 5, 1, 3)          # name, value, size, info, shndx
    else:
        fmt, order = "<IIIBBH", (0, 1, 2, 3, 5)
    entsize = struct.calcsize(fmt)
    data = tab.data(blob)
    data = data[: len(data) - len(data) % entsize]
    syms: dict[int, Symbol] = {}
    i_name, i_value, i_size, i_info, i_shndx = order
    for ent in struct.iter_unpack(fmt, data):
        info, shndx = ent[i_info], ent[i_shndx]
        if info & 0xF not in (STT_NOTYPE, STT_OBJECT, STT_FUNC) or shndx in (SHN_UNDEF, SHN_ABS):
            continue
        name = _read_str(strings[ent[i_name]: ent[i_name] + 512])
        if not name:
            continue
        addr, size, is_global = ent[i_value], ent[i_size], info >> 4 == STB_GLOBAL
        prev = syms.get(addr)
        # prefer global, sized symbols over local labels at the same address
        if prev is None or (size and not prev.size) or (is_global and not prev.size):
            syms[addr] = Symbol(addr, size, name)
    return sorted(syms.values(), key=lambda s: s.address)


# System.map types kept: text, data, read-only data, BSS, weak (nm's letters; lower case = local).
SYSTEM_MAP_TYPES = frozenset("TtDdBbRrWwVvGgSs")


def find_system_map(kernel: Path) -> Path | None:
    """``System.map-VERSION`` beside ``vmlinuz-VERSION`` (or ``vmlinux-VERSION``), else ``System.map``
    in the kernel's directory."""
    for prefix in ("vmlinuz-", "vmlinux-"):
        if kernel.name.startswith(prefix):
            candidate = kernel.with_name("System.map-" + kernel.name[len(prefix):])
            if candidate.is_file():
                return candidate
    candidate = kernel.with_name("System.map")
    return candidate if candidate.is_file() else None


def read_system_map(path: Path, start: int, end: int) -> list[Symbol]:
    """Symbols of a System.map (``nm -n`` lines: address, type letter, name) that fall in [start, end),
    the loaded kernel: absolute symbols, per-cpu offsets and Debian's one-line placeholder map drop out.
    At one address a global symbol wins over a local one. Sizes are not in the map: 0."""
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise GuestImageError(f"{path}: cannot read the System.map: {e.strerror or e}") from None
    by_addr: dict[int, tuple[bool, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[1] not in SYSTEM_MAP_TYPES:
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        if not start <= addr < end:
            continue
        is_global = parts[1].isupper()
        prev = by_addr.get(addr)
        if prev is None or (is_global and not prev[0]):
            by_addr[addr] = (is_global, parts[2])
    return [Symbol(addr, 0, name) for addr, (_, name) in sorted(by_addr.items())]


def _line_table(path: Path) -> list[tuple[int, str, int]]:
    """Sorted (address, file, line) rows of the DWARF line programs, one per address."""
    rows: dict[int, tuple[str, int]] = {}
    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            if not elf.has_dwarf_info():
                return []
            dwarf = elf.get_dwarf_info()
            for cu in dwarf.iter_CUs():
                lp = dwarf.line_program_for_CU(cu)
                if lp is None:
                    continue
                files = lp["file_entry"]
                for entry in lp.get_entries():
                    st = entry.state
                    if st is None or not st.is_stmt and not st.end_sequence:
                        continue
                    if st.end_sequence:
                        rows.setdefault(st.address, ("", 0))
                        continue
                    idx = st.file - 1 if lp.header["version"] < 5 else st.file
                    name = files[idx].name.decode() if 0 <= idx < len(files) else "?"
                    rows[st.address] = (name, st.line)
    except (ELFError, OSError, KeyError, IndexError, ValueError):
        return []
    return sorted((a, f, ln) for a, (f, ln) in rows.items())
