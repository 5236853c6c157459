/*
 * mc_iret.S - an iret entry in a multicall ends the batch there (xen/common/multicall.c:
 * arch_do_multicall_call gives mc_exit for __HYPERVISOR_iret, xen/arch/x86/pv/hypercall.c; the
 * entries after it never run, post XSA-213), and the multicall returns the entry's result,
 * the EAX/RAX the iret restored (pv/iret.c compat_iret / do_iret), also stored in the entry.
 * The guest pushes an iret frame, issues multicall(iret, console_io, console_io) and lands
 * at `after`; the console entries would print "BAD". Both widths (-DGUEST64).
 */
#include "common.S"

#define __HYPERVISOR_multicall 13
#define RESTORED 0x1234abcd

        .text
        .globl _start
_start:
#ifdef GUEST64
        leaq    stack_top(%rip), %rsp
        movq    %rsp, %rbx
        pushq   $0xe02b                         /* ss */
        pushq   %rbx                            /* rsp */
        pushq   $0x202                          /* rflags */
        pushq   $0xe030                         /* cs: kernel mode (RPL 0 in the frame) */
        pushq   $after                          /* rip */
        pushq   $0                              /* flags */
        pushq   $0                              /* rcx */
        pushq   $0                              /* r11 */
        pushq   $RESTORED                       /* rax */
        HYPERCALL __HYPERVISOR_multicall, $calls, $3
#else
        movl    $stack_top, %esp
        pushl   $0x202                          /* EFLAGS */
        pushl   $FLAT_KERNEL_CS                 /* CS */
        pushl   $after                          /* EIP */
        pushl   $RESTORED                       /* EAX, as hypercall-page entry 23 pushes it */
        HYPERCALL __HYPERVISOR_multicall, $calls, $3
#endif

        HYPERCALL __HYPERVISOR_console_io, $0, $3, $fell_msg
        jmp     done

        .globl after
after:
        RESULT  0
#ifdef GUEST64
        movq    %rsp, %rax
#else
        movl    %esp, %eax
#endif
        RESULT  1
done:
        HYPERCALL __HYPERVISOR_sched_op, $2, $shutdown_poweroff
1:      jmp     1b

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
        .balign 8
#ifdef GUEST64
#define ENTRY(op, a0, a1, a2) .quad op, 0x5555, a0, a1, a2, 0, 0, 0
#else
#define ENTRY(op, a0, a1, a2) .long op, 0x5555, a0, a1, a2, 0, 0, 0
#endif
        .globl calls
calls:
        ENTRY(__HYPERVISOR_iret, 0, 0, 0)
        ENTRY(__HYPERVISOR_console_io, 0, 3, bad_msg)
        ENTRY(__HYPERVISOR_console_io, 0, 3, bad_msg)
bad_msg:  .ascii "BAD"
fell_msg: .ascii "FEL"
        .globl results
        .balign 8
results:  .fill 4, 8, 0

        .bss
        .balign 16
        .space  8192
        .globl stack_top
stack_top:
