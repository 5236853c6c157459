/*
 * failsafe.S - returns to a selector Xen cannot load (GDT entry 1, a not-present code
 * segment). Xen 4.17 reports the fault of its iretq as that very exception on the iret's
 * target (x86_64/compat/entry.S: .Lft0 -> handle_exception; the failsafe callback is
 * registered but not taken): #NP(0x08), through trap_ctxt[11], whose handler copies the
 * 4-word frame (error code, EIP, CS|mask, EFLAGS) to `frame` and powers off. By default
 * the iret hypercall returns there; with BAD_HANDLER an int3 whose handler has that
 * selector does; with NO_NP_HANDLER no #NP handler is registered (the domain crashes).
 *
 * With RELOAD: %fs holds GDT entry 2 (a present ring-1 data segment); update_descriptor makes
 * it not present, then SCHEDOP_yield lets Xen switch away. When it switches back,
 * load_segments cannot reload %fs (xen/arch/x86/domain.c) and bounces to the failsafe
 * callback with the selectors below the frame; the callback copies the 7-word frame.
 */
#include "common.S"

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        movl    %esi, %ebp                      /* start_info */
        movl    $0, %ebx                        /* CALLBACKOP_register */
        movl    $cb_failsafe, %ecx
        HCALL   __HYPERVISOR_callback_op
        /* gdt_page read-only: update_va_mapping(gdt_page, mfn << 12 | P|A, UVMF_INVLPG) */
        movl    $gdt_page, %eax
        subl    $VIRT_BASE, %eax
        shrl    $12, %eax
        movl    SI_MFN_LIST(%ebp), %edx
        movl    (%edx,%eax,4), %eax
        movl    %eax, gdt_mfn
        shll    $12, %eax
        orl     $0x21, %eax
        movl    $gdt_page, %ebx
        movl    %eax, %ecx
        xorl    %edx, %edx
        movl    $2, %esi
        HCALL   __HYPERVISOR_update_va_mapping
        movl    %eax, rcs
        movl    $gdt_mfn, %ebx                  /* set_gdt(&mfn, 3 entries) */
        movl    $3, %ecx
        HCALL   __HYPERVISOR_set_gdt
        movl    %eax, rcs+4
#ifndef NO_NP_HANDLER
        movl    $traps, %ebx
        HCALL   __HYPERVISOR_set_trap_table
        movl    %eax, rcs+8
#endif
#ifdef RELOAD
        movl    $0x11, %eax                     /* GDT entry 2, RPL 1 */
        movl    %eax, %fs
        xorl    %eax, %eax
        movl    %eax, %gs
        movl    gdt_mfn, %ebx                   /* update_descriptor(maddr of entry 2, 0) */
        shll    $12, %ebx
        addl    $16, %ebx
        xorl    %ecx, %ecx
        movl    $0x0000ffff, %edx               /* the same descriptor with P clear */
        movl    $0x00cf3200, %esi
        HCALL   __HYPERVISOR_update_descriptor
        movl    %eax, rcs+4
        movl    $0, %ebx                        /* SCHEDOP_yield */
        xorl    %ecx, %ecx
        .globl iret_call
iret_call:
        HCALL   __HYPERVISOR_sched_op
        .globl after_iret
after_iret:
        PRINT   bad_msg, bad_end-bad_msg
        POWEROFF
#else
        movl    $FLAT_USER_DS, %eax             /* recognisable selectors in the frame */
        movl    %eax, %fs
        xorl    %eax, %eax
        movl    %eax, %gs
#ifdef BAD_HANDLER
        .globl iret_call
iret_call:
        int3                                    /* its handler's CS is GDT entry 1 */
#else
        pushl   $0x202                          /* EFLAGS */
        pushl   $0x09                           /* CS: GDT entry 1, RPL 1, not present */
        pushl   $after_iret                     /* EIP */
        .globl iret_call
iret_call:
        IRET_HCALL
#endif
        .globl after_iret
after_iret:
        PRINT   bad_msg, bad_end-bad_msg
        POWEROFF
#endif

        .globl failsafe
failsafe:
        movl    %esp, frame_esp
        movl    %esp, %esi
        movl    $frame, %edi
        movl    $7, %ecx
        cld
        rep movsl
        movl    $FLAT_KERNEL_DS, %eax
        movl    %eax, %fs
        PRINT   fs_msg, fs_end-fs_msg
        POWEROFF

        .globl np_handler
np_handler:
        movl    %esp, frame_esp
        movl    %esp, %esi
        movl    $frame, %edi
        movl    $4, %ecx
        cld
        rep movsl
        PRINT   np_msg, np_end-np_msg
        POWEROFF

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
cb_failsafe:
        .word   1, 0                            /* CALLBACKTYPE_failsafe, flags */
        .long   FLAT_KERNEL_CS, failsafe
traps:                                          /* trap_info: vector, flags, cs, address */
        .byte   11, 0
        .word   FLAT_KERNEL_CS
        .long   np_handler
        .byte   3, 3                            /* int3: DPL 3, CS GDT entry 1 (not present) */
        .word   0x09
        .long   after_iret
        .long   0, 0
        .globl gdt_mfn, rcs, frame, frame_esp
gdt_mfn:    .long 0
rcs:        .long 0xffffffff, 0xffffffff, 0xffffffff
frame:      .long 0, 0, 0, 0, 0, 0, 0
frame_esp:  .long 0
fs_msg: .ascii  "failsafe callback\n"
fs_end:
np_msg: .ascii  "#NP at the iret target\n"
np_end:
bad_msg: .ascii "iret to a not-present selector returned\n"
bad_end:
        .balign 4096
        .globl gdt_page
gdt_page:
        .quad   0
        .quad   0x00cf3a000000ffff              /* code, DPL 1, P = 0 */
        .quad   0x00cfb2000000ffff              /* data, DPL 1, P = 1 */
        .fill   4096 - 24, 1, 0

        .bss
        .balign 16
        .space  4096
stack_top:
