/*
 * iopl.S - port I/O and CLI/STI under the virtual IOPL (xen/arch/x86/pv/emul-priv-op.c
 * iopl_ok/guest_io_okay, physdev.c PHYSDEVOP_set_iopl/set_iobitmap, pv/iret.c, VMASST
 * architectural_iopl).  Each probed instruction either runs (an IN reads all ones: a domU has
 * no ports) or gives #GP(0) with EIP on it; the #GP handler logs (error code, EIP) in `gp_log`
 * and resumes after the instruction (`resume_table`, in the order the faults are expected).
 *   kernel, vIOPL 0:  in $0x80, out $0x80, in (%dx), cli, sti         -> 5 x #GP
 *   set_iopl(1):      kernel in, cli                                   -> allowed
 *   user, vIOPL 1:    in, cli                                          -> 2 x #GP
 *   set_iopl(3):      user in                                          -> allowed
 *   architectural_iopl, set_iopl(0): kernel in                         -> allowed (kernel "CPL 0")
 *   iret with IOPL 3 in EFLAGS: user in                                -> allowed (the iret set it)
 *   iret with IOPL 0: user in                                          -> #GP
 *   + an I/O bitmap allowing port 0x80 only, IOPL 0: user in $0x80 / in $0x81 -> allowed / #GP
 * User mode returns to the kernel with `int $0x80` (a DPL-3 trap) onto the next step.
 * Results of allowed INs: `k_results` (kernel), the user page's `u_results`.
 */
#include "common.S"

#define __HYPERVISOR_physdev_op         33
#define PHYSDEVOP_set_iopl              6
#define PHYSDEVOP_set_iobitmap          7
#define VMASST_CMD_enable               0
#define VMASST_TYPE_architectural_iopl  4

.macro SET_IOPL n
        movl    $\n, iopl_arg
        movl    $PHYSDEVOP_set_iopl, %ebx
        movl    $iopl_arg, %ecx
        HCALL   __HYPERVISOR_physdev_op
.endm

/* iret hypercall into user mode at \eip with EFLAGS \flags; int $0x80 comes back to \next */
.macro TO_USER eip, flags, next
        movl    $\next, next_step
        pushl   $FLAT_USER_DS
        pushl   $user_page + 4096
        pushl   $\flags
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

        /* kernel mode, vIOPL 0 (the start value) */
        movl    $0x80, %edx
        .globl k_in_imm, k_out_imm, k_in_dx, k_cli, k_sti
k_in_imm:
        inb     $0x80, %al
k_in_imm_end:
k_out_imm:
        outb    %al, $0x80
k_out_imm_end:
k_in_dx:
        inl     %dx, %eax
k_in_dx_end:
k_cli:
        cli
k_cli_end:
k_sti:
        sti
k_sti_end:
        SET_IOPL 1
        xorl    %eax, %eax
        inb     $0x80, %al
        movl    %eax, k_results
        cli
        sti
        TO_USER u_step1, 0x202, step2
step2:
        movl    $stack_top, %esp
        SET_IOPL 3
        TO_USER u_step2, 0x202, step3
step3:
        movl    $stack_top, %esp
        movl    $VMASST_CMD_enable, %ebx
        movl    $VMASST_TYPE_architectural_iopl, %ecx
        HCALL   __HYPERVISOR_vm_assist
        SET_IOPL 0
        xorl    %eax, %eax
        inb     $0x80, %al
        movl    %eax, k_results+4
        TO_USER u_step2b, 0x3202, step4
step4:
        movl    $stack_top, %esp
        TO_USER u_step3, 0x202, step5
step5:
        movl    $stack_top, %esp
        movl    $PHYSDEVOP_set_iobitmap, %ebx
        movl    $iobitmap_arg, %ecx
        HCALL   __HYPERVISOR_physdev_op
        movl    %eax, iobitmap_rc
        TO_USER u_step4, 0x202, step6
step6:
        movl    $stack_top, %esp
        PRINT   done, done_end-done
        POWEROFF

        .globl gp_handler
gp_handler:
        movl    nfaults, %ecx
        movl    (%esp), %eax                    /* error code */
        movl    %eax, gp_log(,%ecx,8)
        movl    4(%esp), %eax                   /* EIP */
        movl    %eax, gp_log+4(,%ecx,8)
        movl    resume_table(,%ecx,4), %eax
        movl    %eax, 4(%esp)
        incl    nfaults
        addl    $4, %esp
        testl   $2, 4(%esp)                     /* back to user mode? */
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
        .globl nfaults, gp_log, k_results, iobitmap_rc
nfaults:        .long 0
gp_log:         .fill 32, 4, 0
k_results:      .long 0, 0
iobitmap_rc:    .long 0xffffffff
next_step:      .long 0
iopl_arg:       .long 0
iobitmap_arg:   .long iobitmap, 0x100           /* bitmap, nr_ports */
resume_table:
        .long   k_in_imm_end, k_out_imm_end, k_in_dx_end, k_cli_end, k_sti_end
        .long   u_in1_end, u_cli1_end, u_in3_end, u_in81_end
iobitmap:
        .fill   16, 1, 0xff
        .org    iobitmap + 0x10
        .byte   0xfe                            /* ports 0x80 allowed, 0x81-0x87 not */
        .fill   15, 1, 0xff
done:   .ascii  "iopl: done\n"
done_end:

        .balign 4096
        .globl user_page, u_results
user_page:
        .globl u_in1, u_cli1, u_in3, u_in81
u_step1:                                        /* vIOPL 1 */
u_in1:
        inb     $0x80, %al
u_in1_end:
u_cli1:
        cli
u_cli1_end:
        int     $0x80
u_step2:                                        /* vIOPL 3 */
        xorl    %eax, %eax
        inb     $0x80, %al
        movl    %eax, u_results
        int     $0x80
u_step2b:                                       /* architectural, iret with IOPL 3 */
        xorl    %eax, %eax
        inb     $0x80, %al
        movl    %eax, u_results+4
        int     $0x80
u_step3:                                        /* architectural, iret with IOPL 0 */
u_in3:
        inb     $0x80, %al
u_in3_end:
        int     $0x80
u_step4:                                        /* the I/O bitmap */
        xorl    %eax, %eax
        inb     $0x80, %al
        movl    %eax, u_results+8
u_in81:
        inb     $0x81, %al
u_in81_end:
        int     $0x80
        .balign 64
u_results:
        .long   0, 0, 0
        .balign 4096

        .bss
        .balign 16
        .space  4096
        .globl kstack_top
kstack_top:
        .space  4096
stack_top:
