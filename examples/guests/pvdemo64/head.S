/*
 * head.S - pvdemo64 entry point, Xen ELF notes, hypercall page, exception
 * and callback entry points, the way into and out of the user task, and the
 * small "probe" helpers that fault on purpose.
 *
 * Conventions (x86_64 PV, xen/arch/x86/x86_64/entry.S):
 *  - The kernel runs in ring 3, like user space: CS = FLAT_KERNEL_CS 0xe033,
 *    SS = FLAT_KERNEL_SS 0xe02b, DS = ES = 0.  Xen tells kernel from user
 *    mode by its own flag and by which L4 is loaded.
 *  - Xen enters every handler (create_bounce_frame) with sysretq, so RCX and
 *    R11 hold garbage on entry and their real values are the first two
 *    slots of the frame: every entry point starts with "pop %rcx; pop %r11"
 *    (Linux: xen_pv_trap in arch/x86/xen/xen-asm.S; Mini-OS: SAVE_PARAVIRT).
 *    What is left is RIP, CS, RFLAGS, RSP, SS (+ an error code below RIP for
 *    some vectors): an iretq frame.
 *  - Every exception/callback returns through the iret hypercall: the stub
 *    pushes iret_context.flags on top of that frame and runs
 *    HYPERVISOR_IRET, which pushes RCX, R11, RAX and issues hypercall 23
 *    (do_iret, xen/arch/x86/pv/iret.c).  A CS with RPL 3 in the frame means
 *    "back to user mode" (Xen switches L4 and GS base); RPL 0 (what Xen puts
 *    in a frame that interrupted the kernel) means "stay in kernel mode".
 *    Flags 0 restores RCX/R11 from the frame; VGCF_in_syscall leaves them as
 *    sysret does (RCX = RIP, R11 = RFLAGS), for returns from a system call.
 */
#include "xen.h"
#include "user.h"

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

        ELFNOTE(XEN_ELFNOTE_GUEST_OS,       .asciz "pvdemo64")
        ELFNOTE(XEN_ELFNOTE_GUEST_VERSION,  .asciz "1.0")
        ELFNOTE(XEN_ELFNOTE_XEN_VERSION,    .asciz "xen-3.0")
        ELFNOTE(XEN_ELFNOTE_LOADER,         .asciz "generic")
        /* VIRT_BASE maps PFN 0.  p_paddr = p_vaddr - VIRT_BASE (pvdemo64.lds),
         * so PADDR_OFFSET is 0, as in Linux's xen-head.S.  Addresses are
         * 8-byte numbers (libelf reads 1, 2, 4 or 8 bytes). */
        ELFNOTE(XEN_ELFNOTE_VIRT_BASE,      .quad VIRT_BASE)
        ELFNOTE(XEN_ELFNOTE_PADDR_OFFSET,   .quad 0)
        ELFNOTE(XEN_ELFNOTE_ENTRY,          .quad _start)
        ELFNOTE(XEN_ELFNOTE_FEATURES,       .asciz "!writable_page_tables")
#if CONFIG_HYPERCALL_PAGE
        ELFNOTE(XEN_ELFNOTE_HYPERCALL_PAGE, .quad hypercall_page)
#endif
        ELFNOTE(XEN_ELFNOTE_SUSPEND_CANCEL, .long 1)

/* ------------------------------------------------------------------------
 * The iret hypercall.  On entry RSP points at iret_context.flags, followed
 * by RIP, CS, RFLAGS, RSP, SS; RAX, RCX, R11 hold the values to return with.
 * ------------------------------------------------------------------------ */
#if CONFIG_HYPERCALL_PAGE
.macro HYPERVISOR_IRET
        /* Stub 23 (jumped to, never called): push %rcx; push %r11;
         * push %rax; mov $23,%eax; syscall */
        jmp     hypercall_page + __HYPERVISOR_iret * 32
.endm
#else
.macro HYPERVISOR_IRET
        /* The same bytes inline, as Linux does without a hypercall page. */
        pushq   %rcx
        pushq   %r11
        pushq   %rax
        movl    $__HYPERVISOR_iret, %eax
        syscall
        ud2                                 /* iret does not return here */
.endm
#endif

/* The general registers in the order of struct trap_frame (xen.h). */
.macro SAVE_ALL
        pushq   %rdi
        pushq   %rsi
        pushq   %rdx
        pushq   %rcx
        pushq   %rax
        pushq   %r8
        pushq   %r9
        pushq   %r10
        pushq   %r11
        pushq   %rbx
        pushq   %rbp
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
.endm

.macro RESTORE_ALL
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbp
        popq    %rbx
        popq    %r11
        popq    %r10
        popq    %r9
        popq    %r8
        popq    %rax
        popq    %rcx
        popq    %rdx
        popq    %rsi
        popq    %rdi
.endm

/* ------------------------------------------------------------------------
 * Entry.  Xen starts vCPU 0 (xg_dom_x86.c vcpu_x86_64, arch_set_info_guest)
 * with RSI = VA of start_info, RSP = top of the boot stack page that follows
 * the boot page tables, CS 0xe033, SS 0xe02b, events masked.
 * ------------------------------------------------------------------------ */
        .section .text.head, "ax"
        .code64
        .globl _start
_start:
        cld
        /* What Xen handed us, before anything changes it (kernel.c checks it). */
        movq    %rsi, xen_start_info(%rip)
        movq    %rsi, entry_rsi(%rip)
        movq    %rsp, entry_rsp(%rip)
        movl    %cs, %eax
        movq    %rax, entry_cs(%rip)
        movl    %ss, %eax
        movq    %rax, entry_ss(%rip)
        pushfq
        popq    entry_rflags(%rip)

        leaq    boot_stack_top(%rip), %rsp  /* our own 16 KiB stack in .bss */

        /* The kernel GS base, as Linux's startup_xen sets it: a native WRMSR
         * of MSR_GS_BASE, which faults (#GP) and which Xen emulates
         * (write_msr in xen/arch/x86/pv/emul-priv-op.c).  It points at
         * vCPU 0's struct vcpu_state, whose first word points at itself. */
        leaq    vcpus(%rip), %rax
        movq    %rax, (%rax)                /* vcpus[0].self */
        movq    %rax, early_gs_base(%rip)
        movq    %rax, %rdx
        shrq    $32, %rdx                   /* EDX:EAX = the 64-bit value */
        movl    $MSR_GS_BASE, %ecx
        wrmsr

        xorl    %ebp, %ebp                  /* end of frame chain for debuggers */
        movq    %rsi, %rdi
        call    start_kernel                /* start_kernel(start_info *) never returns */
1:      ud2
        jmp     1b

#if CONFIG_HYPERCALL_PAGE
/* ------------------------------------------------------------------------
 * The hypercall page: 128 stubs of 32 bytes, written by the domain builder
 * because of XEN_ELFNOTE_HYPERCALL_PAGE.  The image holds int3 (0xCC) bytes,
 * so a call into an unfilled page traps instead of running garbage.
 * ------------------------------------------------------------------------ */
        .balign PAGE_SIZE
        .globl hypercall_page
hypercall_page:
        .fill   PAGE_SIZE, 1, 0xcc
#endif

/* ------------------------------------------------------------------------
 * Exception entry points (trap_table in kernel.c).  Vectors 8, 10-14 and 17
 * carry an error code (X86_EXC_HAVE_EC in Xen); for the others the stub
 * pushes a 0 so that the C side always sees a struct trap_frame.
 * ------------------------------------------------------------------------ */
        .text

#define TRAP_NOERR(vec, name)           \
        .globl name;                    \
name:   popq    %rcx;                   \
        popq    %r11;                   \
        pushq   $0;                     \
        pushq   $vec;                   \
        jmp     trap_common

#define TRAP_ERR(vec, name)             \
        .globl name;                    \
name:   popq    %rcx;                   \
        popq    %r11;                   \
        pushq   $vec;                   \
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
TRAP_NOERR(VEC_SOFTINT, softint_81)

/* The frame is 16-byte aligned here: Xen aligns the bounce frame base, and
 * 2 popped + 1 or 2 pushed + 15 saved slots make 22 below 7 or 8 pushed. */
trap_common:
        SAVE_ALL
        cld
        movq    %rsp, %rdi
        call    do_trap                     /* do_trap(struct trap_frame *) */
ret_from_trap:
        RESTORE_ALL
        addq    $16, %rsp                   /* drop vector and error code */
        pushq   $0                          /* iret_context.flags: restore RCX/R11 */
        HYPERVISOR_IRET

/* ------------------------------------------------------------------------
 * Event-channel upcall (CALLBACKTYPE_event).  Xen enters with events
 * masked and the frame RCX, R11, RIP, CS | saved_mask << 32, RFLAGS, RSP,
 * SS; the iret hypercall restores the mask from RFLAGS.IF.
 * ------------------------------------------------------------------------ */
        .globl hypervisor_callback
hypervisor_callback:
        popq    %rcx
        popq    %r11
        pushq   $0                          /* error code slot */
        pushq   $VEC_EVENT                  /* vector slot */
        SAVE_ALL
        cld
        movq    %rsp, %rdi
        call    do_hypervisor_callback
        jmp     ret_from_trap

/* ------------------------------------------------------------------------
 * System call from guest user mode (CALLBACKTYPE_syscall; Linux:
 * xen_entry_SYSCALL_64).  Xen switched to kernel mode (kernel L4, kernel GS
 * base), put the frame at the stack_switch stack, and the first two slots
 * are RCX and R11 as the CPU left them (RCX = the user's return address,
 * R11 = its RFLAGS).  RIP = that same return address; CS/SS are Xen's
 * FLAT_USER_CS/SS.  do_syscall may rewrite the frame, and it leaves the
 * iret_context.flags to return with in the error-code slot: VGCF_in_syscall
 * (sysret semantics: RCX/R11 = RIP/RFLAGS, Xen exits with sysretq) or 0
 * (a plain iret: RCX/R11/CS/SS from the frame).
 * ------------------------------------------------------------------------ */
        .globl syscall_callback
syscall_callback:
        popq    %rcx
        popq    %r11
        pushq   $0
        pushq   $VEC_SYSCALL
        SAVE_ALL
        pushfq                              /* DF must be clear: Xen's fixed SYSCALL_MASK */
        popq    syscall_entry_rflags(%rip)
        cld
        movq    %rsp, %rdi
        call    do_syscall                  /* do_syscall(struct trap_frame *) */
        RESTORE_ALL
        addq    $8, %rsp                    /* drop the vector: the error-code slot */
        HYPERVISOR_IRET                     /* holds iret_context.flags */

/* 32-bit syscall and sysenter callbacks: registered as Linux does, never
 * expected (pvdemo64 runs no 32-bit code).  do_trap reports them. */
        .globl syscall32_callback, sysenter_callback
syscall32_callback:
sysenter_callback:
        popq    %rcx
        popq    %r11
        pushq   $0
        pushq   $VEC_SYSCALL32
        jmp     trap_common

/* ------------------------------------------------------------------------
 * Failsafe callback (CALLBACKTYPE_failsafe): Xen could not load one of the
 * saved data selectors.  Frame: RCX, R11, DS, ES, FS, GS, RIP, CS, RFLAGS,
 * RSP, SS.  We report it, drop the four selectors and retry with iret.
 * ------------------------------------------------------------------------ */
        .globl failsafe_callback
failsafe_callback:
        popq    %rcx
        popq    %r11
        SAVE_ALL                            /* struct failsafe_frame, see xen.h */
        cld
        movq    %rsp, %rdi
        call    do_failsafe_callback
        RESTORE_ALL
        addq    $32, %rsp                   /* drop DS, ES, FS, GS */
        pushq   $0
        HYPERVISOR_IRET

/* ------------------------------------------------------------------------
 * Secondary vCPU entry (VCPUOP_initialise + VCPUOP_up, smp.c bring_up).
 * Xen starts it with the context vCPU 0 gave it: its own stack, RDI = its
 * id, kernel GS base = &vcpus[id], events masked.
 * secondary_start(id, cs, ss, rflags) never returns.
 * ------------------------------------------------------------------------ */
        .globl secondary_startup
secondary_startup:
        cld
        movl    %cs, %esi
        movl    %ss, %edx
        pushfq
        popq    %rcx
        xorl    %ebp, %ebp
        call    secondary_start
1:      ud2
        jmp     1b

/* ------------------------------------------------------------------------
 * The user task (user.c).
 *
 * long run_user(uint64_t rip, uint64_t rsp, uint64_t cs, uint64_t ss,
 *               uint64_t arg)
 *   saves the callee-saved registers and RSP, then enters user mode with
 *   the iret hypercall (CS with RPL 3: Xen switches to the user L4 and the
 *   user GS base).  The task starts with events enabled (RFLAGS.IF), RDI =
 *   arg and every other register 0.  It comes back only through
 *   user_exit(), called by do_syscall(SYS_EXIT) on the task's kernel stack,
 *   which returns the exit code from run_user.
 * ------------------------------------------------------------------------ */
        .globl run_user, user_exit
run_user:
        pushq   %rbx
        pushq   %rbp
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movq    %rsp, run_user_rsp(%rip)
        pushq   %rcx                        /* SS */
        pushq   %rsi                        /* RSP */
        pushq   $(X86_EFLAGS_IF | X86_EFLAGS_FIXED)     /* RFLAGS: events on */
        pushq   %rdx                        /* CS */
        pushq   %rdi                        /* RIP */
        pushq   $0                          /* flags: RCX/R11 come from here */
        movq    %r8, %rdi
        xorl    %eax, %eax
        xorl    %ebx, %ebx
        xorl    %ecx, %ecx
        xorl    %edx, %edx
        xorl    %esi, %esi
        xorl    %ebp, %ebp
        xorl    %r8d, %r8d
        xorl    %r9d, %r9d
        xorl    %r10d, %r10d
        xorl    %r11d, %r11d
        xorl    %r12d, %r12d
        xorl    %r13d, %r13d
        xorl    %r14d, %r14d
        xorl    %r15d, %r15d
        HYPERVISOR_IRET

/* void user_exit(long code): back into run_user's frame, for good. */
user_exit:
        movq    run_user_rsp(%rip), %rsp
        movq    %rdi, %rax
        popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbp
        popq    %rbx
        ret

/* ------------------------------------------------------------------------
 * Probes: instructions that are meant to trap.  Each one stores a fixup
 * address in trap_fixup_rip first; do_trap() records the trap and resumes
 * at the fixup, which returns -1.  RCX and R11 are loaded with known values
 * so that do_trap can check the frame's RCX/R11 slots, and the probe's RSP
 * is kept in probe_rsp for the frame's RSP slot.  The *_insn labels mark
 * the instruction itself.
 * ------------------------------------------------------------------------ */
#define PROBE_RCX       0x1c1c1c1c1c1c1c1c
#define PROBE_R11       0x1111111111111111

.macro PROBE_SETUP fixup
        leaq    \fixup(%rip), %rax
        movq    %rax, trap_fixup_rip(%rip)
        movq    %rsp, probe_rsp(%rip)
        movabsq $PROBE_RCX, %rcx
        movabsq $PROBE_R11, %r11
.endm

/* uint64_t probe_read(uint64_t va): 64-bit load from va */
        .globl probe_read, probe_read_insn
probe_read:
        PROBE_SETUP probe_fixup
probe_read_insn:
        movq    (%rdi), %rax
        movq    $0, trap_fixup_rip(%rip)
        ret

/* uint64_t probe_write(uint64_t va, uint64_t val): 64-bit store */
        .globl probe_write, probe_write_insn
probe_write:
        PROBE_SETUP probe_fixup
probe_write_insn:
        movq    %rsi, (%rdi)
        movq    $0, trap_fixup_rip(%rip)
        xorl    %eax, %eax
        ret

/* uint64_t probe_hlt(void): HLT at CPL 3 raises #GP(0), which Xen does not
 * emulate (PV guests block with SCHEDOP_block): it is reflected to us. */
        .globl probe_hlt, probe_hlt_insn
probe_hlt:
        PROBE_SETUP probe_fixup
probe_hlt_insn:
        hlt
        movq    $0, trap_fixup_rip(%rip)
        xorl    %eax, %eax
        ret

/* uint64_t probe_int3(void): int3 is a trap: the saved RIP is the next
 * instruction, probe_int3_next, which is also the fixup. */
        .globl probe_int3, probe_int3_insn, probe_int3_next
probe_int3:
        PROBE_SETUP probe_int3_next
probe_int3_insn:
        int3
probe_int3_next:
        movq    $0, trap_fixup_rip(%rip)
        xorl    %eax, %eax
        ret

/* uint64_t probe_softint(void): "int $0x81" hits Xen's DPL-0 gate (#GP with
 * error code (0x81 << 3) | 2); our trap_info for 0x81 has DPL 1, which
 * permits it from guest-kernel mode, so Xen delivers vector 0x81 with RIP
 * after the 2-byte instruction (permit_softint, do_general_protection). */
        .globl probe_softint, probe_softint_insn, probe_softint_next
probe_softint:
        PROBE_SETUP probe_softint_next
probe_softint_insn:
        int     $VEC_SOFTINT
probe_softint_next:
        movq    $0, trap_fixup_rip(%rip)
        xorl    %eax, %eax
        ret

/* uint64_t probe_int_nohandler(void): "int $0x83" with no trap_info (DPL 0):
 * Xen reflects the #GP, error code (0x83 << 3) | 2 = 0x41a, RIP = the int.
 * (Not 0x82: that is Xen's DPL-1 gate for 32-bit PV hypercalls, and 0x80
 * its DPL-3 int80_direct_trap; both would still #GP from ring 3.) */
        .globl probe_int_nohandler, probe_int_nohandler_insn
probe_int_nohandler:
        PROBE_SETUP probe_fixup
probe_int_nohandler_insn:
        int     $VEC_NOHANDLER
        movq    $0, trap_fixup_rip(%rip)
        xorl    %eax, %eax
        ret

probe_fixup:
        movq    $-1, %rax
        ret

/* uint64_t probe_read_cr3(void): "mov %cr3" is privileged; Xen emulates it
 * (#GP(0) -> emulate_privileged_op) and returns xen_pfn_to_cr3(kernel L4
 * MFN).  Should it be reflected to us instead, the fixup returns -1. */
        .globl probe_read_cr3, probe_read_cr3_insn
probe_read_cr3:
        leaq    probe_fixup(%rip), %rax
        movq    %rax, trap_fixup_rip(%rip)
probe_read_cr3_insn:
        movq    %cr3, %rax
        movq    $0, trap_fixup_rip(%rip)
        ret

/* uint64_t probe_hypercall_regs(uint64_t out[3]): xen_version(XENVER_version)
 * with a raw "syscall", wherever it is (any syscall in guest-kernel mode is a
 * hypercall).  Xen returns with sysretq: out[0] = RCX afterwards, out[1] =
 * R11, out[2] = the address after the syscall (what RCX should be). */
        .globl probe_hypercall_regs
probe_hypercall_regs:
        pushq   %rdi
        movl    $__HYPERVISOR_xen_version, %eax
        xorl    %edi, %edi                  /* XENVER_version */
        xorl    %esi, %esi                  /* no argument */
        movabsq $PROBE_RCX, %rcx
        movabsq $PROBE_R11, %r11
        syscall
probe_hypercall_ret:
        popq    %rdi
        movq    %rcx, 0(%rdi)
        movq    %r11, 8(%rdi)
        leaq    probe_hypercall_ret(%rip), %rcx
        movq    %rcx, 16(%rdi)
        ret

/* ------------------------------------------------------------------------
 * Stacks
 * ------------------------------------------------------------------------ */
        .section .bss, "aw", @nobits
        .balign 16
        .globl boot_stack, boot_stack_top
boot_stack:
        .skip   BOOT_STACK_SIZE
boot_stack_top:

        .balign 16
        .globl task_stack, task_stack_top
task_stack:                                 /* kernel stack of the user task */
        .skip   TASK_STACK_SIZE
task_stack_top:

        .balign 8
run_user_rsp:
        .skip   8

        .section .note.GNU-stack, "", @progbits
