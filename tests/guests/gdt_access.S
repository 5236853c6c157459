/*
 * gdt_access.S - the descriptors of a GDT frame as Xen 4.17 leaves them, and the accessed bit.
 * xen/arch/x86/pv/descriptor-tables.c check_descriptor: the accessed bit is not touched (the
 * CPU sets it when it loads a selector, through Xen's writable mapping of the GDT); for a
 * 32-bit (compat) guest a base-0 segment whose limit passes HYPERVISOR_COMPAT_VIRT_START
 * (0xf5800000) is extended to 4 GiB ("Older PAE Linux guests use segments which are limited
 * to 0xf6800000"), nothing is trimmed; a 64-bit guest's descriptors only get their DPL fixed.
 * The guest maps its GDT page read-only (update_va_mapping), calls set_gdt, reads the entries
 * back, loads entry 1 into %es and reads it again. Both widths (-DGUEST64).
 */
#include "common.S"

#ifdef GUEST64
#define DPL_TYPE 0xf2                   /* present, DPL 3, data read/write, not accessed */
#define SEL1     0x0b
#define PTE_RO   0x65                   /* P|US|A|D */
#else
#define DPL_TYPE 0xb2                   /* present, DPL 1, data read/write, not accessed */
#define SEL1     0x09
#define PTE_RO   0x61                   /* P|A|D */
#endif

        .text
        .globl _start
_start:
#ifdef GUEST64
        leaq    stack_top(%rip), %rsp
        movq    %rsi, %rbp
        MADDR   $gdt_page
        movq    %rax, %rbx
        shrq    $12, %rbx
        movq    %rbx, frame_list
        orq     $PTE_RO, %rax
        HYPERCALL __HYPERVISOR_update_va_mapping, $gdt_page, %rax, $2
#else
        movl    $stack_top, %esp
        movl    %esi, %ebp
        MADDR   $gdt_page
        movl    %eax, %ebx
        shrl    $12, %ebx
        movl    %ebx, frame_list
        orl     $PTE_RO, %eax
        HYPERCALL __HYPERVISOR_update_va_mapping, $gdt_page, %eax, %edx, $2
#endif
        RESULT  6
        HYPERCALL __HYPERVISOR_set_gdt, $frame_list, $40
        RESULT  0
        call    read_back
#ifdef GUEST64
        movl    $SEL1, %eax
        movl    %eax, %es
        movq    gdt_page + 8, %rax
        RESULT  5
        xorl    %eax, %eax
        movl    %eax, %es
#else
        movl    $SEL1, %eax
        movl    %eax, %es
        movl    gdt_page + 8, %eax
        movl    %eax, results + 40
        movl    gdt_page + 12, %eax
        movl    %eax, results + 44
        movl    $FLAT_KERNEL_DS, %eax
        movl    %eax, %es
#endif
        HYPERCALL __HYPERVISOR_sched_op, $2, $shutdown_poweroff
1:      jmp     1b

/* results[1..4] = gdt entries 1..4 */
read_back:
#ifdef GUEST64
        movq    gdt_page + 8, %rax
        movq    %rax, results + 8
        movq    gdt_page + 16, %rax
        movq    %rax, results + 16
        movq    gdt_page + 24, %rax
        movq    %rax, results + 24
        movq    gdt_page + 32, %rax
        movq    %rax, results + 32
#else
        movl    $gdt_page + 8, %esi
        movl    $results + 8, %edi
        movl    $8, %ecx
        cld
        rep movsl
#endif
        ret

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
        .balign 4096
        .globl gdt_page
gdt_page:
        .quad   0
        .long   0x0000ffff, 0x00cf0000 | (DPL_TYPE << 8)        /* 1: flat, 4 GiB */
        .long   0x000067ff, 0x00cf0000 | (DPL_TYPE << 8)        /* 2: base 0, limit 0xf6800000 */
        .long   0x000057ff, 0x00cf0000 | (DPL_TYPE << 8)        /* 3: base 0, limit 0xf5800000 */
        .long   0x1000ffff, 0x00cf0000 | (DPL_TYPE << 8)        /* 4: base 0x1000, 4 GiB */
        .balign 4096
        .balign 8
frame_list:
        .quad   0
        .globl results
results:
        .fill   7, 8, 0

        .bss
        .balign 16
        .space  8192
stack_top:
