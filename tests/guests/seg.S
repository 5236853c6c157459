/*
 * seg.S - data accesses checked against their segment as the CPU checks them before paging
 * (Intel SDM vol. 3, 5.3; Xen reflects the hardware's #GP/#SS as they are, traps.c), in a
 * 32-bit PV guest with its own GDT. Pages: hole_lo (unmapped), window (mapped), hole_hi
 * (unmapped). Each probe reads an address in a hole, so unicorn gives a #PF; the CPU's answer:
 *   1. DS = 0x09 (base window, limit 0xfff): ds:0x1000              -> #GP(0)
 *   2. SS = 0x11 (base 0, limit window+0xfff): (%ebp), EBP = hole_hi -> #SS(0)
 *   3. ES = 0x19 (expand-down, 16-bit, offsets 0xf000-0xffff = window): es:0xeffc -> #GP(0)
 *   4. ES = 0x19: es:0xf000 reads the window (no fault)
 *   5. FS = null: fs:hole_hi                                       -> #GP(0)
 *   6. DS = flat: hole_hi (inside the segment)                      -> #PF, CR2 hole_hi
 *   7. ES = flat, EDI = hole_hi: stosl (ES:EDI)                     -> #PF, write
 * Log `flog`: (vector, error code, EIP) of each fault; `window_word` what probe 4 read.
 */
#include "common.S"

#define __HYPERVISOR_set_gdt_nr         2

/* a data descriptor: \base (register), \limit, \ar = the access/flags high word bits */
.macro DATA_DESC index, base, limit_lo, hi_flags
        movl    \base, %eax
        movl    %eax, %edx
        shll    $16, %eax
        orl     $\limit_lo, %eax
        movl    %eax, gdt_page+8*\index
        movl    %edx, %eax
        shrl    $16, %eax
        andl    $0xff, %eax
        andl    $0xff000000, %edx
        orl     %eax, %edx
        orl     $\hi_flags, %edx
        movl    %edx, gdt_page+8*\index+4
.endm

/* update_va_mapping(\va, 0, UVMF_INVLPG): unmap a page */
.macro UNMAP va
        movl    $\va, %ebx
        xorl    %ecx, %ecx
        xorl    %edx, %edx
        movl    $2, %esi
        HCALL   __HYPERVISOR_update_va_mapping
.endm

.macro HANDLER name, vector
\name:
        pushl   %eax
        movl    $FLAT_KERNEL_DS, %eax
        movw    %ax, %ds
        movw    %ax, %es
        movl    $\vector, %eax
        jmp     log_fault
.endm

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        movl    %esi, %ebp
        movl    $trap_table, %ebx
        HCALL   __HYPERVISOR_set_trap_table
        /* 0x09: base window, limit 0xfff, byte granular, DPL 1, RW data */
        DATA_DESC 1, $window, 0x0fff, 0x0040b300
        /* 0x11: base 0, limit (window + 0x1000) / 4096 - 1 pages, DPL 1, RW data */
        movl    $window + 0x1000, %eax
        shrl    $12, %eax
        decl    %eax
        movl    %eax, %ecx
        andl    $0xffff, %eax
        movl    %eax, gdt_page+16
        andl    $0xf0000, %ecx
        orl     $0x00c0b300, %ecx
        movl    %ecx, gdt_page+20
        /* 0x19: base window - 0xf000, limit 0xefff, expand-down, 16-bit, DPL 1 (type 7) */
        DATA_DESC 3, $(window-0xf000), 0xefff, 0x0000b700
        /* the GDT page read-only, then set_gdt([its frame], 4) */
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
        UNMAP   hole_lo
        UNMAP   hole_hi
        movl    $0x5e65e6, window

        .globl p1, p2, p3, p4, p5, p6, p7
        movl    $0x09, %eax
        movw    %ax, %ds
p1:     movl    %ds:0x1000, %eax
p1_end:
        movl    $FLAT_KERNEL_DS, %eax
        movw    %ax, %ds
        movl    $0x11, %eax
        movw    %ax, %ss
        movl    $hole_hi, %ebp
p2:     movl    (%ebp), %eax
p2_end:
        movl    $FLAT_KERNEL_DS, %eax
        movw    %ax, %ss
        movl    $0x19, %eax
        movw    %ax, %es
p3:     movl    %es:0xeffc, %eax
p3_end:
        movl    $0x19, %eax
        movw    %ax, %es
p4:     movl    %es:0xf000, %eax
        movl    %eax, window_word
        xorl    %eax, %eax
        movw    %ax, %fs
p5:     movl    %fs:hole_hi, %eax
p5_end:
p6:     movl    hole_hi, %eax
p6_end:
        movl    $FLAT_KERNEL_DS, %eax
        movw    %ax, %es
        movl    $hole_hi, %edi
        cld
p7:     stosl
p7_end:
        PRINT   done, done_end-done
        POWEROFF

        HANDLER gp_handler, 13
        HANDLER ss_handler, 12
        HANDLER pf_handler, 14

/* (%esp): saved EAX, then the error code, EIP, CS, EFLAGS; EAX = the vector */
log_fault:
        pushl   %ecx
        pushl   %edx
        movl    nfaults, %ecx
        leal    (%ecx,%ecx,2), %edx
        movl    %eax, flog(,%edx,4)
        movl    12(%esp), %eax
        movl    %eax, flog+4(,%edx,4)
        movl    16(%esp), %eax
        movl    %eax, flog+8(,%edx,4)
        movl    resume(,%ecx,4), %eax
        movl    %eax, 16(%esp)
        incl    nfaults
        popl    %edx
        popl    %ecx
        popl    %eax
        addl    $4, %esp
        iret

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
trap_table:
        .byte   12, 0
        .word   FLAT_KERNEL_CS
        .long   ss_handler
        .byte   13, 0
        .word   FLAT_KERNEL_CS
        .long   gp_handler
        .byte   14, 0
        .word   FLAT_KERNEL_CS
        .long   pf_handler
        .long   0, 0
        .globl nfaults, flog, window_word, set_gdt_rc
nfaults:        .long 0
flog:           .fill 24, 4, 0
window_word:    .long 0
set_gdt_rc:     .long 0xffffffff
gdt_frames:     .long 0
resume:         .long p1_end, p2_end, p3_end, p5_end, p6_end, p7_end
done:   .ascii  "seg: done\n"
done_end:

        .balign 4096
gdt_page:
        .fill   4096, 1, 0

        .bss
        .balign 16
        .space  4096
stack_top:
        .balign 4096
        .globl hole_lo, window, hole_hi
hole_lo:
        .space  4096
window:
        .space  4096
hole_hi:
        .space  4096
