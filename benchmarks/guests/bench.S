/*
 * Benchmark guest for benchmarks/boot.py: a compute loop (5 instructions per
 * iteration: two ALU ops, a store, a load, a branch) and a loop of cheap
 * hypercalls (xen_version(XENVER_version) through `int $0x82`), then shutdown.
 * The benchmark patches bench_iterations and bench_hypercalls before the run.
 */
#define ELFNOTE(type, desc_type, desc)    \
    .pushsection .note.Xen, "a", @note;   \
    .align 4;                             \
    .long 2f - 1f; .long 4f - 3f; .long type; \
1:  .asciz "Xen"; 2: .align 4;            \
3:  desc_type desc; 4: .align 4;          \
    .popsection

    ELFNOTE(6, .asciz, "bench")            /* GUEST_OS */
    ELFNOTE(5, .asciz, "xen-3.0")          /* XEN_VERSION */
    ELFNOTE(8, .asciz, "generic")          /* LOADER */
    ELFNOTE(9, .asciz, "yes")              /* PAE_MODE */
    ELFNOTE(3, .long, 0xC0000000)          /* VIRT_BASE */
    ELFNOTE(4, .long, 0xC0000000)          /* PADDR_OFFSET */
    ELFNOTE(1, .long, _start)              /* ENTRY */

    .text
    .globl _start
_start:
    mov bench_iterations, %ecx
    xor %eax, %eax
    test %ecx, %ecx
    jz compute_done
compute_loop:
    add %ecx, %eax
    mov %eax, scratch
    xor scratch+4, %eax
    dec %ecx
    jnz compute_loop
    .globl compute_done
compute_done:
    mov bench_hypercalls, %esi
hcall_loop:
    test %esi, %esi
    jz hcall_done
    mov $17, %eax          /* __HYPERVISOR_xen_version */
    xor %ebx, %ebx         /* XENVER_version */
    xor %ecx, %ecx
    int $0x82
    dec %esi
    jmp hcall_loop
hcall_done:
    movl $0, shutdown_reason
    mov $29, %eax          /* __HYPERVISOR_sched_op */
    mov $2, %ebx           /* SCHEDOP_shutdown */
    mov $shutdown_reason, %ecx
    int $0x82
    ud2

    .data
    .globl bench_iterations, bench_hypercalls
    .align 4
bench_iterations: .long 0
bench_hypercalls: .long 0
shutdown_reason:  .long 0
scratch:          .long 0, 0x5a5a5a5a
