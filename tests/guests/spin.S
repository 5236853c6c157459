/*
 * spin.S - material for the debugger's exactness tests (tests/test_control.py).
 *
 * The guest first runs `work` 200 times at full speed (so its code is in unicorn's
 * translation cache), then falls into `spin: jmp spin`, a one-instruction loop that only a
 * debugger can leave: the test moves EIP past it (to `after_spin`), and the guest runs
 * `work` once more and powers off.
 *
 * `work` holds the accesses the watchpoint tests look at: two back-to-back reads of
 * `value` (read_1, read_2), then a read-modify-write `incl value` (write_1) and a plain
 * store `movl %eax, other` (write_2). With -DCRASH=1 the guest writes to an unmapped address
 * with no trap table instead of spinning: the domain crashes there (crash_insn).
 */
#include "common.S"

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        movl    $200, %ecx
1:      call    work
        loop    1b
        PRINT   hello, hello_end-hello
#ifdef CRASH
        .globl crash_insn
crash_insn:
        movl    %eax, 0x1000            /* nothing maps VA 0x1000: #PF, no handler */
#endif
        .globl spin
spin:
        jmp     spin
        .globl after_spin
after_spin:
        call    work
        PRINT   bye, bye_end-bye
        POWEROFF

        .globl work
work:
        .globl read_1
read_1:
        movl    value, %eax
        .globl read_2
read_2:
        movl    value, %edx
        .globl compare
compare:
        cmpl    %eax, %edx
        jne     1f
        .globl write_1
write_1:
        incl    value
        .globl write_2
write_2:
        movl    %eax, other
        .globl work_ret
work_ret:
1:      ret

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
        .balign 64
        .globl value
value:  .long   0
        .balign 64
        .globl other
other:  .long   0
hello:  .ascii  "spinning\n"
hello_end:
bye:    .ascii  "left the spin loop\n"
bye_end:

        .bss
        .balign 16
        .space  4096
stack_top:
