/*
 * head.S - pvdemo entry point, Xen ELF notes, hypercall page, exception and
 * callback stubs, and the small "probe" helpers that fault on purpose.
 *
 * Conventions:
 *  - We run in ring 1 with CS = FLAT_KERNEL_CS (0xe019) and DS/ES/SS =
 *    FLAT_KERNEL_DS (0xe021), as Xen's domain builder leaves us.
 *  - Every exception/callback returns through the iret hypercall: the stub
 *    leaves EIP, CS, EFLAGS on top of the stack, restores every register
 *    (EAX included) and JUMPS to hypercall_page + __HYPERVISOR_iret * 32.
 *    That stub itself does "push %eax; mov $23,%eax; int $0x82", and Xen pops
 *    EAX, EIP, CS, EFLAGS from the stack (x86_32: do_iret in
 *    xen/arch/x86/x86_32/traps.c; 64-bit Xen: compat_iret in
 *    xen/arch/x86/pv/iret.c).
 */
#include "xen.h"

/* One Xen ELF note (xen/include/public/elfnote.h): name "Xen", 4-byte aligned. */
#define ELFNOTE(type, desc)                                     \
        .pushsection .note.Xen, "a", @note;                     \
        .balign 4;                                              \
        .long 2f - 1f;          /* namesz */                    \
        .long 4f - 3f;          /* descsz */                    \
        .long type;                                             \
1:      .asciz "Xen";                                           \
2:      .balign 4;                                              \
3:      desc;                                                   \
4:      .balign 4;                                              \
        .popsection

        ELFNOTE(XEN_ELFNOTE_GUEST_OS,       .asciz "pvdemo")
        ELFNOTE(XEN_ELFNOTE_GUEST_VERSION,  .asciz "1.0")
        ELFNOTE(XEN_ELFNOTE_XEN_VERSION,    .asciz "xen-3.0")
        ELFNOTE(XEN_ELFNOTE_LOADER,         .asciz "generic")
        /* VIRT_BASE maps PFN 0.  Our PT_LOAD p_paddr equals p_vaddr, so the
         * PADDR_OFFSET that turns p_paddr into (VA - VIRT_BASE) is VIRT_BASE. */
        ELFNOTE(XEN_ELFNOTE_VIRT_BASE,      .long VIRT_BASE)
        ELFNOTE(XEN_ELFNOTE_PADDR_OFFSET,   .long VIRT_BASE)
        ELFNOTE(XEN_ELFNOTE_ENTRY,          .long _start)
        ELFNOTE(XEN_ELFNOTE_FEATURES,       .asciz "!writable_page_tables|pae_pgdir_above_4gb")
#if CONFIG_PAE
        ELFNOTE(XEN_ELFNOTE_PAE_MODE,       .asciz "yes")
#else
        ELFNOTE(XEN_ELFNOTE_PAE_MODE,       .asciz "no")
#endif
#if CONFIG_HYPERCALL_NOTE
        ELFNOTE(XEN_ELFNOTE_HYPERCALL_PAGE, .long hypercall_page)
#endif
        ELFNOTE(XEN_ELFNOTE_SUSPEND_CANCEL, .long 1)

/* ------------------------------------------------------------------------
 * Entry.  Xen starts us with ESI = VA of start_info, ESP = top of a one-page
 * boot stack, events masked (vcpu_info.evtchn_upcall_mask = 1).
 * ------------------------------------------------------------------------ */
        .section .text.head, "ax"
        .code32
        .globl _start
_start:
        cld
        movl    %esi, xen_start_info        /* keep start_info for later */
        movl    $boot_stack_top, %esp       /* our own 16 KiB stack in .bss */
        xorl    %ebp, %ebp                  /* end of frame chain for debuggers */
        pushl   %esi
        call    start_kernel                /* start_kernel(start_info *) never returns */
1:      ud2
        jmp     1b

/* ------------------------------------------------------------------------
 * The hypercall page: 128 stubs of 32 bytes, written by Xen either before we
 * start (XEN_ELFNOTE_HYPERCALL_PAGE) or when we write its machine address to
 * the MSR named by CPUID leaf base+2.  The image holds int3 (0xCC) bytes, so
 * a call into an unfilled page traps instead of running garbage.
 * ------------------------------------------------------------------------ */
        .balign PAGE_SIZE
        .globl hypercall_page
hypercall_page:
        .fill   PAGE_SIZE, 1, 0xcc

#define HYPERCALL_IRET  (hypercall_page + __HYPERVISOR_iret * 32)

/* ------------------------------------------------------------------------
 * Exception stubs.  Xen's bounce frame for a fault in ring 1 is
 * [error code], EIP, CS | saved_upcall_mask << 16, EFLAGS.  Vectors 8, 10-14
 * and 17 carry an error code; for the others the stub pushes a 0 so that the
 * C side always sees a struct trap_frame (xen.h).
 * ------------------------------------------------------------------------ */
        .text

#define TRAP_NOERR(vec, name)           \
        .globl name;                    \
name:   pushl   $0;                     \
        pushl   $vec;                   \
        jmp     trap_common

#define TRAP_ERR(vec, name)             \
        .globl name;                    \
name:   pushl   $vec;                   \
        jmp     trap_common

TRAP_NOERR( 0, divide_error)
TRAP_NOERR( 1, debug)
TRAP_NOERR( 2, nmi)
TRAP_NOERR( 3, int3)
TRAP_NOERR( 4, overflow)
TRAP_NOERR( 5, bounds)
TRAP_NOERR( 6, invalid_op)
TRAP_NOERR( 7, device_not_available)
TRAP_ERR  ( 8, double_fault)
TRAP_NOERR( 9, coprocessor_segment_overrun)
TRAP_ERR  (10, invalid_TSS)
TRAP_ERR  (11, segment_not_present)
TRAP_ERR  (12, stack_segment)
TRAP_ERR  (13, general_protection)
TRAP_ERR  (14, page_fault)
TRAP_NOERR(15, spurious_interrupt_bug)
TRAP_NOERR(16, coprocessor_error)
TRAP_ERR  (17, alignment_check)
TRAP_NOERR(18, machine_check)
TRAP_NOERR(19, simd_coprocessor_error)

trap_common:
        pushal                              /* struct trap_frame, see xen.h */
        cld
        pushl   %esp                        /* do_trap(struct trap_frame *) */
        call    do_trap
        addl    $4, %esp
        popal
        addl    $8, %esp                    /* drop vector and error code */
        jmp     HYPERCALL_IRET              /* EIP, CS, EFLAGS left on the stack */

/* ------------------------------------------------------------------------
 * Event-channel upcall (CALLBACKTYPE_event).  Xen enters with events masked
 * and the frame EIP, CS | saved_mask << 16, EFLAGS.  The C side clears
 * evtchn_upcall_pending; the iret hypercall then restores the mask from
 * EFLAGS.IF.  Port scanning/dispatch will go into do_hypervisor_callback.
 * ------------------------------------------------------------------------ */
        .globl hypervisor_callback
hypervisor_callback:
        pushl   $0                          /* error code slot */
        pushl   $PVDEMO_VEC_EVENT           /* vector slot */
        pushal
        cld
        pushl   %esp
        call    do_hypervisor_callback
        addl    $4, %esp
        popal
        addl    $8, %esp
        jmp     HYPERCALL_IRET

/* ------------------------------------------------------------------------
 * Secondary vCPU entry (VCPUOP_initialise + VCPUOP_up, smp.c bring_up).  Xen
 * starts the vCPU with the context vCPU 0 gave it: ring 1, its own stack
 * (ESP), events masked, EBX = its vCPU id.
 * ------------------------------------------------------------------------ */
        .globl secondary_startup
secondary_startup:
        cld
        xorl    %ebp, %ebp
        pushl   %ebx
        call    secondary_start             /* secondary_start(id) never returns */
1:      ud2
        jmp     1b

/* ------------------------------------------------------------------------
 * Failsafe callback (CALLBACKTYPE_failsafe): Xen could not load one of our
 * saved data selectors.  Frame: DS, ES, FS, GS, EIP, CS, EFLAGS.  We report
 * it, drop the four saved selectors, load safe ones (flat kernel DS/ES, null
 * FS/GS) and return with the iret hypercall.
 * ------------------------------------------------------------------------ */
        .globl failsafe_callback
failsafe_callback:
        pushal                              /* struct failsafe_frame, see xen.h */
        cld
        pushl   %esp
        call    do_failsafe_callback
        addl    $4, %esp
        popal
        pushl   %eax
        movl    $FLAT_KERNEL_DS, %eax
        movl    %eax, %ds
        movl    %eax, %es
        xorl    %eax, %eax
        movl    %eax, %fs
        movl    %eax, %gs
        popl    %eax
        addl    $16, %esp                   /* drop saved DS, ES, FS, GS */
        jmp     HYPERCALL_IRET

/* ------------------------------------------------------------------------
 * Probes: instructions that are meant to trap.  Each one stores a fixup
 * address in trap_fixup_eip first; do_trap() records the trap and resumes
 * at the fixup, which returns 0xFFFFFFFF.  The labels *_insn mark the
 * instruction itself so the C side can compare them with the saved EIP.
 * ------------------------------------------------------------------------ */

/* uint32_t probe_read(uint32_t va): 32-bit load from va */
        .globl probe_read, probe_read_insn
probe_read:
        movl    4(%esp), %edx
        movl    $probe_fixup, trap_fixup_eip
probe_read_insn:
        movl    (%edx), %eax
        movl    $0, trap_fixup_eip
        ret

/* uint32_t probe_hlt(void): HLT in ring 1 raises #GP(0), and Xen does not
 * emulate it for PV guests (they block with SCHEDOP_block). */
        .globl probe_hlt, probe_hlt_insn
probe_hlt:
        movl    $probe_fixup, trap_fixup_eip
probe_hlt_insn:
        hlt
        movl    $0, trap_fixup_eip
        xorl    %eax, %eax
        ret

/* uint32_t probe_int3(void): int3 is a trap: the saved EIP is the next
 * instruction, probe_int3_next, which is also the fixup. */
        .globl probe_int3, probe_int3_insn, probe_int3_next
probe_int3:
        movl    $probe_int3_next, trap_fixup_eip
probe_int3_insn:
        int3
probe_int3_next:
        movl    $0, trap_fixup_eip
        xorl    %eax, %eax
        ret

/* uint32_t probe_read_cr3(void): "mov %cr3" is privileged; Xen emulates it
 * (#GP(0) -> privileged-op emulation) and returns xen_pfn_to_cr3(top MFN).
 * Should it be reflected to us instead, the fixup returns 0xFFFFFFFF. */
        .globl probe_read_cr3, probe_read_cr3_insn
probe_read_cr3:
        movl    $probe_fixup, trap_fixup_eip
probe_read_cr3_insn:
        movl    %cr3, %eax
        movl    $0, trap_fixup_eip
        ret

probe_fixup:
        movl    $0xffffffff, %eax
        ret

/* ------------------------------------------------------------------------
 * Boot stack
 * ------------------------------------------------------------------------ */
        .section .bss, "aw", @nobits
        .balign 16
        .globl boot_stack, boot_stack_top
boot_stack:
        .skip   BOOT_STACK_SIZE
boot_stack_top:

        .section .note.GNU-stack, "", @progbits
