/*
 * cpuid.S - the forced-emulation prefix (ud2; .ascii "xen"; cpuid) reaches Xen's CPUID policy
 * (xen/arch/x86/pv/emul-inv-op.c, public/arch-x86/cpuid.h): leaf 0x40000000 returns the
 * signature "XenVMMXenVMM" in EBX:ECX:EDX, leaf 0x40000002 the hypercall-page MSR.
 * Prints "cpuid: <signature>" and powers off; the raw registers are kept in `results`.
 */
#include "common.S"

#define FORCED_CPUID .byte 0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        movl    $0x40000000, %eax
        xorl    %ecx, %ecx
        .globl forced_cpuid
forced_cpuid:
        FORCED_CPUID
        movl    %eax, results
        movl    %ebx, signature
        movl    %ecx, signature+4
        movl    %edx, signature+8
        movl    $0x40000002, %eax
        xorl    %ecx, %ecx
        FORCED_CPUID
        movl    %eax, results+4
        movl    %ebx, results+8
        PRINT   msg, msg_end-msg
        POWEROFF

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
        .globl results
results:
        .long   0, 0, 0
msg:    .ascii  "cpuid: "
signature:
        .space  12
        .ascii  "\n"
msg_end:

        .bss
        .balign 16
        .space  4096
stack_top:
