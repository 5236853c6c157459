/*
 * hypercall.h - 32-bit PV hypercall wrappers for pvdemo.
 *
 * Calling convention (PV32): EAX = hypercall number (loaded by the stub),
 * arguments in EBX, ECX, EDX, ESI, EDI, result in EAX: 0, a positive value,
 * or -errno (xen/include/public/errno.h).  Hypercall numbers are in
 * xen/include/public/xen.h.  Every call goes through the hypercall page,
 * "call hypercall_page + nr * 32"; stub n is "mov $n,%eax; int $0x82; ret".
 * The stubs are written by Xen: pv_ring1_init_hypercall_page() in
 * xen/arch/x86/pv/hypercall.c (64-bit Xen) or
 * hypercall_page_initialise_ring1_kernel() in xen/arch/x86/x86_32/traps.c
 * (the 32-bit Xen of <= 4.2); both write the same bytes.
 *
 * Xen may clobber the argument registers (a debug build writes 0xDEADF00D
 * into each one the hypercall uses: clobber_regs32() in
 * xen/arch/x86/include/asm/hypercall.h), and it reads and writes guest memory
 * through the pointers it is given, so every argument register is an in/out
 * operand and every call clobbers "memory".
 *
 * The iret hypercall (23) is never called from C: the asm stubs in head.S
 * jump to hypercall_page + 23 * 32 with EIP, CS, EFLAGS on the stack.
 */
#ifndef PVDEMO_HYPERCALL_H
#define PVDEMO_HYPERCALL_H

#include <stdint.h>
#include "xen.h"

extern uint8_t hypercall_page[PAGE_SIZE];

#define HYPERCALL_CALL "call hypercall_page + %c[hc_off]"
#define HYPERCALL_OFF(name) [hc_off] "i" (__HYPERVISOR_##name * 32)

#define _hypercall1(type, name, a1)                                         \
({                                                                          \
    long __res, __ign1;                                                     \
    asm volatile (HYPERCALL_CALL                                            \
                  : "=a" (__res), "=b" (__ign1)                             \
                  : "1" ((long)(a1)), HYPERCALL_OFF(name)                   \
                  : "memory");                                              \
    (type)__res;                                                            \
})

#define _hypercall2(type, name, a1, a2)                                     \
({                                                                          \
    long __res, __ign1, __ign2;                                             \
    asm volatile (HYPERCALL_CALL                                            \
                  : "=a" (__res), "=b" (__ign1), "=c" (__ign2)              \
                  : "1" ((long)(a1)), "2" ((long)(a2)), HYPERCALL_OFF(name) \
                  : "memory");                                              \
    (type)__res;                                                            \
})

#define _hypercall3(type, name, a1, a2, a3)                                 \
({                                                                          \
    long __res, __ign1, __ign2, __ign3;                                     \
    asm volatile (HYPERCALL_CALL                                            \
                  : "=a" (__res), "=b" (__ign1), "=c" (__ign2),             \
                    "=d" (__ign3)                                           \
                  : "1" ((long)(a1)), "2" ((long)(a2)), "3" ((long)(a3)),   \
                    HYPERCALL_OFF(name)                                     \
                  : "memory");                                              \
    (type)__res;                                                            \
})

#define _hypercall4(type, name, a1, a2, a3, a4)                             \
({                                                                          \
    long __res, __ign1, __ign2, __ign3, __ign4;                             \
    asm volatile (HYPERCALL_CALL                                            \
                  : "=a" (__res), "=b" (__ign1), "=c" (__ign2),             \
                    "=d" (__ign3), "=S" (__ign4)                            \
                  : "1" ((long)(a1)), "2" ((long)(a2)), "3" ((long)(a3)),   \
                    "4" ((long)(a4)), HYPERCALL_OFF(name)                   \
                  : "memory");                                              \
    (type)__res;                                                            \
})

#define _hypercall5(type, name, a1, a2, a3, a4, a5)                         \
({                                                                          \
    long __res, __ign1, __ign2, __ign3, __ign4, __ign5;                     \
    asm volatile (HYPERCALL_CALL                                            \
                  : "=a" (__res), "=b" (__ign1), "=c" (__ign2),             \
                    "=d" (__ign3), "=S" (__ign4), "=D" (__ign5)             \
                  : "1" ((long)(a1)), "2" ((long)(a2)), "3" ((long)(a3)),   \
                    "4" ((long)(a4)), "5" ((long)(a5)), HYPERCALL_OFF(name) \
                  : "memory");                                              \
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

/* frames[]: MFNs of the GDT pages (unsigned long = 32 bits on PV32) */
static inline int HYPERVISOR_set_gdt(unsigned long *frames, unsigned int entries)
{
    return _hypercall2(int, set_gdt, frames, entries);
}

static inline int HYPERVISOR_stack_switch(unsigned long ss, unsigned long esp)
{
    return _hypercall2(int, stack_switch, ss, esp);
}

static inline int HYPERVISOR_set_callbacks(unsigned long event_cs, unsigned long event_eip,
                                           unsigned long failsafe_cs, unsigned long failsafe_eip)
{
    return _hypercall4(int, set_callbacks, event_cs, event_eip, failsafe_cs, failsafe_eip);
}

/* 64-bit arguments are passed as two 32-bit halves, low half first. */
static inline int HYPERVISOR_update_descriptor(maddr_t ma, uint64_t desc)
{
    return _hypercall4(int, update_descriptor, (uint32_t)ma, (uint32_t)(ma >> 32),
                       (uint32_t)desc, (uint32_t)(desc >> 32));
}

static inline int HYPERVISOR_multicall(struct multicall_entry *calls, unsigned int nr)
{
    return _hypercall2(int, multicall, calls, nr);
}

/* va, PTE low, PTE high, flags: four registers on PAE and non-PAE alike
 * (x86_32 Xen's do_update_va_mapping takes a u64 PTE; non-PAE passes 0 high). */
static inline int HYPERVISOR_update_va_mapping(unsigned long va, uint64_t pte,
                                               unsigned long flags)
{
    return _hypercall4(int, update_va_mapping, va, (uint32_t)pte,
                       (uint32_t)(pte >> 32), flags);
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

static inline int HYPERVISOR_sched_op(int cmd, void *arg)
{
    return _hypercall2(int, sched_op, cmd, arg);
}

static inline int HYPERVISOR_callback_op(int cmd, void *arg)
{
    return _hypercall2(int, callback_op, cmd, arg);
}

static inline int HYPERVISOR_event_channel_op(int cmd, void *arg)
{
    return _hypercall2(int, event_channel_op, cmd, arg);
}

static inline int HYPERVISOR_vcpu_op(int cmd, unsigned int vcpuid, void *extra_args)
{
    return _hypercall3(int, vcpu_op, cmd, vcpuid, extra_args);
}

/* set_timer_op(u64 absolute deadline in ns): low half in EBX, high half in ECX */
static inline int HYPERVISOR_set_timer_op(uint64_t timeout)
{
    return _hypercall2(int, set_timer_op, (uint32_t)timeout, (uint32_t)(timeout >> 32));
}

#endif /* PVDEMO_HYPERCALL_H */
