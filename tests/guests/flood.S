/*
 * flood.S - prints a 4 KiB line block LOOPS times (default 1024: 4 MiB) through console_io,
 * then powers off: console output far beyond what the workbench keeps of it.
 */
#include "common.S"
#ifndef LOOPS
#define LOOPS 1024
#endif

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        movl    $LOOPS, %edi
1:      PRINT   block, 4096
        decl    %edi
        jnz     1b
        POWEROFF

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
        .balign 64
block:
        .rept   64
        .ascii  "flood flood flood flood flood flood flood flood flood flood flo\n"
        .endr

        .bss
        .balign 16
        .space  4096
stack_top:
