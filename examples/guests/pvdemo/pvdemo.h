/*
 * pvdemo.h - what kernel.c (the boot-path checks) and smp.c (event channels,
 * virtual time, SMP) share: per-vCPU state, frame-number helpers, the check
 * and event-mask primitives.
 */
#ifndef PVDEMO_H
#define PVDEMO_H

#include <stdint.h>

#include "xen.h"

#define barrier()       asm volatile ("" ::: "memory")
#define cpu_relax()     asm volatile ("rep; nop" ::: "memory")     /* PAUSE */
#define ARRAY_SIZE(a)   (sizeof(a) / sizeof((a)[0]))
#define PAGE_ALIGNED    __attribute__((aligned(PAGE_SIZE)))
#define NORETURN        __attribute__((noreturn))

/* ------------------------------------------------------------------------
 * Per-vCPU state.  vCPU 0 runs on boot_stack (head.S); vCPU n >= 1 on
 * ap_stacks[n] (smp.c), so the stack pointer tells which vCPU is running.
 * ------------------------------------------------------------------------ */
struct vcpu_state {
    unsigned int id;
    volatile struct vcpu_info *vi;          /* shared_info slot, then the registered copy */
    volatile unsigned int upcalls;          /* event callbacks taken */
    volatile unsigned int failsafes;        /* failsafe callbacks taken */
    /* event channels (smp.c) */
    volatile unsigned int online;           /* secondary vCPU reached C code */
    evtchn_port_t timer_port, ipi_port;     /* VIRQ_TIMER and IPI ports bound to this vCPU */
    uint32_t port_mask[NR_EVENT_CHANNELS / 32];   /* ports this vCPU handles (Linux: cpu_evtchn_mask) */
    volatile unsigned int ticks;            /* VIRQ_TIMER events handled */
    volatile unsigned int ipis;             /* IPI events handled */
    volatile unsigned int other_events;     /* loopback / backend ports handled */
    volatile unsigned int spurious;         /* upcalls that found no port of ours */
    volatile uint64_t last_tick_ns;         /* system time seen by the last timer event */
    volatile uint32_t ipi_cmd, ipi_arg, ipi_result;  /* what the next IPI asks for */
    volatile unsigned int stop;             /* asked to go offline */
    /* results of the checks a secondary vCPU runs on itself (vCPU 0 reports them) */
    int rc_vcpu_info, rc_timer, rc_ipi, rc_runstate;
    int crit_ok;                            /* tick while masked delivered after unmask */
    unsigned int crit_during, crit_after;
};
extern struct vcpu_state vcpus[NR_VCPUS];
extern uint8_t ap_stacks[NR_VCPUS][AP_STACK_SIZE];

static inline unsigned int smp_processor_id(void)
{
    uint32_t esp, off;

    asm volatile ("movl %%esp, %0" : "=r" (esp));
    off = esp - (uint32_t)ap_stacks;
    return off < sizeof(ap_stacks) ? off / AP_STACK_SIZE : 0;
}

static inline struct vcpu_state *this_vcpu(void)
{
    return &vcpus[smp_processor_id()];
}

/* ------------------------------------------------------------------------
 * Globals of kernel.c and symbols of head.S
 * ------------------------------------------------------------------------ */
extern start_info_t *xen_start_info;
extern struct shared_info *HYPERVISOR_shared_info;
extern char hypervisor_callback[], failsafe_callback[], secondary_startup[];
extern const struct trap_info trap_table[];
extern uint64_t gdt[PAGE_SIZE / 8];
#define GDT_ENTRIES         15
extern long xen_ver;
uint32_t probe_read_cr3(void);

/* ------------------------------------------------------------------------
 * Frame numbers: the P2M (start_info.mfn_list) maps our pseudo-physical
 * frames to machine frames.  PFN n is mapped at VIRT_BASE + n * 4 KiB.
 * ------------------------------------------------------------------------ */
static inline uint32_t virt_to_pfn(const volatile void *va)
{
    return ((uint32_t)va - VIRT_BASE) >> PAGE_SHIFT;
}

static inline uint32_t pfn_to_mfn(uint32_t pfn)
{
    return ((const uint32_t *)xen_start_info->mfn_list)[pfn];
}

static inline uint32_t virt_to_mfn(const volatile void *va)
{
    return pfn_to_mfn(virt_to_pfn(va));
}

static inline maddr_t virt_to_maddr(const volatile void *va)
{
    return ((maddr_t)virt_to_mfn(va) << PAGE_SHIFT) | ((uint32_t)va & (PAGE_SIZE - 1));
}

/* ------------------------------------------------------------------------
 * kernel.c
 * ------------------------------------------------------------------------ */
int check(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fatal(const char *why) NORETURN;
void events_enable(void);           /* clear the vCPU's upcall mask; deliver what is pending */
void events_disable(void);
void force_evtchn_callback(void);

/* ------------------------------------------------------------------------
 * smp.c
 * ------------------------------------------------------------------------ */
void evtchn_do_upcall(void);        /* the 2-level scan, from do_hypervisor_callback */
void step_events(void);
void step_time(void);
void step_smp(void);
void secondary_start(unsigned int id) NORETURN;

#endif /* PVDEMO_H */
