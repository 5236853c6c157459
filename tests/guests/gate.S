/*
 * gate.S - call gates in a 32-bit PV guest's GDT, emulated by Xen (xen/arch/x86/pv/
 * emul-gate-op.c pv_emulate_gate_op; descriptor-tables.c check_descriptor stores them with
 * DPL 0, so every far call through one is a #GP with the gate's selector).
 *   gate 0x08: DPL 1 -> FLAT_KERNEL_CS:gate_k         gate 0x10: DPL 3, 1 parameter -> gate_u
 *   gate 0x18: DPL 1 -> gate_k
 *   1. ring 1, lcall $0x09: gate_k runs at ring 1 with CS and the return EIP pushed (k_frame)
 *   2. ring 1, lcall $0x0b (RPL 3 > gate DPL 1)       -> #GP(0x08)
 *   3. ring 3, lcall $0x13 with one parameter pushed: gate_u runs at ring 1 on kernel_ss:
 *      kernel_sp with [EIP, CS, parameter, ESP, SS] (u_frame), and lret $4 goes back
 *   4. ring 3, lcall $0x1b (gate DPL 1 < CPL 3)       -> #GP(0x18)
 * Logs: `gp_log` (error code, EIP) of the refused calls.
 */
#include "common.S"

#define __HYPERVISOR_set_gdt_nr         2

/* store a 32-bit call gate: selector FLAT_KERNEL_CS, offset \target, DPL \dpl, \nparm */
.macro GATE index, target, dpl, nparm
        movl    $\target, %eax
        movl    %eax, %edx
        andl    $0xffff, %eax
        orl     $(FLAT_KERNEL_CS << 16), %eax
        andl    $0xffff0000, %edx
        orl     $(0x8c00 | (\dpl << 13) | \nparm), %edx
        movl    %eax, gdt_page+8*\index
        movl    %edx, gdt_page+8*\index+4
.endm

.macro TO_USER eip, next
        movl    $\next, next_step
        pushl   $FLAT_USER_DS
        pushl   $user_page + 4096
        pushl   $0x202
        pushl   $FLAT_USER_CS
        pushl   $\eip
        IRET_HCALL
.endm

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
        GATE    1, gate_k, 1, 0
        GATE    2, gate_u, 3, 1
        GATE    3, gate_k, 1, 0
        /* the GDT page read-only (P|A), then set_gdt([its frame], 4) */
        movl    $gdt_page, %eax
        subl    $VIRT_BASE, %eax
        shrl    $12, %eax
        movl    SI_MFN_LIST(%ebp), %edx
        movl    (%edx,%eax,4), %eax
        movl    %eax, gdt_frames
        shll    $12, %eax
        orl     $0x21, %eax
        movl    $gdt_page, %ebx
        movl    %eax, %ecx
        xorl    %edx, %edx
        movl    $2, %esi
        HCALL   __HYPERVISOR_update_va_mapping
        movl    $gdt_frames, %ebx
        movl    $4, %ecx
        HCALL   __HYPERVISOR_set_gdt_nr
        movl    %eax, set_gdt_rc
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

        .globl k_call, k_call_ret, k_refused
        movl    %esp, k_esp_before
k_call:
        lcall   $0x09, $0                       /* 1. the offset comes from the gate */
k_call_ret:
k_refused:
        lcall   $0x0b, $0                       /* 2. RPL 3 */
k_refused_end:
        TO_USER u_code, step4
step4:
        movl    $stack_top, %esp
        PRINT   done, done_end-done
        POWEROFF

        .globl gate_k, gate_u
gate_k:
        movl    (%esp), %eax
        movl    %eax, k_frame
        movl    4(%esp), %eax
        movl    %eax, k_frame+4
        movl    %esp, k_frame+8
        lret

gate_u:
        movl    %esp, %esi
        movl    $u_frame, %edi
        movl    $5, %ecx
        cld
        rep movsl
        movl    %esp, u_frame+20
        movw    %cs, u_frame+24
        lret    $4

        .globl gp_handler
gp_handler:
        movl    ngp, %ecx
        movl    (%esp), %eax
        movl    %eax, gp_log(,%ecx,8)
        movl    4(%esp), %eax
        movl    %eax, gp_log+4(,%ecx,8)
        movl    gp_resume(,%ecx,4), %eax
        movl    %eax, 4(%esp)
        incl    ngp
        addl    $4, %esp
        testl   $2, 4(%esp)
        jnz     1f
        iret
1:      IRET_HCALL

user_done:
        jmp     *next_step

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
trap_table:
        .byte   13, 0
        .word   FLAT_KERNEL_CS
        .long   gp_handler
        .byte   0x80, 3
        .word   FLAT_KERNEL_CS
        .long   user_done
        .long   0, 0
        .globl ngp, gp_log, k_frame, u_frame, set_gdt_rc, k_esp_before
ngp:            .long 0
gp_log:         .fill 8, 4, 0
k_frame:        .long 0, 0, 0
u_frame:        .fill 7, 4, 0
set_gdt_rc:     .long 0xffffffff
k_esp_before:   .long 0
next_step:      .long 0
gdt_frames:     .long 0
gp_resume:      .long k_refused_end, u_refused_end
done:   .ascii  "gate: done\n"
done_end:

        .balign 4096
        .globl gdt_page
gdt_page:
        .fill   4096, 1, 0

        .balign 4096
        .globl user_page, u_call, u_call_ret, u_refused, u_esp_before
user_page:
u_code:
        pushl   $0x5eed                         /* the gate's parameter */
        movl    %esp, u_esp_before
u_call:
        lcall   $0x13, $0                       /* 3. to ring 1 */
u_call_ret:
        addl    $4, %esp
u_refused:
        lcall   $0x1b, $0                       /* 4. gate DPL 1 */
u_refused_end:
        int     $0x80
        .balign 64
u_esp_before:   .long 0
        .balign 4096

        .bss
        .balign 16
        .space  4096
        .globl kstack_top
kstack_top:
        .space  4096
stack_top:
