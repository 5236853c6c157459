/*
 * xen.h - pvdemo64's own description of the x86_64 Xen PV guest ABI.
 *
 * Only what pvdemo64 uses is here.  Every constant and layout names the Xen
 * public header that defines it (paths relative to the Xen source tree; the
 * same files are in Debian's libxen-dev as /usr/include/xen/...).  Layouts
 * are the LP64 ones a 64-bit PV guest sees: unsigned long and pointers are
 * 8 bytes, uint64_t is 8-byte aligned.  abicheck/ compiles the public
 * headers and this file side by side and compares every offset used here.
 *
 * This header is included from head.S and userprog.S as well, so everything that
 * is not a plain #define sits under !__ASSEMBLER__.
 *
 * Build-time configuration (passed with -D by the build, see variants.json):
 *   CONFIG_HYPERCALL_PAGE=1|0  1: XEN_ELFNOTE_HYPERCALL_PAGE; every hypercall
 *                              is "call hypercall_page + nr * 32" (Mini-OS);
 *                              0: no note, no page: every hypercall is an
 *                              inline "mov $nr,%eax; syscall" (Linux 6.1's
 *                              xen_hypercall_pv).
 */
#ifndef PVDEMO64_XEN_H
#define PVDEMO64_XEN_H

#ifndef CONFIG_HYPERCALL_PAGE
#error "build with -DCONFIG_HYPERCALL_PAGE=0 or -DCONFIG_HYPERCALL_PAGE=1"
#endif

/* ------------------------------------------------------------------------
 * pvdemo64's own layout (see pvdemo64.lds and README.md "Address space")
 * ------------------------------------------------------------------------ */
/* Kernel image: linked at Linux's __START_KERNEL_map, the top 2 GiB, so that
 * -mcmodel=kernel applies.  VIRT_BASE (XEN_ELFNOTE_VIRT_BASE) maps PFN 0:
 * the first page of the image. */
#define VIRT_BASE           0xffffffff80000000
#define PAGE_SHIFT          12
#define PAGE_SIZE           4096
#define BOOT_STACK_SIZE     16384       /* vCPU 0's stack, in .bss */
#define TASK_STACK_SIZE     16384       /* kernel stack for the user task (stack_switch) */
#define NR_VCPUS            8           /* vCPUs pvdemo64 brings up at most */
#define AP_STACK_SIZE       16384       /* stack of each secondary vCPU, in .bss */

/* The low "user" region: L4 slot 0 -> L3 slot 0 -> L2 slot 2 -> one L1,
 * i.e. [0x400000, 0x600000).  Mapped in the kernel's L4 (like Linux, the
 * kernel sees user memory) and, through the same L3, in the user L4. */
#define LOW_REGION_VA       0x400000
#define USER_CODE_VA        0x400000    /* userprog.S's pages, mapped read-only */
#define USER_CODE_PAGES     2
#define USER_DATA_VA        0x410000    /* struct user_data, RW */
#define USER_STACK_VA       0x420000    /* 2 pages */
#define USER_STACK_PAGES    2
#define USER_STACK_TOP      (USER_STACK_VA + USER_STACK_PAGES * PAGE_SIZE)
#define USER_TLS_VA         0x430000    /* FS base of the user task (SEGBASE_FS) */
#define USER_GS_VA          0x440000    /* user GS base (SEGBASE_GS_USER) */
#define USER_GS2_VA         0x441000    /* a second one, set from a system call */
#define LOW_TLS_VA          0x450000    /* base of the TLS descriptor in our GDT */
#define USER_DEMAND_VA      0x460000    /* not mapped: the first touch faults */
#define LOW_PTWR_VA         0x470000    /* remapped by a plain write to the L1 (ptwr) */
#define PF_PROBE_VA         0x1000      /* mapped by nobody: kernel #PF probe */

/* Pseudo vector numbers the entry stubs put in struct trap_frame.vector. */
#define VEC_EVENT           0x100       /* event-channel upcall */
#define VEC_SYSCALL         0x101       /* syscall from guest user mode */
#define VEC_SYSCALL32       0x102       /* syscall32 / sysenter callbacks (never used) */
#define VEC_SOFTINT         0x81        /* "int $0x81": trap_info DPL 1, reachable from the kernel */
#define VEC_NOHANDLER       0x83        /* "int $0x83": no trap_info, so #GP((0x83 << 3) | 2) */

/* System calls of the user task (userprog.S -> user.c), numbers in RAX. */
#define SYS_CHECK           1           /* the kernel checks the bounce frame */
#define SYS_SET_GS_USER     2           /* set_segment_base(SEGBASE_GS_USER, rdi) */
#define SYS_SET_GS_SEL      3           /* set_segment_base(SEGBASE_GS_USER_SEL, rdi) */
#define SYS_WRITE           4           /* print rsi bytes at rdi */
#define SYS_ARM_TIMER       5           /* VCPUOP_set_singleshot_timer(now + 1 ms) */
#define SYS_EXIT            60          /* back to the kernel for good */
#define SYS_CHECK_MAGIC     0x5a5a0000  /* SYS_CHECK returns this | rdi */

/* ------------------------------------------------------------------------
 * ELF notes: xen/include/public/elfnote.h
 * ------------------------------------------------------------------------ */
#define XEN_ELFNOTE_ENTRY           1
#define XEN_ELFNOTE_HYPERCALL_PAGE  2
#define XEN_ELFNOTE_VIRT_BASE       3
#define XEN_ELFNOTE_PADDR_OFFSET    4
#define XEN_ELFNOTE_XEN_VERSION     5
#define XEN_ELFNOTE_GUEST_OS        6
#define XEN_ELFNOTE_GUEST_VERSION   7
#define XEN_ELFNOTE_LOADER          8
#define XEN_ELFNOTE_FEATURES        10
#define XEN_ELFNOTE_SUSPEND_CANCEL  14

/* ------------------------------------------------------------------------
 * Hypercall numbers: xen/include/public/xen.h (__HYPERVISOR_*); the 64-bit
 * argument lists are in xen/include/hypercall-defs.c.
 * ------------------------------------------------------------------------ */
#define __HYPERVISOR_set_trap_table         0
#define __HYPERVISOR_mmu_update             1
#define __HYPERVISOR_set_gdt                2
#define __HYPERVISOR_stack_switch           3
#define __HYPERVISOR_set_callbacks          4
#define __HYPERVISOR_update_descriptor      10
#define __HYPERVISOR_memory_op              12
#define __HYPERVISOR_multicall              13
#define __HYPERVISOR_update_va_mapping      14
#define __HYPERVISOR_set_timer_op           15
#define __HYPERVISOR_xen_version            17
#define __HYPERVISOR_console_io             18
#define __HYPERVISOR_vm_assist              21
#define __HYPERVISOR_iret                   23
#define __HYPERVISOR_vcpu_op                24
#define __HYPERVISOR_set_segment_base       25
#define __HYPERVISOR_mmuext_op              26
#define __HYPERVISOR_sched_op               29
#define __HYPERVISOR_callback_op            30
#define __HYPERVISOR_event_channel_op       32

/* ------------------------------------------------------------------------
 * x86_64 specifics: xen/include/public/arch-x86/xen-x86_64.h
 * ------------------------------------------------------------------------ */
/* Xen's flat segments (GDT entries from 0xe000 on).  The 64-bit PV kernel
 * runs in ring 3, so its CS/SS are ring-3 selectors too. */
#define FLAT_RING3_CS32     0xe023
#define FLAT_RING3_CS64     0xe033
#define FLAT_RING3_DS32     0xe02b
#define FLAT_RING3_SS64     0xe02b
#define FLAT_KERNEL_CS      FLAT_RING3_CS64     /* 0xe033 */
#define FLAT_KERNEL_SS      FLAT_RING3_SS64     /* 0xe02b */
#define FLAT_KERNEL_DS      0                   /* FLAT_RING3_DS64: NULL */
#define FLAT_USER_CS        FLAT_RING3_CS64
#define FLAT_USER_SS        FLAT_RING3_SS64

/* Xen's part of every address space: L4 slots 256-271. */
#define HYPERVISOR_VIRT_START   0xffff800000000000
#define HYPERVISOR_VIRT_END     0xffff880000000000
#define MACH2PHYS_VIRT_START    0xffff800000000000  /* read-only M2P, 8 bytes per MFN */
#define MACH2PHYS_VIRT_END      0xffff804000000000
#define ROOT_PAGETABLE_FIRST_XEN_SLOT   256         /* xen/arch/x86/include/asm/config.h */
#define ROOT_PAGETABLE_LAST_XEN_SLOT    271

/* set_segment_base(which, base) */
#define SEGBASE_FS          0
#define SEGBASE_GS_USER     1
#define SEGBASE_GS_KERNEL   2
#define SEGBASE_GS_USER_SEL 3

/* iret hypercall: struct iret_context.flags */
#define VGCF_in_syscall     (1 << 8)

/* CR3 of a frame: 64-bit guests use the plain machine address. */
#define xen_pfn_to_cr3(pfn) ((unsigned long)(pfn) << 12)
#define xen_cr3_to_pfn(cr3) ((unsigned long)(cr3) >> 12)

/* ------------------------------------------------------------------------
 * Forced emulation and Xen CPUID leaves: public/arch-x86/xen.h
 * (XEN_EMULATE_PREFIX) and public/arch-x86/cpuid.h
 * ------------------------------------------------------------------------ */
#define XEN_EMULATE_PREFIX_BYTES ".byte 0x0f,0x0b,0x78,0x65,0x6e ; " /* ud2 ; .ascii "xen" */
#define XEN_CPUID_FIRST_LEAF     0x40000000
#define XEN_CPUID_LEAF_STRIDE    0x100       /* Xen may sit at 0x40000100 (Viridian) */
#define XEN_CPUID_LAST_BASE      0x40010000  /* scan limit, like Linux */
#define XEN_CPUID_SIGNATURE_EBX  0x566e6558  /* "XenV" */
#define XEN_CPUID_SIGNATURE_ECX  0x65584d4d  /* "MMXe" */
#define XEN_CPUID_SIGNATURE_EDX  0x4d4d566e  /* "nVMM" */
#define XEN_HYPERCALL_MSR        0x40000000  /* what base+2 EBX reports */

/* ------------------------------------------------------------------------
 * x86 architecture: MSRs, page-table and flag bits.  The subset Xen allows
 * for PV is in xen/arch/x86/mm.c (L1_DISALLOW_MASK, L2..L4_DISALLOW_MASK)
 * and the PV adjustments in xen/arch/x86/pv/mm.h.
 * ------------------------------------------------------------------------ */
#define MSR_FS_BASE             0xc0000100
#define MSR_GS_BASE             0xc0000101
#define MSR_SHADOW_GS_BASE      0xc0000102  /* "KERNEL_GS_BASE": Xen keeps the user base there */

#define _PAGE_PRESENT   0x001
#define _PAGE_RW        0x002
#define _PAGE_USER      0x004
#define _PAGE_PWT       0x008
#define _PAGE_PCD       0x010
#define _PAGE_ACCESSED  0x020
#define _PAGE_DIRTY     0x040
#define _PAGE_PSE       0x080           /* refused by Xen at every level */
#define _PAGE_GLOBAL    0x100
#define _PAGE_GUEST_KERNEL (1UL << 52)  /* Xen's tag for an L1e the guest wrote without U */
#define _PAGE_NX        (1UL << 63)
#define PTE_ADDR_MASK   0x000ffffffffff000UL

/* Page-fault error code bits */
#define PFEC_PRESENT    0x01
#define PFEC_WRITE      0x02
#define PFEC_USER       0x04
#define PFEC_RSVD       0x08
#define PFEC_INSN       0x10

#define X86_EFLAGS_FIXED 0x0002         /* bit 1, always set */
#define X86_EFLAGS_TF   0x0100
#define X86_EFLAGS_IF   0x0200
#define X86_EFLAGS_DF   0x0400
#define X86_EFLAGS_IOPL 0x3000
#define X86_EFLAGS_NT   0x4000
#define X86_EFLAGS_RF   0x10000
#define X86_EFLAGS_AC   0x40000

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
#define MMUEXT_NEW_USER_BASEPTR     15  /* x86_64 only: the user-mode L4 */

/* update_va_mapping flags */
#define UVMF_NONE           0
#define UVMF_TLB_FLUSH      1
#define UVMF_INVLPG         2
#define UVMF_LOCAL          0
#define UVMF_ALL            4

/* console_io commands */
#define CONSOLEIO_write     0

/* vm_assist commands and types */
#define VMASST_CMD_enable                   0
#define VMASST_CMD_disable                  1
#define VMASST_TYPE_4gb_segments            0
#define VMASST_TYPE_writable_pagetables     2
#define VMASST_TYPE_pae_extended_cr3        3
#define VMASST_TYPE_runstate_update_flag    5
#define VMASST_TYPE_m2p_strict              32

#define DOMID_SELF          0x7FF0

/* start_info.flags */
#define SIF_PRIVILEGED      (1 << 0)
#define SIF_INITDOMAIN      (1 << 1)
#define SIF_MOD_START_PFN   (1 << 3)
#define SIF_VIRT_P2M_4TOOLS (1 << 4)    /* libxc's xc_dom_allocate() always sets it */

#define MAX_GUEST_CMDLINE   1024
#define XEN_LEGACY_MAX_VCPUS 32         /* arch-x86/xen.h */
#define INVALID_P2M_ENTRY   (~0UL)

/* ------------------------------------------------------------------------
 * xen/include/public/version.h, features.h, memory.h
 * ------------------------------------------------------------------------ */
#define XENVER_version              0
#define XENVER_capabilities         3
#define XENVER_platform_parameters  5
#define XENVER_get_features         6

#define XENFEAT_writable_page_tables        0
#define XENFEAT_auto_translated_physmap     2
#define XENFEAT_supervisor_mode_kernel      3
#define XENFEAT_pae_pgdir_above_4gb         4
#define XENFEAT_mmu_pt_update_preserve_ad   5

#define XENMEM_machphys_mapping     12

/* ------------------------------------------------------------------------
 * xen/include/public/callback.h
 * ------------------------------------------------------------------------ */
#define CALLBACKTYPE_event      0
#define CALLBACKTYPE_failsafe   1
#define CALLBACKTYPE_syscall    2       /* x86_64: syscall from guest user mode */
#define CALLBACKTYPE_sysenter   5
#define CALLBACKTYPE_syscall32  7       /* x86_64: syscall from 32-bit user code */
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
/* 2-level ABI: one bit per port in shared_info, 64 words of 64 bits. */
#define BITS_PER_EVTCHN_WORD        64
#define NR_EVENT_CHANNELS           (64 * 64)

#define VIRQ_TIMER          0           /* per vCPU */
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

/* vcpu_guest_context.flags: public/arch-x86/xen.h */
#define VGCF_i387_valid                 (1 << 0)
#define VGCF_in_kernel                  (1 << 2)
#define VGCF_failsafe_disables_events   (1 << 3)
#define VGCF_syscall_disables_events    (1 << 4)
#define VGCF_online                     (1 << 5)

/* trap_info.flags: public/arch-x86/xen.h (TI_SET_DPL, TI_SET_IF) */
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
typedef uint64_t maddr_t;           /* machine address */
typedef unsigned long xen_pfn_t;
typedef unsigned long xen_ulong_t;
typedef uint64_t pgentry_t;         /* an entry of any of the four levels */

#define XEN_STATIC_ASSERT(cond) _Static_assert(cond, #cond)
#define XEN_OFFSET(type, field, off) XEN_STATIC_ASSERT(__builtin_offsetof(type, field) == (off))

/* public/xen.h: struct start_info (x86_64: 0x490 bytes) */
struct start_info {
    char magic[32];             /* "xen-3.0-x86_64" */
    unsigned long nr_pages;     /* total pages allocated to this domain */
    unsigned long shared_info;  /* MACHINE address of the shared_info page */
    uint32_t flags;             /* SIF_* */
    xen_pfn_t store_mfn;        /* xenstore ring page (MFN) */
    uint32_t store_evtchn;      /* xenstore event channel */
    union {
        struct {
            xen_pfn_t mfn;      /* console ring page (MFN) */
            uint32_t evtchn;    /* console event channel */
        } domU;
        struct {
            uint32_t info_off;
            uint32_t info_size;
        } dom0;
    } console;
    unsigned long pt_base;      /* VIRTUAL address of the boot L4 */
    unsigned long nr_pt_frames; /* number of boot page-table frames */
    unsigned long mfn_list;     /* VIRTUAL address of the P2M (u64 MFNs) */
    unsigned long mod_start;
    unsigned long mod_len;
    int8_t cmd_line[MAX_GUEST_CMDLINE];
    unsigned long first_p2m_pfn;    /* only with XEN_ELFNOTE_INIT_P2M */
    unsigned long nr_p2m_frames;
};
XEN_OFFSET(struct start_info, nr_pages, 0x20);
XEN_OFFSET(struct start_info, shared_info, 0x28);
XEN_OFFSET(struct start_info, flags, 0x30);
XEN_OFFSET(struct start_info, store_mfn, 0x38);
XEN_OFFSET(struct start_info, store_evtchn, 0x40);
XEN_OFFSET(struct start_info, console.domU.mfn, 0x48);
XEN_OFFSET(struct start_info, console.domU.evtchn, 0x50);
XEN_OFFSET(struct start_info, pt_base, 0x58);
XEN_OFFSET(struct start_info, nr_pt_frames, 0x60);
XEN_OFFSET(struct start_info, mfn_list, 0x68);
XEN_OFFSET(struct start_info, mod_start, 0x70);
XEN_OFFSET(struct start_info, cmd_line, 0x80);
XEN_OFFSET(struct start_info, first_p2m_pfn, 0x480);
XEN_STATIC_ASSERT(sizeof(struct start_info) == 0x490);
typedef struct start_info start_info_t;

/* public/xen.h: struct vcpu_time_info (32 bytes) */
struct vcpu_time_info {
    uint32_t version;           /* odd while Xen updates the record */
    uint32_t pad0;
    uint64_t tsc_timestamp;     /* TSC at the last update */
    uint64_t system_time;       /* ns since boot at that TSC */
    uint32_t tsc_to_system_mul;
    int8_t   tsc_shift;
    uint8_t  flags;             /* bit 0: TSC stable */
    uint8_t  pad1[2];
};
XEN_STATIC_ASSERT(sizeof(struct vcpu_time_info) == 32);

/* public/arch-x86/xen-x86_64.h: struct arch_vcpu_info */
struct arch_vcpu_info {
    unsigned long cr2;          /* faulting address of the last #PF bounced to us */
    unsigned long pad;
};

/* public/xen.h: struct vcpu_info (64 bytes) */
struct vcpu_info {
    uint8_t evtchn_upcall_pending;
    uint8_t evtchn_upcall_mask;     /* 1 = events masked ("virtual IF" = 0) */
    xen_ulong_t evtchn_pending_sel; /* one bit per 64-bit word of evtchn_pending[] */
    struct arch_vcpu_info arch;
    struct vcpu_time_info time;
};
XEN_OFFSET(struct vcpu_info, evtchn_upcall_mask, 1);
XEN_OFFSET(struct vcpu_info, evtchn_pending_sel, 8);
XEN_OFFSET(struct vcpu_info, arch.cr2, 0x10);
XEN_OFFSET(struct vcpu_info, time, 0x20);
XEN_STATIC_ASSERT(sizeof(struct vcpu_info) == 64);

/* public/arch-x86/xen.h: struct arch_shared_info (x86_64) */
struct arch_shared_info {
    unsigned long max_pfn;
    xen_pfn_t pfn_to_mfn_frame_list_list;
    unsigned long nmi_reason;
    unsigned long p2m_cr3;
    unsigned long p2m_vaddr;
    unsigned long p2m_generation;
};

/* public/xen.h: struct shared_info (x86_64, 0xc40 bytes) */
struct shared_info {
    struct vcpu_info vcpu_info[XEN_LEGACY_MAX_VCPUS];
    xen_ulong_t evtchn_pending[64];     /* sizeof(xen_ulong_t) * 8 words */
    xen_ulong_t evtchn_mask[64];
    uint32_t wc_version;
    uint32_t wc_sec;
    uint32_t wc_nsec;
    uint32_t wc_sec_hi;                 /* x86_64: here, not in arch */
    struct arch_shared_info arch;
};
XEN_OFFSET(struct shared_info, evtchn_pending, 0x800);
XEN_OFFSET(struct shared_info, evtchn_mask, 0xa00);
XEN_OFFSET(struct shared_info, wc_version, 0xc00);
XEN_OFFSET(struct shared_info, wc_sec_hi, 0xc0c);
XEN_OFFSET(struct shared_info, arch, 0xc10);
XEN_OFFSET(struct shared_info, arch.pfn_to_mfn_frame_list_list, 0xc18);
XEN_STATIC_ASSERT(sizeof(struct shared_info) == 0xc40);

/* public/arch-x86/xen.h: struct trap_info (x86_64, 16 bytes).  An array of
 * these ends with an entry whose address is 0. */
struct trap_info {
    uint8_t  vector;
    uint8_t  flags;             /* TI_DPL(n) | TI_IF */
    uint16_t cs;                /* RPL forced to 3 by Xen */
    unsigned long address;
};
XEN_OFFSET(struct trap_info, address, 8);
XEN_STATIC_ASSERT(sizeof(struct trap_info) == 16);

/* public/xen.h: struct mmu_update (16 bytes) */
struct mmu_update {
    uint64_t ptr;               /* machine address of the entry | MMU_* command */
    uint64_t val;
};
XEN_STATIC_ASSERT(sizeof(struct mmu_update) == 16);

/* public/xen.h: struct mmuext_op (x86_64: 24 bytes) */
struct mmuext_op {
    unsigned int cmd;           /* MMUEXT_* */
    union {
        xen_pfn_t mfn;          /* PIN_*, UNPIN_TABLE, NEW_BASEPTR, NEW_USER_BASEPTR */
        unsigned long linear_addr;  /* INVLPG_* */
    } arg1;
    union {
        unsigned int nr_ents;
        const void *vcpumask;   /* TLB_FLUSH_MULTI, INVLPG_MULTI (a guest handle) */
        xen_pfn_t src_mfn;
    } arg2;
};
XEN_OFFSET(struct mmuext_op, arg1, 8);
XEN_OFFSET(struct mmuext_op, arg2, 16);
XEN_STATIC_ASSERT(sizeof(struct mmuext_op) == 24);

/* public/xen.h: struct multicall_entry (x86_64: 64 bytes) */
struct multicall_entry {
    xen_ulong_t op;             /* __HYPERVISOR_* */
    xen_ulong_t result;         /* written by Xen: the call's return value */
    xen_ulong_t args[6];        /* only args[0..4] are used */
};
XEN_OFFSET(struct multicall_entry, result, 8);
XEN_OFFSET(struct multicall_entry, args, 16);
XEN_STATIC_ASSERT(sizeof(struct multicall_entry) == 64);

/* public/callback.h (x86_64: xen_callback_t is an unsigned long) */
struct callback_register {
    uint16_t type;              /* CALLBACKTYPE_* */
    uint16_t flags;             /* CALLBACKF_* */
    unsigned long address;
};
XEN_OFFSET(struct callback_register, address, 8);
XEN_STATIC_ASSERT(sizeof(struct callback_register) == 16);
struct callback_unregister {
    uint16_t type;
    uint16_t _unused;
};

/* public/sched.h */
struct sched_shutdown {
    uint32_t reason;            /* SHUTDOWN_* */
};
typedef uint32_t evtchn_port_t;
struct sched_poll {
    evtchn_port_t *ports;       /* a guest handle */
    unsigned int nr_ports;
    uint64_t timeout;           /* absolute system time in ns; 0 = none */
};
XEN_OFFSET(struct sched_poll, nr_ports, 8);
XEN_OFFSET(struct sched_poll, timeout, 16);
XEN_STATIC_ASSERT(sizeof(struct sched_poll) == 24);

/* public/version.h */
struct xen_feature_info {
    unsigned int submap_idx;    /* IN: which 32-bit submap */
    uint32_t submap;            /* OUT: XENFEAT_* bits */
};
struct xen_platform_parameters {
    xen_ulong_t virt_start;     /* start of the Xen-owned area */
};
typedef char xen_capabilities_info_t[1024];

/* public/memory.h */
struct xen_machphys_mapping {
    xen_ulong_t v_start, v_end; /* the read-only M2P */
    xen_ulong_t max_mfn;
};
XEN_STATIC_ASSERT(sizeof(struct xen_machphys_mapping) == 24);

/* public/event_channel.h (the same on every ABI) */
struct evtchn_alloc_unbound {
    domid_t dom, remote_dom;
    evtchn_port_t port;         /* OUT */
};
struct evtchn_bind_interdomain {
    domid_t remote_dom;
    evtchn_port_t remote_port;
    evtchn_port_t local_port;   /* OUT */
};
struct evtchn_bind_virq {
    uint32_t virq;
    uint32_t vcpu;
    evtchn_port_t port;         /* OUT */
};
struct evtchn_bind_ipi {
    uint32_t vcpu;
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
    domid_t dom;
    evtchn_port_t port;
    uint32_t status;            /* OUT: EVTCHNSTAT_* */
    uint32_t vcpu;              /* OUT */
    union {
        struct { domid_t dom; } unbound;
        struct { domid_t dom; evtchn_port_t port; } interdomain;
        uint32_t pirq;
        uint32_t virq;
    } u;
};
XEN_STATIC_ASSERT(sizeof(struct evtchn_status) == 24);
XEN_OFFSET(struct evtchn_status, u.interdomain.port, 20);

/* public/vcpu.h */
struct vcpu_runstate_info {
    int state;                  /* RUNSTATE_* */
    uint64_t state_entry_time;  /* bit 63: XEN_RUNSTATE_UPDATE */
    uint64_t time[4];           /* ns spent in each state */
};
XEN_OFFSET(struct vcpu_runstate_info, state_entry_time, 8);
XEN_STATIC_ASSERT(sizeof(struct vcpu_runstate_info) == 48);
struct vcpu_register_runstate_memory_area {
    union { struct vcpu_runstate_info *v; uint64_t p; } addr;   /* guest VIRTUAL address */
};
struct vcpu_set_periodic_timer {
    uint64_t period_ns;
};
struct vcpu_set_singleshot_timer {
    uint64_t timeout_abs_ns;    /* absolute system time */
    uint32_t flags;
};
XEN_STATIC_ASSERT(sizeof(struct vcpu_set_singleshot_timer) == 16);
struct vcpu_register_vcpu_info {
    uint64_t mfn;
    uint32_t offset;            /* 8-byte aligned, 64 bytes must fit */
    uint32_t rsvd;
};
XEN_STATIC_ASSERT(sizeof(struct vcpu_register_vcpu_info) == 16);

/* public/arch-x86/xen-x86_64.h: struct cpu_user_regs (200 bytes) */
struct cpu_user_regs {
    uint64_t r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8;
    uint64_t rax, rcx, rdx, rsi, rdi;
    uint32_t error_code;        /* private */
    uint32_t entry_vector;      /* private */
    uint64_t rip;
    uint16_t cs, _pad0[1];
    uint8_t  saved_upcall_mask;
    uint8_t  _pad1[3];
    uint64_t rflags;            /* rflags.IF == !saved_upcall_mask */
    uint64_t rsp;
    uint16_t ss, _pad2[3];
    uint16_t es, _pad3[3];
    uint16_t ds, _pad4[3];
    uint16_t fs, _pad5[3];
    uint16_t gs, _pad6[3];
};
XEN_OFFSET(struct cpu_user_regs, rax, 80);
XEN_OFFSET(struct cpu_user_regs, rdi, 112);
XEN_OFFSET(struct cpu_user_regs, rip, 128);
XEN_OFFSET(struct cpu_user_regs, cs, 136);
XEN_OFFSET(struct cpu_user_regs, saved_upcall_mask, 140);
XEN_OFFSET(struct cpu_user_regs, rflags, 144);
XEN_OFFSET(struct cpu_user_regs, rsp, 152);
XEN_OFFSET(struct cpu_user_regs, ss, 160);
XEN_OFFSET(struct cpu_user_regs, gs, 192);
XEN_STATIC_ASSERT(sizeof(struct cpu_user_regs) == 200);

/* public/arch-x86/xen.h: struct vcpu_guest_context (x86_64: 0x1430 bytes),
 * the initial state of a vCPU for VCPUOP_initialise */
struct vcpu_guest_context {
    struct { char x[512]; } fpu_ctxt;   /* FXSAVE image, used with VGCF_i387_valid */
    unsigned long flags;                /* VGCF_* */
    struct cpu_user_regs user_regs;
    struct trap_info trap_ctxt[256];    /* indexed by vector */
    unsigned long ldt_base, ldt_ents;
    unsigned long gdt_frames[16], gdt_ents; /* MFNs of the GDT pages */
    unsigned long kernel_ss, kernel_sp; /* stack_switch: bounces from user mode */
    unsigned long ctrlreg[8];           /* CR3 in [3], the user L4 in [1] (xen_pfn_to_cr3) */
    unsigned long debugreg[8];
    unsigned long event_callback_eip;
    unsigned long failsafe_callback_eip;
    unsigned long syscall_callback_eip;
    unsigned long vm_assist;            /* VMASST_TYPE_* bitmap (vCPU 0 only) */
    uint64_t fs_base;
    uint64_t gs_base_kernel;
    uint64_t gs_base_user;
};
XEN_OFFSET(struct vcpu_guest_context, flags, 0x200);
XEN_OFFSET(struct vcpu_guest_context, user_regs, 0x208);
XEN_OFFSET(struct vcpu_guest_context, trap_ctxt, 0x2d0);
XEN_OFFSET(struct vcpu_guest_context, ldt_base, 0x12d0);
XEN_OFFSET(struct vcpu_guest_context, gdt_frames, 0x12e0);
XEN_OFFSET(struct vcpu_guest_context, gdt_ents, 0x1360);
XEN_OFFSET(struct vcpu_guest_context, kernel_ss, 0x1368);
XEN_OFFSET(struct vcpu_guest_context, kernel_sp, 0x1370);
XEN_OFFSET(struct vcpu_guest_context, ctrlreg, 0x1378);
XEN_OFFSET(struct vcpu_guest_context, debugreg, 0x13b8);
XEN_OFFSET(struct vcpu_guest_context, event_callback_eip, 0x13f8);
XEN_OFFSET(struct vcpu_guest_context, failsafe_callback_eip, 0x1400);
XEN_OFFSET(struct vcpu_guest_context, syscall_callback_eip, 0x1408);
XEN_OFFSET(struct vcpu_guest_context, vm_assist, 0x1410);
XEN_OFFSET(struct vcpu_guest_context, fs_base, 0x1418);
XEN_OFFSET(struct vcpu_guest_context, gs_base_kernel, 0x1420);
XEN_OFFSET(struct vcpu_guest_context, gs_base_user, 0x1428);
XEN_STATIC_ASSERT(sizeof(struct vcpu_guest_context) == 0x1430);

/* public/arch-x86/xen-x86_64.h: what the iret hypercall (#23) pops.  At the
 * "syscall" RSP points at rax; the guest pushed flags..ss, the stub (or our
 * inline copy of it) pushed rcx, r11, rax. */
struct iret_context {
    uint64_t rax, r11, rcx, flags, rip, cs, rflags, rsp, ss;
};
XEN_STATIC_ASSERT(sizeof(struct iret_context) == 72);

/*
 * Frame built by pvdemo64's entry stubs in head.S (lowest address first).
 * Xen's 64-bit bounce frame (create_bounce_frame in xen/arch/x86/x86_64/entry.S)
 * is RCX, R11, [error code], RIP, CS | saved_upcall_mask << 32, RFLAGS, RSP,
 * SS.  Each stub pops RCX and R11 first (Xen exits to the handler with
 * sysretq, which clobbers both), pushes a 0 where Xen pushed no error code,
 * then the vector and the general registers, in the order of struct
 * cpu_user_regs (and Linux's pt_regs).  So from rip on this is Xen's frame.
 */
struct trap_frame {
    uint64_t r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8;
    uint64_t rax, rcx, rdx, rsi, rdi;
    uint64_t vector;            /* 0..255, or VEC_* */
    uint64_t error_code;        /* from Xen, or 0 pushed by the stub */
    uint64_t rip;
    uint64_t cs;                /* bits 0-15 CS (RPL 0 = interrupted guest kernel),
                                   bits 32-39 the saved evtchn_upcall_mask */
    uint64_t rflags;            /* IF = !saved upcall mask */
    uint64_t rsp;
    uint64_t ss;
};
XEN_OFFSET(struct trap_frame, rcx, 88);
XEN_OFFSET(struct trap_frame, rip, 136);
XEN_STATIC_ASSERT(sizeof(struct trap_frame) == 176);     /* a multiple of 16 */

/* The failsafe callback's frame (load_segments in xen/arch/x86/domain.c):
 * RCX, R11, DS, ES, FS, GS, RIP, CS, RFLAGS, RSP, SS. */
struct failsafe_frame {
    uint64_t r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8;
    uint64_t rax, rcx, rdx, rsi, rdi;
    uint64_t ds, es, fs, gs;
    uint64_t rip, cs, rflags, rsp, ss;
};
XEN_STATIC_ASSERT(sizeof(struct failsafe_frame) % 16 == 0);

#endif /* !__ASSEMBLER__ */

#endif /* PVDEMO64_XEN_H */
