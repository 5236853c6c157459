"""Guest ELF loader: segments, Xen notes and symbols, read as Xen's libelf reads them.

Sources: xen/common/libelf/{libelf-dominfo.c, libelf-loader.c, libelf-tools.c},
tools/libs/guest/xg_dom_elfloader.c, xen/include/public/elfnote.h.
"""

from __future__ import annotations

import bisect
import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile

from xenwb.abi.elfnotes import FEATURE_NAMES, NUMERIC_NOTES, STRING_NOTES, ElfNote
from xenwb.errors import GuestImageError

EM_386 = "EM_386"
EM_X86_64 = "EM_X86_64"


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
    hypercall_page: int | None = None    # VA, or None (the guest uses the MSR)
    xen_version: str = ""
    guest_os: str = ""
    guest_version: str = ""
    loader: str = ""
    pae_mode: str = "no"                 # "no", "yes", "extended-cr3", "bimodal"
    features_supported: int = 0          # XENFEAT bitmap the kernel can use
    features_required: int = 0           # bitmap of features marked with '!'
    bsd_symtab: bool = False
    hv_start_low: int | None = None
    suspend_cancel: bool = False
    init_p2m: int | None = None
    mod_start_pfn: bool = False
    l1_mfn_valid: list[tuple[int, int]] = field(default_factory=list)
    symbols: list[Symbol] = field(default_factory=list)
    _sym_addrs: list[int] = field(default_factory=list, repr=False)
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
        return [n for n, b in FEATURE_NAMES.items() if bitmap >> b & 1]

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
        """(file, line, start, end) of the source line whose code holds addr (DWARF .debug_line)."""
        if self._lines is None:
            self._lines = _line_table(self.path)
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
        for s in self.symbols:
            if s.name == name:
                return s
        return None


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
    """Translate the old ``__xen_guest`` string into notes (libelf elf_xen_parse_guest_info)."""
    notes: list[Note] = []
    legacy_hypercall_page: int | None = None
    items = {}
    for item in text.split(","):
        if not item:
            continue
        key, _, val = item.partition("=")
        items[key] = val

    def num(v: str) -> int:
        return strtoull(v)

    mapping = {"LOADER": ElfNote.LOADER, "GUEST_OS": ElfNote.GUEST_OS, "GUEST_VER": ElfNote.GUEST_VERSION,
               "XEN_VER": ElfNote.XEN_VERSION, "FEATURES": ElfNote.FEATURES}
    for key, val in items.items():
        if key in mapping:
            notes.append(Note(mapping[key], val, val.encode()))
        elif key == "PAE":
            mode = "extended-cr3" if val.startswith("yes[extended-cr3]") else ("yes" if val.startswith("yes") else "no")
            notes.append(Note(ElfNote.PAE_MODE, mode, val.encode()))
        elif key == "BSD_SYMTAB":
            notes.append(Note(ElfNote.BSD_SYMTAB, "yes", val.encode()))
        elif key == "VIRT_BASE":
            notes.append(Note(ElfNote.VIRT_BASE, num(val), val.encode()))
        elif key == "VIRT_ENTRY":
            notes.append(Note(ElfNote.ENTRY, num(val), val.encode()))
        elif key == "ELF_PADDR_OFFSET":
            notes.append(Note(ElfNote.PADDR_OFFSET, num(val), val.encode()))
        elif key == "HYPERCALL_PAGE":
            legacy_hypercall_page = num(val)
    if legacy_hypercall_page is not None:
        # In legacy mode HYPERCALL_PAGE is a page number relative to VIRT_BASE.
        notes.append(Note(ElfNote.HYPERCALL_PAGE, -1 - legacy_hypercall_page, b""))
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


def load_guest(path: str | Path) -> GuestImage:
    """Parse a PV guest kernel. Raises GuestImageError with a one-line reason."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise GuestImageError(f"{path}: cannot read: {e.strerror or e}") from None
    if blob[:4] != b"\x7fELF":
        raise GuestImageError(f"{path}: not an ELF file")
    try:
        return _load(path, blob)
    except (ELFError, struct.error, ValueError, IndexError, KeyError, AssertionError) as e:
        if isinstance(e, GuestImageError):
            raise
        raise GuestImageError(f"{path}: malformed or truncated ELF ({e})") from None


def _load(path: Path, blob: bytes) -> GuestImage:
    elf = ELFFile(io.BytesIO(blob))
    machine = elf["e_machine"]
    if machine not in (EM_386, EM_X86_64):
        raise GuestImageError(f"{path}: ELF for {machine}, not x86 (EM_386 or EM_X86_64)")
    if elf["e_type"] != "ET_EXEC":
        raise GuestImageError(f"{path}: not an executable ELF ({elf['e_type']})")

    segments = []
    note_blobs = []
    for seg in elf.iter_segments():
        ptype = seg["p_type"]
        off, filesz = seg["p_offset"], seg["p_filesz"]
        if ptype in ("PT_LOAD", "PT_NOTE") and off + filesz > len(blob):
            raise GuestImageError(f"{path}: truncated ELF (a {ptype} segment runs past the end of the file)")
        if ptype == "PT_LOAD" and seg["p_memsz"]:
            segments.append(Segment(seg["p_paddr"], seg["p_vaddr"], blob[off: off + filesz],
                                    seg["p_memsz"], seg["p_flags"]))
        elif ptype == "PT_NOTE":
            note_blobs.append(blob[off: off + filesz])
    if not segments:
        raise GuestImageError(f"{path}: no loadable segments")

    notes: list[Note] = []
    source = ""
    for nb in note_blobs:
        notes += _parse_xen_notes(_iter_notes(nb))
    if notes:
        source = "PT_NOTE"
    else:
        for sec in elf.iter_sections():
            if sec["sh_type"] == "SHT_NOTE":
                off, size = sec["sh_offset"], sec["sh_size"]
                notes += _parse_xen_notes(_iter_notes(blob[off: off + size]))
        if notes:
            source = "SHT_NOTE"
        else:
            sec = elf.get_section_by_name("__xen_guest")
            if sec is not None:
                notes = _legacy_notes(_read_str(sec.data()))
                source = "__xen_guest"
    if not notes:
        raise GuestImageError(f"{path}: no Xen ELF notes (not a Xen PV kernel)")

    img = GuestImage(path=path, elfclass=elf.elfclass, machine=machine, elf_entry=elf["e_entry"],
                     segments=segments, notes=notes, notes_source=source)
    _apply_notes(img)
    _check(img, path)
    img.symbols = _symbols(elf)
    img._sym_addrs = [s.address for s in img.symbols]
    return img


def _apply_notes(img: GuestImage) -> None:
    has_paddr_offset = False
    legacy_hcall_page = None
    for n in img.notes:
        t, v = n.type, n.value
        if t == ElfNote.VIRT_BASE:
            img.virt_base = int(v)  # type: ignore[arg-type]
        elif t == ElfNote.PADDR_OFFSET:
            img.paddr_offset = int(v)  # type: ignore[arg-type]
            has_paddr_offset = True
        elif t == ElfNote.ENTRY:
            img.entry = int(v)  # type: ignore[arg-type]
        elif t == ElfNote.HYPERCALL_PAGE:
            if isinstance(v, int) and v < 0:
                legacy_hcall_page = -1 - v
            else:
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
            img.features_supported |= int(v)  # type: ignore[arg-type]
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
    if img.notes_source == "__xen_guest":
        # Legacy: ELF_PADDR_OFFSET defaults to VIRT_BASE; HYPERCALL_PAGE is a page number.
        if not has_paddr_offset:
            img.paddr_offset = img.virt_base
        if legacy_hcall_page is not None:
            img.hypercall_page = img.virt_base + legacy_hcall_page * 4096
    if not img.entry:
        img.entry = img.elf_entry
    if img.machine == EM_X86_64:
        img.pae_mode = "yes"


def _check(img: GuestImage, path: Path) -> None:
    """libelf elf_xen_note_check / elf_xen_addr_calc_check."""
    if img.machine == EM_386 and img.elfclass != 32:
        raise GuestImageError(f"{path}: EM_386 in a 64-bit ELF")
    if not img.guest_os.startswith("linux") and not img.loader.startswith("generic"):
        raise GuestImageError(f"{path}: LOADER note must be 'generic' for a non-Linux guest")
    if not img.xen_version.startswith("xen-3.0"):
        raise GuestImageError(f"{path}: XEN_VERSION {img.xen_version!r} is not xen-3.0")
    if img.virt_base > img.kernel_start:
        raise GuestImageError(f"{path}: VIRT_BASE {img.virt_base:#x} is above the kernel start {img.kernel_start:#x}")
    if not (img.kernel_start <= img.entry < img.kernel_end):
        raise GuestImageError(
            f"{path}: entry point {img.entry:#x} is outside the kernel [{img.kernel_start:#x}, {img.kernel_end:#x})")
    if img.hypercall_page is not None and not (img.kernel_start <= img.hypercall_page < img.kernel_end):
        raise GuestImageError(f"{path}: HYPERCALL_PAGE {img.hypercall_page:#x} is outside the kernel")
    if img.machine == EM_386 and img.kernel_end > 0xF5800000:
        raise GuestImageError(f"{path}: kernel ends at {img.kernel_end:#x}, inside the hypervisor range")


def _symbols(elf: ELFFile) -> list[Symbol]:
    syms: dict[int, Symbol] = {}
    tab = elf.get_section_by_name(".symtab")
    if tab is None:
        return []
    for s in tab.iter_symbols():
        if not s.name or s["st_info"]["type"] not in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE"):
            continue
        if s["st_shndx"] in ("SHN_UNDEF", "SHN_ABS") or s["st_info"]["type"] == "STT_FILE":
            continue
        addr = s["st_value"]
        prev = syms.get(addr)
        # prefer global, sized symbols over local labels at the same address
        if prev is None or (s["st_size"] and not prev.size) or (s["st_info"]["bind"] == "STB_GLOBAL" and not prev.size):
            syms[addr] = Symbol(addr, s["st_size"], s.name)
    return sorted(syms.values(), key=lambda s: s.address)


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
