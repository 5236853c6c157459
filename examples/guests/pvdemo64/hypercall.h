/*
 * hypercall.h - 64-bit PV hypercall wrappers for pvdemo64.
 *
 * Calling convention (x86_64 PV, xen/arch/x86/x86_64/entry.S lstar_enter ->
 * pv_hypercall): a "syscall" executed in guest-kernel mode is a hypercall.
 * RAX = hypercall number, arguments in RDI, RSI, RDX, R10, R8, result in
 * RAX: 0, a positive value, or -errno (xen/include/public/errno.h).  Xen
 * returns with sysretq, so RCX = the return RIP and R11 = RFLAGS afterwards.
 * Xen may clobber the argument registers (a debug build writes
 * 0xDEADBEEFDEADF00D into each one the hypercall uses), and it reads and
 * writes guest memory through the pointers it gets, so every argument
 * register is an in/out operand and every call clobbers "memory".
 *
 * Two ways to issue one, chosen by CONFIG_HYPERCALL_PAGE (variants.json):
 *
 *  1  "call hypercall_page + nr * 32" (Mini-OS).  Xen fills the page because
 *     of XEN_ELFNOTE_HYPERCALL_PAGE; stub nr is
 *        51 41 53 b8 <nr:u32> 0f 05 41 5b 59 c3
 *        push %rcx; push %r11; mov $nr,%eax; syscall; pop %r11; pop %rcx; ret
 *     (pv_ring3_init_hypercall_page, xen/arch/x86/pv/hypercall.c), so the
 *     stub itself keeps RCX and R11 and only RAX is clobbered.
 *
 *  0  an inline "mov $nr,%eax; syscall" (Linux 6.1, whose xen_hypercall_pv
 *     in arch/x86/xen/xen-asm.S is "push %rcx; push %r11; syscall; pop %r11;
 *     pop %rcx").  Here RCX and R11 are declared clobbered, so the compiler
 *     saves whatever it keeps in them around the syscall.
 *
 * The iret hypercall (23) is never called from C: the asm stubs in head.S
 * end with HYPERVISOR_IRET (pvdemo64.h).
 */
#ifndef PVDEMO64_HYPERCALL_H
#define PVDEMO64_HYPERCALL_H

#include <stdint.h>
#include "xen.h"

#if CONFIG_HYPERCALL_PAGE
extern uint8_t hypercall_page[PAGE_SIZE];
#define HYPERCALL_INSN      "call hypercall_page + %c[hc_nr] * 32"
#define HYPERCALL_CLOBBERS  "memory"
#else
#define HYPERCALL_INSN      "mov %[hc_nr], %%eax\n\tsyscall"
#define HYPERCALL_CLOBBERS  "rcx", "r11", "memory"
#endif
#define HYPERCALL_NR(name)  [hc_nr] "i" (__HYPERVISOR_##name)

#define _hypercall1(type, name, a1)                                         \
({                                                                          \
    long __res, __ign1;                                                     \
    asm volatile (HYPERCALL_INSN                                            \
                  : "=a" (__res), "=D" (__ign1)                             \
                  : "1" ((long)(a1)), HYPERCALL_NR(name)                    \
                  : HYPERCALL_CLOBBERS);                                    \
    (type)__res;                                                            \
})

#define _hypercall2(type, name, a1, a2)                                     \
({                                                                          \
    long __res, __ign1, __ign2;                                             \
    asm volatile (HYPERCALL_INSN                                            \
                  : "=a" (__res), "=D" (__ign1), "=S" (__ign2)              \
                  : "1" ((long)(a1)), "2" ((long)(a2)), HYPERCALL_NR(name)  \
                  : HYPERCALL_CLOBBERS);                                    \
    (type)__res;                                                            \
})

#define _hypercall3(type, name, a1, a2, a3)                                 \
({                                                                          \
    long __res, __ign1, __ign2, __ign3;                                     \
    asm volatile (HYPERCALL_INSN                                            \
                  : "=a" (__res), "=D" (__ign1), "=S" (__ign2),             \
                    "=d" (__ign3)                                           \
                  : "1" ((long)(a1)), "2" ((long)(a2)), "3" ((long)(a3)),   \
                    HYPERCALL_NR(name)                                      \
                  : HYPERCALL_CLOBBERS);                                    \
    (type)__res;                                                            \
})

/* The 4th and 5th arguments go in R10 and R8 (not RCX: syscall overwrites it). */
#define _hypercall4(type, name, a1, a2, a3, a4)                             \
({                                                                          \
    long __res, __ign1, __ign2, __ign3;                                     \
    register long __arg4 asm("r10") = (long)(a4);                           \
    asm volatile (HYPERCALL_INSN                                            \
                  : "=a" (__res), "=D" (__ign1), "=S" (__ign2),             \
                    "=d" (__ign3), "+r" (__arg4)                            \
                  : "1" ((long)(a1)), "2" ((long)(a2)), "3" ((long)(a3)),   \
                    HYPERCALL_NR(name)                                      \
                  : HYPERCALL_CLOBBERS);                                    \
    (type)__res;                                                            \
})

#define _hypercall5(type, name, a1, a2, a3, a4, a5)                         \
({                                                                          \
    long __res, __ign1, __ign2, __ign3;                                     \
    register long __arg4 asm("r10") = (long)(a4);                           \
    register long __arg5 asm("r8") = (long)(a5);                            \
    asm volatile (HYPERCALL_INSN                                            \
                  : "=a" (__res), "=D" (__ign1), "=S" (__ign2),             \
                    "=d" (__ign3), "+r" (__arg4), "+r" (__arg5)             \
                  : "1" ((long)(a1)), "2" ((long)(a2)), "3" ((long)(a3)),   \
                    HYPERCALL_NR(name)                                      \
                  : HYPERCALL_CLOBBERS);                                    \
    (type)__res;                                                            \
})

static inline int HYPERVISOR_set_trap_table(const struct trap_info *table)
{
    return _hypercall1(int, set_trap_table, table);
}

static inline int HYPERVISOR_mmu_update(struct mmu_update *req, unsigned int count,
                                        unsigned int *done, domid_t foreigndom)
{
    return _hypercall4(int, mmu_update, req, count, done, foreigndom);
}

static inline int HYPERVISOR_mmuext_op(struct mmuext_op *op, unsigned int count,
                                       unsigned int *done, domid_t foreigndom)
{
    return _hypercall4(int, mmuext_op, op, count, done, foreigndom);
}

/* frames[]: MFNs of the GDT pages (unsigned long) */
static inline int HYPERVISOR_set_gdt(unsigned long *frames, unsigned int entries)
{
    return _hypercall2(int, set_gdt, frames, entries);
}

static inline int HYPERVISOR_stack_switch(unsigned long ss, unsigned long rsp)
{
    return _hypercall2(int, stack_switch, ss, rsp);
}

/* x86_64: three addresses, no code selectors (do_set_callbacks, pv/callback.c) */
static inline int HYPERVISOR_set_callbacks(unsigned long event, unsigned long failsafe,
                                           unsigned long syscall)
{
    return _hypercall3(int, set_callbacks, event, failsafe, syscall);
}

/* x86_64: (u64 machine address, u64 descriptor) in two registers */
static inline int HYPERVISOR_update_descriptor(maddr_t ma, uint64_t desc)
{
    return _hypercall2(int, update_descriptor, ma, desc);
}

static inline long HYPERVISOR_memory_op(unsigned int cmd, void *arg)
{
    return _hypercall2(long, memory_op, cmd, arg);
}

static inline int HYPERVISOR_multicall(struct multicall_entry *calls, unsigned int nr)
{
    return _hypercall2(int, multicall, calls, nr);
}

/* x86_64: (va, u64 pte, flags): three registers, no lo/hi split */
static inline int HYPERVISOR_update_va_mapping(unsigned long va, uint64_t pte,
                                               unsigned long flags)
{
    return _hypercall3(int, update_va_mapping, va, pte, flags);
}

static inline int HYPERVISOR_set_timer_op(uint64_t timeout)
{
    return _hypercall1(int, set_timer_op, timeout);
}

static inline long HYPERVISOR_xen_version(int cmd, void *arg)
{
    return _hypercall2(long, xen_version, cmd, arg);
}

static inline int HYPERVISOR_console_io(int cmd, unsigned int count, const char *buf)
{
    return _hypercall3(int, console_io, cmd, count, buf);
}

static inline int HYPERVISOR_vm_assist(unsigned int cmd, unsigned int type)
{
    return _hypercall2(int, vm_assist, cmd, type);
}

static inline int HYPERVISOR_vcpu_op(int cmd, unsigned int vcpuid, void *extra_args)
{
    return _hypercall3(int, vcpu_op, cmd, vcpuid, extra_args);
}

static inline int HYPERVISOR_set_segment_base(int which, unsigned long base)
{
    return _hypercall2(int, set_segment_base, which, base);
}

static inline int HYPERVISOR_sched_op(int cmd, void *arg)
{
    return _hypercall2(int, sched_op, cmd, arg);
}

static inline int HYPERVISOR_callback_op(int cmd, const void *arg)
{
    return _hypercall2(int, callback_op, cmd, arg);
}

static inline int HYPERVISOR_event_channel_op(int cmd, void *arg)
{
    return _hypercall2(int, event_channel_op, cmd, arg);
}

#endif /* PVDEMO64_HYPERCALL_H */
