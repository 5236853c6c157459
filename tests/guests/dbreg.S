/*
 * dbreg.S - debug registers and #DB as Xen 4.17 gives them to a PV guest:
 * xen/arch/x86/pv/misc-hypercalls.c set_debugreg/do_get_debugreg (start values DR6 0xffff0ff0,
 * DR7 0x400: x86-defns.h; DR7.GD -EPERM; I/O breakpoints without CR4.DE -EPERM; DR7 reserved
 * bits 11, 12, 14, 15 read as 0; DR0-3 must pass __addr_ok, which every 32-bit address does
 * for a compat guest), x86_emulate.c x86emul_read_dr (the kernel's `mov %drN`), and
 * xen/arch/x86/traps.c do_debug (#DB reflected through trap_ctxt[1], the cause merged into the
 * vcpu's DR6: B0-B3 for a breakpoint, BS for single-step; icebp and int3 as on hardware).
 * results[]: see the test. Both widths (-DGUEST64).
 */
#include "common.S"

#define __HYPERVISOR_set_debugreg 8
#define __HYPERVISOR_get_debugreg 9

#ifdef GUEST64
#define XEN_ADDR 0xffff800000001000
#define AX %rax
#define SP %rsp
#define MOVW movq
#else
#define XEN_ADDR 0xf6000000
#define AX %eax
#define SP %esp
#define MOVW movl
#endif

.macro SETDR reg, value
        HYPERCALL __HYPERVISOR_set_debugreg, $\reg, \value
.endm
.macro GETDR reg
        HYPERCALL __HYPERVISOR_get_debugreg, $\reg
.endm
.macro SAVED slot, var
        MOVW    \var, AX
        RESULT  \slot
.endm

        .text
        .globl _start
_start:
#ifdef GUEST64
        leaq    stack_top(%rip), %rsp
#else
        movl    $stack_top, %esp
#endif
        HYPERCALL __HYPERVISOR_set_trap_table, $trap_table
        GETDR   6
        RESULT  0
        GETDR   7
        RESULT  1
#ifdef GUEST64
        movq    %dr6, %rax
        RESULT  2
        movq    %dr7, %rax
        RESULT  3
#else
        movl    %dr6, %eax
        RESULT  2
        movl    %dr7, %eax
        RESULT  3
#endif
        SETDR   7, $0x2400                      /* GD */
        RESULT  4
        SETDR   7, $0x20001                     /* L0, RW0 = I/O, CR4.DE clear */
        RESULT  5
        MOVW    $XEN_ADDR, AX
        SETDR   0, AX
        RESULT  6
        SETDR   7, $0xd800                      /* reserved bits 11, 12, 14, 15 */
        RESULT  7
        GETDR   7
        RESULT  8

        /* instruction breakpoint on bp_target (DR0, L0, RW 00, LEN 00) */
        SETDR   0, $bp_target
        SETDR   7, $0x401
        movl    $1, phase
        call    bp_target
        SAVED   9, last_ip
        SAVED   10, last_dr6
        SAVED   11, bp_runs

        /* write watchpoint on `watched` (DR1, L1, RW 01, LEN 11) */
        SETDR   6, $0
        SETDR   1, $watched
        SETDR   7, $0xd00404
        movl    $2, phase
        .globl watch_store, watch_next
watch_store:
        movl    $5, watched
watch_next:
        nop
        SAVED   12, last_ip
        SAVED   13, last_dr6
        SETDR   7, $0x400
        SETDR   6, $0

        /* single step: TF set by popf traps after the next instruction */
        movl    $3, phase
#ifdef GUEST64
        pushfq
        orl     $0x100, (%rsp)
        popfq
#else
        pushfl
        orl     $0x100, (%esp)
        popfl
#endif
        nop
        .globl step_next
step_next:
        nop
        SAVED   14, last_ip
        SAVED   15, last_dr6

        /* int3 and icebp */
        SETDR   6, $0
        movl    $4, phase
        int3
        .globl int3_next
int3_next:
        SAVED   16, last_ip
        movl    $5, phase
        .byte   0xf1
        .globl icebp_next
icebp_next:
        SAVED   17, last_ip
        SAVED   18, last_dr6
        HYPERCALL __HYPERVISOR_sched_op, $2, $shutdown_poweroff
1:      jmp     1b

        .globl bp_target
bp_target:
        incl    bp_runs
        ret

/* #DB and #BP handlers: note where, read DR6, set RF (instruction breakpoint) or clear TF, return */
#ifdef GUEST64
        .globl db_handler, bp_handler
db_handler:
        popq    %rcx
        popq    %r11
        movq    %rcx, saved_rcx
        movq    %r11, saved_r11
        movq    (%rsp), %rax
        movq    %rax, last_ip
        GETDR   6
        movq    %rax, last_dr6
        andq    $~0x100, 16(%rsp)
        cmpl    $1, phase
        jne     2f
        orq     $0x10000, 16(%rsp)
2:      movq    saved_rcx, %rcx
        movq    saved_r11, %r11
        pushq   $0
        jmp     hypercall_page + __HYPERVISOR_iret * 32
bp_handler:
        popq    %rcx
        popq    %r11
        movq    (%rsp), %rax
        movq    %rax, last_ip
        pushq   $0
        jmp     hypercall_page + __HYPERVISOR_iret * 32
#else
        .globl db_handler, bp_handler
db_handler:
        movl    (%esp), %eax
        movl    %eax, last_ip
        GETDR   6
        movl    %eax, last_dr6
        andl    $~0x100, 8(%esp)
        cmpl    $1, phase
        jne     2f
        orl     $0x10000, 8(%esp)
2:      IRET_HCALL
bp_handler:
        movl    (%esp), %eax
        movl    %eax, last_ip
        IRET_HCALL
#endif

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
        .balign 8
trap_table:
#ifdef GUEST64
        .byte   1, 0
        .word   0xe033
        .long   0
        .quad   db_handler
        .byte   3, 3
        .word   0xe033
        .long   0
        .quad   bp_handler
        .quad   0, 0
#else
        .byte   1, 0
        .word   FLAT_KERNEL_CS
        .long   db_handler
        .byte   3, 3
        .word   FLAT_KERNEL_CS
        .long   bp_handler
        .long   0, 0
#endif
        .balign 8
last_ip:        .quad 0
last_dr6:       .quad 0
saved_rcx:      .quad 0
saved_r11:      .quad 0
phase:          .long 0
bp_runs:        .long 0
        .balign 8
        .globl watched
watched:        .quad 0
        .globl results
results:        .fill 20, 8, 0

        .bss
        .balign 16
        .space  8192
stack_top:
