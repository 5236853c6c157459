/*
 * hlt.S - `hlt` in ring 1 is not emulated for PV guests: #GP(0) (xen/arch/x86/traps.c
 * do_general_protection, pv/emul-priv-op.c).  With a #GP handler the handler records the bounce
 * frame in `frame` (error code, EIP, CS|mask<<16, EFLAGS, then its ESP) and powers off.
 * Built with -DNO_TRAPS=1 there is no trap table: the domain crashes.
 */
#include "common.S"

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
#ifndef NO_TRAPS
        movl    $trap_table, %ebx
        HCALL   __HYPERVISOR_set_trap_table
#endif
        PRINT   hello, hello_end-hello
        .globl hlt_insn
hlt_insn:
        hlt
        PRINT   nofault, nofault_end-nofault
        POWEROFF

        .globl gp_handler
gp_handler:
        movl    0(%esp), %eax
        movl    %eax, frame
        movl    4(%esp), %eax
        movl    %eax, frame+4
        movl    8(%esp), %eax
        movl    %eax, frame+8
        movl    12(%esp), %eax
        movl    %eax, frame+12
        movl    %esp, frame+16
        PRINT   gp_msg, gp_end-gp_msg
        POWEROFF

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
trap_table:
        .byte   13, 0
        .word   FLAT_KERNEL_CS
        .long   gp_handler
        .long   0, 0
        .globl frame
frame:
        .long   0, 0, 0, 0, 0
hello:  .ascii  "about to hlt\n"
hello_end:
gp_msg: .ascii  "#GP handler\n"
gp_end:
nofault: .ascii "hlt did not fault\n"
nofault_end:

        .bss
        .balign 16
        .space  4096
stack_top:
