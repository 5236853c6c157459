/*
 * privileged.S - a domU probing the control-domain interfaces gets what Xen 4.17's dummy XSM
 * policy gives it (xen/include/xsm/dummy.h, XSM_PRIV: -EPERM), after each handler's own
 * earlier checks: common/sysctl.c do_sysctl and arch/x86/platform_hypercall.c do_platform_op
 * (-EFAULT, -EACCES for another interface version, then XSM), common/domctl.c do_domctl (the
 * domain lookup: -ESRCH), common/kexec.c, common/hypfs.c, arch/x86/cpu/mcheck/mce.c do_mca
 * (XSM first), common/dm.c do_dm_op (-ENODATA, -E2BIG; itself: -EPERM). xsm_op is -ENOSYS with
 * the dummy module, and tmem_op (gone from 4.17) -ENOSYS (xen/include/hypercall-defs.c).
 * Both widths: built with -DGUEST64 it is a 64-bit PV kernel.
 */
#include "common.S"

#define __HYPERVISOR_platform_op  7
#define __HYPERVISOR_xsm_op      27
#define __HYPERVISOR_sysctl      35
#define __HYPERVISOR_domctl      36
#define __HYPERVISOR_kexec_op    37
#define __HYPERVISOR_tmem_op     38
#define __HYPERVISOR_dm_op       41
#define __HYPERVISOR_hypfs_op    42
#define __HYPERVISOR_mca         48
#define XEN_SYSCTL_physinfo       3
#define XEN_DOMCTL_getdomaininfo  5
#define XEN_DOMCTL_pausedomain    3
#define XENPF_settime64          62

        .text
        .globl _start
_start:
#ifdef GUEST64
        leaq    stack_top(%rip), %rsp
#else
        movl    $stack_top, %esp
#endif
        HYPERCALL __HYPERVISOR_sysctl, $sysctl_op
        RESULT  0
        HYPERCALL __HYPERVISOR_sysctl, $sysctl_oldver
        RESULT  1
        HYPERCALL __HYPERVISOR_sysctl, $0x1000
        RESULT  2
        HYPERCALL __HYPERVISOR_domctl, $domctl_self
        RESULT  3
        HYPERCALL __HYPERVISOR_domctl, $domctl_other
        RESULT  4
        HYPERCALL __HYPERVISOR_domctl, $domctl_info
        RESULT  5
        HYPERCALL __HYPERVISOR_platform_op, $platform_op
        RESULT  6
        HYPERCALL __HYPERVISOR_kexec_op, $0, $0
        RESULT  7
        HYPERCALL __HYPERVISOR_hypfs_op, $0, $0
        RESULT  8
        HYPERCALL __HYPERVISOR_mca, $0
        RESULT  9
        HYPERCALL __HYPERVISOR_dm_op, $1, $1, $dm_bufs
        RESULT  10
        HYPERCALL __HYPERVISOR_dm_op, $1, $0, $dm_bufs
        RESULT  11
        HYPERCALL __HYPERVISOR_xsm_op, $0
        RESULT  12
        HYPERCALL __HYPERVISOR_tmem_op, $0
        RESULT  13
        HYPERCALL __HYPERVISOR_sched_op, $2, $shutdown_poweroff
1:      jmp     1b

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
        .balign 8
sysctl_op:      .long XEN_SYSCTL_physinfo, 0x15
                .fill 128, 1, 0
sysctl_oldver:  .long XEN_SYSCTL_physinfo, 0x14
                .fill 128, 1, 0
domctl_self:    .long XEN_DOMCTL_pausedomain, 0x15
                .short 1, 0, 0, 0
                .fill 128, 1, 0
domctl_other:   .long XEN_DOMCTL_pausedomain, 0x15
                .short 7, 0, 0, 0
                .fill 128, 1, 0
domctl_info:    .long XEN_DOMCTL_getdomaininfo, 0x15
                .short 0, 0, 0, 0
                .fill 128, 1, 0
platform_op:    .long XENPF_settime64, 0x03000001
                .fill 128, 1, 0
dm_bufs:        .fill 32, 1, 0
        .globl results
results:        .fill 16, 8, 0x55

        .bss
        .balign 16
        .space  8192
stack_top:
