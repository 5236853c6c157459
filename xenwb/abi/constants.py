"""Numbers of the Xen x86 PV ABI.

Values come from the Xen public headers; each group names its header
(paths relative to xen/include/public/ in the Xen tree).
"""

from __future__ import annotations

import enum

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1) & 0xFFFFFFFFFFFFFFFF


# --- errno.h: Xen's own errno numbering (guests see -errno) -----------------
class Errno(enum.IntEnum):
    EPERM = 1
    ENOENT = 2
    ESRCH = 3
    EINTR = 4
    EIO = 5
    ENXIO = 6
    E2BIG = 7
    ENOEXEC = 8
    EBADF = 9
    ECHILD = 10
    EAGAIN = 11
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    EXDEV = 18
    ENODEV = 19
    ENOTDIR = 20
    EISDIR = 21
    EINVAL = 22
    ENFILE = 23
    EMFILE = 24
    ENOSPC = 28
    EROFS = 30
    EMLINK = 31
    EDOM = 33
    ERANGE = 34
    EDEADLK = 35
    ENAMETOOLONG = 36
    ENOLCK = 37
    ENOSYS = 38
    ENOTEMPTY = 39
    ENODATA = 61
    ETIME = 62
    EBADMSG = 74
    EOVERFLOW = 75
    EILSEQ = 84
    ERESTART = 85
    ENOTSOCK = 88
    EMSGSIZE = 90
    EOPNOTSUPP = 95
    EADDRINUSE = 98
    EADDRNOTAVAIL = 99
    ENOBUFS = 105
    EISCONN = 106
    ENOTCONN = 107
    ETIMEDOUT = 110
    ECONNREFUSED = 111


def errno_name(ret: int) -> str | None:
    """Name of a negative hypercall return value (``-22`` -> ``"EINVAL"``)."""
    if ret >= 0:
        return None
    try:
        return Errno(-ret).name
    except ValueError:
        return None


# --- xen.h: hypercall numbers ----------------------------------------------
class Hypercall(enum.IntEnum):
    set_trap_table = 0
    mmu_update = 1
    set_gdt = 2
    stack_switch = 3
    set_callbacks = 4
    fpu_taskswitch = 5
    sched_op_compat = 6
    platform_op = 7
    set_debugreg = 8
    get_debugreg = 9
    update_descriptor = 10
    memory_op = 12
    multicall = 13
    update_va_mapping = 14
    set_timer_op = 15
    event_channel_op_compat = 16
    xen_version = 17
    console_io = 18
    physdev_op_compat = 19
    grant_table_op = 20
    vm_assist = 21
    update_va_mapping_otherdomain = 22
    iret = 23
    vcpu_op = 24
    set_segment_base = 25
    mmuext_op = 26
    xsm_op = 27
    nmi_op = 28
    sched_op = 29
    callback_op = 30
    xenoprof_op = 31
    event_channel_op = 32
    physdev_op = 33
    hvm_op = 34
    sysctl = 35
    domctl = 36
    kexec_op = 37
    tmem_op = 38
    argo_op = 39
    xenpmu_op = 40
    dm_op = 41
    hypfs_op = 42
    mca = 48                       # __HYPERVISOR_arch_0 (public/arch-x86/xen.h)
    paging_domctl_cont = 49        # __HYPERVISOR_arch_1


def hypercall_name(nr: int) -> str:
    try:
        return Hypercall(nr).name
    except ValueError:
        return f"hypercall_{nr}"


# --- xen.h: mmu_update commands, mmuext_op commands, UVMF flags ------------
MMU_NORMAL_PT_UPDATE = 0
MMU_MACHPHYS_UPDATE = 1
MMU_PT_UPDATE_PRESERVE_AD = 2
MMU_PT_UPDATE_NO_TRANSLATE = 3
MMU_UPDATE_NAMES = {0: "NORMAL_PT_UPDATE", 1: "MACHPHYS_UPDATE", 2: "PT_UPDATE_PRESERVE_AD",
                    3: "PT_UPDATE_NO_TRANSLATE"}


class MmuextCmd(enum.IntEnum):
    PIN_L1_TABLE = 0
    PIN_L2_TABLE = 1
    PIN_L3_TABLE = 2
    PIN_L4_TABLE = 3
    UNPIN_TABLE = 4
    NEW_BASEPTR = 5
    TLB_FLUSH_LOCAL = 6
    INVLPG_LOCAL = 7
    TLB_FLUSH_MULTI = 8
    INVLPG_MULTI = 9
    TLB_FLUSH_ALL = 10
    INVLPG_ALL = 11
    FLUSH_CACHE = 12
    SET_LDT = 13
    NEW_USER_BASEPTR = 15
    CLEAR_PAGE = 16
    COPY_PAGE = 17
    FLUSH_CACHE_GLOBAL = 18
    MARK_SUPER = 19
    UNMARK_SUPER = 20


UVMF_NONE = 0
UVMF_TLB_FLUSH = 1
UVMF_INVLPG = 2
UVMF_FLUSHTYPE_MASK = 3
UVMF_MULTI = 0
UVMF_LOCAL = 0
UVMF_ALL = 4

DOMID_SELF = 0x7FF0
DOMID_IO = 0x7FF1
DOMID_XEN = 0x7FF2

# --- xen.h: vm_assist ---------------------------------------------------------
VMASST_CMD_enable = 0
VMASST_CMD_disable = 1


class Vmasst(enum.IntEnum):
    four_gb_segments = 0
    four_gb_segments_notify = 1
    writable_pagetables = 2
    pae_extended_cr3 = 3
    architectural_iopl = 4
    runstate_update_flag = 5
    m2p_strict = 32


# --- xen.h / sched.h: sched_op ------------------------------------------------
class SchedOp(enum.IntEnum):
    yield_ = 0
    block = 1
    shutdown = 2
    poll = 3
    remote_shutdown = 4
    shutdown_code = 5
    watchdog = 6
    pin_override = 7


class ShutdownReason(enum.IntEnum):
    poweroff = 0
    reboot = 1
    suspend = 2
    crash = 3
    watchdog = 4
    soft_reset = 5


# --- xen.h: console_io ------------------------------------------------------
CONSOLEIO_write = 0
CONSOLEIO_read = 1

# --- version.h ---------------------------------------------------------------
class XenVer(enum.IntEnum):
    version = 0
    extraversion = 1
    compile_info = 2
    capabilities = 3
    changeset = 4
    platform_parameters = 5
    get_features = 6
    pagesize = 7
    guest_handle = 8
    commandline = 9
    build_id = 10
    extraversion2 = 11
    capabilities2 = 12
    changeset2 = 13
    commandline2 = 14


# features.h: XENFEAT_* bit numbers
class XenFeat(enum.IntEnum):
    writable_page_tables = 0
    writable_descriptor_tables = 1
    auto_translated_physmap = 2
    supervisor_mode_kernel = 3
    pae_pgdir_above_4gb = 4
    mmu_pt_update_preserve_ad = 5
    highmem_assist = 6
    gnttab_map_avail_bits = 7
    hvm_callback_vector = 8
    hvm_safe_pvclock = 9
    hvm_pirqs = 10
    dom0 = 11
    grant_map_identity = 12
    memory_op_vnode_supported = 13
    ARM_SMCCC_supported = 14
    linux_rsdp_unrestricted = 15
    not_direct_mapped = 16
    direct_mapped = 17
    runstate_phys_area = 18
    vcpu_time_phys_area = 19
    dm_msix_all_writes = 20


# --- memory.h ------------------------------------------------------------------
class MemOp(enum.IntEnum):
    increase_reservation = 0
    decrease_reservation = 1
    maximum_ram_page = 2
    current_reservation = 3
    maximum_reservation = 4
    machphys_mfn_list = 5
    populate_physmap = 6
    add_to_physmap = 7
    memory_map = 9
    machine_memory_map = 10
    exchange = 11
    machphys_mapping = 12
    set_memory_map = 13
    maximum_gpfn = 14
    remove_from_physmap = 15
    get_sharing_freed_pages = 18
    get_sharing_shared_pages = 19
    access_op = 21
    claim_pages = 24
    get_vnumainfo = 26
    add_to_physmap_batch = 23
    reserved_device_memory_map = 27
    acquire_resource = 28
    get_pod_target = 17
    set_pod_target = 16


MEMOP_CMD_MASK = 0x3F
E820_RAM = 1

# --- callback.h ------------------------------------------------------------------
CALLBACKOP_register = 0
CALLBACKOP_unregister = 1


class CallbackType(enum.IntEnum):
    event = 0
    failsafe = 1
    syscall = 2
    sysenter_deprecated = 3
    nmi = 4
    sysenter = 5
    syscall32 = 7


CALLBACKF_mask_events = 1

# --- vcpu.h ----------------------------------------------------------------------
class VcpuOp(enum.IntEnum):
    initialise = 0
    up = 1
    down = 2
    is_up = 3
    get_runstate_info = 4
    register_runstate_memory_area = 5
    set_periodic_timer = 6
    stop_periodic_timer = 7
    set_singleshot_timer = 8
    stop_singleshot_timer = 9
    register_vcpu_info = 10
    send_nmi = 11
    get_physid = 12
    register_vcpu_time_memory_area = 13


VCPU_SSHOTTMR_future = 1

# --- event_channel.h ----------------------------------------------------------------
class EvtchnOp(enum.IntEnum):
    bind_interdomain = 0
    bind_virq = 1
    bind_pirq = 2
    close = 3
    send = 4
    status = 5
    alloc_unbound = 6
    bind_ipi = 7
    bind_vcpu = 8
    unmask = 9
    reset = 10
    init_control = 11
    expand_array = 12
    set_priority = 13
    reset_cont = 14


class Virq(enum.IntEnum):
    TIMER = 0
    DEBUG = 1
    CONSOLE = 2
    DOM_EXC = 3
    TBUF = 4
    DEBUGGER = 6
    XENOPROF = 7
    CON_RING = 8
    PCPU_STATE = 9
    MEM_EVENT = 10
    ARGO = 11
    ENOMEM = 12
    XENPMU = 13


NR_VIRQS = 24
PER_VCPU_VIRQS = frozenset({Virq.TIMER, Virq.DEBUG, Virq.XENOPROF, Virq.XENPMU})
XEN_LEGACY_MAX_VCPUS = 32   # vcpu_info slots in shared_info (public/xen.h)
NR_EVTCHN_2L_PV32 = 1024  # 32 * 32: 2-level ABI limit for a 32-bit guest

# --- physdev.h -------------------------------------------------------------------
class PhysdevOp(enum.IntEnum):
    eoi = 12
    pirq_eoi_gmfn_v1 = 17
    pirq_eoi_gmfn_v2 = 28
    irq_status_query = 5
    set_iopl = 6
    set_iobitmap = 7
    apic_read = 8
    apic_write = 9
    alloc_irq_vector = 10
    free_irq_vector = 11
    map_pirq = 13
    unmap_pirq = 14
    manage_pci_add = 15
    manage_pci_remove = 16
    restore_msi = 19
    manage_pci_add_ext = 20
    setup_gsi = 21
    get_free_pirq = 23
    pci_mmcfg_reserved = 24
    pci_device_add = 25
    pci_device_remove = 26
    restore_msi_ext = 27
    dbgp_op = 29
    prepare_msix = 30
    release_msix = 31
    pci_device_reset = 32


# --- grant_table.h -------------------------------------------------------------------
class GnttabOp(enum.IntEnum):
    map_grant_ref = 0
    unmap_grant_ref = 1
    setup_table = 2
    dump_table = 3
    transfer = 4
    copy = 5
    query_size = 6
    unmap_and_replace = 7
    set_version = 8
    get_status_frames = 9
    get_version = 10
    swap_grant_ref = 11
    cache_flush = 12


# --- xen.h: start_info flags -------------------------------------------------------
SIF_PRIVILEGED = 1 << 0
SIF_INITDOMAIN = 1 << 1
SIF_MULTIBOOT_MOD = 1 << 2
SIF_MOD_START_PFN = 1 << 3
SIF_VIRT_P2M_4TOOLS = 1 << 4

# --- arch-x86/xen-x86_32.h: flat selectors and the hypervisor hole -------------------
FLAT_RING1_CS = 0xE019
FLAT_RING1_DS = 0xE021
FLAT_RING1_SS = 0xE021
FLAT_RING3_CS = 0xE02B
FLAT_RING3_DS = 0xE033
FLAT_RING3_SS = 0xE033
FLAT_KERNEL_CS = FLAT_RING1_CS
FLAT_KERNEL_DS = FLAT_RING1_DS
FLAT_KERNEL_SS = FLAT_RING1_SS
FLAT_USER_CS = FLAT_RING3_CS
FLAT_USER_DS = FLAT_RING3_DS
FIRST_RESERVED_GDT_PAGE = 14
FIRST_RESERVED_GDT_ENTRY = FIRST_RESERVED_GDT_PAGE * 512  # 7168
# Descriptors Xen keeps at those selectors in every vcpu GDT (xen/arch/x86/desc.c,
# compat flavour: flat 4 GiB on 64-bit Xen). The accessed bit is set in each.
XEN_FLAT_DESCRIPTORS = {
    0xE008: 0x00AF9B000000FFFF,  # Xen ring-0 64-bit code: not usable by a PV32 guest
    0xE010: 0x00CF93000000FFFF,  # Xen ring-0 data
    FLAT_RING1_CS: 0x00CFBB000000FFFF,
    FLAT_RING1_DS: 0x00CFB3000000FFFF,
    FLAT_RING3_CS: 0x00CFFB000000FFFF,
    FLAT_RING3_DS: 0x00CFF3000000FFFF,
}

# --- arch-x86/xen-x86_64.h: the 64-bit flat selectors (all DPL 3: the kernel runs in ring 3)
FLAT_RING3_CS32 = 0xE023
FLAT_RING3_DS32 = 0xE02B
FLAT_RING3_CS64 = 0xE033
FLAT_RING3_SS64 = 0xE02B
FLAT_KERNEL_CS64 = FLAT_RING3_CS64
FLAT_KERNEL_SS64 = FLAT_RING3_SS64
FLAT_USER_CS32 = FLAT_RING3_CS32
FLAT_USER_CS64 = FLAT_RING3_CS64
FLAT_USER_SS64 = FLAT_RING3_SS64
VGCF_in_syscall = 1 << 8          # struct iret_context.flags: return through sysret
SEGBASE_FS, SEGBASE_GS_USER, SEGBASE_GS_KERNEL, SEGBASE_GS_USER_SEL = 0, 1, 2, 3

# PAE guests on 64-bit Xen (xen/arch/x86/include/asm/config.h, compat M2P):
HYPERVISOR_VIRT_START_PAE = 0xF5800000
MACH2PHYS_VIRT_START_PAE = 0xF5800000
MACH2PHYS_COMPAT_VIRT_END = 0xFFE00000
# Non-PAE guests on x86_32 Xen <= 3.2 (arch-x86/xen-x86_32.h, non-PAE part):
HYPERVISOR_VIRT_START_NONPAE = 0xFC000000
MACH2PHYS_VIRT_START_NONPAE = 0xFC000000
MACH2PHYS_VIRT_END_NONPAE = 0xFC400000

# --- arch-x86/cpuid.h ------------------------------------------------------------
XEN_CPUID_FIRST_LEAF = 0x40000000
XEN_CPUID_SIGNATURE_EBX = 0x566E6558  # "XenV"
XEN_CPUID_SIGNATURE_ECX = 0x65584D4D  # "MMXe"
XEN_CPUID_SIGNATURE_EDX = 0x4D4D566E  # "nVMM"
XEN_HYPERCALL_MSR = 0x40000000
XEN_EMULATE_PREFIX = bytes([0x0F, 0x0B, 0x78, 0x65, 0x6E])  # ud2 ; .ascii "xen"

# --- trap numbers and vcpu_guest_context flags (arch-x86/xen.h) ----------------
TRAP_divide_error = 0
TRAP_debug = 1
TRAP_nmi = 2
TRAP_int3 = 3
TRAP_overflow = 4
TRAP_bounds = 5
TRAP_invalid_op = 6
TRAP_no_device = 7
TRAP_double_fault = 8
TRAP_copro_seg = 9
TRAP_invalid_tss = 10
TRAP_no_segment = 11
TRAP_stack_error = 12
TRAP_gp_fault = 13
TRAP_page_fault = 14
TRAP_spurious_int = 15
TRAP_copro_error = 16
TRAP_alignment_check = 17
TRAP_machine_check = 18
TRAP_simd_error = 19
TRAP_virtualisation = 20
TRAP_control_protection = 21

TRAP_NAMES = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
    9: "#MF(seg)", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC",
    18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP",
}
# Vectors whose hardware frame carries an error code (xen/arch/x86/traps.c: TRAP_HAVE_EC)
VECTORS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})

VGCF_i387_valid = 1 << 0
VGCF_in_kernel = 1 << 2
VGCF_failsafe_disables_events = 1 << 3
VGCF_syscall_disables_events = 1 << 4
VGCF_online = 1 << 5

# Trap bounce flags (xen/arch/x86/include/asm/domain.h)
TBF_EXCEPTION = 1
TBF_EXCEPTION_ERRCODE = 2
TBF_INTERRUPT = 8

# --- pagetable entry bits (x86) ------------------------------------------------
_PAGE_PRESENT = 0x001
_PAGE_RW = 0x002
_PAGE_USER = 0x004
_PAGE_PWT = 0x008
_PAGE_PCD = 0x010
_PAGE_ACCESSED = 0x020
_PAGE_DIRTY = 0x040
_PAGE_PSE = 0x080
_PAGE_PAT = 0x080
_PAGE_GLOBAL = 0x100
_PAGE_AVAIL = 0xE00
_PAGE_NX = 1 << 63

# x86 exception error code bits (#PF)
PFEC_present = 1
PFEC_write_access = 2
PFEC_user_mode = 4
PFEC_reserved_bit = 8
PFEC_insn_fetch = 16

# Xen version the workbench reports (XENVER_version): a 4.17-era hypervisor.
XEN_MAJOR = 4
XEN_MINOR = 17
XEN_EXTRAVERSION = ".0-xenwb"
