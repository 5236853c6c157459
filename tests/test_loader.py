"""xenwb.loader.load_guest on small kernels built on the fly with gcc/ld.

The expectations follow Xen's libelf (xen/common/libelf/libelf-dominfo.c) and the ABI sheet
(/work/shared/xen-pv-abi.md section 1.1): where notes come from, how each kind of note is read,
the legacy ``__xen_guest`` string, FEATURES, PAE_MODE, the guest type, and which images are refused.
Addresses are checked against ``nm``/``readelf`` of the built image, not against the loader.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from support import (
    NOTE_BSD_SYMTAB,
    NOTE_ENTRY,
    NOTE_FEATURES,
    NOTE_GUEST_OS,
    NOTE_GUEST_VERSION,
    NOTE_HV_START_LOW,
    NOTE_HYPERCALL_PAGE,
    NOTE_INIT_P2M,
    NOTE_LOADER,
    NOTE_MOD_START_PFN,
    NOTE_PADDR_OFFSET,
    NOTE_PAE_MODE,
    NOTE_SUPPORTED_FEATURES,
    NOTE_SUSPEND_CANCEL,
    NOTE_VIRT_BASE,
    NOTE_XEN_VERSION,
    Note,
    build_kernel,
    elf_entry,
    have_tool,
    load_extent,
    nm_symbols,
    num_note,
    readelf_sections,
    readelf_segment_types,
    str_note,
    sym_note,
)

from xenwb.errors import GuestImageError
from xenwb.info import describe
from xenwb.loader import MAX_GUEST_FILE, load_guest, read_system_map

pytestmark = pytest.mark.skipif(not all(have_tool(t) for t in ("gcc", "ld", "readelf", "nm")),
                                reason="gcc/binutils not available")

NOTE_L1_MFN_VALID = 13
NOTE_PHYS32_ENTRY = 18
BASE32 = 0xC0000000
BASE64 = 0xFFFFFFFF80000000
PAGE = 4096

# XENFEAT bit numbers (public/features.h)
F_WRITABLE_PAGE_TABLES = 0
F_WRITABLE_DESCRIPTOR_TABLES = 1
F_PAE_PGDIR_ABOVE_4GB = 4
F_MMU_PT_UPDATE_PRESERVE_AD = 5
F_HVM_CALLBACK_VECTOR = 8
F_DOM0 = 11


def notes32(**override: Note | None) -> list[Note]:
    """A complete, valid note set for a 32-bit kernel linked at BASE32 with p_paddr == p_vaddr.
    Keyword arguments replace (or, with None, drop) one note by its lower-case name."""
    notes = {
        "xen_version": str_note(NOTE_XEN_VERSION, "xen-3.0"),
        "guest_os": str_note(NOTE_GUEST_OS, "xenwb-test"),
        "guest_version": str_note(NOTE_GUEST_VERSION, "0.1"),
        "loader": str_note(NOTE_LOADER, "generic"),
        "virt_base": num_note(NOTE_VIRT_BASE, BASE32),
        "paddr_offset": num_note(NOTE_PADDR_OFFSET, BASE32),
        "hypercall_page": sym_note(NOTE_HYPERCALL_PAGE, "hypercall_page"),
        "pae_mode": str_note(NOTE_PAE_MODE, "yes"),
        "features": str_note(NOTE_FEATURES, "!writable_page_tables|pae_pgdir_above_4gb"),
    }
    for k, v in override.items():
        assert k in notes or v is not None, k
        if v is None:
            notes.pop(k, None)
        else:
            notes[k] = v
    return list(notes.values())


def build(tmp_path: Path, name: str = "kernel", **kw) -> Path:
    return build_kernel(tmp_path, name=name, **kw)


def refused(path: Path) -> str:
    """load_guest must refuse the image with a one-line GuestImageError; returns the message."""
    with pytest.raises(GuestImageError) as ei:
        load_guest(path)
    msg = str(ei.value)
    assert msg and "\n" not in msg, repr(msg)
    return msg


# ------------------------------------------------------------------------------ note sources
def test_notes_from_pt_note(tmp_path: Path) -> None:
    k = build(tmp_path, phdr_notes=notes32())
    assert "NOTE" in readelf_segment_types(k)          # the notes really sit in a PT_NOTE segment
    syms = nm_symbols(k)
    img = load_guest(k)
    assert img.notes_source == "PT_NOTE"
    assert img.elfclass == 32 and img.machine == "EM_386"
    assert (img.xen_version, img.guest_os, img.guest_version, img.loader) == ("xen-3.0", "xenwb-test", "0.1",
                                                                             "generic")
    assert img.virt_base == BASE32 and img.paddr_offset == BASE32
    assert img.hypercall_page == syms["hypercall_page"]
    assert img.entry == elf_entry(k) == syms["_start"]      # no ENTRY note: e_entry
    lo, hi = load_extent(k)
    assert (img.kernel_start, img.kernel_end) == (lo, hi)   # virt_offset 0 here
    assert img.guest_type == "xen-3.0-x86_32p"


def test_entry_note_overrides_e_entry(tmp_path: Path) -> None:
    k0 = build(tmp_path, name="probe", phdr_notes=notes32())
    helper = nm_symbols(k0)["helper"]
    k = build(tmp_path, phdr_notes=[*notes32(), num_note(NOTE_ENTRY, helper)])
    img = load_guest(k)
    assert img.elf_entry == nm_symbols(k)["_start"]
    assert img.entry == helper


def test_pt_note_wins_over_sht_note(tmp_path: Path) -> None:
    """With Xen notes in a PT_NOTE segment, SHT_NOTE sections are not read at all."""
    k = build(tmp_path, phdr_notes=notes32(guest_version=str_note(NOTE_GUEST_VERSION, "from-phdr")),
              section_notes=[str_note(NOTE_GUEST_VERSION, "from-section"), num_note(NOTE_SUSPEND_CANCEL, 1)])
    assert readelf_sections(k)[".note.xenwb"] == "NOTE"
    img = load_guest(k)
    assert img.notes_source == "PT_NOTE"
    assert img.guest_version == "from-phdr"
    assert img.suspend_cancel is False


def test_notes_from_sht_note_only(tmp_path: Path) -> None:
    k = build(tmp_path, section_notes=notes32())
    assert "NOTE" not in readelf_segment_types(k)     # no PT_NOTE at all
    assert readelf_sections(k)[".note.xenwb"] == "NOTE"
    syms = nm_symbols(k)
    img = load_guest(k)
    assert img.notes_source == "SHT_NOTE"
    assert img.xen_version == "xen-3.0" and img.loader == "generic"
    assert img.virt_base == BASE32 and img.hypercall_page == syms["hypercall_page"]


def test_sht_note_used_when_pt_note_has_no_xen_note(tmp_path: Path) -> None:
    gnu = Note(1, b"\x01\x02\x03\x04", name=b"GNU")        # a PT_NOTE holding only a non-Xen note
    k = build(tmp_path, phdr_notes=[gnu], section_notes=notes32())
    assert "NOTE" in readelf_segment_types(k)
    img = load_guest(k)
    assert img.notes_source == "SHT_NOTE"
    assert img.guest_os == "xenwb-test"


def test_only_notes_named_xen_count(tmp_path: Path) -> None:
    """A note of a Xen type number under another owner name is ignored."""
    k = build(tmp_path, phdr_notes=[*notes32(), Note(NOTE_GUEST_VERSION, b"impostor\0", name=b"Xe")])
    assert load_guest(k).guest_version == "0.1"


# ------------------------------------------------------------------------------ legacy string
LEGACY = "GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,HYPERCALL_PAGE=0x2,PAE=yes[extended-cr3],LOADER=generic"


def test_legacy_xen_guest_section(tmp_path: Path) -> None:
    k = build(tmp_path, xen_guest=LEGACY)
    secs = readelf_sections(k)
    assert "__xen_guest" in secs and "NOTE" not in secs.values()
    img = load_guest(k)
    assert img.notes_source == "__xen_guest"
    assert (img.guest_os, img.xen_version, img.loader) == ("linux", "xen-3.0", "generic")
    assert img.virt_base == 0xC0000000
    # HYPERCALL_PAGE is a page number relative to VIRT_BASE
    assert img.hypercall_page == 0xC0000000 + 2 * PAGE
    # ELF_PADDR_OFFSET defaults to VIRT_BASE in legacy mode: p_paddr == p_vaddr here, so the
    # kernel starts at its link address (a default of 0 would put it at 0x180000000)
    assert img.paddr_offset == img.virt_base
    lo, hi = load_extent(k)
    assert (img.kernel_start, img.kernel_end) == (lo, hi)
    assert img.pae_mode == "extended-cr3"
    assert img.guest_type == "xen-3.0-x86_32p"
    assert img.entry == nm_symbols(k)["_start"]


def test_legacy_explicit_paddr_offset_and_entry(tmp_path: Path) -> None:
    k0 = build(tmp_path, name="probe", xen_guest=LEGACY)
    helper = nm_symbols(k0)["helper"]
    k = build(tmp_path, lma_delta=BASE32,   # p_paddr = p_vaddr - 0xC0000000
              xen_guest=f"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,ELF_PADDR_OFFSET=0,"
                        f"VIRT_ENTRY={helper:#x},BSD_SYMTAB")
    lo, _ = load_extent(k)
    assert lo == 0
    img = load_guest(k)
    assert img.paddr_offset == 0
    assert img.kernel_start == BASE32
    assert img.entry == helper
    assert img.bsd_symtab is True            # a bare BSD_SYMTAB key is enough
    assert img.hypercall_page is None


@pytest.mark.parametrize(("pae", "mode", "gtype"), [
    ("PAE=yes[extended-cr3],", "extended-cr3", "xen-3.0-x86_32p"),
    ("PAE=yes,", "yes", "xen-3.0-x86_32p"),
    ("PAE=yes-please,", "yes", "xen-3.0-x86_32p"),       # anything starting with "yes" is plain PAE
    ("PAE=no,", "no", "xen-3.0-x86_32"),
    ("", "no", "xen-3.0-x86_32"),
])
def test_legacy_pae(tmp_path: Path, pae: str, mode: str, gtype: str) -> None:
    k = build(tmp_path, xen_guest=f"GUEST_OS=linux,XEN_VER=xen-3.0,{pae}VIRT_BASE=0xC0000000")
    img = load_guest(k)
    assert (img.pae_mode, img.guest_type) == (mode, gtype)


def test_legacy_features(tmp_path: Path) -> None:
    k = build(tmp_path, xen_guest="GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,"
                                  "FEATURES=writable_page_tables|!pae_pgdir_above_4gb")
    img = load_guest(k)
    assert img.features_supported == (1 << F_WRITABLE_PAGE_TABLES) | (1 << F_PAE_PGDIR_ABOVE_4GB)
    assert img.features_required == 1 << F_PAE_PGDIR_ABOVE_4GB


@pytest.mark.parametrize(("text", "value"), [
    ("3221225472", 0xC0000000),     # decimal
    ("0xc0000000", 0xC0000000),     # hex
    ("030000000000", 0xC0000000),   # octal, as strtoull(..., 0) reads a leading 0
])
def test_legacy_numbers_parse_like_strtoull(tmp_path: Path, text: str, value: int) -> None:
    k = build(tmp_path, xen_guest=f"GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE={text}")
    assert load_guest(k).virt_base == value


def test_legacy_non_linux_needs_generic_loader(tmp_path: Path) -> None:
    """elf_xen_note_check applies to the __xen_guest string as well as to notes."""
    k = build(tmp_path, xen_guest="GUEST_OS=NetBSD,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000")
    assert "LOADER" in refused(k) or "loader" in refused(k).lower()
    ok = build(tmp_path, name="ok", xen_guest="GUEST_OS=NetBSD,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,LOADER=generic")
    assert load_guest(ok).guest_os == "NetBSD"


# ------------------------------------------------------------------------------ numeric notes
NUMERIC_BY_SIZE = {
    0: 0, 1: 0x11, 2: 0x2211, 3: 0, 4: 0x44332211, 5: 0, 6: 0, 7: 0, 8: 0x8877665544332211, 12: 0, 16: 0,
}


@pytest.mark.parametrize("size", sorted(NUMERIC_BY_SIZE))
def test_numeric_note_sizes(tmp_path: Path, size: int) -> None:
    """elf_note_numeric: 1, 2, 4 or 8 bytes little-endian; any other size reads 0."""
    desc = bytes((0x11 * (i + 1)) & 0xFF for i in range(size))     # 11 22 33 ... little-endian
    k = build(tmp_path, phdr_notes=[*notes32(), Note(NOTE_HV_START_LOW, desc)])
    img = load_guest(k)
    assert img.hv_start_low == NUMERIC_BY_SIZE[size]


@pytest.mark.parametrize(("size", "value"), [(1, 0x80), (2, 0x8000), (4, 0x80000), (8, 0x80000)])
def test_numeric_note_sizes_for_virt_base(tmp_path: Path, size: int, value: int) -> None:
    """VIRT_BASE / PADDR_OFFSET in every accepted size, in a kernel linked at 1 MiB."""
    k = build(tmp_path, vbase=0x100000, phdr_notes=notes32(
        virt_base=num_note(NOTE_VIRT_BASE, value, size), paddr_offset=num_note(NOTE_PADDR_OFFSET, value, size)))
    img = load_guest(k)
    assert img.virt_base == value and img.paddr_offset == value
    assert img.kernel_start == 0x100000


def test_note_running_past_its_segment_is_cut_short(tmp_path: Path) -> None:
    """The last note claims 64 bytes of descriptor but the segment ends after 8: not an error,
    the value is what the segment holds."""
    k = build(tmp_path, phdr_notes=notes32(guest_version=None) + [Note(NOTE_GUEST_VERSION, b"abcdefgh", descsz=64)])
    img = load_guest(k)
    assert img.guest_version == "abcdefgh"
    assert img.xen_version == "xen-3.0" and img.virt_base == BASE32    # the notes before it still count


def test_string_note_stops_at_nul(tmp_path: Path) -> None:
    k = build(tmp_path, phdr_notes=notes32(guest_os=Note(NOTE_GUEST_OS, b"Mini-OS\0junk\0")))
    assert load_guest(k).guest_os == "Mini-OS"


# ------------------------------------------------------------------------------ FEATURES
def test_features_supported_and_required(tmp_path: Path) -> None:
    k = build(tmp_path, phdr_notes=notes32(features=str_note(
        NOTE_FEATURES, "writable_page_tables|!pae_pgdir_above_4gb|hvm_callback_vector|!dom0")))
    img = load_guest(k)
    assert img.features_supported == ((1 << F_WRITABLE_PAGE_TABLES) | (1 << F_PAE_PGDIR_ABOVE_4GB)
                                      | (1 << F_HVM_CALLBACK_VECTOR) | (1 << F_DOM0))
    assert img.features_required == (1 << F_PAE_PGDIR_ABOVE_4GB) | (1 << F_DOM0)
    assert set(img.feature_names(img.features_required)) == {"pae_pgdir_above_4gb", "dom0"}


def test_unknown_optional_feature_is_ignored(tmp_path: Path) -> None:
    k = build(tmp_path, phdr_notes=notes32(features=str_note(
        NOTE_FEATURES, "no_such_feature|writable_descriptor_tables|mmu_pt_update_preserve_ad")))
    img = load_guest(k)
    # mmu_pt_update_preserve_ad is a real XENFEAT, but not one libelf's FEATURES parser knows
    assert img.features_supported == 1 << F_WRITABLE_DESCRIPTOR_TABLES
    assert img.features_required == 0


def test_unknown_required_feature_is_refused(tmp_path: Path) -> None:
    k = build(tmp_path, phdr_notes=notes32(features=str_note(NOTE_FEATURES, "writable_page_tables|!no_such_feature")))
    refused(k)


def test_supported_features_note_is_ored_in(tmp_path: Path) -> None:
    k = build(tmp_path, phdr_notes=[*notes32(), num_note(NOTE_SUPPORTED_FEATURES, 1 << F_MMU_PT_UPDATE_PRESERVE_AD)])
    img = load_guest(k)
    assert img.features_supported == ((1 << F_WRITABLE_PAGE_TABLES) | (1 << F_PAE_PGDIR_ABOVE_4GB)
                                      | (1 << F_MMU_PT_UPDATE_PRESERVE_AD))
    assert img.features_required == 1 << F_WRITABLE_PAGE_TABLES


# ------------------------------------------------------------------------------ PAE_MODE / guest type
@pytest.mark.parametrize(("note", "mode", "gtype"), [
    # libelf-dominfo.c: PAE_MODE "yes" means XEN_PAE_EXTCR3 (ABI sheet: "yes" -> PAE with extended-cr3)
    ("yes", "extended-cr3", "xen-3.0-x86_32p"),
    ("no", "no", "xen-3.0-x86_32"),
    (None, "no", "xen-3.0-x86_32"),
    ("bimodal", "bimodal", "xen-3.0-x86_32p"),        # 64-bit Xen has x86_32p
    ("yes,bimodal", "bimodal", "xen-3.0-x86_32p"),    # any string containing "bimodal"
    # The bracketed form is only understood in the legacy __xen_guest string; as a note libelf
    # compares with "yes" exactly and leaves the image non-PAE.
    ("yes[extended-cr3]", "no", "xen-3.0-x86_32"),
])
def test_pae_mode_note(tmp_path: Path, note: str | None, mode: str, gtype: str) -> None:
    pae = None if note is None else str_note(NOTE_PAE_MODE, note)
    img = load_guest(build(tmp_path, phdr_notes=notes32(pae_mode=pae)))
    assert img.pae_mode == mode
    assert img.guest_type == gtype
    assert img.is_pae == (mode != "no")


# ------------------------------------------------------------------------------ ELF64
def test_elf64_kernel(tmp_path: Path) -> None:
    notes = [
        str_note(NOTE_XEN_VERSION, "xen-3.0"), str_note(NOTE_GUEST_OS, "xenwb-test64"),
        str_note(NOTE_LOADER, "generic"),
        num_note(NOTE_VIRT_BASE, BASE64, 8), num_note(NOTE_PADDR_OFFSET, 0, 8),
        sym_note(NOTE_HYPERCALL_PAGE, "hypercall_page", 8),
    ]
    k = build(tmp_path, bits=64, vbase=BASE64, lma_delta=BASE64, phdr_notes=notes)
    syms = nm_symbols(k)
    img = load_guest(k)
    assert img.elfclass == 64 and img.machine == "EM_X86_64"
    assert img.guest_type == "xen-3.0-x86_64"
    assert img.is_pae
    assert img.virt_base == BASE64 and img.paddr_offset == 0
    assert img.kernel_start == BASE64                       # p_paddr 0 + VIRT_BASE - PADDR_OFFSET
    assert img.hypercall_page == syms["hypercall_page"]
    assert img.entry == syms["_start"]
    assert img.symbolize(syms["helper"] + 2) == "helper+0x2"


# ------------------------------------------------------------------------------ symbols
def test_symbols(tmp_path: Path) -> None:
    k = build(tmp_path, phdr_notes=notes32())
    syms = nm_symbols(k)
    img = load_guest(k)
    helper = syms["helper"]
    assert img.symbolize(helper) == "helper"
    assert img.symbolize(helper + 3) == "helper+0x3"
    assert img.symbolize(syms["_start"] + 1) == "_start+0x1"
    assert img.symbolize(syms["hypercall_page"] + 0x20 * 23) == f"hypercall_page+{0x20 * 23:#x}"
    assert img.symbolize(BASE32 - 0x1000) is None             # before every symbol
    sym = img.lookup("helper")
    assert sym is not None and sym.address == helper and sym.size == 5
    assert img.lookup("start_info_ptr").address == syms["start_info_ptr"]
    assert img.lookup("no_such_symbol") is None


# ------------------------------------------------------------------------------ refused images
def test_text_file_refused(tmp_path: Path) -> None:
    p = tmp_path / "kernel.txt"
    p.write_text("this is not a kernel\n")
    refused(p)


def test_empty_file_refused(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    refused(p)


def test_missing_file_refused(tmp_path: Path) -> None:
    refused(tmp_path / "does-not-exist")


@pytest.mark.parametrize("cut", ["4", "16", "52", "half", "minus-one"])
def test_truncated_elf_refused(tmp_path: Path, cut: str) -> None:
    k = build(tmp_path, phdr_notes=notes32())
    data = k.read_bytes()
    n = {"half": len(data) // 2, "minus-one": len(data) - 1}.get(cut) or int(cut)
    t = tmp_path / "truncated"
    t.write_bytes(data[:n])
    refused(t)


@pytest.mark.parametrize(("machine", "name"), [(40, "ARM"), (183, "AArch64"), (20, "PowerPC")])
def test_other_machine_refused(tmp_path: Path, machine: int, name: str) -> None:
    k = build(tmp_path, phdr_notes=notes32())
    data = bytearray(k.read_bytes())
    off = 18                                                # e_machine, after e_ident[16] and e_type
    assert struct.unpack_from("<H", data, off)[0] == 3      # EM_386 before the patch
    struct.pack_into("<H", data, off, machine)
    p = tmp_path / f"kernel-{name}"
    p.write_bytes(bytes(data))
    refused(p)


def test_no_xen_notes_refused(tmp_path: Path) -> None:
    refused(build(tmp_path, phdr_notes=[Note(1, b"\x01\x02\x03\x04", name=b"GNU")]))


def test_no_notes_at_all_refused(tmp_path: Path) -> None:
    refused(build(tmp_path))


def test_entry_after_kernel_refused(tmp_path: Path) -> None:
    k0 = build(tmp_path, name="probe", phdr_notes=notes32())
    _, hi = load_extent(k0)
    refused(build(tmp_path, phdr_notes=[*notes32(), num_note(NOTE_ENTRY, hi + 0x1000)]))


def test_entry_before_kernel_refused(tmp_path: Path) -> None:
    refused(build(tmp_path, phdr_notes=[*notes32(), num_note(NOTE_ENTRY, BASE32 - 0x1000)]))


def test_virt_base_above_kernel_refused(tmp_path: Path) -> None:
    refused(build(tmp_path, phdr_notes=notes32(virt_base=num_note(NOTE_VIRT_BASE, BASE32 + 0x1000),
                                               paddr_offset=num_note(NOTE_PADDR_OFFSET, BASE32 + 0x1000))))


@pytest.mark.parametrize(("guest_os", "loader", "ok"), [
    ("Mini-OS", "elf", False),
    ("Mini-OS", None, False),
    ("GRUB", "generic-pv", True),       # libelf compares the first 7 characters with "generic"
    ("Mini-OS", "generic", True),
    ("linux", None, True),
    ("linux-2.6.18-xen", "something-else", True),   # strncmp(guest_os, "linux", 5)
    ("Linux", None, False),             # the comparison is case-sensitive
])
def test_loader_must_be_generic_unless_linux(tmp_path: Path, guest_os: str, loader: str | None, ok: bool) -> None:
    k = build(tmp_path, phdr_notes=notes32(guest_os=str_note(NOTE_GUEST_OS, guest_os),
                                           loader=None if loader is None else str_note(NOTE_LOADER, loader)))
    if ok:
        assert load_guest(k).guest_os == guest_os
    else:
        refused(k)


@pytest.mark.parametrize(("version", "ok"), [
    ("xen-3.0", True), ("xen-3.0-unstable", True), ("xen-4.0", False), ("xen-3.1", False), ("3.0", False),
    (None, False),                      # libelf refuses an image without XEN_VERSION
])
def test_xen_version_must_be_3_0(tmp_path: Path, version: str | None, ok: bool) -> None:
    note = None if version is None else str_note(NOTE_XEN_VERSION, version)
    k = build(tmp_path, phdr_notes=notes32(xen_version=note))
    if ok:
        assert load_guest(k).xen_version == version
    else:
        refused(k)


def test_bsd_symtab_note(tmp_path: Path) -> None:
    assert load_guest(build(tmp_path, phdr_notes=[*notes32(), str_note(NOTE_BSD_SYMTAB, "yes")])).bsd_symtab
    assert not load_guest(build(tmp_path, name="k2", phdr_notes=notes32())).bsd_symtab



# ------------------------------------------------------------------------------ 64-bit notes
def notes64(**override: Note | None) -> list[Note]:
    """Linux's note set (arch/x86/xen/xen-head.S) for a 64-bit kernel linked at BASE64 + 16 MiB with
    p_paddr = p_vaddr - BASE64, as Debian's vmlinux is."""
    notes = {
        "guest_os": str_note(NOTE_GUEST_OS, "linux"),
        "guest_version": str_note(NOTE_GUEST_VERSION, "2.6"),
        "xen_version": str_note(NOTE_XEN_VERSION, "xen-3.0"),
        "virt_base": num_note(NOTE_VIRT_BASE, BASE64, 8),
        "init_p2m": num_note(NOTE_INIT_P2M, 0x8000000000, 8),
        "entry": sym_note(NOTE_ENTRY, "helper", 8),
        "features": str_note(NOTE_FEATURES, "!writable_page_tables|pae_pgdir_above_4gb"),
        "supported_features": num_note(NOTE_SUPPORTED_FEATURES, 0x8801),
        "pae_mode": str_note(NOTE_PAE_MODE, "yes"),
        "loader": str_note(NOTE_LOADER, "generic"),
        "l1_mfn_valid": Note(NOTE_L1_MFN_VALID, struct.pack("<QQ", 1, 1)),
        "suspend_cancel": num_note(NOTE_SUSPEND_CANCEL, 1),
        "mod_start_pfn": num_note(NOTE_MOD_START_PFN, 1),
        "hv_start_low": num_note(NOTE_HV_START_LOW, 0xFFFF800000000000, 8),
        "paddr_offset": num_note(NOTE_PADDR_OFFSET, 0, 8),
        "phys32_entry": num_note(NOTE_PHYS32_ENTRY, 0x1000850),
    }
    for k, v in override.items():
        assert k in notes, k
        if v is None:
            notes.pop(k)
        else:
            notes[k] = v
    return list(notes.values())


def build64(tmp_path: Path, name: str = "kernel64", **kw) -> Path:
    kw.setdefault("phdr_notes", notes64())
    return build_kernel(tmp_path, name=name, bits=64, vbase=BASE64 + 0x1000000, lma_delta=BASE64, **kw)


def test_elf64_linux_note_set(tmp_path: Path) -> None:
    k = build64(tmp_path)
    syms = nm_symbols(k)
    img = load_guest(k)
    assert img.guest_type == "xen-3.0-x86_64" and img.notes_source == "PT_NOTE"
    assert (img.guest_os, img.guest_version, img.loader) == ("linux", "2.6", "generic")
    assert img.virt_base == BASE64 and img.paddr_offset == 0
    assert img.kernel_start == BASE64 + 0x1000000 == syms["_start"]
    assert img.entry == syms["helper"] and img.entry_source == "ENTRY note"
    assert img.elf_entry == syms["_start"]                      # not used: the ENTRY note wins
    assert img.init_p2m == 0x8000000000 and img.mod_start_pfn and img.suspend_cancel
    assert img.hv_start_low == 0xFFFF800000000000
    assert img.l1_mfn_valid == [(1, 1)]
    assert img.note(NOTE_PHYS32_ENTRY).value == 0x1000850
    # FEATURES plus the SUPPORTED_FEATURES bitmap (bits 0, 11 dom0, 15 linux_rsdp_unrestricted)
    assert img.features_supported == (1 << F_WRITABLE_PAGE_TABLES) | (1 << F_PAE_PGDIR_ABOVE_4GB) | 0x8801
    assert img.features_required == 1 << F_WRITABLE_PAGE_TABLES
    assert "linux_rsdp_unrestricted" in img.feature_names(img.features_supported)
    assert img.hypercall_page is None


def test_supported_features_reads_the_first_32_bit_word(tmp_path: Path) -> None:
    """elf_note_numeric_array(note, 4, 0): an 8-byte descriptor gives its low word; a size that is not a
    multiple of 4 gives nothing."""
    k = build64(tmp_path, phdr_notes=notes64(features=None, supported_features=Note(
        NOTE_SUPPORTED_FEATURES, struct.pack("<II", 0x20, 0xFFFFFFFF))))
    assert load_guest(k).features_supported == 0x20
    k = build64(tmp_path, name="odd", phdr_notes=notes64(features=None, supported_features=Note(
        NOTE_SUPPORTED_FEATURES, b"\x20\x00\x00\x00\x01\x00")))
    assert load_guest(k).features_supported == 0


def test_init_p2m_inside_the_kernel_refused(tmp_path: Path) -> None:
    """elf_xen_addr_calc_check: 'P->M table base is out of bounds'."""
    msg = refused(build64(tmp_path, phdr_notes=notes64(init_p2m=sym_note(NOTE_INIT_P2M, "helper", 8))))
    assert "INIT_P2M" in msg


def test_paddr_offset_without_virt_base_refused(tmp_path: Path) -> None:
    k = build(tmp_path, phdr_notes=notes32(virt_base=None))
    assert "VIRT_BASE is not" in refused(k)


def test_no_virt_base_means_zero(tmp_path: Path) -> None:
    k = build(tmp_path, vbase=0x100000, phdr_notes=notes32(virt_base=None, paddr_offset=None))
    img = load_guest(k)
    assert (img.virt_base, img.paddr_offset, img.kernel_start) == (0, 0, 0x100000)


# ------------------------------------------------------------------------------ entry point
def test_entry_note_zero_is_an_entry(tmp_path: Path) -> None:
    """ENTRY 0 is a value, not 'unset': a kernel at BASE32 with ENTRY 0 is refused (e_entry is not used)."""
    msg = refused(build(tmp_path, phdr_notes=[*notes32(), num_note(NOTE_ENTRY, 0)]))
    assert "entry point 0x0 (ENTRY note) is outside the kernel" in msg


def test_entry_note_zero_at_address_zero(tmp_path: Path) -> None:
    """GRUB's x86_64-xen image: VIRT_BASE 0, ENTRY 0, the kernel at 0; the note wins over e_entry."""
    notes = [str_note(NOTE_GUEST_OS, "GRUB"), str_note(NOTE_LOADER, "generic"), str_note(NOTE_XEN_VERSION, "xen-3.0"),
             num_note(NOTE_ENTRY, 0, 8), num_note(NOTE_VIRT_BASE, 0, 8)]
    k = build_kernel(tmp_path, bits=64, vbase=0, entry="helper", phdr_notes=notes)
    assert elf_entry(k) == nm_symbols(k)["helper"] != 0
    img = load_guest(k)
    assert (img.kernel_start, img.entry, img.entry_source) == (0, 0, "ENTRY note")


def test_entry_at_the_kernel_end_accepted(tmp_path: Path) -> None:
    """libelf compares virt_entry > virt_kend: the end address itself passes."""
    _, hi = load_extent(build(tmp_path, name="probe", phdr_notes=notes32()))
    assert load_guest(build(tmp_path, phdr_notes=[*notes32(), num_note(NOTE_ENTRY, hi)])).entry == hi
    refused(build(tmp_path, name="past", phdr_notes=[*notes32(), num_note(NOTE_ENTRY, hi + 1)]))


# ------------------------------------------------------------------------------ legacy string, 64-bit
# GNU Mach's string, with page 1 where this test kernel has its hypercall page (GNU Mach: 0x2)
MACH_LEGACY = ("GUEST_OS=GNU Mach,GUEST_VERSION=1.3,XEN_VER=xen-3.0,VIRT_BASE=0x40000000,"
               "ELF_PADDR_OFFSET=0x40000000,HYPERCALL_PAGE=0x1,LOADER=generic")


def test_legacy_string_in_a_64_bit_kernel(tmp_path: Path) -> None:
    """GNU Mach's string: HYPERCALL_PAGE=0x1 is page 1 above VIRT_BASE; GUEST_VERSION is not a key
    libelf knows (it reads GUEST_VER); `xenwb info` shows the page's address and the text it came from."""
    k = build_kernel(tmp_path, bits=64, vbase=0x40000000, xen_guest=MACH_LEGACY)
    img = load_guest(k)
    assert img.notes_source == "__xen_guest" and img.guest_type == "xen-3.0-x86_64"
    assert img.hypercall_page == 0x40000000 + PAGE == nm_symbols(k)["hypercall_page"]
    assert (img.guest_os, img.guest_version) == ("GNU Mach", "")
    assert img.entry == elf_entry(k) and img.entry_source == "e_entry"
    text = describe(img)
    assert "HYPERCALL_PAGE     0x40001000 (from '0x1')" in text
    assert "-0x" not in text


