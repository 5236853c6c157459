/*
 * common.S - included by every tiny test guest (tests/guests/*.S).
 *
 * Xen ELF notes (xen/include/public/elfnote.h; ABI sheet section 1.1), a few PV32 ABI
 * numbers (public/xen.h), and macros that issue hypercalls with `int $0x82` directly
 * (EAX = number, EBX..EDI = arguments; ABI sheet section 2.1), so a guest works before
 * or without a hypercall page.  Link: ld -m elf_i386 -N -Ttext=0xC0000000.
 */
#define VIRT_BASE 0xC0000000

#define __HYPERVISOR_set_trap_table     0
#define __HYPERVISOR_set_gdt            2
#define __HYPERVISOR_stack_switch       3
#define __HYPERVISOR_update_va_mapping 14
#define __HYPERVISOR_console_io        18
#define __HYPERVISOR_vm_assist         21
#define __HYPERVISOR_iret              23
#define __HYPERVISOR_sched_op          29
#define __HYPERVISOR_update_descriptor 10
#define __HYPERVISOR_callback_op       30

#define FLAT_KERNEL_CS 0xE019
#define FLAT_KERNEL_DS 0xE021
#define FLAT_USER_CS   0xE02B
#define FLAT_USER_DS   0xE033

/* start_info (PV32 offsets, ABI sheet section 1.2; PV64 from public/xen.h) */
#define SI_MFN_LIST 68
#define SI_MFN_LIST64 104

#define ELFNOTE(type, desc)                                     \
        .pushsection .note.Xen, "a", @note;                     \
        .balign 4;                                              \
        .long 2f - 1f;                                          \
        .long 4f - 3f;                                          \
        .long type;                                             \
1:      .asciz "Xen";                                           \
2:      .balign 4;                                              \
3:      desc;                                                   \
4:      .balign 4;                                              \
        .popsection

#ifdef GUEST64
#undef VIRT_BASE
#define VIRT_BASE 0xFFFFFFFF80000000
        ELFNOTE(6,  .asciz "xenwb-test")        /* GUEST_OS */
        ELFNOTE(5,  .asciz "xen-3.0")           /* XEN_VERSION */
        ELFNOTE(8,  .asciz "generic")           /* LOADER */
        ELFNOTE(3,  .quad VIRT_BASE)            /* VIRT_BASE */
        ELFNOTE(4,  .quad VIRT_BASE)            /* PADDR_OFFSET: p_paddr == p_vaddr */
        ELFNOTE(1,  .quad _start)               /* ENTRY */
#ifndef NO_HYPERCALL_NOTE
        ELFNOTE(2,  .quad hypercall_page)       /* HYPERCALL_PAGE */
#endif
#else
        ELFNOTE(6,  .asciz "xenwb-test")        /* GUEST_OS */
        ELFNOTE(5,  .asciz "xen-3.0")           /* XEN_VERSION */
        ELFNOTE(8,  .asciz "generic")           /* LOADER */
        ELFNOTE(3,  .long VIRT_BASE)            /* VIRT_BASE */
        ELFNOTE(4,  .long VIRT_BASE)            /* PADDR_OFFSET: p_paddr == p_vaddr */
        ELFNOTE(1,  .long _start)               /* ENTRY */
        ELFNOTE(9,  .asciz "yes")               /* PAE_MODE */
#ifndef NO_HYPERCALL_NOTE
        ELFNOTE(2,  .long hypercall_page)       /* HYPERCALL_PAGE */
#endif

#endif

/*
 * HYPERCALL nr, a1, a2, a3, a4: one hypercall on either width (32-bit: int $0x82 with EBX ECX EDX
 * ESI; 64-bit: syscall with RDI RSI RDX R10), the result in EAX/RAX. RESULT slot stores it,
 * sign-extended to 64 bits, in results[slot] (each guest defines `results`).
 */
#ifdef GUEST64
.macro HYPERCALL nr, a1=$0, a2=$0, a3=$0, a4=$0
        movq    \a1, %rdi
        movq    \a2, %rsi
        movq    \a3, %rdx
        movq    \a4, %r10
        movl    $\nr, %eax
        syscall
.endm
.macro RESULT slot
        movq    %rax, results + 8 * \slot
.endm
/* MADDR va: RAX = the machine address of va, from the start_info mfn_list (RBP = start_info) */
.macro MADDR va
        movq    \va, %rax
        movq    $VIRT_BASE, %rcx
        subq    %rcx, %rax
        movq    %rax, %rdx
        shrq    $12, %rax
        movq    SI_MFN_LIST64(%rbp), %rcx
        movq    (%rcx,%rax,8), %rax
        shlq    $12, %rax
        andq    $0xfff, %rdx
        orq     %rdx, %rax
.endm
#else
.macro HYPERCALL nr, a1=$0, a2=$0, a3=$0, a4=$0
        movl    \a1, %ebx
        movl    \a2, %ecx
        movl    \a3, %edx
        movl    \a4, %esi
        movl    $\nr, %eax
        int     $0x82
.endm
.macro RESULT slot
        cltd
        movl    %eax, results + 8 * \slot
        movl    %edx, results + 8 * \slot + 4
.endm
/* MADDR va: EDX:EAX = the machine address of va, from the start_info mfn_list (EBP = start_info) */
.macro MADDR va
        movl    \va, %eax
        subl    $VIRT_BASE, %eax
        movl    %eax, %ecx
        shrl    $12, %eax
        movl    SI_MFN_LIST(%ebp), %edx
        movl    (%edx,%eax,4), %eax
        movl    %eax, %edx
        shrl    $20, %edx
        shll    $12, %eax
        andl    $0xfff, %ecx
        orl     %ecx, %eax
.endm
#endif

/* hypercall nr with int $0x82; arguments already in EBX.. */
.macro HCALL nr
        movl    $\nr, %eax
        int     $0x82
.endm

/* console_io(CONSOLEIO_write, len, msg) */
.macro PRINT msg, len
        movl    $0, %ebx
        movl    $\len, %ecx
        movl    $\msg, %edx
        HCALL   __HYPERVISOR_console_io
.endm

/* sched_op(SCHEDOP_shutdown, &reason) with reason poweroff */
.macro POWEROFF
        movl    $2, %ebx
        movl    $shutdown_poweroff, %ecx
        HCALL   __HYPERVISOR_sched_op
1:      jmp     1b
.endm

/* iret hypercall with EIP, CS, EFLAGS (, ESP, SS) already pushed: what hypercall-page entry 23 does */
.macro IRET_HCALL
        pushl   %eax
        movl    $__HYPERVISOR_iret, %eax
        int     $0x82
.endm

        .section .rodata
shutdown_poweroff:
        .long   0
