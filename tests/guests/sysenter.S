/*
 * sysenter.S - SYSENTER and SYSCALL from 32-bit PV user mode, as a compat guest gets them from
 * Xen 4.17 (xen/arch/x86/x86_64/entry.S sysenter_entry and cstar_enter, x86_64/compat/entry.S
 * compat_sysenter and compat_syscall, xen/arch/x86/pv/callback.c for the callbacks):
 *  0. sysenter, no sysenter callback: #GP(0) from the frame EIP 0, CS 3, ESP 0, SS 0xe033;
 *  1. sysenter with EFLAGS.NT set, callback registered: the callback, same frame, NT kept in
 *     the saved EFLAGS (since 61d4a04349 Xen no longer turns this case into #GP);
 *  2. syscall, no syscall32 callback: #GP(0) with EIP back on the syscall, CS 0xe02b, SS
 *     0xe033, the user ESP; ECX holds the next EIP (the instruction's own doing);
 *  3. syscall with the syscall32 callback (mask_events): the callback, EIP after the syscall.
 * Each handler records (kind, ECX, six words from its stack) in frames[phase], then the next
 * phase starts from the boot stack with an iret to user mode.
 */
#include "common.S"

#define KIND_GP       1
#define KIND_SYSENTER 2
#define KIND_SYSCALL  3
#define CALLBACKOP_register 0

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
        MADDR   $user_page
        orl     $0x67, %eax                     /* P|RW|US|A|D */
        HYPERCALL __HYPERVISOR_update_va_mapping, $user_page, %eax, %edx, $2
        movl    %eax, uvm_rc
to_user:
        movl    $stack_top, %esp
        movl    phase, %eax
        movl    user_entries(,%eax,4), %eax
        pushl   $FLAT_USER_DS                   /* SS */
        pushl   $user_stack_top                 /* ESP */
        pushl   $0x202                          /* EFLAGS */
        pushl   $FLAT_USER_CS                   /* CS */
        pushl   %eax                            /* EIP */
        IRET_HCALL

        .globl gp_handler, sysenter_cb, syscall_cb
gp_handler:
        movl    %ecx, saved_ecx
        movl    $KIND_GP, %ebx
        jmp     record
sysenter_cb:
        movl    %ecx, saved_ecx
        movl    $KIND_SYSENTER, %ebx
        jmp     record
syscall_cb:
        movl    %ecx, saved_ecx
        movl    $KIND_SYSCALL, %ebx
record:
        movl    %esp, %esi
        movl    phase, %edi
        shll    $5, %edi
        addl    $frames, %edi
        movl    %ebx, (%edi)
        movl    saved_ecx, %eax
        movl    %eax, 4(%edi)
        addl    $8, %edi
        movl    $6, %ecx
        cld
        rep movsl
        incl    phase
        cmpl    $1, phase
        jne     1f
        HYPERCALL __HYPERVISOR_callback_op, $CALLBACKOP_register, $sysenter_reg
        movl    %eax, cb_rc
1:      cmpl    $3, phase
        jne     2f
        HYPERCALL __HYPERVISOR_callback_op, $CALLBACKOP_register, $syscall32_reg
        movl    %eax, cb_rc + 4
2:      cmpl    $4, phase
        jne     to_user
        movl    $stack_top, %esp
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
sysenter_reg:   .word 5, 0                      /* CALLBACKTYPE_sysenter */
                .long FLAT_KERNEL_CS, sysenter_cb
syscall32_reg:  .word 7, 1                      /* CALLBACKTYPE_syscall32, CALLBACKF_mask_events */
                .long FLAT_KERNEL_CS, syscall_cb
user_entries:   .long user_sysenter, user_sysenter_nt, user_syscall, user_syscall
phase:          .long 0
saved_ecx:      .long 0
        .globl frames, uvm_rc, cb_rc
uvm_rc:         .long -1
cb_rc:          .long -1, -1
frames:         .fill 4 * 8, 4, 0

        .balign 4096
        .globl user_page, user_sysenter, user_sysenter_nt, user_syscall, user_stack_top
user_page:
user_sysenter:
        sysenter
        jmp     user_sysenter
user_sysenter_nt:
        pushfl
        orl     $0x4000, (%esp)                 /* NT */
        popfl
        sysenter
        jmp     user_sysenter_nt
user_syscall:
        movl    $0x11111111, %ecx
        syscall
        jmp     user_syscall
        .balign 4096
user_stack_top:

        .bss
        .balign 16
        .space  4096
        .globl kstack_top
kstack_top:
        .space  4096
stack_top:
