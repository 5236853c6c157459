/*
 * ldt.S - a local descriptor table set with MMUEXT_SET_LDT (xen/arch/x86/mm.c do_mmuext_op),
 * mapped by Xen on the first descriptor load (pv/mm.c pv_map_ldt_shadow_page: the page must
 * be the guest's, present, and become a PGT_seg_desc_page, so not writable by the guest;
 * traps.c handle_ldt_mapping_fault reflects the #PF at ldt_base + offset otherwise), its limit
 * honoured by the CPU (#GP with the selector as error code past it, or with no LDT at all).
 *   1. no LDT: mov $0xd, %ds                          -> #GP(0xc)
 *   2. SET_LDT(ldt_page, 4) with ldt_page mapped RW:   -> #PF at ldt_page + 8, error code 0;
 *      the handler remaps the page read-only and retries: the load succeeds, a read through
 *      %ds works
 *   3. selector 0x2d (index 5 of 4)                    -> #GP(0x2c)
 *   4. SET_LDT(0, 0): mov $0xd, %ds                    -> #GP(0xc)
 *   5. SET_LDT(ldt_page + 8, 0) -> 0 (the base counts only with entries); (ldt_page + 8, 1) -> -EINVAL
 * Logs: `gp_log` (error code, EIP), `pf_log` (error code, CR2), `rcs` (SET_LDT results).
 */
#include "common.S"

#define __HYPERVISOR_mmuext_op          26
#define MMUEXT_SET_LDT                  13
#define DOMID_SELF                      0x7FF0

.macro SET_LDT base, ents, slot
        movl    $\base, mmuext+4
        movl    $\ents, mmuext+8
        movl    $mmuext, %ebx
        movl    $1, %ecx
        xorl    %edx, %edx
        movl    $DOMID_SELF, %esi
        HCALL   __HYPERVISOR_mmuext_op
        movl    %eax, rcs+4*\slot
.endm

/* update_va_mapping(ldt_page, its frame | \flags, UVMF_INVLPG) */
.macro MAP_LDT_PAGE flags
        movl    $ldt_page, %eax
        subl    $VIRT_BASE, %eax
        shrl    $12, %eax
        movl    SI_MFN_LIST(%ebp), %edx
        movl    (%edx,%eax,4), %eax
        shll    $12, %eax
        orl     $\flags, %eax
        movl    $ldt_page, %ebx
        movl    %eax, %ecx
        xorl    %edx, %edx
        movl    $2, %esi
        HCALL   __HYPERVISOR_update_va_mapping
.endm

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        movl    %esi, %ebp
        movl    $trap_table, %ebx
        HCALL   __HYPERVISOR_set_trap_table
        movl    $0xd, %eax
        .globl load1, load2, load3, load4, read2
load1:
        movw    %ax, %ds                        /* 1. no LDT */
load1_end:
        SET_LDT ldt_page, 4, 0
        movl    $0xd, %eax
load2:
        movw    %ax, %ds                        /* 2. #PF, then the retry loads it */
read2:
        movl    marker, %eax
        movl    $FLAT_KERNEL_DS, %ecx
        movw    %cx, %ds
        movl    %eax, seen
        movl    $0x2d, %eax
load3:
        movw    %ax, %ds                        /* 3. past the limit */
load3_end:
        SET_LDT 0, 0, 1
        movl    $0xd, %eax
load4:
        movw    %ax, %ds                        /* 4. no LDT again */
load4_end:
        SET_LDT ldt_page + 8, 0, 2
        SET_LDT ldt_page + 8, 1, 3
        PRINT   done, done_end-done
        POWEROFF

        .globl gp_handler, pf_handler
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
        iret

pf_handler:
        pushal
        movl    npf, %ecx
        movl    32(%esp), %eax                  /* error code */
        movl    %eax, pf_log(,%ecx,8)
        movl    %cr2, %eax                      /* emulated: the CR2 Xen recorded */
        movl    %eax, pf_log+4(,%ecx,8)
        incl    npf
        MAP_LDT_PAGE 0x21                       /* P|A: read-only */
        popal
        addl    $4, %esp
        iret                                    /* the load runs again */

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
trap_table:
        .byte   13, 0
        .word   FLAT_KERNEL_CS
        .long   gp_handler
        .byte   14, 0
        .word   FLAT_KERNEL_CS
        .long   pf_handler
        .long   0, 0
        .globl ngp, gp_log, npf, pf_log, rcs, seen, marker
ngp:    .long   0
gp_log: .fill   16, 4, 0
npf:    .long   0
pf_log: .fill   16, 4, 0
rcs:    .long   -1, -1, -1, -1
seen:   .long   0
marker: .long   0x1d7c0de5
gp_resume:
        .long   load1_end, load3_end, load4_end
mmuext: .long   MMUEXT_SET_LDT, 0, 0
done:   .ascii  "ldt: done\n"
done_end:

        .balign 4096
        .globl ldt_page
ldt_page:
        .quad   0                               /* 0: null */
        .quad   0x00cfb2000000ffff              /* 1 (0xd): flat data, DPL 1, not yet accessed (the CPU sets A on the load) */
        .quad   0                               /* 2, 3: nothing */
        .quad   0
        .balign 4096

        .bss
        .balign 16
        .space  4096
stack_top:
