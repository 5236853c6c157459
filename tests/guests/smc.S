/*
 * smc.S - Xen writing into a page of guest code: the next execution runs the new bytes. On
 * Xen the guest's code is plain memory: do_update_descriptor (xen/arch/x86/pv/descriptor-
 * tables.c) stores any not-present "descriptor" into an ordinary writable page by machine
 * address, and CONSOLEIO_read (xen/drivers/char/console.c do_console_io) copies input with
 * copy_to_guest; the CPU then fetches what is in memory. The guest calls `patched` (returns 1),
 * has update_descriptor rewrite it (returns 2), calls it, has console_io read 8 input bytes over
 * it (the test types code returning 3), calls it again. Both widths (-DGUEST64).
 */
#include "common.S"

#define CONSOLEIO_read 1

        .text
        .globl _start
_start:
#ifdef GUEST64
        leaq    stack_top(%rip), %rsp
        movq    %rsi, %rbp
#else
        movl    $stack_top, %esp
        movl    %esi, %ebp
#endif
        call    patched
        RESULT  0
        MADDR   $patched
#ifdef GUEST64
        movq    returns_2(%rip), %rbx
        HYPERCALL __HYPERVISOR_update_descriptor, %rax, %rbx
#else
        HYPERCALL __HYPERVISOR_update_descriptor, %eax, %edx, returns_2, returns_2 + 4
#endif
        RESULT  1
        call    patched
        RESULT  2
        HYPERCALL __HYPERVISOR_console_io, $CONSOLEIO_read, $8, $patched
        RESULT  3
        call    patched
        RESULT  4
        HYPERCALL __HYPERVISOR_sched_op, $2, $shutdown_poweroff
1:      jmp     1b

        .balign 8
        .globl patched
patched:                                        /* xor %eax,%eax; mov $1,%al; ret */
        .byte   0x31, 0xc0, 0xb0, 0x01, 0xc3, 0, 0, 0

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
        .balign 8
returns_2:                                      /* the same returning 2; byte 5 clear: not present */
        .byte   0x31, 0xc0, 0xb0, 0x02, 0xc3, 0, 0, 0
        .globl results
results:  .fill 5, 8, 0

        .bss
        .balign 16
        .space  8192
stack_top:
