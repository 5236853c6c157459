/*
 * 64-bit benchmark guest for benchmarks/boot.py, the x86_64 sibling of bench.S: the same
 * compute loop (5 instructions per iteration: two ALU ops, a store, a load, a branch; data
 * addressed RIP-relative, so the bare-unicorn run may place the code anywhere) and a loop of
 * cheap hypercalls, xen_version(XENVER_version) by an inline `syscall` (RAX = 17, RDI = 0, as
 * Linux 6.1 issues them; RCX/R11 are Xen's after the sysretq, so the counter is in R12), then
 * SCHEDOP_shutdown. The benchmark patches bench_iterations and bench_hypercalls before the run.
 */
#define ELFNOTE(type, desc_type, desc)    \
    .pushsection .note.Xen, "a", @note;   \
    .align 4;                             \
    .long 2f - 1f; .long 4f - 3f; .long type; \
1:  .asciz "Xen"; 2: .align 4;            \
3:  desc_type desc; 4: .align 4;          \
    .popsection

    ELFNOTE(6, .asciz, "bench64")          /* GUEST_OS */
    ELFNOTE(5, .asciz, "xen-3.0")          /* XEN_VERSION */
    ELFNOTE(8, .asciz, "generic")          /* LOADER */
    ELFNOTE(3, .quad, 0xffffffff80000000)  /* VIRT_BASE */
    ELFNOTE(4, .quad, 0xffffffff80000000)  /* PADDR_OFFSET */
    ELFNOTE(1, .quad, _start)              /* ENTRY */

    .text
    .code64
    .globl _start
_start:
    mov bench_iterations(%rip), %rcx
    xor %eax, %eax
    test %rcx, %rcx
    jz compute_done
compute_loop:
    add %rcx, %rax
    mov %rax, scratch(%rip)
    xor scratch+8(%rip), %rax
    dec %rcx
    jnz compute_loop
    .globl compute_done
compute_done:
    mov bench_hypercalls(%rip), %r12
hcall_loop:
    test %r12, %r12
    jz hcall_done
    mov $17, %eax          /* __HYPERVISOR_xen_version */
    xor %edi, %edi         /* XENVER_version */
    xor %esi, %esi
    syscall
    dec %r12
    jmp hcall_loop
hcall_done:
    movl $0, shutdown_reason(%rip)
    mov $29, %eax          /* __HYPERVISOR_sched_op */
    mov $2, %edi           /* SCHEDOP_shutdown */
    lea shutdown_reason(%rip), %rsi
    syscall
    ud2

    .data
    .globl bench_iterations, bench_hypercalls
    .align 8
bench_iterations: .quad 0
bench_hypercalls: .quad 0
shutdown_reason:  .long 0, 0
scratch:          .quad 0, 0x5a5a5a5a5a5a5a5a
