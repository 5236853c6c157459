/*
 * user82.S - `int $0x82` from ring 3 is no hypercall: Xen's gate for vector 0x82 has DPL 1, so
 * user mode gets #GP(0x82 << 3 | 2 = 0x412) with EIP on the int (ABI sheet 1.8 and 4.4;
 * xen/arch/x86/traps.c do_general_protection).  The guest maps one page user-accessible,
 * irets into ring 3 there, and its #GP handler records the 6-word frame from the kernel stack.
 */
#include "common.S"

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        movl    %esi, %ebp
        movl    $trap_table, %ebx
        HCALL   __HYPERVISOR_set_trap_table
        movl    $FLAT_KERNEL_DS, %ebx
        movl    $kstack_top, %ecx
        HCALL   __HYPERVISOR_stack_switch
        /* user_page: P|RW|US|A|D */
        movl    $user_page, %eax
        subl    $VIRT_BASE, %eax
        shrl    $12, %eax
        movl    SI_MFN_LIST(%ebp), %edx
        movl    (%edx,%eax,4), %eax
        shll    $12, %eax
        orl     $0x67, %eax
        movl    $user_page, %ebx
        movl    %eax, %ecx
        xorl    %edx, %edx
        movl    $2, %esi
        HCALL   __HYPERVISOR_update_va_mapping
        movl    %eax, uvm_rc
        pushl   $FLAT_USER_DS                   /* SS */
        pushl   $user_page + 4096               /* ESP */
        pushl   $0x202                          /* EFLAGS */
        pushl   $FLAT_USER_CS                   /* CS */
        pushl   $user_code                      /* EIP */
        IRET_HCALL

        .globl gp_handler
gp_handler:
        movl    %esp, %esi
        movl    $frame, %edi
        movl    $6, %ecx
        cld
        rep movsl
        movl    %esp, frame_esp
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
        .globl frame, frame_esp, uvm_rc
frame:      .long 0, 0, 0, 0, 0, 0
frame_esp:  .long 0
uvm_rc:     .long 0xffffffff
gp_msg: .ascii  "#GP from user mode\n"
gp_end:

        .balign 4096
        .globl user_page, user_code
user_page:
user_code:
        int     $0x82
        jmp     user_code
        .balign 4096

        .bss
        .balign 16
        .space  4096
        .globl kstack_top
kstack_top:
        .space  4096
stack_top:
