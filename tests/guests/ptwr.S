/*
 * ptwr.S - a kernel write into a read-only mapped L1 page (xen/arch/x86/pv/ro-page-fault.c).
 * The test patches `params` before boot: the VA of a PTE inside a boot L1 table (mapped
 * read-only by the builder), the 32-bit value to store there, and whether to enable
 * VMASST_TYPE_writable_pagetables first.  With the assist the store is emulated and validated;
 * without it the guest's #PF handler gets the fault and records its frame.
 */
#include "common.S"

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        movl    $trap_table, %ebx
        HCALL   __HYPERVISOR_set_trap_table
        cmpl    $0, assist
        je      1f
        movl    $0, %ebx                        /* VMASST_CMD_enable */
        movl    $2, %ecx                        /* VMASST_TYPE_writable_pagetables */
        HCALL   __HYPERVISOR_vm_assist
        movl    %eax, assist_rc
1:      movl    pte_value, %eax
        movl    pte_va, %edi
        .globl ptwr_insn
ptwr_insn:
        movl    %eax, (%edi)
        PRINT   done_msg, done_end-done_msg
        POWEROFF

        .globl pf_handler
pf_handler:
        movl    0(%esp), %eax
        movl    %eax, frame
        movl    4(%esp), %eax
        movl    %eax, frame+4
        movl    8(%esp), %eax
        movl    %eax, frame+8
        PRINT   pf_msg, pf_end-pf_msg
        POWEROFF

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
trap_table:
        .byte   14, 0
        .word   FLAT_KERNEL_CS
        .long   pf_handler
        .long   0, 0
        .globl params, pte_va, pte_value, assist, assist_rc, frame
params:
pte_va:     .long 0
pte_value:  .long 0
assist:     .long 0
assist_rc:  .long 0xffffffff
frame:      .long 0, 0, 0
done_msg: .ascii "store done\n"
done_end:
pf_msg: .ascii  "#PF handler\n"
pf_end:

        .bss
        .balign 16
        .space  4096
stack_top:
