"""Cross-check xenwb.abi (struct layouts and numbers) against the Xen public headers.

One C file is generated from the tables below and compiled with ``gcc -m32 -ffreestanding -S``
(PV32 layouts are the i386 ones) and with ``-m64`` (PV64, the x86_64 ones); every
``sizeof``/``offsetof`` and macro value it emits is compared with the ctypes layouts in
``xenwb.abi.structs.PV32`` / ``PV64`` and the numbers in ``xenwb.abi.constants`` /
``xenwb.abi.elfnotes``. Nothing is run: the values are read back from the assembler output, so
no 32-bit libc is needed.

The installed headers (Debian libxen-dev) may be older than the Xen the ABI sheet describes.
A field or constant that only newer Xen has is listed in ``NEWER_*`` with its value from
/work/shared/xen-pv-abi.md (or the cited upstream commit); it is compared with the headers as
soon as they have it.
"""

from __future__ import annotations

import ctypes
import enum
import re
from pathlib import Path

import pytest
from support import XEN_INCLUDE, probe_c

from xenwb.abi import constants as C
from xenwb.abi import elfnotes
from xenwb.abi.structs import PV32, PV64, Layouts

pytestmark = pytest.mark.skipif(not (XEN_INCLUDE / "xen.h").exists(),
                                reason="Xen public headers not installed (/usr/include/xen/xen.h missing)")

HEADERS = [
    "xen/xen.h", "xen/arch-x86/xen.h", "xen/event_channel.h", "xen/sched.h", "xen/vcpu.h", "xen/memory.h",
    "xen/callback.h", "xen/grant_table.h", "xen/version.h", "xen/physdev.h", "xen/nmi.h", "xen/features.h",
    "xen/elfnote.h", "xen/arch-x86/cpuid.h", "xen/arch-x86/hvm/start_info.h", "xen/io/console.h",
    "xen/io/xs_wire.h",
]
WIDTHS = {32: PV32, 64: PV64}

# The e820 record of XENMEM_memory_map is not declared in the public headers (Xen keeps it in
# asm/e820.h, packed): this is its C declaration, used as the reference for both our layouts.
EXTRA_C = """
struct xenwb_e820entry { uint64_t addr; uint64_t size; uint32_t type; } __attribute__((packed));
"""

# ---------------------------------------------------------------------------------------------
# Layout mapping: PV32 attribute -> list of (C type, {our field: C member designator}).
# Fields not listed map to the member of the same name; None marks padding we declare that has
# no named member in the header (it is covered by the offset checks of its neighbours and by
# the struct size). Several C types may back one layout (evtchn_port_op = close/send/unmask).
# ---------------------------------------------------------------------------------------------
LAYOUTS: dict[str, list[tuple[str, dict[str, str | None]]]] = {
    "start_info": [("struct start_info", {
        "console_mfn": "console.domU.mfn", "console_evtchn": "console.domU.evtchn"})],
    "mmu_update": [("struct mmu_update", {})],
    "mmuext_op": [("struct mmuext_op", {"arg1": "arg1.mfn", "arg2": "arg2.src_mfn"})],
    "multicall_entry": [("struct multicall_entry", {})],
    "vcpu_time_info": [("struct vcpu_time_info", {})],
    "arch_vcpu_info": [("struct arch_vcpu_info", {})],
    "vcpu_info": [("struct vcpu_info", {})],
    "arch_shared_info": [("struct arch_shared_info", {})],
    "shared_info": [("struct shared_info", {})],
    "trap_info": [("struct trap_info", {})],
    "cpu_user_regs": [("struct cpu_user_regs", {})],
    "vcpu_guest_context": [("struct vcpu_guest_context", {"fpu_ctxt": "fpu_ctxt.x"})],
    "callback_register": [("struct callback_register", {"cs": "address.cs", "eip": "address.eip"})],
    "callback_unregister": [("struct callback_unregister", {"_pad": "_unused"})],
    "evtchn_alloc_unbound": [("struct evtchn_alloc_unbound", {})],
    "evtchn_bind_interdomain": [("struct evtchn_bind_interdomain", {"_pad": None})],
    "evtchn_bind_virq": [("struct evtchn_bind_virq", {})],
    "evtchn_bind_pirq": [("struct evtchn_bind_pirq", {})],
    "evtchn_bind_ipi": [("struct evtchn_bind_ipi", {})],
    "evtchn_port": [("struct evtchn_close", {}), ("struct evtchn_send", {}), ("struct evtchn_unmask", {})],
    "evtchn_bind_vcpu": [("struct evtchn_bind_vcpu", {})],
    "evtchn_reset": [("struct evtchn_reset", {})],
    # u0 is the raw first word of the union (virq | pirq; unbound.dom and interdomain.dom are
    # its low 16 bits), u1 is interdomain.port.
    "evtchn_status": [
        ("struct evtchn_status", {"_pad": None, "u0": "u.virq", "u1": "u.interdomain.port"}),
        ("struct evtchn_status", {"_pad": None, "u0": "u.pirq", "u1": None}),
    ],
    "sched_shutdown": [("struct sched_shutdown", {})],
    "sched_poll": [("struct sched_poll", {"ports": "ports.p"})],
    "sched_remote_shutdown": [("struct sched_remote_shutdown", {"_pad": None})],
    "sched_watchdog": [("struct sched_watchdog", {})],
    "vcpu_runstate_info": [("struct vcpu_runstate_info", {})],
    "vcpu_register_runstate_memory_area": [("struct vcpu_register_runstate_memory_area", {"addr": "addr.p"})],
    "vcpu_set_periodic_timer": [("struct vcpu_set_periodic_timer", {})],
    "vcpu_set_singleshot_timer": [("struct vcpu_set_singleshot_timer", {})],
    "vcpu_register_vcpu_info": [("struct vcpu_register_vcpu_info", {})],
    "xen_memory_reservation": [("struct xen_memory_reservation", {"extent_start": "extent_start.p"})],
    "xen_memory_map": [("struct xen_memory_map", {"buffer": "buffer.p"})],
    "e820_entry": [("struct xenwb_e820entry", {})],
    "xen_machphys_mapping": [("struct xen_machphys_mapping", {})],
    "xen_machphys_mfn_list": [("struct xen_machphys_mfn_list", {"extent_start": "extent_start.p"})],
    "xen_add_to_physmap": [("struct xen_add_to_physmap", {})],
    "xen_feature_info": [("struct xen_feature_info", {})],
    "xen_platform_parameters": [("struct xen_platform_parameters", {})],
    "physdev_set_iopl": [("struct physdev_set_iopl", {})],
    "physdev_set_iobitmap": [("struct physdev_set_iobitmap", {"bitmap": "bitmap.p"})],
    "gnttab_setup_table": [("struct gnttab_setup_table", {"_pad": None, "_pad2": None,
                                                          "frame_list": "frame_list.p"})],
    "gnttab_query_size": [("struct gnttab_query_size", {"_pad": None})],
    "gnttab_set_version": [("struct gnttab_set_version", {})],
    "gnttab_get_version": [("struct gnttab_get_version", {"_pad": "pad"})],
    "xennmi_callback": [("struct xennmi_callback", {})],
    "xencons_interface": [("struct xencons_interface", {"in_": "in"})],
    "xenstore_domain_interface": [("struct xenstore_domain_interface", {})],
    "xsd_sockmsg": [("struct xsd_sockmsg", {})],
    "evtchn_init_control": [("struct evtchn_init_control", {"_pad": None})],
    "evtchn_expand_array": [("struct evtchn_expand_array", {})],
    "evtchn_set_priority": [("struct evtchn_set_priority", {})],
    "evtchn_fifo_control_block": [("struct evtchn_fifo_control_block", {})],
    "vcpu_register_time_memory_area": [("struct vcpu_register_time_memory_area", {"addr": "addr.p"})],
    "iret_context": [("struct iret_context", {})],
    "grant_entry_v1": [("struct grant_entry_v1", {})],
}
# Where the x86_64 header names a member differently from the i386 one.
LAYOUTS_64: dict[str, list[tuple[str, dict[str, str | None]]]] = {
    "callback_register": [("struct callback_register", {"_pad": None})],
    "cpu_user_regs": [("struct cpu_user_regs", {f"_pad{i}": None for i in range(7)})],
}
# Layouts no public header declares (frames Xen's entry code pushes), with their source;
# test_frames_follow_entry_S checks them against that source's description.
NO_HEADER = {
    "bounce_frame": "xen/arch/x86/x86_64/entry.S create_bounce_frame",
    "bounce_frame_ec": "xen/arch/x86/x86_64/entry.S create_bounce_frame (TBF_EXCEPTION_ERRCODE)",
    "failsafe_frame": "xen/arch/x86/x86_64/entry.S (failsafe bounce, domain.c load_segments)",
}

# Union alternatives narrower than the word we declare: only their offset must agree.
UNION_ALIASES = [  # (layout, our field, C type, C member)
    ("evtchn_status", "u0", "struct evtchn_status", "u.unbound.dom"),
    ("evtchn_status", "u0", "struct evtchn_status", "u.interdomain.dom"),
    ("mmuext_op", "arg1", "struct mmuext_op", "arg1.linear_addr"),
    ("mmuext_op", "arg2", "struct mmuext_op", "arg2.nr_ents"),
    ("mmuext_op", "arg2", "struct mmuext_op", "arg2.vcpumask"),
]

# Fields that newer Xen appended to a struct, with (offset, size, struct size) from the ABI
# sheet (section 6). Used only while the installed headers lack the member.
NEWER_FIELDS: dict[tuple[str, str], tuple[int, int, int]] = {
    ("xencons_interface", "connection"): (3088, 1, 3092),          # u8 connection @3088, 3092 bytes
    ("xenstore_domain_interface", "evtchn_port"): (2076, 4, 2080),  # u32 evtchn_port @2076, 2080 bytes
}


def _layout(name: str, bits: int = 32) -> type:
    return getattr(WIDTHS[bits], name)


def _layouts_of(abi: Layouts) -> dict[str, type]:
    return {k: v for k, v in vars(abi).items() if isinstance(v, type) and issubclass(v, ctypes.Structure)}


def _mapping(name: str, bits: int) -> list[tuple[str, dict[str, str | None]]]:
    if bits == 64 and name in LAYOUTS_64:
        return LAYOUTS_64[name]
    return LAYOUTS[name]


def _checked(bits: int) -> list[str]:
    """The layouts of that width that have a header to be checked against."""
    return sorted(n for n in _layouts_of(WIDTHS[bits]) if n in LAYOUTS)


def _c_member(name: str, entry: dict[str, str | None], field: str) -> str | None:
    return entry.get(field, field)


def _is_int_type(t: type) -> bool:
    return issubclass(t, ctypes._SimpleCData) and t is not ctypes.c_char


def _is_signed(t: type) -> bool:
    return t in (ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64,
                 ctypes.c_byte, ctypes.c_short, ctypes.c_int, ctypes.c_long, ctypes.c_longlong)


# ---------------------------------------------------------------------------------------------
# Constants: (label, our value, header macro name)
# ---------------------------------------------------------------------------------------------
ENUM_PREFIXES: list[tuple[type[enum.IntEnum], str, dict[str, str]]] = [
    (C.Hypercall, "__HYPERVISOR_", {"mca": "arch_0", "paging_domctl_cont": "arch_1"}),
    (C.MmuextCmd, "MMUEXT_", {}),
    (C.Vmasst, "VMASST_TYPE_", {"four_gb_segments": "4gb_segments",
                                "four_gb_segments_notify": "4gb_segments_notify"}),
    (C.SchedOp, "SCHEDOP_", {"yield_": "yield"}),
    (C.ShutdownReason, "SHUTDOWN_", {}),
    (C.XenVer, "XENVER_", {}),
    (C.XenFeat, "XENFEAT_", {}),
    (C.MemOp, "XENMEM_", {}),
    (C.CallbackType, "CALLBACKTYPE_", {}),
    (C.VcpuOp, "VCPUOP_", {}),
    (C.EvtchnOp, "EVTCHNOP_", {}),
    (C.Virq, "VIRQ_", {}),
    (C.PhysdevOp, "PHYSDEVOP_", {}),
    (C.GnttabOp, "GNTTABOP_", {}),
    (elfnotes.ElfNote, "XEN_ELFNOTE_", {}),
]

# Module-level numbers of xenwb.abi.constants checked against a header macro of the same name
# (or the alias given here).
MODULE_PREFIXES = ("MMU_", "UVMF_", "DOMID_", "VMASST_CMD_", "CONSOLEIO_", "SIF_", "FLAT_",
                   "FIRST_RESERVED_GDT_", "CALLBACKOP_", "CALLBACKF_", "VCPU_SSHOTTMR_", "VGCF_",
                   "XEN_CPUID_", "NR_VIRQS", "MEMOP_CMD_MASK", "HYPERVISOR_VIRT_", "MACH2PHYS_", "E820_")
MODULE_ALIASES = {
    "E820_RAM": "XEN_HVM_MEMMAP_TYPE_RAM",   # the e820 RAM type, as arch-x86/hvm/start_info.h spells it
}
# Numbers with no public-header counterpart (Xen-internal), with where they come from.
NOT_PUBLIC = {
    "MEMOP_CMD_MASK": "xen/include/xen/hypercall.h (MEMOP_EXTENT_SHIFT 6), ABI sheet 2.16",
    "MACH2PHYS_COMPAT_VIRT_END": "xen/arch/x86/include/asm/config.h (compat M2P end), ABI sheet 1.5",
}
# Macros only newer Xen headers define: value from the ABI sheet / upstream Xen.
NEWER_CONSTANTS = {
    "XENVER_extraversion2": 11, "XENVER_capabilities2": 12, "XENVER_changeset2": 13,
    "XENVER_commandline2": 14,                          # ABI sheet 2.15
    "XENFEAT_runstate_phys_area": 18, "XENFEAT_vcpu_time_phys_area": 19,
    "XENFEAT_dm_msix_all_writes": 20,                   # ABI sheet 2.15
    "XEN_ELFNOTE_PHYS32_RELOC": 19,                     # ABI sheet 1.1
    "PHYSDEVOP_pci_device_reset": 32,                   # public/physdev.h in Xen >= 4.18
}


def _constant_table() -> list[tuple[str, int, str]]:
    rows = []
    for cls, prefix, renames in ENUM_PREFIXES:
        for m in cls:
            rows.append((f"{cls.__name__}.{m.name}", int(m), prefix + renames.get(m.name, m.name)))
    for name, value in vars(C).items():
        if isinstance(value, int) and not isinstance(value, bool) and name.startswith(MODULE_PREFIXES):
            if name in NOT_PUBLIC:
                continue
            rows.append((name, value, MODULE_ALIASES.get(name, name)))
    return rows


CONSTANTS = _constant_table()


def _generate_probe(newer_present: frozenset[tuple[str, str]] = frozenset(), bits: int = 32) -> str:
    out = ["#define __XEN_INTERFACE_VERSION__ 0x00040e00", "#include <stddef.h>", "#include <stdint.h>"]
    out += [f"#include <{h}>" for h in HEADERS]
    out.append(EXTRA_C)
    out.append(r"""
#define XENWB_KIND(x) _Generic((x), \
    _Bool: 'u', unsigned char: 'u', unsigned short: 'u', unsigned int: 'u', unsigned long: 'u', \
    unsigned long long: 'u', signed char: 's', short: 's', int: 's', long: 's', long long: 's', \
    char: ((char)-1 < 0 ? 's' : 'u'), \
    default: (__builtin_classify_type(x) == 5 ? 'p' : 'o'))
""")
    out.append("void xenwb_layouts(void) {")
    for name in _checked(bits):
        ours = _layout(name, bits)
        for j, (ctype, entry) in enumerate(_mapping(name, bits)):
            out.append(f'    XENWB_EMIT("size {name} {j}", sizeof({ctype}));')
            for fname, ftype in ours._fields_:
                member = _c_member(name, entry, fname)
                if member is None or ((name, fname) in NEWER_FIELDS and (name, fname) not in newer_present):
                    continue
                ref = f"((({ctype} *)0)->{member})"
                out.append(f'    XENWB_EMIT("off {name} {j} {fname}", offsetof({ctype}, {member}));')
                out.append(f'    XENWB_EMIT("sz {name} {j} {fname}", sizeof{ref});')
                if issubclass(ftype, ctypes.Array):
                    out.append(f'    XENWB_EMIT("esz {name} {j} {fname}", sizeof({ref}[0]));')
                elif _is_int_type(ftype):
                    out.append(f'    XENWB_EMIT("kind {name} {j} {fname}", XENWB_KIND({ref}));')
    for i, (_lay, _f, ctype, member) in enumerate(UNION_ALIASES):
        out.append(f'    XENWB_EMIT("alias {i}", offsetof({ctype}, {member}));')
    out.append("}")
    out.append("void xenwb_constants(void) {")
    for _label, _value, macro in CONSTANTS:
        out.append(f"#ifdef {macro}")
        out.append(f'    XENWB_EMIT("const {macro}", (unsigned long long)({macro}));')
        out.append("#endif")
    out.append("}")
    out.append("void xenwb_errno(void) {")
    # errno.h expands XEN_ERRNO(name, value) once per errno when XEN_ERRNO is defined.
    # __XEN__ unlocks the two hypervisor-internal values (EINTR, ERESTART) xenwb also names.
    out.append('#define XEN_ERRNO(name, value) XENWB_EMIT("errno " #name, value);')
    out.append("#define __XEN__")
    out.append("#include <xen/errno.h>")
    out.append("#undef __XEN__")
    out.append("}")
    return "\n".join(out) + "\n"


def _newer_field_present(tmp: Path, struct: str, member: str) -> bool:
    """Does the installed header declare this member? (a one-line compile probe)"""
    src = ("#define __XEN_INTERFACE_VERSION__ 0x00040e00\n#include <stddef.h>\n#include <stdint.h>\n"
           + "".join(f"#include <{h}>\n" for h in HEADERS)
           + f'void f(void) {{ XENWB_EMIT("p", offsetof(struct {struct}, {member})); }}\n')
    try:
        probe_c(src, tmp / f"newer_{struct}_{member}")
    except AssertionError:
        return False
    return True


class Probe:
    def __init__(self, pairs: list[tuple[str, int]], newer_present: dict[tuple[str, str], bool],
                 bits: int = 32) -> None:
        self.bits = bits
        self.values: dict[str, int] = {}
        self.errno: dict[str, int] = {}
        for tag, v in pairs:
            if tag.startswith("errno "):
                self.errno[tag.split()[1]] = v
            else:
                self.values[tag] = v
        self.newer_present = newer_present

    def get(self, tag: str) -> int:
        assert tag in self.values, f"the header probe emitted no value for {tag!r}"
        return self.values[tag]


@pytest.fixture(scope="session")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Probe:
    tmp = tmp_path_factory.mktemp("xenabi")
    newer = {}
    for (layout, fname) in NEWER_FIELDS:
        ctype, entry = LAYOUTS[layout][0]
        member = _c_member(layout, entry, fname)
        assert member is not None
        newer[(layout, fname)] = _newer_field_present(tmp, ctype.split()[1], member)
    present = frozenset(k for k, v in newer.items() if v)
    return Probe(probe_c(_generate_probe(present), tmp / "main"), newer)


@pytest.fixture(scope="session")
def probe64(tmp_path_factory: pytest.TempPathFactory, probe: Probe) -> Probe:
    """The same probe compiled for x86_64 (the newer-field decisions are the same headers')."""
    tmp = tmp_path_factory.mktemp("xenabi64")
    present = frozenset(k for k, v in probe.newer_present.items() if v)
    return Probe(probe_c(_generate_probe(present, 64), tmp / "main", bits=64), probe.newer_present, 64)


# ------------------------------------------------------------------------------------ layouts
def test_every_layout_has_a_mapping() -> None:
    """A layout added to PV32 or PV64 without a row here would escape the cross-check."""
    for abi in (PV32, PV64):
        missing = sorted(set(_layouts_of(abi)) - set(LAYOUTS) - set(NO_HEADER))
        assert not missing, f"{abi.abi.name} layouts with no header mapping in LAYOUTS: {missing}"
    stale = sorted(set(LAYOUTS) - set(_layouts_of(PV32)) - set(_layouts_of(PV64)))
    assert not stale, f"LAYOUTS rows for layouts neither ABI has: {stale}"


def test_mapping_names_only_real_fields() -> None:
    for bits in (32, 64):
        for name in _checked(bits):
            _check_mapping_fields(name, bits)


def _check_mapping_fields(name: str, bits: int) -> None:
        ours = {f for f, _ in _layout(name, bits)._fields_}
        for _ctype, entry in _mapping(name, bits):
            unknown = set(entry) - ours
            assert not unknown, f"{name}: mapping names fields the layout does not have: {sorted(unknown)}"


@pytest.mark.parametrize("name", _checked(32))
def test_layout_matches_header(probe: Probe, name: str) -> None:
    _compare(probe, name)


@pytest.mark.parametrize("name", _checked(64))
def test_layout_matches_header_64(probe64: Probe, name: str) -> None:
    _compare(probe64, name)


def _compare(probe: Probe, name: str) -> None:
    bits = probe.bits
    ours = _layout(name, bits)
    problems = []
    for j, (ctype, entry) in enumerate(_mapping(name, bits)):
        newer_here = [(n, f) for (n, f) in NEWER_FIELDS if n == name and not probe.newer_present[(n, f)]]
        expect_size = NEWER_FIELDS[newer_here[0]][2] if newer_here else probe.get(f"size {name} {j}")
        if ctypes.sizeof(ours) != expect_size:
            problems.append(f"sizeof: xenwb {ctypes.sizeof(ours)}, {ctype} {expect_size}")
        for fname, ftype in ours._fields_:
            member = _c_member(name, entry, fname)
            if member is None:
                continue
            our_off = getattr(ours, fname).offset
            our_sz = ctypes.sizeof(ftype)
            if (name, fname) in NEWER_FIELDS and not probe.newer_present[(name, fname)]:
                off, sz, _ = NEWER_FIELDS[(name, fname)]
                hdr_size = probe.get(f"size {name} {j}")
                if our_off < hdr_size:
                    problems.append(f"{fname}: newer-Xen field at {our_off} overlaps the {hdr_size} bytes "
                                    f"the installed header declares")
                if (our_off, our_sz) != (off, sz):
                    problems.append(f"{fname}: xenwb @{our_off}/{our_sz}, ABI sheet @{off}/{sz}")
                continue
            off = probe.get(f"off {name} {j} {fname}")
            sz = probe.get(f"sz {name} {j} {fname}")
            if our_off != off:
                problems.append(f"{fname}: offset xenwb {our_off}, header {ctype}.{member} {off}")
            if our_sz != sz:
                problems.append(f"{fname}: size xenwb {our_sz}, header {ctype}.{member} {sz}")
            if issubclass(ftype, ctypes.Array):
                esz = probe.get(f"esz {name} {j} {fname}")
                if ctypes.sizeof(ftype._type_) != esz:
                    problems.append(f"{fname}: element size xenwb {ctypes.sizeof(ftype._type_)}, header {esz}")
            elif _is_int_type(ftype):
                kind = chr(probe.get(f"kind {name} {j} {fname}"))
                want = "s" if _is_signed(ftype) else "up"
                if kind not in want:
                    problems.append(f"{fname}: xenwb {'signed' if _is_signed(ftype) else 'unsigned'}, "
                                    f"header {ctype}.{member} is "
                                    f"{ {'s': 'signed', 'u': 'unsigned', 'p': 'a pointer', 'o': 'not a scalar'}[kind]}")
    assert not problems, f"{name} ({bits}-bit) differs from the Xen headers:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("i", range(len(UNION_ALIASES)),
                         ids=[f"{a[0]}.{a[1]}={a[3]}" for a in UNION_ALIASES])
def test_union_alternatives_share_the_field_offset(probe: Probe, i: int) -> None:
    layout, field, ctype, member = UNION_ALIASES[i]
    assert getattr(_layout(layout), field).offset == probe.get(f"alias {i}"), f"{ctype}.{member}"


def test_pv64_sizes_and_offsets_named_by_the_abi_sheet() -> None:
    """/work/shared/xen-pv64-abi.md: start_info 0x490, vcpu_guest_context 0x1430 with flags @0x200,
    user_regs @0x208, trap_ctxt @0x2d0, gdt_frames @0x12e0, kernel_ss @0x1368, ctrlreg @0x1378,
    callbacks @0x13f8/0x1400/0x1408, fs_base @0x1418, gs_base_kernel @0x1420, gs_base_user @0x1428;
    shared_info's arch @0xc10, 0xc40 used; vcpu_info 64 with cr2 @0x10 and time @0x20."""
    G = PV64.vcpu_guest_context
    assert (PV64.start_info.size(), G.size(), PV64.vcpu_info.size(), PV64.shared_info.size()) == \
        (0x490, 0x1430, 64, 0xc40)
    want = {"flags": 0x200, "user_regs": 0x208, "trap_ctxt": 0x2D0, "gdt_frames": 0x12E0, "gdt_ents": 0x1360,
            "kernel_ss": 0x1368, "kernel_sp": 0x1370, "ctrlreg": 0x1378, "event_callback_eip": 0x13F8,
            "failsafe_callback_eip": 0x1400, "syscall_callback_eip": 0x1408, "fs_base": 0x1418,
            "gs_base_kernel": 0x1420, "gs_base_user": 0x1428}
    assert {f: G.offset(f) for f in want} == want
    assert (PV64.vcpu_info.offset("arch"), PV64.vcpu_info.offset("time")) == (0x10, 0x20)
    assert PV64.shared_info.offset("arch") == 0xC10 and PV64.shared_info.offset("wc_sec_hi") == 0xC0C


def test_frames_follow_entry_S() -> None:
    """The frames of x86_64/entry.S create_bounce_frame, lowest address first: RCX, R11,
    [error code], RIP, CS, RFLAGS, RSP, SS; the failsafe frame adds DS, ES, FS, GS after R11."""
    names = lambda L: [f for f, _ in L._fields_]   # noqa: E731
    assert names(PV64.bounce_frame) == ["rcx", "r11", "rip", "cs", "rflags", "rsp", "ss"]
    assert names(PV64.bounce_frame_ec) == ["rcx", "r11", "error_code", "rip", "cs", "rflags", "rsp", "ss"]
    assert names(PV64.failsafe_frame) == ["rcx", "r11", "ds", "es", "fs", "gs", "rip", "cs", "rflags", "rsp", "ss"]
    for L in (PV64.bounce_frame, PV64.bounce_frame_ec, PV64.failsafe_frame):
        assert L.size() == 8 * len(L._fields_)


def test_pv32_sizes_named_by_the_abi_sheet() -> None:
    """Struct sizes quoted in the ABI sheet that the hypervisor code relies on (independent of
    the headers' age): start_info 1112, vcpu_guest_context 2800, shared_info 2344, vcpu_info 64."""
    sheet = {"start_info": 1112, "vcpu_guest_context": 2800, "shared_info": 2344, "vcpu_info": 64,
             "vcpu_time_info": 32, "multicall_entry": 32, "mmuext_op": 12, "trap_info": 8,
             "cpu_user_regs": 68, "vcpu_runstate_info": 44, "xen_memory_reservation": 20,
             "callback_register": 12, "sched_poll": 16, "gnttab_setup_table": 16, "evtchn_status": 24}
    wrong = {n: (ctypes.sizeof(_layout(n)), s) for n, s in sheet.items() if ctypes.sizeof(_layout(n)) != s}
    assert not wrong, f"(xenwb, ABI sheet) sizes differ: {wrong}"


# ---------------------------------------------------------------------------------- constants
_DEFINE = re.compile(r"^\s*#\s*define\s+(\w+)\s+\(?\s*((?:0x[0-9a-fA-F]+|\d+))[uUlL]*\s*\)?\s*(?:/\*.*)?$")


def _header_text_defines() -> dict[str, int]:
    """``#define NAME <integer>`` lines of every installed header, including ones the guest
    compile does not see (``#ifdef __XEN__`` / ``__XEN_TOOLS__`` blocks)."""
    found: dict[str, int] = {}
    for h in sorted(XEN_INCLUDE.rglob("*.h")):
        for line in h.read_text(errors="replace").splitlines():
            m = _DEFINE.match(line)
            if m:
                found.setdefault(m.group(1), int(m.group(2), 0))
    return found


@pytest.fixture(scope="session")
def text_defines() -> dict[str, int]:
    return _header_text_defines()


@pytest.mark.parametrize(("label", "value", "macro"), CONSTANTS, ids=[r[0] for r in CONSTANTS])
def test_constant_matches_header(probe: Probe, probe64: Probe, text_defines: dict[str, int], label: str,
                                 value: int, macro: str) -> None:
    """Each constant against the headers compiled -m32, or -m64 for a name only the 64-bit
    ABI defines (FLAT_KERNEL_CS64, VGCF_in_syscall, SEGBASE_*)."""
    tag = f"const {macro}"
    if tag in probe.values:
        ref, where = probe.values[tag], "compiled headers"
    elif tag in probe64.values:
        ref, where = probe64.values[tag], "compiled headers (-m64)"
    elif macro in text_defines:
        ref, where = text_defines[macro], "header text (outside the guest view)"
    elif macro in NEWER_CONSTANTS:
        ref, where = NEWER_CONSTANTS[macro], "ABI sheet (newer than the installed headers)"
    else:
        pytest.fail(f"{label}: no macro {macro} in {XEN_INCLUDE} and no documented newer value")
    assert value == ref, f"{label} = {value:#x}, {macro} = {ref:#x} ({where})"


def test_newer_constants_are_really_missing_from_headers(probe: Probe, text_defines: dict[str, int]) -> None:
    """Keep NEWER_CONSTANTS honest: once the headers define a name, it must agree."""
    for macro, v in NEWER_CONSTANTS.items():
        hv = probe.values.get(f"const {macro}", text_defines.get(macro))
        if hv is not None:
            assert hv == v, f"{macro}: header {hv}, table {v}"


def test_errno_values_match_xen_errno_h(probe: Probe) -> None:
    header = probe.errno
    assert header, "errno.h produced no XEN_ERRNO entries"
    ours = {e.name: int(e) for e in C.Errno}
    wrong = {n: (v, header.get(n)) for n, v in ours.items() if header.get(n) != v}
    assert not wrong, f"(xenwb, errno.h) differ: {wrong}"
    # every errno Xen defines is named (aliases of another name with the same value excepted)
    by_value = {v: n for n, v in ours.items()}
    missing = sorted(n for n, v in header.items() if n not in ours and by_value.get(v) is None)
    assert not missing, f"errno.h values xenwb.abi.constants.Errno lacks: {missing}"


def test_errno_name_helper(probe: Probe) -> None:
    for name, v in probe.errno.items():
        got = C.errno_name(-v)
        assert got is not None and C.Errno[got] == v, (name, v, got)
    assert C.errno_name(0) is None and C.errno_name(5) is None


def test_every_elfnote_in_elfnote_h_is_known(text_defines: dict[str, int]) -> None:
    header = {n.removeprefix("XEN_ELFNOTE_"): v for n, v in text_defines.items()
              if n.startswith("XEN_ELFNOTE_") and n != "XEN_ELFNOTE_MAX"}
    assert header, "elfnote.h defines no XEN_ELFNOTE_* numbers"
    ours = {m.name: int(m) for m in elfnotes.ElfNote}
    wrong = {n: (ours.get(n), v) for n, v in header.items() if ours.get(n) != v}
    assert not wrong, f"(xenwb, elfnote.h) differ: {wrong}"


def test_elfnote_feature_names_use_xenfeat_bits(probe: Probe) -> None:
    """FEATURES-note names map to XENFEAT_<name> bits of features.h."""
    rows = {f"XENFEAT_{n}": b for n, b in elfnotes.FEATURE_NAMES.items()}
    src_values = {tag.split()[1]: v for tag, v in probe.values.items() if tag.startswith("const XENFEAT_")}
    wrong = {m: (v, src_values.get(m)) for m, v in rows.items() if src_values.get(m) != v}
    assert not wrong, f"(FEATURE_NAMES bit, features.h) differ: {wrong}"


def test_elfnote_value_kinds_cover_libelf_table() -> None:
    """libelf-dominfo.c note_desc[]: these notes are strings, these are numbers; a note is never both."""
    N = elfnotes.ElfNote
    libelf_str = {N.XEN_VERSION, N.GUEST_OS, N.GUEST_VERSION, N.LOADER, N.PAE_MODE, N.FEATURES, N.BSD_SYMTAB}
    libelf_num = {N.ENTRY, N.HYPERCALL_PAGE, N.VIRT_BASE, N.INIT_P2M, N.PADDR_OFFSET, N.HV_START_LOW,
                  N.SUPPORTED_FEATURES, N.SUSPEND_CANCEL, N.MOD_START_PFN, N.PHYS32_ENTRY}
    assert libelf_str <= elfnotes.STRING_NOTES
    assert libelf_num <= elfnotes.NUMERIC_NOTES
    assert not (elfnotes.STRING_NOTES & elfnotes.NUMERIC_NOTES)
