/*
 * xen.h - pvdemo's own description of the 32-bit Xen PV guest ABI.
 *
 * Only what pvdemo uses is here.  Every constant and layout names the Xen
 * public header that defines it (paths are relative to the Xen source tree).
 * Struct layouts are the i386 ones: a 32-bit PV guest sees the same layout
 * on a native x86_32 Xen and on a 64-bit Xen ("compat", 32-on-64), because
 * Xen builds its compat structures with the i386 rules (a uint64_t is 4-byte
 * aligned inside a struct; nothing below depends on that, but keep it in mind
 * when adding fields).
 *
 * This header is included from head.S as well, so everything that is not a
 * plain #define sits under !__ASSEMBLER__.
 *
 * Build-time configuration (passed with -D by the build, see variants.json):
 *   CONFIG_PAE=1|0             PAE (3-level, "xen-3.0-x86_32p") or non-PAE
 *                              (2-level, "xen-3.0-x86_32", x86_32 Xen <= 3.2)
 *   CONFIG_HYPERCALL_NOTE=1|0  1: ask the domain builder to fill the
 *                              hypercall page (XEN_ELFNOTE_HYPERCALL_PAGE);
 *                              0: fill it at run time through the MSR that
 *                              CPUID leaf base+2 names.
 */
#ifndef PVDEMO_XEN_H
#define PVDEMO_XEN_H

#ifndef CONFIG_PAE
#error "build with -DCONFIG_PAE=0 or -DCONFIG_PAE=1"
#endif
#ifndef CONFIG_HYPERCALL_NOTE
#error "build with -DCONFIG_HYPERCALL_NOTE=0 or -DCONFIG_HYPERCALL_NOTE=1"
#endif

/* ------------------------------------------------------------------------
 * pvdemo's own layout
 * ------------------------------------------------------------------------ */
#define VIRT_BASE           0xC0000000  /* XEN_ELFNOTE_VIRT_BASE; kernel is linked here */
#define PAGE_SHIFT          12
#define PAGE_SIZE           4096
#define BOOT_STACK_SIZE     16384       /* our own stack, in .bss */
#define NR_VCPUS            8           /* vCPUs pvdemo brings up at most (struct vcpu_state) */
#define AP_STACK_SIZE       8192        /* stack of each secondary vCPU, in .bss */

/* Pseudo "vector" numbers pvdemo's stubs put in struct trap_frame.vector. */
#define PVDEMO_VEC_EVENT    0x100       /* event-channel upcall */
#define PVDEMO_VEC_FAILSAFE 0x101       /* failsafe callback */

/* ------------------------------------------------------------------------
 * ELF notes: xen/include/public/elfnote.h
 * ------------------------------------------------------------------------ */
#define XEN_ELFNOTE_INFO            0
#define XEN_ELFNOTE_ENTRY           1
#define XEN_ELFNOTE_HYPERCALL_PAGE  2
#define XEN_ELFNOTE_VIRT_BASE       3
#define XEN_ELFNOTE_PADDR_OFFSET    4
#define XEN_ELFNOTE_XEN_VERSION     5
#define XEN_ELFNOTE_GUEST_OS        6
#define XEN_ELFNOTE_GUEST_VERSION   7
#define XEN_ELFNOTE_LOADER          8
#define XEN_ELFNOTE_PAE_MODE        9
#define XEN_ELFNOTE_FEATURES        10
#define XEN_ELFNOTE_BSD_SYMTAB      11
#define XEN_ELFNOTE_HV_START_LOW    12
#define XEN_ELFNOTE_L1_MFN_VALID    13
#define XEN_ELFNOTE_SUSPEND_CANCEL  14

/* ------------------------------------------------------------------------
 * Hypercall numbers: xen/include/public/xen.h (__HYPERVISOR_*)
 * Hypercall n is the 32-byte stub at hypercall_page + n * 32.
 * ------------------------------------------------------------------------ */
#define __HYPERVISOR_set_trap_table         0
#define __HYPERVISOR_mmu_update             1
#define __HYPERVISOR_set_gdt                2
#define __HYPERVISOR_stack_switch           3
#define __HYPERVISOR_set_callbacks          4
#define __HYPERVISOR_fpu_taskswitch         5
#define __HYPERVISOR_sched_op_compat        6
#define __HYPERVISOR_set_debugreg           8
#define __HYPERVISOR_get_debugreg           9
#define __HYPERVISOR_update_descriptor      10
#define __HYPERVISOR_memory_op              12
#define __HYPERVISOR_multicall              13
#define __HYPERVISOR_update_va_mapping      14
#define __HYPERVISOR_set_timer_op           15
#define __HYPERVISOR_event_channel_op_compat 16
#define __HYPERVISOR_xen_version            17
#define __HYPERVISOR_console_io             18
#define __HYPERVISOR_physdev_op_compat      19
#define __HYPERVISOR_grant_table_op         20
#define __HYPERVISOR_vm_assist              21
#define __HYPERVISOR_update_va_mapping_otherdomain 22
#define __HYPERVISOR_iret                   23
#define __HYPERVISOR_vcpu_op                24
#define __HYPERVISOR_mmuext_op              26
#define __HYPERVISOR_sched_op               29
#define __HYPERVISOR_callback_op            30
#define __HYPERVISOR_event_channel_op       32
#define __HYPERVISOR_physdev_op             33

/* ------------------------------------------------------------------------
 * x86_32 specifics: xen/include/public/arch-x86/xen-x86_32.h
 * ------------------------------------------------------------------------ */
/* Xen's own flat segments, present in every vCPU GDT (GDT entries >= 0x1C00). */
#define FLAT_RING1_CS       0xe019      /* the guest kernel runs in ring 1 */
#define FLAT_RING1_DS       0xe021
#define FLAT_RING1_SS       0xe021
#define FLAT_RING3_CS       0xe02b
#define FLAT_RING3_DS       0xe033
#define FLAT_RING3_SS       0xe033
#define FLAT_KERNEL_CS      FLAT_RING1_CS
#define FLAT_KERNEL_DS      FLAT_RING1_DS
#define FLAT_KERNEL_SS      FLAT_RING1_SS

/* Start of the Xen-owned top of the address space; the read-only
 * machine-to-phys table (MACH2PHYS_VIRT_START) starts at the same address. */
#define HYPERVISOR_VIRT_START_PAE       0xF5800000  /* __HYPERVISOR_VIRT_START_PAE */
#define HYPERVISOR_VIRT_START_NONPAE    0xFC000000  /* __HYPERVISOR_VIRT_START_NONPAE
                                                       (x86_32 Xen <= 3.2 only) */
#if CONFIG_PAE
#define HYPERVISOR_VIRT_START           HYPERVISOR_VIRT_START_PAE
#else
#define HYPERVISOR_VIRT_START           HYPERVISOR_VIRT_START_NONPAE
#endif

/* CR3 encoding of a frame number, as in arch-x86/xen-x86_32.h: the frame
 * number is rotated so that a PAE L3 above 4 GiB still fits ("extended
 * cr3").  Without PAE the frame number is below 2^20 and this is pfn << 12. */
#define xen_pfn_to_cr3(pfn) (((unsigned)(pfn) << 12) | ((unsigned)(pfn) >> 20))
#define xen_cr3_to_pfn(cr3) (((unsigned)(cr3) >> 12) | ((unsigned)(cr3) << 20))

/* ------------------------------------------------------------------------
 * Forced emulation and Xen CPUID leaves: xen/include/public/arch-x86/xen.h
 * (XEN_EMULATE_PREFIX, XEN_CPUID) and xen/include/public/arch-x86/cpuid.h
 * ------------------------------------------------------------------------ */
#define XEN_EMULATE_PREFIX_BYTES ".byte 0x0f,0x0b,0x78,0x65,0x6e ; " /* ud2 ; .ascii "xen" */
#define XEN_CPUID_FIRST_LEAF     0x40000000
#define XEN_CPUID_LEAF_STRIDE    0x100       /* Xen may sit at 0x40000100 (Viridian) */
#define XEN_CPUID_LAST_BASE      0x40010000  /* scan limit, like Linux */
#define XEN_CPUID_SIGNATURE_EBX  0x566e6558  /* "XenV" */
#define XEN_CPUID_SIGNATURE_ECX  0x65584d4d  /* "MMXe" */
#define XEN_CPUID_SIGNATURE_EDX  0x4d4d566e  /* "nVMM" */

/* ------------------------------------------------------------------------
 * Page-table entry bits (x86 architecture; the subset Xen allows for PV,
 * see xen/arch/x86/include/asm/page.h and the *_DISALLOW_MASKs in mm.c)
 * ------------------------------------------------------------------------ */
#define _PAGE_PRESENT   0x001
#define _PAGE_RW        0x002
#define _PAGE_USER      0x004
#define _PAGE_ACCESSED  0x020
#define _PAGE_DIRTY     0x040

/* Page-fault error code bits (x86 architecture) */
#define PFEC_PRESENT    0x01
#define PFEC_WRITE      0x02
#define PFEC_USER       0x04
#define PFEC_RSVD       0x08
#define PFEC_INSN       0x10

#define X86_EFLAGS_IF   0x200

/* ------------------------------------------------------------------------
 * xen/include/public/xen.h
 * ------------------------------------------------------------------------ */
/* mmu_update commands: the low bits of mmu_update.ptr */
#define MMU_NORMAL_PT_UPDATE        0   /* checked '*ptr = val'; ptr is a machine address */
#define MMU_MACHPHYS_UPDATE         1   /* M2P[ptr >> 12] = val */

/* mmuext_op commands */
#define MMUEXT_PIN_L1_TABLE         0
#define MMUEXT_PIN_L2_TABLE         1
#define MMUEXT_PIN_L3_TABLE         2
#define MMUEXT_PIN_L4_TABLE         3
#define MMUEXT_UNPIN_TABLE          4
#define MMUEXT_NEW_BASEPTR          5
#define MMUEXT_TLB_FLUSH_LOCAL      6
#define MMUEXT_INVLPG_LOCAL         7
#define MMUEXT_TLB_FLUSH_MULTI      8   /* arg2.vcpumask: pointer to a bitmap of vCPUs */
#define MMUEXT_INVLPG_MULTI         9
#define MMUEXT_TLB_FLUSH_ALL        10
#define MMUEXT_INVLPG_ALL           11

/* update_va_mapping flags */
#define UVMF_NONE           0
#define UVMF_TLB_FLUSH      1
#define UVMF_INVLPG         2
#define UVMF_FLUSHTYPE_MASK 3
#define UVMF_LOCAL          0
#define UVMF_ALL            4
#define UVMF_MULTI          0           /* | pointer to a vCPU bitmap (4-byte aligned) */

/* console_io commands */
#define CONSOLEIO_write     0
#define CONSOLEIO_read      1

/* vm_assist commands and types */
#define VMASST_CMD_enable                   0
#define VMASST_CMD_disable                  1
#define VMASST_TYPE_4gb_segments            0
#define VMASST_TYPE_4gb_segments_notify     1
#define VMASST_TYPE_writable_pagetables     2
#define VMASST_TYPE_pae_extended_cr3        3

#define DOMID_SELF          0x7FF0

/* start_info.flags */
#define SIF_PRIVILEGED      (1 << 0)
#define SIF_INITDOMAIN      (1 << 1)
#define SIF_MULTIBOOT_MOD   (1 << 2)
#define SIF_MOD_START_PFN   (1 << 3)

#define MAX_GUEST_CMDLINE   1024
#define XEN_LEGACY_MAX_VCPUS 32         /* arch-x86/xen.h */

/* ------------------------------------------------------------------------
 * xen/include/public/version.h
 * ------------------------------------------------------------------------ */
#define XENVER_version              0
#define XENVER_capabilities         3
#define XENVER_platform_parameters  5
#define XENVER_get_features         6

/* ------------------------------------------------------------------------
 * xen/include/public/features.h
 * ------------------------------------------------------------------------ */
#define XENFEAT_writable_page_tables        0
#define XENFEAT_writable_descriptor_tables  1
#define XENFEAT_auto_translated_physmap     2
#define XENFEAT_supervisor_mode_kernel      3
#define XENFEAT_pae_pgdir_above_4gb         4

/* ------------------------------------------------------------------------
 * xen/include/public/callback.h
 * ------------------------------------------------------------------------ */
#define CALLBACKTYPE_event      0
#define CALLBACKTYPE_failsafe   1
#define CALLBACKF_mask_events   1
#define CALLBACKOP_register     0
#define CALLBACKOP_unregister   1

/* ------------------------------------------------------------------------
 * xen/include/public/sched.h
 * ------------------------------------------------------------------------ */
#define SCHEDOP_yield       0
#define SCHEDOP_block       1           /* clears evtchn_upcall_mask, blocks until an event */
#define SCHEDOP_shutdown    2
#define SCHEDOP_poll        3           /* block until a port is pending or a timeout */
#define SHUTDOWN_poweroff   0
#define SHUTDOWN_reboot     1
#define SHUTDOWN_suspend    2
#define SHUTDOWN_crash      3

/* ------------------------------------------------------------------------
 * xen/include/public/event_channel.h
 * ------------------------------------------------------------------------ */
#define EVTCHNOP_bind_interdomain   0
#define EVTCHNOP_bind_virq          1
#define EVTCHNOP_close              3
#define EVTCHNOP_send               4
#define EVTCHNOP_status             5
#define EVTCHNOP_alloc_unbound      6
#define EVTCHNOP_bind_ipi           7
#define EVTCHNOP_bind_vcpu          8
#define EVTCHNOP_unmask             9
#define EVTCHNSTAT_closed           0
#define EVTCHNSTAT_unbound          1
#define EVTCHNSTAT_interdomain      2
#define EVTCHNSTAT_pirq             3
#define EVTCHNSTAT_virq             4
#define EVTCHNSTAT_ipi              5
/* 2-level ABI: one bit per port in shared_info, 32 words of 32 bits (PV32) */
#define NR_EVENT_CHANNELS           (32 * 32)

/* VIRQs: xen/include/public/xen.h */
#define VIRQ_TIMER          0           /* per vCPU: the timer hypercalls' event */
#define VIRQ_DEBUG          1           /* per vCPU */
#define VIRQ_CONSOLE        2           /* global */

/* ------------------------------------------------------------------------
 * xen/include/public/vcpu.h
 * ------------------------------------------------------------------------ */
#define VCPUOP_initialise                   0
#define VCPUOP_up                           1
#define VCPUOP_down                         2
#define VCPUOP_is_up                        3
#define VCPUOP_get_runstate_info            4
#define VCPUOP_register_runstate_memory_area 5
#define VCPUOP_set_periodic_timer           6
#define VCPUOP_stop_periodic_timer          7
#define VCPUOP_set_singleshot_timer         8
#define VCPUOP_stop_singleshot_timer        9
#define VCPUOP_register_vcpu_info           10
#define RUNSTATE_running    0
#define RUNSTATE_runnable   1
#define RUNSTATE_blocked    2
#define RUNSTATE_offline    3

/* vcpu_guest_context.flags: xen/include/public/arch-x86/xen.h */
#define VGCF_i387_valid     (1 << 0)
#define VGCF_in_kernel      (1 << 2)

/* ------------------------------------------------------------------------
 * trap_info.flags: xen/include/public/arch-x86/xen.h (TI_SET_DPL, TI_SET_IF)
 * ------------------------------------------------------------------------ */
#define TI_DPL(dpl)         ((dpl) & 3)     /* lowest ring allowed to "int n" */
#define TI_IF               4               /* mask events on entry (interrupt gate) */

/* ------------------------------------------------------------------------
 * Error numbers: xen/include/public/errno.h (returned negated)
 * ------------------------------------------------------------------------ */
#define XEN_EPERM           1
#define XEN_ENOENT          2
#define XEN_EFAULT          14
#define XEN_EBUSY           16
#define XEN_EEXIST          17
#define XEN_EINVAL          22
#define XEN_ENOSYS          38

#ifndef __ASSEMBLER__

#include <stdint.h>

typedef uint16_t domid_t;
typedef uint64_t maddr_t;           /* machine address (may exceed 32 bits with PAE) */

#define XEN_STATIC_ASSERT(cond) _Static_assert(cond, #cond)

/* xen/include/public/xen.h: struct start_info (PV32 layout, 1112 bytes) */
struct start_info {
    char     magic[32];         /* "xen-3.0-x86_32p" / "xen-3.0-x86_32" */
    uint32_t nr_pages;          /* total pages allocated to this domain */
    uint32_t shared_info;       /* MACHINE address of the shared_info page */
    uint32_t flags;             /* SIF_* */
    uint32_t store_mfn;         /* xenstore ring page (MFN) */
    uint32_t store_evtchn;      /* xenstore event channel */
    union {
        struct {
            uint32_t mfn;       /* console ring page (MFN) */
            uint32_t evtchn;    /* console event channel */
        } domU;
        struct {
            uint32_t info_off;  /* offset of console_info in start_info */
            uint32_t info_size;
        } dom0;
    } console;
    uint32_t pt_base;           /* VIRTUAL address of the top boot page table */
    uint32_t nr_pt_frames;      /* number of boot page-table frames */
    uint32_t mfn_list;          /* VIRTUAL address of the P2M array (u32 MFNs) */
    uint32_t mod_start;         /* VIRTUAL address of the initrd (or its PFN) */
    uint32_t mod_len;
    int8_t   cmd_line[MAX_GUEST_CMDLINE];
    uint32_t first_p2m_pfn;     /* only with XEN_ELFNOTE_INIT_P2M (PV64) */
    uint32_t nr_p2m_frames;
};
XEN_STATIC_ASSERT(__builtin_offsetof(struct start_info, nr_pages) == 32);
XEN_STATIC_ASSERT(__builtin_offsetof(struct start_info, shared_info) == 36);
XEN_STATIC_ASSERT(__builtin_offsetof(struct start_info, console) == 52);
XEN_STATIC_ASSERT(__builtin_offsetof(struct start_info, pt_base) == 60);
XEN_STATIC_ASSERT(__builtin_offsetof(struct start_info, mfn_list) == 68);
XEN_STATIC_ASSERT(__builtin_offsetof(struct start_info, cmd_line) == 80);
XEN_STATIC_ASSERT(sizeof(struct start_info) == 1112);
typedef struct start_info start_info_t;

/* xen/include/public/xen.h: struct vcpu_time_info (32 bytes) */
struct vcpu_time_info {
    uint32_t version;           /* odd while Xen updates the record */
    uint32_t pad0;
    uint64_t tsc_timestamp;
    uint64_t system_time;
    uint32_t tsc_to_system_mul;
    int8_t   tsc_shift;
    uint8_t  flags;
    uint8_t  pad1[2];
};

/* xen/include/public/arch-x86/xen-x86_32.h: struct arch_vcpu_info */
struct arch_vcpu_info {
    uint32_t cr2;               /* faulting address of the last #PF bounced to us */
    uint32_t pad[5];
};

/* xen/include/public/xen.h: struct vcpu_info (64 bytes) */
struct vcpu_info {
    uint8_t  evtchn_upcall_pending;
    uint8_t  evtchn_upcall_mask;    /* 1 = events masked ("virtual IF" = 0) */
    uint16_t pad;
    uint32_t evtchn_pending_sel;    /* one bit per word of evtchn_pending[] */
    struct arch_vcpu_info arch;
    struct vcpu_time_info time;
};
XEN_STATIC_ASSERT(__builtin_offsetof(struct vcpu_info, evtchn_upcall_mask) == 1);
XEN_STATIC_ASSERT(__builtin_offsetof(struct vcpu_info, evtchn_pending_sel) == 4);
XEN_STATIC_ASSERT(__builtin_offsetof(struct vcpu_info, arch.cr2) == 8);
XEN_STATIC_ASSERT(__builtin_offsetof(struct vcpu_info, time) == 32);
XEN_STATIC_ASSERT(sizeof(struct vcpu_info) == 64);

/* xen/include/public/arch-x86/xen.h: struct arch_shared_info (PV32) */
struct arch_shared_info {
    uint32_t max_pfn;
    uint32_t pfn_to_mfn_frame_list_list;
    uint32_t nmi_reason;
    uint32_t p2m_cr3;
    uint32_t p2m_vaddr;
    uint32_t p2m_generation;
    uint32_t wc_sec_hi;         /* xen-x86_32.h: lives in arch for PV32 */
};

/* xen/include/public/xen.h: struct shared_info (PV32, 2344 bytes) */
struct shared_info {
    struct vcpu_info vcpu_info[XEN_LEGACY_MAX_VCPUS];
    uint32_t evtchn_pending[32];        /* 8 * sizeof(unsigned long) words */
    uint32_t evtchn_mask[32];
    uint32_t wc_version;
    uint32_t wc_sec;
    uint32_t wc_nsec;
    struct arch_shared_info arch;
};
XEN_STATIC_ASSERT(__builtin_offsetof(struct shared_info, evtchn_pending) == 2048);
XEN_STATIC_ASSERT(__builtin_offsetof(struct shared_info, evtchn_mask) == 2176);
XEN_STATIC_ASSERT(__builtin_offsetof(struct shared_info, wc_version) == 2304);
XEN_STATIC_ASSERT(__builtin_offsetof(struct shared_info, arch) == 2316);
XEN_STATIC_ASSERT(sizeof(struct shared_info) == 2344);

/* xen/include/public/arch-x86/xen.h: struct trap_info (PV32, 8 bytes).
 * An array of these ends with an entry whose address is 0. */
struct trap_info {
    uint8_t  vector;
    uint8_t  flags;             /* TI_DPL(n) | TI_IF */
    uint16_t cs;
    uint32_t address;
};
XEN_STATIC_ASSERT(sizeof(struct trap_info) == 8);

/* xen/include/public/xen.h: struct mmu_update (16 bytes on every ABI) */
struct mmu_update {
    uint64_t ptr;               /* machine address of the PTE | MMU_* command */
    uint64_t val;
};
XEN_STATIC_ASSERT(sizeof(struct mmu_update) == 16);

/* xen/include/public/xen.h: struct mmuext_op (PV32: 12 bytes) */
struct mmuext_op {
    uint32_t cmd;               /* MMUEXT_* */
    union {
        uint32_t mfn;           /* PIN_*, UNPIN_TABLE, NEW_BASEPTR */
        uint32_t linear_addr;   /* INVLPG_*, SET_LDT */
    } arg1;
    union {
        uint32_t nr_ents;       /* SET_LDT */
        uint32_t vcpumask;      /* TLB_FLUSH_MULTI, INVLPG_MULTI (a pointer) */
        uint32_t src_mfn;       /* COPY_PAGE */
    } arg2;
};
XEN_STATIC_ASSERT(sizeof(struct mmuext_op) == 12);

/* xen/include/public/xen.h: struct multicall_entry (PV32: 32 bytes) */
struct multicall_entry {
    uint32_t op;                /* __HYPERVISOR_* */
    uint32_t result;            /* written by Xen: the call's return value */
    uint32_t args[6];           /* only args[0..4] are used */
};
XEN_STATIC_ASSERT(sizeof(struct multicall_entry) == 32);

/* xen/include/public/callback.h: struct callback_register (PV32: 12 bytes);
 * xen_callback_t is {cs, eip} on x86_32 (arch-x86/xen-x86_32.h) */
struct callback_register {
    uint16_t type;              /* CALLBACKTYPE_* */
    uint16_t flags;             /* CALLBACKF_* */
    struct {
        uint32_t cs;
        uint32_t eip;
    } address;
};
XEN_STATIC_ASSERT(sizeof(struct callback_register) == 12);

/* xen/include/public/sched.h */
struct sched_shutdown {
    uint32_t reason;            /* SHUTDOWN_* */
};

/* xen/include/public/version.h */
struct xen_feature_info {
    uint32_t submap_idx;        /* IN: which 32-bit submap */
    uint32_t submap;            /* OUT: XENFEAT_* bits */
};
struct xen_platform_parameters {
    uint32_t virt_start;        /* PV32: start of the Xen-owned area */
};
typedef char xen_capabilities_info_t[1024];

/* xen/include/public/event_channel.h (sizes are the same on every ABI) */
typedef uint32_t evtchn_port_t;
struct evtchn_alloc_unbound {
    domid_t dom, remote_dom;    /* IN: DOMID_SELF, the domain allowed to connect */
    evtchn_port_t port;         /* OUT */
};
struct evtchn_bind_interdomain {
    domid_t remote_dom;         /* IN */
    evtchn_port_t remote_port;  /* IN: an unbound port of remote_dom */
    evtchn_port_t local_port;   /* OUT */
};
struct evtchn_bind_virq {
    uint32_t virq;              /* IN: VIRQ_* */
    uint32_t vcpu;              /* IN: per-vCPU VIRQs on any vCPU, others on vCPU 0 */
    evtchn_port_t port;         /* OUT */
};
struct evtchn_bind_ipi {
    uint32_t vcpu;              /* IN: the vCPU the port notifies */
    evtchn_port_t port;         /* OUT */
};
struct evtchn_port_op {         /* struct evtchn_close / evtchn_send / evtchn_unmask */
    evtchn_port_t port;
};
struct evtchn_bind_vcpu {
    evtchn_port_t port;
    uint32_t vcpu;
};
struct evtchn_status {
    domid_t dom;                /* IN */
    evtchn_port_t port;         /* IN */
    uint32_t status;            /* OUT: EVTCHNSTAT_* */
    uint32_t vcpu;              /* OUT: the vCPU it notifies */
    union {
        struct { domid_t dom; } unbound;
        struct { domid_t dom; evtchn_port_t port; } interdomain;
        uint32_t pirq;
        uint32_t virq;
    } u;
};
XEN_STATIC_ASSERT(sizeof(struct evtchn_alloc_unbound) == 8);
XEN_STATIC_ASSERT(sizeof(struct evtchn_bind_interdomain) == 12);
XEN_STATIC_ASSERT(sizeof(struct evtchn_status) == 24);
XEN_STATIC_ASSERT(__builtin_offsetof(struct evtchn_status, u.interdomain.port) == 20);

/* xen/include/public/sched.h: struct sched_poll (PV32: 16 bytes) */
struct sched_poll {
    evtchn_port_t *ports;
    unsigned int nr_ports;
    uint64_t timeout;           /* absolute system time in ns; 0 = none */
};
XEN_STATIC_ASSERT(sizeof(struct sched_poll) == 16);

/* xen/include/public/vcpu.h */
struct vcpu_runstate_info {
    int state;                  /* RUNSTATE_* */
    uint64_t state_entry_time;
    uint64_t time[4];           /* ns spent in each state */
};
XEN_STATIC_ASSERT(sizeof(struct vcpu_runstate_info) == 44);
struct vcpu_register_runstate_memory_area {
    union { struct vcpu_runstate_info *v; uint64_t p; } addr;
};
struct vcpu_set_periodic_timer {
    uint64_t period_ns;
};
struct vcpu_set_singleshot_timer {
    uint64_t timeout_abs_ns;    /* absolute system time */
    uint32_t flags;
};
XEN_STATIC_ASSERT(sizeof(struct vcpu_set_singleshot_timer) == 12);
struct vcpu_register_vcpu_info {
    uint64_t mfn;               /* frame of the new vcpu_info */
    uint32_t offset;            /* in that frame; 64 bytes must fit */
    uint32_t rsvd;
};
XEN_STATIC_ASSERT(sizeof(struct vcpu_register_vcpu_info) == 16);

/* xen/include/public/arch-x86/xen-x86_32.h: struct cpu_user_regs (68 bytes) */
struct cpu_user_regs {
    uint32_t ebx, ecx, edx, esi, edi, ebp, eax;
    uint16_t error_code, entry_vector;
    uint32_t eip;
    uint16_t cs;
    uint8_t saved_upcall_mask, _pad0;
    uint32_t eflags;
    uint32_t esp;
    uint16_t ss, _pad1;
    uint16_t es, _pad2;
    uint16_t ds, _pad3;
    uint16_t fs, _pad4;
    uint16_t gs, _pad5;
};
XEN_STATIC_ASSERT(sizeof(struct cpu_user_regs) == 68);

/* xen/include/public/arch-x86/xen.h: struct vcpu_guest_context (PV32, 2800 bytes),
 * the initial state of a vCPU for VCPUOP_initialise */
struct vcpu_guest_context {
    uint8_t fpu_ctxt[512];      /* FXSAVE image, used with VGCF_i387_valid */
    uint32_t flags;             /* VGCF_* */
    struct cpu_user_regs user_regs;
    struct trap_info trap_ctxt[256];    /* indexed by vector */
    uint32_t ldt_base, ldt_ents;
    uint32_t gdt_frames[16], gdt_ents;  /* MFNs of the GDT pages */
    uint32_t kernel_ss, kernel_sp;      /* stack_switch */
    uint32_t ctrlreg[8];                /* CR3 in [3], as xen_pfn_to_cr3() */
    uint32_t debugreg[8];
    uint32_t event_callback_cs, event_callback_eip;
    uint32_t failsafe_callback_cs, failsafe_callback_eip;
    uint32_t vm_assist;
};
XEN_STATIC_ASSERT(__builtin_offsetof(struct vcpu_guest_context, user_regs) == 516);
XEN_STATIC_ASSERT(__builtin_offsetof(struct vcpu_guest_context, trap_ctxt) == 584);
XEN_STATIC_ASSERT(__builtin_offsetof(struct vcpu_guest_context, ldt_base) == 2632);
XEN_STATIC_ASSERT(__builtin_offsetof(struct vcpu_guest_context, gdt_frames) == 2640);
XEN_STATIC_ASSERT(__builtin_offsetof(struct vcpu_guest_context, kernel_ss) == 2708);
XEN_STATIC_ASSERT(__builtin_offsetof(struct vcpu_guest_context, ctrlreg) == 2716);
XEN_STATIC_ASSERT(__builtin_offsetof(struct vcpu_guest_context, event_callback_cs) == 2780);
XEN_STATIC_ASSERT(sizeof(struct vcpu_guest_context) == 2800);

/*
 * Frame built by pvdemo's asm stubs in head.S for exceptions and callbacks
 * (lowest address first).  The part from eip on is what Xen pushed (PV32
 * bounce frame, see create_bounce_frame in Xen's x86_32/entry.S or
 * x86_64/compat/entry.S); the stub pushes vector, a dummy error code where
 * the CPU/Xen pushes none, and the general registers (pushal order).
 */
struct trap_frame {
    uint32_t edi, esi, ebp, esp_unused, ebx, edx, ecx, eax;    /* pushal */
    uint32_t vector;            /* 0..31, or PVDEMO_VEC_* */
    uint32_t error_code;        /* from Xen, or 0 pushed by the stub */
    uint32_t eip;
    uint32_t cs;                /* bits 0-15 CS, bits 16-23 saved upcall mask */
    uint32_t eflags;            /* IF = !saved upcall mask */
    /* ESP, SS follow only when the interrupted context was ring 2/3. */
};

/* Failsafe callback frame: Xen's bounce frame with TBF_FAILSAFE starts with
 * DS, ES, FS, GS before EIP, CS, EFLAGS (create_bounce_frame, see above). */
struct failsafe_frame {
    uint32_t edi, esi, ebp, esp_unused, ebx, edx, ecx, eax;    /* pushal */
    uint32_t ds, es, fs, gs;
    uint32_t eip;
    uint32_t cs;
    uint32_t eflags;
};

#endif /* !__ASSEMBLER__ */

#endif /* PVDEMO_XEN_H */
