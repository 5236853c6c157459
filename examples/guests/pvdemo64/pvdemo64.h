/*
 * pvdemo64.h - what the C files of pvdemo64 share: per-vCPU state, frame
 * number helpers, MSR/CPU helpers, the check and event-mask primitives.
 */
#ifndef PVDEMO64_H
#define PVDEMO64_H

#include <stdint.h>

#include "xen.h"

#define barrier()       asm volatile ("" ::: "memory")
#define cpu_relax()     asm volatile ("pause" ::: "memory")
#define ARRAY_SIZE(a)   (sizeof(a) / sizeof((a)[0]))
#define PAGE_ALIGNED    __attribute__((aligned(PAGE_SIZE)))
#define NORETURN        __attribute__((noreturn))

/* ------------------------------------------------------------------------
 * Per-vCPU state, reached through the kernel GS base as Linux's per-cpu
 * area is: %gs:0 holds the struct's own address.  vCPU 0 sets its GS base
 * with a native WRMSR in head.S (emulated by Xen), then
 * set_segment_base(SEGBASE_GS_KERNEL); a secondary vCPU gets it from
 * vcpu_guest_context.gs_base_kernel.  Xen swaps the kernel and user GS bases
 * on every kernel<->user switch (toggle_guest_mode), so in any handler %gs:0
 * is ours again.
 * ------------------------------------------------------------------------ */
struct vcpu_state {
    struct vcpu_state *self;                /* must stay first: %gs:0 */
    unsigned int id;
    volatile struct vcpu_info *vi;          /* shared_info slot, then the registered copy */
    volatile unsigned int upcalls;          /* event callbacks taken */
    volatile unsigned int failsafes;        /* failsafe callbacks taken */
    /* event channels (smp.c) */
    volatile unsigned int online;           /* secondary vCPU reached C code */
    evtchn_port_t timer_port, ipi_port;     /* VIRQ_TIMER and IPI ports bound to this vCPU */
    uint64_t port_mask[NR_EVENT_CHANNELS / 64];   /* ports this vCPU handles (cpu_evtchn_mask) */
    volatile unsigned int ticks;            /* VIRQ_TIMER events handled */
    volatile unsigned int ipis;             /* IPI events handled */
    volatile unsigned int other_events;     /* loopback / backend ports handled */
    volatile unsigned int spurious;         /* upcalls that found no port of ours */
    volatile uint64_t last_tick_ns;         /* system time seen by the last timer event */
    volatile uint64_t ipi_cmd, ipi_arg, ipi_result;   /* what the next IPI asks for */
    volatile unsigned int stop;             /* asked to go offline */
    /* results of the checks a secondary vCPU runs on itself (vCPU 0 reports them) */
    int rc_timer, rc_ipi, rc_runstate, rc_callback;
    uint64_t entry_rdi, entry_cs, entry_ss, entry_rflags, entry_gs0, entry_gsbase;
    int crit_ok;                            /* tick while masked delivered after unmask */
    unsigned int crit_during, crit_after;
};
extern struct vcpu_state vcpus[NR_VCPUS];
extern volatile unsigned int bad_gs_upcalls;

static inline struct vcpu_state *this_vcpu(void)
{
    struct vcpu_state *v;

    asm volatile ("movq %%gs:0, %0" : "=r" (v));
    /* A wrong GS base here is a hypervisor bug; count it and carry on with
     * vCPU 0 so that the run can still report. */
    if ((uintptr_t)v - (uintptr_t)vcpus >= sizeof(vcpus) ||
        ((uintptr_t)v - (uintptr_t)vcpus) % sizeof(vcpus[0])) {
        bad_gs_upcalls++;
        v = &vcpus[0];
    }
    return v;
}

/* ------------------------------------------------------------------------
 * Globals of kernel.c and symbols of head.S / the linker script
 * ------------------------------------------------------------------------ */
extern start_info_t *xen_start_info;
extern struct shared_info *HYPERVISOR_shared_info;
extern char hypervisor_callback[], failsafe_callback[], syscall_callback[],
    syscall32_callback[], sysenter_callback[], secondary_startup[];
extern const struct trap_info trap_table[];
extern uint64_t gdt[PAGE_SIZE / 8];
extern char _text[], _end[];
extern long xen_ver;
extern char guest_magic[33];
extern uint64_t *kernel_l4, *kernel_l1;     /* pagetable.c: our L4, the L1 mapping the image */
extern uint64_t kernel_l4_mfn;
extern uint64_t *low_l1;                    /* the L1 of the low region */
pgentry_t *pgt_alloc(void);                 /* a zeroed page from the page-table pool */
int make_readonly(const void *va);          /* update_va_mapping(va, read-only) */
extern int gdt_ok;                          /* our GDT is loaded (kernel.c) */

#define GDT_ENTRIES         16
#define GDT_KERNEL_CS       2               /* Linux's GDT layout (asm/segment.h) */
#define GDT_KERNEL_DS       3
#define GDT_USER32_CS       4
#define GDT_USER_DS         5
#define GDT_USER_CS         6
#define GDT_TLS             12
#define GDT_SEL(idx)        (((idx) << 3) | 3)  /* TI = GDT, RPL 3 */

/* ------------------------------------------------------------------------
 * Frame numbers: the P2M (start_info.mfn_list, one u64 MFN per PFN) maps our
 * pseudo-physical frames to machine frames; PFN n is mapped at
 * VIRT_BASE + n * 4 KiB in the boot mapping.  The M2P goes the other way.
 * ------------------------------------------------------------------------ */
static inline unsigned long virt_to_pfn(const volatile void *va)
{
    return ((uintptr_t)va - VIRT_BASE) >> PAGE_SHIFT;
}

static inline unsigned long pfn_to_mfn(unsigned long pfn)
{
    return ((const unsigned long *)xen_start_info->mfn_list)[pfn];
}

static inline unsigned long virt_to_mfn(const volatile void *va)
{
    return pfn_to_mfn(virt_to_pfn(va));
}

static inline maddr_t virt_to_maddr(const volatile void *va)
{
    return ((maddr_t)virt_to_mfn(va) << PAGE_SHIFT) | ((uintptr_t)va & (PAGE_SIZE - 1));
}

static inline const volatile unsigned long *machine_to_phys(void)
{
    return (const volatile unsigned long *)MACH2PHYS_VIRT_START;
}

static inline unsigned long pte_mfn(pgentry_t e)
{
    return (e & PTE_ADDR_MASK) >> PAGE_SHIFT;
}

static inline pgentry_t mfn_pte(unsigned long mfn, uint64_t flags)
{
    return ((pgentry_t)mfn << PAGE_SHIFT) | flags;
}

#define l1_index(va)    ((((uint64_t)(va)) >> 12) & 511)
#define l2_index(va)    ((((uint64_t)(va)) >> 21) & 511)
#define l3_index(va)    ((((uint64_t)(va)) >> 30) & 511)
#define l4_index(va)    ((((uint64_t)(va)) >> 39) & 511)

/* ------------------------------------------------------------------------
 * CPU helpers
 * ------------------------------------------------------------------------ */
static inline uint64_t rdmsr(uint32_t msr)
{
    uint32_t lo, hi;

    asm volatile ("rdmsr" : "=a" (lo), "=d" (hi) : "c" (msr) : "memory");
    return ((uint64_t)hi << 32) | lo;
}

static inline void wrmsr(uint32_t msr, uint64_t val)
{
    asm volatile ("wrmsr"
                  : : "c" (msr), "a" ((uint32_t)val), "d" ((uint32_t)(val >> 32))
                  : "memory");
}

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;

    asm volatile ("rdtsc" : "=a" (lo), "=d" (hi));
    return ((uint64_t)hi << 32) | lo;
}

static inline uint64_t read_gs0(void)
{
    uint64_t v;

    asm volatile ("movq %%gs:0, %0" : "=r" (v) : : "memory");
    return v;
}

/* ------------------------------------------------------------------------
 * kernel.c
 * ------------------------------------------------------------------------ */
int check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fatal(const char *why) NORETURN;
void events_enable(void);           /* clear the vCPU's upcall mask; deliver what is pending */
void events_disable(void);
void force_evtchn_callback(void);
int mmuext(unsigned int cmd, unsigned long arg1);
void *mfn_to_virt(unsigned long mfn);
uint64_t probe_read_cr3(void);

/* What the last expected trap looked like (kernel.c do_trap). */
struct trap_record {
    volatile unsigned int count;
    uint64_t vector, error_code, rip, cs, rflags, rsp, ss, rcx, r11, cr2;
    uint8_t saved_mask;             /* frame CS bits 32-39 */
    uint8_t mask_in_handler;        /* vcpu_info.evtchn_upcall_mask on entry */
    uint64_t frame_va;              /* where the frame was (&frame->rip) */
};
extern struct trap_record last_trap;

/* ------------------------------------------------------------------------
 * pagetable.c, smp.c, user.c
 * ------------------------------------------------------------------------ */
void step_pagetables(void);
void evtchn_do_upcall(void);        /* the 2-level scan, from do_hypervisor_callback */
void step_events(void);
void step_time(void);
void step_smp(void);
void secondary_start(unsigned int id, uint64_t cs, uint64_t ss, uint64_t rflags) NORETURN;
uint64_t xen_clock_ns(void);
void step_user(void);
int user_trap(struct trap_frame *f);        /* a trap from user mode: 1 if handled */
void user_upcall(struct trap_frame *f);     /* an event upcall that interrupted user mode */
void do_syscall(struct trap_frame *f);      /* head.S syscall_callback */

#endif /* PVDEMO64_H */
