/*
 * wrmsr.S - no HYPERCALL_PAGE note: the guest asks CPUID leaf 0x40000002 for the MSR and writes
 * the machine address of its page to it (xen/arch/x86/msr.c, pv/hypercall.c; ABI sheet 1.8).
 * The page holds 0xCC until then; afterwards byte 0 is 0xB8 and the guest prints and powers off
 * through the page's stubs (call hypercall_page + n*32).
 */
#include "common.S"

#define FORCED_CPUID .byte 0x0f, 0x0b, 0x78, 0x65, 0x6e, 0x0f, 0xa2

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        movl    %esi, %ebp                      /* start_info */
        movl    $0x40000002, %eax
        xorl    %ecx, %ecx
        FORCED_CPUID
        movl    %ebx, msr_index
        /* mfn = mfn_list[(hypercall_page - VIRT_BASE) >> 12] */
        movl    $hypercall_page, %eax
        subl    $VIRT_BASE, %eax
        shrl    $12, %eax
        movl    SI_MFN_LIST(%ebp), %edx
        movl    (%edx,%eax,4), %eax
        movl    %eax, page_mfn
        movl    %eax, %edx
        shrl    $20, %edx
        shll    $12, %eax
        movl    msr_index, %ecx
        .globl wrmsr_insn
wrmsr_insn:
        wrmsr
        cmpb    $0xb8, hypercall_page
        jne     failed
        movl    $0, %ebx
        movl    $ok_end - ok_msg, %ecx
        movl    $ok_msg, %edx
        call    hypercall_page + __HYPERVISOR_console_io * 32
        movl    $2, %ebx
        movl    $shutdown_poweroff, %ecx
        call    hypercall_page + __HYPERVISOR_sched_op * 32
1:      jmp     1b
failed:
        PRINT   bad_msg, bad_end-bad_msg
        POWEROFF

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
        .globl msr_index, page_mfn
msr_index:
        .long   0
page_mfn:
        .long   0
ok_msg: .ascii  "hypercall page filled through the MSR\n"
ok_end:
bad_msg: .ascii "hypercall page NOT filled\n"
bad_end:

        .bss
        .balign 16
        .space  4096
stack_top:
