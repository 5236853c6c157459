"""XEN_ELFNOTE_* numbers and how each descriptor is read (public/elfnote.h)."""

from __future__ import annotations

import enum


class ElfNote(enum.IntEnum):
    INFO = 0
    ENTRY = 1
    HYPERCALL_PAGE = 2
    VIRT_BASE = 3
    PADDR_OFFSET = 4
    XEN_VERSION = 5
    GUEST_OS = 6
    GUEST_VERSION = 7
    LOADER = 8
    PAE_MODE = 9
    FEATURES = 10
    BSD_SYMTAB = 11
    HV_START_LOW = 12
    L1_MFN_VALID = 13
    SUSPEND_CANCEL = 14
    INIT_P2M = 15
    MOD_START_PFN = 16
    SUPPORTED_FEATURES = 17
    PHYS32_ENTRY = 18
    PHYS32_RELOC = 19
    CRASH_INFO = 0x1000001
    CRASH_REGS = 0x1000002
    DUMPCORE_NONE = 0x2000000
    DUMPCORE_HEADER = 0x2000001
    DUMPCORE_XEN_VERSION = 0x2000002
    DUMPCORE_FORMAT_VERSION = 0x2000003


# How libelf reads each note (xen/common/libelf/libelf-dominfo.c: note_desc[]).
STRING_NOTES = frozenset({
    ElfNote.INFO, ElfNote.XEN_VERSION, ElfNote.GUEST_OS, ElfNote.GUEST_VERSION, ElfNote.LOADER,
    ElfNote.PAE_MODE, ElfNote.FEATURES, ElfNote.BSD_SYMTAB,
})
NUMERIC_NOTES = frozenset({
    ElfNote.ENTRY, ElfNote.HYPERCALL_PAGE, ElfNote.VIRT_BASE, ElfNote.PADDR_OFFSET,
    ElfNote.HV_START_LOW, ElfNote.SUSPEND_CANCEL, ElfNote.INIT_P2M, ElfNote.MOD_START_PFN,
    ElfNote.SUPPORTED_FEATURES, ElfNote.PHYS32_ENTRY,
})
# Feature names the FEATURES note understands, with their XENFEAT bits
# (libelf-dominfo.c: elf_xen_feature_names).
FEATURE_NAMES = {
    "writable_page_tables": 0, "writable_descriptor_tables": 1, "auto_translated_physmap": 2,
    "supervisor_mode_kernel": 3, "pae_pgdir_above_4gb": 4, "hvm_callback_vector": 8, "dom0": 11,
}