def test_legacy_hypercall_page_without_virt_base(tmp_path: Path) -> None:
    """libelf adds VIRT_BASE only when the string sets it."""
    k = build(tmp_path, vbase=0, xen_guest="GUEST_OS=linux,XEN_VER=xen-3.0,HYPERCALL_PAGE=0x1")
    img = load_guest(k)
    assert img.virt_base == 0 and img.hypercall_page == PAGE == nm_symbols(k)["hypercall_page"]


def test_legacy_pae_bracket_form_is_exact(tmp_path: Path) -> None:
    """'yes[extended-cr3]' must match exactly; anything else starting with yes is plain PAE."""
    k = build(tmp_path, xen_guest="GUEST_OS=linux,XEN_VER=xen-3.0,VIRT_BASE=0xC0000000,PAE=yes[extended-cr3]x")
    assert load_guest(k).pae_mode == "yes"


def test_notes_owned_by_another_name_fall_back_to_the_legacy_string(tmp_path: Path) -> None:
    """GNU Mach's SHT_NOTE notes are owned by "name", not "Xen": libelf ignores them all."""
    fake = [Note(NOTE_GUEST_OS, b"Impostor\0", name=b"name"), Note(NOTE_XEN_VERSION, b"xen-3.0\0", name=b"name")]
    k = build_kernel(tmp_path, bits=64, vbase=0x40000000, section_notes=fake, xen_guest=MACH_LEGACY)
    img = load_guest(k)
    assert img.notes_source == "__xen_guest" and img.guest_os == "GNU Mach"


# ------------------------------------------------------------------------------ ELF headers libelf refuses
def phdrs32(data: bytes) -> list[tuple[int, tuple[int, ...]]]:
    """(offset, fields) of each ELF32 program header: type, offset, vaddr, paddr, filesz, memsz, flags, align."""
    phoff, = struct.unpack_from("<I", data, 0x1C)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x2A)
    return [(phoff + i * phentsize, struct.unpack_from("<8I", data, phoff + i * phentsize)) for i in range(phnum)]


def shdrs32(data: bytes) -> dict[str, int]:
    """Section name -> offset of its ELF32 section header."""
    shoff, = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
    stroff = struct.unpack_from("<I", data, shoff + shstrndx * shentsize + 16)[0]
    out = {}
    for i in range(shnum):
        at = shoff + i * shentsize
        name_off = struct.unpack_from("<I", data, at)[0]
        out[data[stroff + name_off: data.index(b"\0", stroff + name_off)].decode()] = at
    return out


def patched(tmp_path: Path, k: Path, name: str, fmt: str, at: int, *values: int) -> Path:
    data = bytearray(k.read_bytes())
    struct.pack_into(fmt, data, at, *values)
    out = tmp_path / name
    out.write_bytes(bytes(data))
    return out


def test_filesz_larger_than_memsz_refused(tmp_path: Path) -> None:
    k = build(tmp_path, phdr_notes=notes32())
    at, f = next((at, f) for at, f in phdrs32(k.read_bytes()) if f[0] == 1)      # the first PT_LOAD
    msg = refused(patched(tmp_path, k, "bad", "<I", at + 20, f[4] - 1))
    assert f"p_filesz {f[4]:#x} is larger than p_memsz {f[4] - 1:#x}" in msg


def test_load_segment_without_permissions_is_not_loaded(tmp_path: Path) -> None:
    """libelf elf_phdr_is_loadable: a PT_LOAD needs one of R, W, X."""
    k = build(tmp_path, phdr_notes=notes32())
    loads = [(at, f) for at, f in phdrs32(k.read_bytes()) if f[0] == 1]
    at, data_seg = loads[1]
    img = load_guest(patched(tmp_path, k, "noflags", "<I", at + 24, 0))
    assert [s.paddr for s in img.segments] == [loads[0][1][3]]
    assert img.kernel_end == loads[0][1][3] + loads[0][1][5]


@pytest.mark.parametrize("sh_type", [1, 3, 8])     # PROGBITS, STRTAB, NOBITS
def test_symtab_section_of_another_type_is_ignored(tmp_path: Path, sh_type: int) -> None:
    """libelf finds the symbol table by type, not by name: a '.symtab' that is not SHT_SYMTAB is none."""
    k = build(tmp_path, phdr_notes=notes32())
    img = load_guest(patched(tmp_path, k, "k", "<I", shdrs32(k.read_bytes())[".symtab"] + 4, sh_type))
    assert img.symbols == [] and img.lookup("helper") is None and img.symbolize(img.entry) is None
    assert img.guest_os == "xenwb-test"


def test_symtab_with_its_string_table_link_out_of_range_is_ignored(tmp_path: Path) -> None:
    k = build(tmp_path, phdr_notes=notes32())
    img = load_guest(patched(tmp_path, k, "k", "<I", shdrs32(k.read_bytes())[".symtab"] + 24, 0xFFFF))
    assert img.symbols == []


def test_section_headers_past_the_end_refused(tmp_path: Path) -> None:
    """libelf elf_init: 'shdr overflow'."""
    k = build(tmp_path, phdr_notes=notes32())
    shnum = struct.unpack_from("<H", k.read_bytes(), 0x30)[0]
    assert "section headers run past the end" in refused(patched(tmp_path, k, "k", "<H", 0x30, shnum + 1000))


# ------------------------------------------------------------------------------ the guest file itself
def test_dev_zero_refused_before_reading() -> None:
    assert "not a regular file" in refused(Path("/dev/zero"))


def test_directory_refused(tmp_path: Path) -> None:
    assert "is a directory" in refused(tmp_path)


def test_fifo_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in refused(fifo)          # opening it would block


def test_file_over_the_size_limit_refused(tmp_path: Path) -> None:
    big = tmp_path / "huge"
    with open(big, "wb") as fh:
        fh.truncate(MAX_GUEST_FILE + 1)                    # sparse: nothing is written or read
    assert f"more than the {MAX_GUEST_FILE:,}" in refused(big)


def test_gzipped_text_is_not_a_kernel(tmp_path: Path) -> None:
    p = tmp_path / "notes.gz"
    p.write_bytes(gzip.compress(b"plain text\n" * 100))
    assert "does not hold an ELF" in refused(p)


# ------------------------------------------------------------------------------ System.map
def stripped_with_map(tmp_path: Path, kernel_name: str, map_name: str) -> tuple[Path, dict[str, int]]:
    """A stripped 64-bit kernel and, beside it, its System.map made as Linux's scripts/mksysmap makes
    it (nm -n), plus an absolute symbol and a per-cpu-like offset that must not be used."""
    k = build64(tmp_path, name="unstripped")
    syms = nm_symbols(k)
    nm = subprocess.run(["nm", "-n", str(k)], capture_output=True, text=True, check=True).stdout
    (tmp_path / map_name).write_text("0000000000000000 D __per_cpu_start\n00000000000001ea A kexec_size\n" + nm)
    out = tmp_path / kernel_name
    subprocess.run(["strip", "-o", str(out), str(k)], check=True)
    return out, syms


def test_system_map_next_to_vmlinuz(tmp_path: Path) -> None:
    k, syms = stripped_with_map(tmp_path, "vmlinuz-6.1.0-test", "System.map-6.1.0-test")
    img = load_guest(k)
    assert img.symbols_source == str(tmp_path / "System.map-6.1.0-test")
    assert img.symbolize(syms["helper"] + 2) == "helper+0x2"
    assert img.symbolize(img.entry) == "helper"
    assert img.lookup("start_info_ptr").address == syms["start_info_ptr"]    # data symbols too
    assert img.lookup("__per_cpu_start") is None and img.lookup("kexec_size") is None
    assert all(img.kernel_start <= s.address < img.kernel_end for s in img.symbols)


def test_plain_system_map_in_the_same_directory(tmp_path: Path) -> None:
    k, syms = stripped_with_map(tmp_path, "kernel", "System.map")
    assert load_guest(k).lookup("helper").address == syms["helper"]


def test_system_map_given_explicitly(tmp_path: Path) -> None:
    k, syms = stripped_with_map(tmp_path, "kernel", "my.map")
    assert load_guest(k).symbols == []                       # no symtab, no map found
    img = load_guest(k, symbols=tmp_path / "my.map")
    assert img.symbolize(syms["helper"]) == "helper" and img.symbols_source == str(tmp_path / "my.map")


def test_explicit_system_map_wins_over_elf_symbols(tmp_path: Path) -> None:
    k = build64(tmp_path)
    syms = nm_symbols(k)
    m = tmp_path / "renamed.map"
    m.write_text(f"{syms['helper']:016x} T renamed_helper\n")
    img = load_guest(k, symbols=m)
    assert img.symbolize(syms["helper"] + 1) == "renamed_helper+0x1" and img.lookup("helper") is None


def test_unreadable_system_map_refused(tmp_path: Path) -> None:
    k = build64(tmp_path)
    with pytest.raises(GuestImageError, match="cannot read the System.map"):
        load_guest(k, symbols=tmp_path / "missing.map")


def test_global_symbol_wins_at_one_address(tmp_path: Path) -> None:
    k = build64(tmp_path)
    helper = nm_symbols(k)["helper"]
    m = tmp_path / "m"
    m.write_text(f"{helper:016x} t local_alias\n{helper:016x} T global_name\n{helper:016x} t later_local\n")
    assert load_guest(k, symbols=m).symbolize(helper) == "global_name"


def test_large_system_map(tmp_path: Path) -> None:
    """150,000 lines (Debian's amd64 map has about that many), every nm type letter: the ones that name
    code or data inside [start, end) are kept, sorted."""
    start, end = BASE64 + 0x1000000, BASE64 + 0x4000000
    types = "TtDdBbRrWwVvAaUNn"
    lines = [f"{start + 0x100 * i:016x} {types[i % len(types)]} sym_{i}\n" for i in range(150_000)]
    m = tmp_path / "System.map"
    m.write_text("".join(reversed(lines)) + f"{end:016x} T _past_the_end\n")
    syms = read_system_map(m, start, end)
    kept = [i for i in range(150_000) if types[i % len(types)] not in "AaUNn"]
    assert [s.name for s in syms] == [f"sym_{i}" for i in kept]
    assert [s.address for s in syms] == [start + 0x100 * i for i in kept]


# ------------------------------------------------------------------------------ real guests
GRUB64 = Path("/usr/lib/grub-xen/grub-x86_64-xen.bin")


@pytest.mark.skipif(not GRUB64.exists(), reason="grub-xen-host is not installed")
def test_debian_grub_x86_64() -> None:
    """ENTRY 0 and VIRT_BASE 0: GRUB runs from virtual address 0."""
    img = load_guest(GRUB64)
    assert (img.machine, img.guest_type, img.guest_os, img.notes_source) == (
        "EM_X86_64", "xen-3.0-x86_64", "GRUB", "PT_NOTE")
    assert (img.entry, img.entry_source, img.virt_base, img.hypercall_page) == (0, "ENTRY note", 0, None)
    assert (img.kernel_start, img.kernel_end) == load_extent(GRUB64)


@pytest.fixture(scope="module")
def gnumach() -> Path:
    from xenwb.linuxguest import fetch_package_file
    if not shutil.which("apt-get"):
        pytest.skip("needs Debian's apt-get")
    return fetch_package_file("gnumach-image-1.8-xen-486", "boot/gnumach-1.8-xen-486.gz")


def test_debian_gnumach(tmp_path: Path, gnumach: Path) -> None:
    """A gzip'ed ELF64 (despite '486' in the package name) whose Xen notes are owned by "name": libelf
    ignores them and reads the legacy string, HYPERCALL_PAGE=0x2 meaning VIRT_BASE + 2 pages."""
    elf = tmp_path / "gnumach"
    elf.write_bytes(gzip.decompress(gnumach.read_bytes()))
    legacy = subprocess.run(["readelf", "-p", "__xen_guest", str(elf)], capture_output=True, text=True).stdout
    assert "HYPERCALL_PAGE=0x2" in legacy and "VIRT_BASE=0x40000000" in legacy
    notes = subprocess.run(["readelf", "-n", str(elf)], capture_output=True, text=True).stdout
    assert "name " in notes and "Xen " not in notes
    img = load_guest(gnumach)
    assert [p.container for p in img.packing] == ["gzip file"]
    assert (img.machine, img.notes_source, img.guest_os, img.guest_version) == (
        "EM_X86_64", "__xen_guest", "GNU Mach", "")
    assert (img.virt_base, img.paddr_offset) == (0x40000000, 0x40000000)
    assert img.hypercall_page == 0x40000000 + 2 * PAGE
    assert (img.entry, img.entry_source) == (elf_entry(elf), "e_entry")
    assert (img.kernel_start, img.kernel_end) == load_extent(elf)      # p_paddr == p_vaddr, offset = base
    assert "HYPERCALL_PAGE     0x40002000 (from '0x2')" in describe(img)


def test_debian_vmlinuz_with_its_system_map() -> None:
    """Debian's cloud kernel with the real System.map from the -dbg package: the ENTRY note is
    startup_xen, as xen-head.S says."""
    from xenwb.linuxguest import fetch_linux
    if not shutil.which("apt-get"):
        pytest.skip("needs Debian's apt-get")
    g = fetch_linux(symbols=True)
    img = load_guest(g.vmlinuz)
    assert img.symbols_source == str(g.system_map)
    startup_xen = next(int(line.split()[0], 16) for line in g.system_map.read_text().splitlines()
                       if line.endswith(" T startup_xen"))
    assert img.entry == startup_xen and img.symbolize(img.entry) == "startup_xen"
    assert img.lookup("xen_start_kernel") is not None
    assert len(img.symbols) > 50_000
