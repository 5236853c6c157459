/*
 * userprog.S - the user task's program.  Linked inside the kernel image
 * (section .user.text, whole pages, see pvdemo64.lds) and run from its
 * second, read-only mapping at USER_CODE_VA in the user L4, so it only uses
 * RIP-relative references to itself and absolute addresses of the low
 * region; everything else comes through the struct user_data (user.h)
 * whose address the kernel passes in RDI.
 *
 * It runs at CPL 3 like the kernel, on the user L4 (which maps nothing of
 * the kernel), with the user GS base, and talks to the kernel with
 * "syscall" (RAX = number, RDI/RSI = arguments, result in RAX), which Xen
 * bounces to the kernel's syscall callback.  It records what it sees;
 * user.c checks it.
 */
#include "xen.h"
#include "user.h"

        .section .user.text, "ax"
        .code64
        .globl user_entry
user_entry:                                 /* RDI = USER_DATA_VA, RSP = USER_STACK_TOP */
        movq    %rdi, %r15                  /* r15 = struct user_data * from now on */
        movq    $1, UD_PROGRESS(%r15)

        /* 1. Segments and bases as the kernel left them: CS/SS from the
         * iret frame, FS base from SEGBASE_FS, GS base from SEGBASE_GS_USER. */
        movl    %cs, %eax
        movq    %rax, UD_CS(%r15)
        movl    %ss, %eax
        movq    %rax, UD_SS(%r15)
        movq    %fs:0, %rax
        movq    %rax, UD_FS0(%r15)
        movq    %gs:0, %rax
        movq    %rax, UD_GS0(%r15)

        /* 2. The M2P (L4 slot 256) is not visible here: Xen fills that slot
         * only in an L4 used as a kernel one (no m2p_strict), and this one
         * never was.  The load faults and the kernel resumes us at 5f. */
        leaq    5f(%rip), %rax
        movq    %rax, UD_FIXUP(%r15)
        movq    UD_M2P_VA(%r15), %rbx
        movq    (%rbx), %rax
        movq    %rax, UD_M2P_VAL(%r15)      /* not reached */
5:      movq    $0, UD_FIXUP(%r15)
        movq    $2, UD_PROGRESS(%r15)

        /* 3. A system call.  DF is set on purpose: the frame must show it,
         * the handler must run with it clear (Xen's fixed SYSCALL_MASK), and
         * the sysret-style return (VGCF_in_syscall) restores it.  That
         * return is a real sysretq in Xen, so CS/SS come back as Xen's
         * FLAT_USER_CS64/SS64 (its MSR_STAR), not as our GDT's. */
        std
        pushfq
        popq    %r12                        /* RFLAGS: what syscall puts into R11 */
        leaq    1f(%rip), %r13              /* what syscall puts into RCX */
        movq    %rsp, %r14
        movl    $SYS_CHECK, %eax
        movl    $0x1234, %edi
        syscall
1:      pushfq
        popq    %rbx
        cld
        movl    %cs, %edx
        movq    %rdx, UD_CS_AFTER_SYSRET(%r15)
        movl    %ss, %edx
        movq    %rdx, UD_SS_AFTER_SYSRET(%r15)
        movq    %rax, UD_SYS_RAX(%r15)
        movq    %rcx, UD_SYS_RCX(%r15)
        movq    %r11, UD_SYS_R11(%r15)
        movq    %r13, UD_SYS_EXPECT_RCX(%r15)
        movq    %r12, UD_SYS_RFLAGS_BEFORE(%r15)
        movq    %rbx, UD_SYS_RFLAGS_AFTER(%r15)
        movq    $3, UD_PROGRESS(%r15)

        /* 4. The kernel changes our GS base while in kernel mode
         * (set_segment_base(SEGBASE_GS_USER) writes the shadow base).  This
         * and the later calls return with a plain iret (flags 0, as Linux
         * 6.1 does), which reloads CS/SS from the frame. */
        movl    $SYS_SET_GS_USER, %eax
        movl    $USER_GS2_VA, %edi
        syscall
        movq    %gs:0, %rax
        movq    %rax, UD_GS0_AFTER_SET(%r15)
        movl    %cs, %eax
        movq    %rax, UD_CS_AFTER_IRET(%r15)
        movl    %ss, %eax
        movq    %rax, UD_SS_AFTER_IRET(%r15)

        /* 5. ... or loads a GDT selector into our %gs
         * (SEGBASE_GS_USER_SEL): the base then comes from the descriptor. */
        movl    $SYS_SET_GS_SEL, %eax
        movq    UD_GS_SEL_IN(%r15), %rdi
        syscall
        movl    %gs, %eax
        movq    %rax, UD_GS_SEL(%r15)
        movq    %gs:0, %rax
        movq    %rax, UD_GS0_SEL(%r15)
        movl    $SYS_SET_GS_USER, %eax
        movl    $USER_GS_VA, %edi
        syscall
        movq    %gs:0, %rax
        movq    %rax, UD_GS0_RESTORED(%r15)
        movq    $5, UD_PROGRESS(%r15)

        /* 6. Demand paging: the first store faults (#PF, user|write, not
         * present), the kernel maps a page, the store is retried. */
        movabsq $USER_DEMAND_MAGIC, %rax
        movq    %rax, USER_DEMAND_VA
        movq    USER_DEMAND_VA, %rax
        movq    %rax, UD_DEMAND_VAL(%r15)
        movq    $6, UD_PROGRESS(%r15)

        /* 7. The kernel is not mapped in the user L4: this load faults
         * (#PF, user|read, not present) and the kernel resumes us at 2f. */
        leaq    2f(%rip), %rax
        movq    %rax, UD_FIXUP(%r15)
        movq    UD_KERNEL_VA(%r15), %rbx
        movq    (%rbx), %rax
        movq    %rax, UD_KERNEL_READ_VAL(%r15)  /* not reached */
2:      movq    $0, UD_FIXUP(%r15)
        movq    $1, UD_FAULT_RESUMED(%r15)
        movq    $7, UD_PROGRESS(%r15)

        /* 8. Ask for a timer event in 1 ms, then spin with events enabled
         * until an event upcall interrupted us (the kernel's callback counts
         * them in UD_USER_UPCALLS: wait for one more), at most UD_TSC_LIMIT
         * TSC ticks. */
        movq    UD_USER_UPCALLS(%r15), %r13
        movl    $SYS_ARM_TIMER, %eax
        syscall
        rdtsc
        shlq    $32, %rdx
        orq     %rdx, %rax
        movq    %rax, %r12
3:      cmpq    %r13, UD_USER_UPCALLS(%r15)
        jne     4f
        pause
        rdtsc
        shlq    $32, %rdx
        orq     %rdx, %rax
        subq    %r12, %rax
        cmpq    UD_TSC_LIMIT(%r15), %rax
        jb      3b
4:      rdtsc
        shlq    $32, %rdx
        orq     %rdx, %rax
        subq    %r12, %rax
        movq    %rax, UD_WAITED_TSC(%r15)
        movq    $8, UD_PROGRESS(%r15)

        /* 9. Say hello through the kernel. */
        movl    $SYS_WRITE, %eax
        leaq    user_msg(%rip), %rdi
        movl    $(user_msg_end - user_msg), %esi
        syscall
        movq    %rax, UD_WRITE_RET(%r15)
        movq    $9, UD_PROGRESS(%r15)

        /* 10. Done. */
        movl    $SYS_EXIT, %eax
        movl    $USER_EXIT_CODE, %edi
        syscall
        ud2                                 /* SYS_EXIT does not return */

        .globl user_msg
user_msg:
        .ascii  "hello from user mode"
user_msg_end:

        .section .note.GNU-stack, "", @progbits
