/*
 * ev_timer.S - a tiny 32-bit PV guest (PAE) for tests/test_time.py, test_events.py and
 * benchmarks/events.py.  Self-contained: its own Xen ELF notes, hypercalls with `int $0x82`
 * (EAX = number, EBX.. = arguments; xen-pv-abi.md section 2.1).
 *
 * The host patches `mode` (and `deadline`, `period`, `count`) before the run and reads the
 * results (`ticks`, `ipis`, `tick_tsc[]`, `woke_tsc`, ...) afterwards.  Every mode maps
 * shared_info at `shinfo` (update_va_mapping) and registers `upcall` as the event callback
 * (set_callbacks).  The upcall handles port words 0 only (ports < 32): it clears
 * evtchn_upcall_pending, takes evtchn_pending_sel, clears the pending & ~mask bits of word 0
 * and counts the timer and IPI ports among them; it records the TSC of each timer event.
 *
 * Modes:
 *   0 hang          SCHEDOP_block forever, nothing bound
 *   1 singleshot    VIRQ_TIMER, periodic stopped, VCPUOP_set_singleshot_timer(deadline)
 *   2 set_timer_op  the same with set_timer_op(deadline)
 *   3 periodic      VCPUOP_set_periodic_timer(period), `count` ticks
 *   4 poll_timeout  SCHEDOP_poll(timer port, timeout = deadline), no timer armed
 *   5 poll_masked   timer port masked, set_timer_op(deadline), SCHEDOP_poll(timer port),
 *                   then EVTCHNOP_unmask (events unmasked first)
 *   6 self_ipi      bind_ipi(vcpu 0), events unmasked, `count` x EVTCHNOP_send to itself
 *   7 idle          VIRQ_TIMER with Xen's default 10 ms period, block until `count` ticks
 *   8 masked_hang   VIRQ_TIMER port masked, SCHEDOP_block forever
 *   9 block_upcall  like 2, but blocks with the vcpu's events unmasked and records the
 *                   frame the upcall found on the stack (`frame[]`)
 *  10 pingpong      two vCPUs: vCPU 1 (brought up by the host with a context entering
 *                   `ap_entry` on `ap_stack_top`) blocks; vCPU 0 sends it `count` IPIs one at a
 *                   time, and its upcall answers each with an IPI back (`ipis[0]`, `ipis[1]`)
 *
 * The upcall tells the vCPUs apart by their stacks (vCPU 1 runs on ap_stack) and handles
 * only the ports in `portmask[vcpu]`.
 */
#define FLAT_KERNEL_CS 0xE019
#define FLAT_KERNEL_DS 0xE021

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

        ELFNOTE(6,  .asciz "ev_timer")          /* GUEST_OS */
        ELFNOTE(5,  .asciz "xen-3.0")           /* XEN_VERSION */
        ELFNOTE(8,  .asciz "generic")           /* LOADER */
        ELFNOTE(3,  .long 0xC0000000)           /* VIRT_BASE */
        ELFNOTE(4,  .long 0xC0000000)           /* PADDR_OFFSET */
        ELFNOTE(1,  .long _start)               /* ENTRY */
        ELFNOTE(9,  .asciz "yes")               /* PAE_MODE */
        ELFNOTE(2,  .long hypercall_page)       /* HYPERCALL_PAGE */

.macro HCALL nr
        movl    $\nr, %eax
        int     $0x82
.endm

#define SI_SHARED_INFO  36
#define VI_PENDING      (shinfo + 0)
#define VI_MASK         (shinfo + 1)
#define VI_SEL          (shinfo + 4)
#define EV_PENDING      (shinfo + 2048)
#define EV_MASK         (shinfo + 2176)

        .text
        .globl _start
_start:
        cld
        movl    %esi, start_info_ptr
        movl    $stack_top, %esp
        movl    $FLAT_KERNEL_CS, %ebx           /* set_callbacks(event, failsafe) */
        movl    $upcall, %ecx
        movl    $FLAT_KERNEL_CS, %edx
        movl    $failsafe, %esi
        HCALL   4
        movl    start_info_ptr, %eax            /* update_va_mapping(shinfo, maddr|P|RW|A|D) */
        movl    SI_SHARED_INFO(%eax), %ecx
        orl     $0x63, %ecx
        movl    $shinfo, %ebx
        xorl    %edx, %edx
        movl    $2, %esi                        /* UVMF_INVLPG */
        HCALL   14
        testl   %eax, %eax
        jnz     crash
        movl    mode, %eax
        cmpl    $11, %eax
        jae     crash
        jmp     *modes(, %eax, 4)

/* ---------------------------------------------------------------- helpers */
bind_timer:                                     /* EVTCHNOP_bind_virq(VIRQ_TIMER, vcpu 0) */
        movl    $1, %ebx
        movl    $bind_virq_arg, %ecx
        HCALL   32
        testl   %eax, %eax
        jnz     crash
        movl    bind_virq_arg + 8, %eax
        movl    %eax, timer_port
        btsl    %eax, portmask
        ret

bind_ipi:                                       /* EVTCHNOP_bind_ipi(vcpu %edi) -> ipi_port[%edi] */
        movl    %edi, bind_ipi_arg
        movl    $7, %ebx
        movl    $bind_ipi_arg, %ecx
        HCALL   32
        testl   %eax, %eax
        jnz     crash
        movl    bind_ipi_arg + 4, %eax
        movl    %eax, ipi_port(, %edi, 4)
        btsl    %eax, portmask(, %edi, 4)
        ret

stop_periodic:                                  /* VCPUOP_stop_periodic_timer(vcpu 0) */
        movl    $7, %ebx
        xorl    %ecx, %ecx
        xorl    %edx, %edx
        HCALL   24
        ret

set_timer_op:                                   /* set_timer_op(deadline) */
        movl    deadline, %ebx
        movl    deadline + 4, %ecx
        HCALL   15
        ret

block_until_count:                              /* block (events masked before the test) */
1:      movb    $1, VI_MASK
        movl    ticks, %eax
        cmpl    count, %eax
        jae     2f
        movl    $1, %ebx                        /* SCHEDOP_block: unmasks, blocks */
        xorl    %ecx, %ecx
        HCALL   29
        jmp     1b
2:      ret

shutdown:
        movl    $2, %ebx                        /* SCHEDOP_shutdown(poweroff) */
        movl    $zero, %ecx
        HCALL   29
        jmp     shutdown

crash:
        movl    $3, zero_crash
        movl    $2, %ebx
        movl    $zero_crash, %ecx
        HCALL   29
        jmp     crash

/* ---------------------------------------------------------------- modes */
mode_hang:
        movl    $1, %ebx
        xorl    %ecx, %ecx
        HCALL   29
        jmp     mode_hang

mode_singleshot:
        call    bind_timer
        call    stop_periodic
        movl    $8, %ebx                        /* VCPUOP_set_singleshot_timer(vcpu 0, &{deadline, 0}) */
        xorl    %ecx, %ecx
        movl    $deadline, %edx
        HCALL   24
        movl    %eax, rc
        movl    $1, count
        call    block_until_count
        jmp     shutdown

mode_set_timer_op:
        call    bind_timer
        call    stop_periodic
        call    set_timer_op
        movl    %eax, rc
        movl    $1, count
        call    block_until_count
        jmp     shutdown

mode_periodic:
        call    bind_timer
        movl    $6, %ebx                        /* VCPUOP_set_periodic_timer(vcpu 0, &period) */
        xorl    %ecx, %ecx
        movl    $period, %edx
        HCALL   24
        movl    %eax, rc
        call    block_until_count
        jmp     shutdown

mode_poll_timeout:
        call    bind_timer
        call    stop_periodic
        movl    deadline, %eax                  /* sched_poll {&timer_port, 1, deadline} */
        movl    %eax, poll_arg + 8
        movl    deadline + 4, %eax
        movl    %eax, poll_arg + 12
        movl    $3, %ebx
        movl    $poll_arg, %ecx
        HCALL   29
        movl    %eax, rc
        rdtsc
        movl    %eax, woke_tsc
        movl    %edx, woke_tsc + 4
        jmp     shutdown

mode_poll_masked:
        call    bind_timer
        call    stop_periodic
        movl    timer_port, %eax
        lock btsl %eax, EV_MASK
        call    set_timer_op
        movl    $3, %ebx                        /* SCHEDOP_poll(timer port, no timeout) */
        movl    $poll_arg, %ecx
        HCALL   29
        movl    %eax, rc
        rdtsc
        movl    %eax, woke_tsc
        movl    %edx, woke_tsc + 4
        movl    timer_port, %eax
        btl     %eax, EV_PENDING
        setc    pending_after_poll
        movl    ticks, %eax
        movl    %eax, ticks_after_poll
        movb    $0, VI_MASK                     /* vcpu events on; the port is still masked */
        movl    timer_port, %eax                /* EVTCHNOP_unmask(timer port) */
        movl    %eax, port_arg
        movl    $9, %ebx
        movl    $port_arg, %ecx
        HCALL   32
        movl    %eax, rc2
        movl    ticks, %eax                     /* the upcall ran on the way out */
        movl    %eax, ticks_after_unmask
        jmp     shutdown

mode_self_ipi:
        xorl    %edi, %edi
        call    bind_ipi
        movl    ipi_port, %eax
        movl    %eax, port_arg
        movb    $0, VI_MASK
        movl    count, %edi
1:      testl   %edi, %edi
        jz      2f
        movl    $4, %ebx                        /* EVTCHNOP_send(ipi port) */
        movl    $port_arg, %ecx
        HCALL   32
        decl    %edi
        jmp     1b
2:      jmp     shutdown

mode_idle:
        call    bind_timer
        call    block_until_count
        jmp     shutdown

mode_masked_hang:
        call    bind_timer
        movl    timer_port, %eax
        lock btsl %eax, EV_MASK
        jmp     mode_hang

mode_block_upcall:
        call    bind_timer
        call    stop_periodic
        call    set_timer_op
        movl    $1, record_frame
        movl    $1, %ebx                        /* SCHEDOP_block; the upcall comes on wake-up */
        xorl    %ecx, %ecx
        HCALL   29
        .globl  after_block
after_block:
        movl    %esp, esp_after_block
        jmp     shutdown

mode_pingpong:
        xorl    %edi, %edi
        call    bind_ipi
        movl    $1, %edi
        call    bind_ipi
        movl    ipi_port + 4, %eax
        movl    %eax, port_arg
        movb    $0, VI_MASK
        movl    count, %edi
1:      testl   %edi, %edi
        jz      4f
        movl    ipis, %ebp                      /* pongs so far */
        movl    $4, %ebx                        /* EVTCHNOP_send(vCPU 1's IPI port) */
        movl    $port_arg, %ecx
        HCALL   32
2:      movb    $1, VI_MASK                     /* wait for the pong */
        cmpl    ipis, %ebp
        jne     3f
        movl    $1, %ebx
        xorl    %ecx, %ecx
        HCALL   29
        jmp     2b
3:      movb    $0, VI_MASK
        decl    %edi
        jmp     1b
4:      jmp     shutdown

        .globl  ap_entry
ap_entry:                                       /* vCPU 1: block, forever */
        movb    $1, shinfo + 64 + 1
        movl    $1, %ebx
        xorl    %ecx, %ecx
        HCALL   29
        jmp     ap_entry

/* ---------------------------------------------------------------- the event callback */
        .globl  upcall
upcall:
        cmpl    $0, record_frame                /* Xen's frame: EIP, CS|mask<<16, EFLAGS */
        je      1f
        movl    $0, record_frame
        movl    %esp, frame_esp
        pushl   %eax
        movl    4(%esp), %eax
        movl    %eax, frame
        movl    8(%esp), %eax
        movl    %eax, frame + 4
        movl    12(%esp), %eax
        movl    %eax, frame + 8
        movzbl  VI_MASK, %eax
        movl    %eax, mask_in_upcall
        popl    %eax
1:      pushal
        xorl    %ebx, %ebx                      /* %ebx = vCPU id, from the stack */
        cmpl    $ap_stack, %esp
        jb      5f
        cmpl    $ap_stack_top, %esp
        jae     5f
        movl    $1, %ebx
5:      movl    %ebx, %esi                      /* %esi = its vcpu_info */
        shll    $6, %esi
        addl    $shinfo, %esi
        rdtsc
        movl    %eax, last_tsc
        movl    %edx, last_tsc + 4
        movb    $0, (%esi)                      /* evtchn_upcall_pending = 0 */
        xorl    %eax, %eax
        xchgl   %eax, 4(%esi)                   /* take evtchn_pending_sel */
        movl    EV_MASK, %ecx                   /* bits = pending[0] & ~mask[0] & ours */
        notl    %ecx
        andl    EV_PENDING, %ecx
        andl    portmask(, %ebx, 4), %ecx
        movl    %ecx, %edx
        notl    %edx
        lock andl %edx, EV_PENDING
        movl    timer_port, %eax
        testl   %eax, %eax
        jz      2f
        btl     %eax, %ecx
        jnc     2f
        movl    ticks, %eax                     /* tick_tsc[ticks] = TSC, for the first 16 */
        cmpl    $16, %eax
        jae     3f
        movl    last_tsc, %edx
        movl    %edx, tick_tsc(, %eax, 8)
        movl    last_tsc + 4, %edx
        movl    %edx, tick_tsc + 4(, %eax, 8)
3:      incl    ticks
2:      movl    ipi_port(, %ebx, 4), %eax
        testl   %eax, %eax
        jz      4f
        btl     %eax, %ecx
        jnc     4f
        incl    ipis(, %ebx, 4)
        testl   %ebx, %ebx                      /* vCPU 1 answers vCPU 0 */
        jz      4f
        movl    ipi_port, %eax
        movl    %eax, port_arg1
        movl    $4, %ebx
        movl    $port_arg1, %ecx
        HCALL   32
4:      incl    upcalls
        popal
        jmp     hypercall_page + 23 * 32        /* iret hypercall: EIP, CS, EFLAGS on the stack */

failsafe:
        jmp     crash

        .section .rodata
        .balign 4
modes:
        .long   mode_hang, mode_singleshot, mode_set_timer_op, mode_periodic, mode_poll_timeout
        .long   mode_poll_masked, mode_self_ipi, mode_idle, mode_masked_hang, mode_block_upcall
        .long   mode_pingpong

        .data
        .balign 8
        .globl  mode, deadline, period, count, rc, rc2, ticks, ipis, upcalls, tick_tsc, woke_tsc
        .globl  pending_after_poll, ticks_after_poll, ticks_after_unmask, timer_port, ipi_port
        .globl  frame, frame_esp, mask_in_upcall, esp_after_block, last_tsc
mode:           .long 0
count:          .long 1
deadline:       .quad 0                         /* also vcpu_set_singleshot_timer.timeout_abs_ns */
                .long 0                         /* .flags */
period:         .quad 10000000
rc:             .long 0
rc2:            .long 0
ticks:          .long 0
ipis:           .long 0, 0                      /* per vCPU */
upcalls:        .long 0
timer_port:     .long 0
ipi_port:       .long 0, 0                      /* per vCPU */
portmask:       .long 0, 0                      /* ports (word 0) each vCPU handles */
pending_after_poll: .long 0
ticks_after_poll:   .long 0
ticks_after_unmask: .long 0
record_frame:   .long 0
frame:          .long 0, 0, 0
frame_esp:      .long 0
mask_in_upcall: .long 0
esp_after_block: .long 0
last_tsc:       .quad 0
woke_tsc:       .quad 0
tick_tsc:       .fill 16, 8, 0
start_info_ptr: .long 0
zero:           .long 0
zero_crash:     .long 0
bind_virq_arg:  .long 0, 0, 0                   /* VIRQ_TIMER, vcpu 0, OUT port */
bind_ipi_arg:   .long 0, 0                      /* vcpu 0, OUT port */
port_arg:       .long 0
port_arg1:      .long 0
poll_arg:       .long timer_port, 1, 0, 0       /* ports, nr_ports, timeout (u64) */

        .bss
        .balign 4096
        .globl  hypercall_page
hypercall_page: .skip 4096
        .globl  shinfo
shinfo:         .skip 4096
stack:          .skip 16384
stack_top:
        .globl  ap_stack, ap_stack_top
ap_stack:       .skip 8192
ap_stack_top:
