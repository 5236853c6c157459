"""Struct layouts of the Xen PV ABI, as ctypes structures: the one place that knows them.

Each layout is declared once, with ``ulong`` standing for the guest's word size, and built
for both ABIs: ``PV32`` (i386 rules: 8-byte integers are 4-byte aligned, which ``_pack_ = 4``
gives) and ``PV64``. Where the two ABIs differ in more than the word size (the register
frame, vcpu_guest_context, callback addresses), a declaration has a 64-bit form of its own.
Offsets are checked against the Xen public headers compiled with -m32 and -m64 by
tests/test_abi_layouts.py. The frames Xen pushes on a guest stack (entry.S) have no public
header: they are declared here too, from the source they follow.
Sources: xen/include/public/{xen.h, arch-x86/xen.h, arch-x86/xen-x86_32.h,
arch-x86/xen-x86_64.h, event_channel.h, sched.h, vcpu.h, memory.h, callback.h,
grant_table.h, io/console.h, io/xs_wire.h}.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from xenwb.abi.constants import XEN_LEGACY_MAX_VCPUS

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
i8, i16, i32, i64 = ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64
ULONG = "ulong"   # placeholder: u32 on PV32, u64 on PV64


class Struct(ctypes.LittleEndianStructure):
    """Base class: decoding helpers shared by every layout."""

    @classmethod
    def size(cls) -> int:
        return ctypes.sizeof(cls)

    @classmethod
    def offset(cls, field: str) -> int:
        return getattr(cls, field).offset

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Any:
        return cls.from_buffer_copy(bytes(data[: ctypes.sizeof(cls)]))

    def pack(self) -> bytes:
        return bytes(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for tracing: nested structs become dicts, arrays lists."""
        fields = _SHOWN.get(type(self))
        if fields is None:
            fields = _SHOWN[type(self)] = tuple(
                (f[0], isinstance(f[1], type) and issubclass(f[1], ctypes._SimpleCData) and f[1]._type_ != "c")
                for f in self._fields_ if not f[0].startswith("_pad"))
        return {name: getattr(self, name) if simple else _plain(getattr(self, name)) for name, simple in fields}


# layout -> its shown fields, each with "is a plain integer" (hypercall decoders call to_dict
# at every traced call)
_SHOWN: dict[type, tuple[tuple[str, bool], ...]] = {}


def _plain(v: Any) -> Any:
    if isinstance(v, Struct):
        return v.to_dict()
    if isinstance(v, ctypes.Array):
        if v._type_ is ctypes.c_char:
            return bytes(v).split(b"\0", 1)[0].decode("latin-1")
        return [_plain(x) for x in v]
    if isinstance(v, bytes):
        return v.split(b"\0", 1)[0].decode("latin-1")
    return v


@dataclass(frozen=True)
class Abi:
    """One guest ABI: its word size and the layouts built for it."""

    name: str
    word: int  # bytes in a guest ulong / pointer

    @property
    def ulong(self) -> type:
        return u32 if self.word == 4 else u64

    @property
    def pack(self) -> int:
        return 4 if self.word == 4 else 8


def _resolve(t: Any, abi: Abi) -> Any:
    if t == ULONG:
        return abi.ulong
    if isinstance(t, tuple):  # (element type, count)
        return _resolve(t[0], abi) * t[1]
    if isinstance(t, _Decl):
        return t.build(abi)
    return t


class _Decl:
    """A layout declared once and built per ABI (cached); `pv64` gives the 64-bit ABI's own
    field list where it is not the 32-bit one with wider words."""

    def __init__(self, name: str, fields: list[tuple[str, Any]], doc: str = "", *,
                 pv64: list[tuple[str, Any]] | None = None, only: int | None = None) -> None:
        self.name, self.fields, self.doc = name, fields, doc
        self.fields64 = pv64
        self.only = only            # the word size of the one ABI that has this layout
        self._built: dict[str, type] = {}

    def build(self, abi: Abi) -> type:
        if abi.name not in self._built:
            fields = self.fields64 if abi.word == 8 and self.fields64 is not None else self.fields
            ns = {
                "_pack_": abi.pack,
                "_fields_": [(n, _resolve(t, abi)) for n, t in fields],
                "__doc__": self.doc,
            }
            self._built[abi.name] = type(f"{self.name}_{abi.name}", (Struct,), ns)
        return self._built[abi.name]


# ---------------------------------------------------------------- xen.h
START_INFO = _Decl("start_info", [
    ("magic", (ctypes.c_char, 32)),
    ("nr_pages", ULONG),
    ("shared_info", ULONG),
    ("flags", u32),
    ("store_mfn", ULONG),
    ("store_evtchn", u32),
    ("console_mfn", ULONG),      # console.domU.mfn (dom0: info_off)
    ("console_evtchn", u32),     # console.domU.evtchn (dom0: info_size)
    ("pt_base", ULONG),
    ("nr_pt_frames", ULONG),
    ("mfn_list", ULONG),
    ("mod_start", ULONG),
    ("mod_len", ULONG),
    ("cmd_line", (ctypes.c_char, 1024)),
    ("first_p2m_pfn", ULONG),
    ("nr_p2m_frames", ULONG),
], "start_info_t (xen.h)")

MMU_UPDATE = _Decl("mmu_update", [("ptr", u64), ("val", u64)], "mmu_update_t (xen.h)")

MMUEXT_OP = _Decl("mmuext_op", [
    ("cmd", u32),
    ("arg1", ULONG),   # mfn or linear_addr
    ("arg2", ULONG),   # nr_ents, vcpumask pointer or src_mfn
], "mmuext_op_t (xen.h)")

MULTICALL_ENTRY = _Decl("multicall_entry", [
    ("op", ULONG),
    ("result", ULONG),
    ("args", (ULONG, 6)),
], "multicall_entry_t (xen.h)")

VCPU_TIME_INFO = _Decl("vcpu_time_info", [
    ("version", u32),
    ("pad0", u32),
    ("tsc_timestamp", u64),
    ("system_time", u64),
    ("tsc_to_system_mul", u32),
    ("tsc_shift", i8),
    ("flags", u8),
    ("pad1", (u8, 2)),
], "vcpu_time_info_t (xen.h)")

ARCH_VCPU_INFO = _Decl("arch_vcpu_info", [("cr2", ULONG), ("pad", (ULONG, 5))],
                       "arch_vcpu_info_t (arch-x86/xen-x86_32.h, x86_64.h)",
                       pv64=[("cr2", ULONG), ("pad", ULONG)])

VCPU_INFO = _Decl("vcpu_info", [
    ("evtchn_upcall_pending", u8),
    ("evtchn_upcall_mask", u8),
    ("evtchn_pending_sel", ULONG),
    ("arch", ARCH_VCPU_INFO),
    ("time", VCPU_TIME_INFO),
], "vcpu_info_t (xen.h)")

ARCH_SHARED_INFO = _Decl("arch_shared_info", [
    ("max_pfn", ULONG),
    ("pfn_to_mfn_frame_list_list", ULONG),
    ("nmi_reason", ULONG),
    ("p2m_cr3", ULONG),
    ("p2m_vaddr", ULONG),
    ("p2m_generation", ULONG),
    ("wc_sec_hi", u32),   # PV32 only in arch; PV64 keeps it in shared_info proper
], "arch_shared_info_t (arch-x86/xen.h)", pv64=[
    ("max_pfn", ULONG), ("pfn_to_mfn_frame_list_list", ULONG), ("nmi_reason", ULONG),
    ("p2m_cr3", ULONG), ("p2m_vaddr", ULONG), ("p2m_generation", ULONG)])



def _shared_info_fields(abi: Abi) -> list[tuple[str, Any]]:
    bits = 8 * abi.word
    return [
        ("vcpu_info", (VCPU_INFO, XEN_LEGACY_MAX_VCPUS)),
        ("evtchn_pending", (ULONG, bits)),
        ("evtchn_mask", (ULONG, bits)),
        ("wc_version", u32),
        ("wc_sec", u32),
        ("wc_nsec", u32),
    ]


TRAP_INFO = _Decl("trap_info", [
    ("vector", u8),
    ("flags", u8),     # bits 0-1 DPL, bit 2 mask events
    ("cs", u16),
    ("address", ULONG),
], "trap_info_t (arch-x86/xen.h)")

CPU_USER_REGS = _Decl("cpu_user_regs", [
    ("ebx", u32), ("ecx", u32), ("edx", u32), ("esi", u32), ("edi", u32), ("ebp", u32),
    ("eax", u32), ("error_code", u16), ("entry_vector", u16), ("eip", u32), ("cs", u16),
    ("saved_upcall_mask", u8), ("_pad0", u8), ("eflags", u32), ("esp", u32),
    ("ss", u16), ("_pad1", u16), ("es", u16), ("_pad2", u16), ("ds", u16), ("_pad3", u16),
    ("fs", u16), ("_pad4", u16), ("gs", u16), ("_pad5", u16),
], "cpu_user_regs_t (arch-x86/xen-x86_32.h, xen-x86_64.h)", pv64=[
    ("r15", u64), ("r14", u64), ("r13", u64), ("r12", u64), ("rbp", u64), ("rbx", u64),
    ("r11", u64), ("r10", u64), ("r9", u64), ("r8", u64), ("rax", u64), ("rcx", u64),
    ("rdx", u64), ("rsi", u64), ("rdi", u64), ("error_code", u32), ("entry_vector", u32),
    ("rip", u64), ("cs", u16), ("_pad0", u16), ("saved_upcall_mask", u8), ("_pad1", (u8, 3)),
    ("rflags", u64), ("rsp", u64), ("ss", u16), ("_pad2", (u16, 3)), ("es", u16), ("_pad3", (u16, 3)),
    ("ds", u16), ("_pad4", (u16, 3)), ("fs", u16), ("_pad5", (u16, 3)), ("gs", u16), ("_pad6", (u16, 3)),
])

VCPU_GUEST_CONTEXT = _Decl("vcpu_guest_context", [
    ("fpu_ctxt", (u8, 512)),
    ("flags", u32),
    ("user_regs", CPU_USER_REGS),
    ("trap_ctxt", (TRAP_INFO, 256)),
    ("ldt_base", u32), ("ldt_ents", u32),
    ("gdt_frames", (u32, 16)), ("gdt_ents", u32),
    ("kernel_ss", u32), ("kernel_sp", u32),
    ("ctrlreg", (u32, 8)),
    ("debugreg", (u32, 8)),
    ("event_callback_cs", u32), ("event_callback_eip", u32),
    ("failsafe_callback_cs", u32), ("failsafe_callback_eip", u32),
    ("vm_assist", u32),
], "vcpu_guest_context_t (arch-x86/xen.h)", pv64=[
    ("fpu_ctxt", (u8, 512)),
    ("flags", u64),
    ("user_regs", CPU_USER_REGS),
    ("trap_ctxt", (TRAP_INFO, 256)),
    ("ldt_base", u64), ("ldt_ents", u64),
    ("gdt_frames", (u64, 16)), ("gdt_ents", u64),
    ("kernel_ss", u64), ("kernel_sp", u64),
    ("ctrlreg", (u64, 8)),
    ("debugreg", (u64, 8)),
    ("event_callback_eip", u64), ("failsafe_callback_eip", u64), ("syscall_callback_eip", u64),
    ("vm_assist", u64),
    ("fs_base", u64), ("gs_base_kernel", u64), ("gs_base_user", u64),
])

# the iret hypercall's frame of a 64-bit guest (%rsp at the syscall; public/arch-x86/xen-x86_64.h)
IRET_CONTEXT = _Decl("iret_context", [
    ("rax", u64), ("r11", u64), ("rcx", u64), ("flags", u64), ("rip", u64), ("cs", u64),
    ("rflags", u64), ("rsp", u64), ("ss", u64)], "struct iret_context (arch-x86/xen-x86_64.h)", only=8)

# ---------------------------------------------------------------- callback.h
CALLBACK_REGISTER = _Decl("callback_register", [
    ("type", u16), ("flags", u16), ("cs", u32), ("eip", u32),
], "struct callback_register (callback.h; xen_callback_t = {cs, eip} on x86_32, an address on x86_64)",
    pv64=[("type", u16), ("flags", u16), ("_pad", u32), ("address", u64)])
CALLBACK_UNREGISTER = _Decl("callback_unregister", [("type", u16), ("_pad", u16)],
                            "struct callback_unregister (callback.h)")

# ---------------------------------------------------------------- event_channel.h
EVTCHN_ALLOC_UNBOUND = _Decl("evtchn_alloc_unbound", [("dom", u16), ("remote_dom", u16), ("port", u32)])
EVTCHN_BIND_INTERDOMAIN = _Decl("evtchn_bind_interdomain", [
    ("remote_dom", u16), ("_pad", u16), ("remote_port", u32), ("local_port", u32)])
EVTCHN_BIND_VIRQ = _Decl("evtchn_bind_virq", [("virq", u32), ("vcpu", u32), ("port", u32)])
EVTCHN_BIND_PIRQ = _Decl("evtchn_bind_pirq", [("pirq", u32), ("flags", u32), ("port", u32)])
EVTCHN_BIND_IPI = _Decl("evtchn_bind_ipi", [("vcpu", u32), ("port", u32)])
EVTCHN_PORT = _Decl("evtchn_port_op", [("port", u32)], "evtchn_close/send/unmask")
EVTCHN_BIND_VCPU = _Decl("evtchn_bind_vcpu", [("port", u32), ("vcpu", u32)])
EVTCHN_RESET = _Decl("evtchn_reset", [("dom", u16)])
EVTCHN_STATUS = _Decl("evtchn_status", [
    ("dom", u16), ("_pad", u16), ("port", u32), ("status", u32), ("vcpu", u32),
    ("u0", u32), ("u1", u32)])  # union: unbound.dom | interdomain{dom, port} | pirq | virq
# the FIFO ABI (event_channel.h, Xen >= 4.4)
EVTCHN_INIT_CONTROL = _Decl("evtchn_init_control", [
    ("control_gfn", u64), ("offset", u32), ("vcpu", u32), ("link_bits", u8), ("_pad", (u8, 7))])
EVTCHN_EXPAND_ARRAY = _Decl("evtchn_expand_array", [("array_gfn", u64)])
EVTCHN_SET_PRIORITY = _Decl("evtchn_set_priority", [("port", u32), ("priority", u32)])
EVTCHN_FIFO_CONTROL_BLOCK = _Decl("evtchn_fifo_control_block", [
    ("ready", u32), ("_rsvd", u32), ("head", (u32, 16))],      # head[EVTCHN_FIFO_MAX_QUEUES]
    "evtchn_fifo_control_block_t: a vcpu's READY bits and queue heads (FIFO ABI)")

# ---------------------------------------------------------------- sched.h
SCHED_SHUTDOWN = _Decl("sched_shutdown", [("reason", u32)])
SCHED_POLL = _Decl("sched_poll", [("ports", ULONG), ("nr_ports", u32), ("timeout", u64)])
SCHED_REMOTE_SHUTDOWN = _Decl("sched_remote_shutdown", [("domain_id", u16), ("_pad", u16), ("reason", u32)])
SCHED_WATCHDOG = _Decl("sched_watchdog", [("id", u32), ("timeout", u32)])

# ---------------------------------------------------------------- vcpu.h
VCPU_RUNSTATE_INFO = _Decl("vcpu_runstate_info", [
    ("state", i32), ("state_entry_time", u64), ("time", (u64, 4))])
VCPU_REGISTER_RUNSTATE_MEMORY_AREA = _Decl("vcpu_register_runstate_memory_area", [("addr", u64)])
VCPU_SET_PERIODIC_TIMER = _Decl("vcpu_set_periodic_timer", [("period_ns", u64)])
VCPU_SET_SINGLESHOT_TIMER = _Decl("vcpu_set_singleshot_timer", [("timeout_abs_ns", u64), ("flags", u32)])
VCPU_REGISTER_VCPU_INFO = _Decl("vcpu_register_vcpu_info", [("mfn", u64), ("offset", u32), ("rsvd", u32)])
VCPU_REGISTER_TIME_MEMORY_AREA = _Decl("vcpu_register_time_memory_area", [("addr", u64)])

# ---------------------------------------------------------------- memory.h
XEN_MEMORY_RESERVATION = _Decl("xen_memory_reservation", [
    ("extent_start", ULONG), ("nr_extents", ULONG), ("extent_order", u32), ("mem_flags", u32),
    ("domid", u16)])
XEN_MEMORY_MAP = _Decl("xen_memory_map", [("nr_entries", u32), ("buffer", ULONG)])
E820_ENTRY_PACKED = type("e820entry_packed", (Struct,), {
    "_pack_": 1, "_fields_": [("addr", u64), ("size", u64), ("type", u32)]})
XEN_MACHPHYS_MAPPING = _Decl("xen_machphys_mapping", [("v_start", ULONG), ("v_end", ULONG), ("max_mfn", ULONG)])
XEN_MACHPHYS_MFN_LIST = _Decl("xen_machphys_mfn_list", [
    ("max_extents", u32), ("extent_start", ULONG), ("nr_extents", u32)])
XEN_ADD_TO_PHYSMAP = _Decl("xen_add_to_physmap", [
    ("domid", u16), ("size", u16), ("space", u32), ("idx", ULONG), ("gpfn", ULONG)])

# ---------------------------------------------------------------- version.h
XEN_FEATURE_INFO = _Decl("xen_feature_info", [("submap_idx", u32), ("submap", u32)])
XEN_PLATFORM_PARAMETERS = _Decl("xen_platform_parameters", [("virt_start", ULONG)])

# ---------------------------------------------------------------- physdev.h
PHYSDEV_SET_IOPL = _Decl("physdev_set_iopl", [("iopl", u32)])
PHYSDEV_SET_IOBITMAP = _Decl("physdev_set_iobitmap", [("bitmap", ULONG), ("nr_ports", u32)])

# ---------------------------------------------------------------- grant_table.h
GNTTAB_SETUP_TABLE = _Decl("gnttab_setup_table", [
    ("dom", u16), ("_pad", u16), ("nr_frames", u32), ("status", i16), ("_pad2", u16), ("frame_list", ULONG)])
GNTTAB_QUERY_SIZE = _Decl("gnttab_query_size", [
    ("dom", u16), ("_pad", u16), ("nr_frames", u32), ("max_nr_frames", u32), ("status", i16)])
GNTTAB_SET_VERSION = _Decl("gnttab_set_version", [("version", u32)])
GNTTAB_GET_VERSION = _Decl("gnttab_get_version", [("dom", u16), ("_pad", u16), ("version", u32)])
GRANT_ENTRY_V1 = _Decl("grant_entry_v1", [("flags", u16), ("domid", u16), ("frame", u32)])

# ---------------------------------------------------------------- nmi.h
XENNMI_CALLBACK = _Decl("xennmi_callback", [("handler_address", ULONG), ("pad", ULONG)])

# ---------------------------------------------------------------- io/console.h, io/xs_wire.h
XENCONS_INTERFACE = _Decl("xencons_interface", [
    ("in_", (ctypes.c_char, 1024)), ("out", (ctypes.c_char, 2048)),
    ("in_cons", u32), ("in_prod", u32), ("out_cons", u32), ("out_prod", u32), ("connection", u8)])
XENSTORE_DOMAIN_INTERFACE = _Decl("xenstore_domain_interface", [
    ("req", (ctypes.c_char, 1024)), ("rsp", (ctypes.c_char, 1024)),
    ("req_cons", u32), ("req_prod", u32), ("rsp_cons", u32), ("rsp_prod", u32),
    ("server_features", u32), ("connection", u32), ("error", u32), ("evtchn_port", u32)])
XSD_SOCKMSG = _Decl("xsd_sockmsg", [("type", u32), ("req_id", u32), ("tx_id", u32), ("len", u32)])


# ---------------------------------------------------------------- frames Xen pushes (entry.S)
# 64-bit PV: create_bounce_frame (xen/arch/x86/x86_64/entry.S), lowest address first; the
# error code slot exists only for exceptions that have one.
BOUNCE_FRAME = _Decl("bounce_frame", [
    ("rcx", u64), ("r11", u64), ("rip", u64), ("cs", u64), ("rflags", u64), ("rsp", u64), ("ss", u64)],
    "the bounce frame (x86_64/entry.S create_bounce_frame), without an error code", only=8)
BOUNCE_FRAME_EC = _Decl("bounce_frame_ec", [
    ("rcx", u64), ("r11", u64), ("error_code", u64), ("rip", u64), ("cs", u64), ("rflags", u64),
    ("rsp", u64), ("ss", u64)], "the bounce frame with an error code (TBF_EXCEPTION_ERRCODE)", only=8)
FAILSAFE_FRAME = _Decl("failsafe_frame", [
    ("rcx", u64), ("r11", u64), ("ds", u64), ("es", u64), ("fs", u64), ("gs", u64), ("rip", u64),
    ("cs", u64), ("rflags", u64), ("rsp", u64), ("ss", u64)],
    "the failsafe callback's frame (x86_64/entry.S, domain.c load_segments)", only=8)


class Layouts:
    """Every layout built for one ABI: ``PV32.start_info``, ``PV64.shared_info``..."""

    def __init__(self, abi: Abi) -> None:
        self.abi = abi
        for name, decl in globals().items():
            if isinstance(decl, _Decl) and decl.only in (None, abi.word):
                setattr(self, name.lower(), decl.build(abi))
        self.e820_entry = E820_ENTRY_PACKED       # packed in Xen (asm/e820.h): 20 bytes on both ABIs
        si_fields = _shared_info_fields(abi)
        if abi.word == 4:
            si_fields.append(("arch", ARCH_SHARED_INFO.build(abi)))
        else:
            si_fields += [("wc_sec_hi", u32), ("arch", ARCH_SHARED_INFO.build(abi))]
        self.shared_info = type(f"shared_info_{abi.name}", (Struct,), {
            "_pack_": abi.pack, "_fields_": [(n, _resolve(t, abi)) for n, t in si_fields]})


PV32 = Layouts(Abi("pv32", 4))
PV64 = Layouts(Abi("pv64", 8))
