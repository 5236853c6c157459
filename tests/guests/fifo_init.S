/*
 * fifo_init.S - EVTCHNOP_init_control checks its arguments in the order of xen/common/
 * event_fifo.c evtchn_fifo_init_control: the vcpu (-ENOENT: domain_vcpu() is NULL, whatever
 * the offset), then the offset (-EINVAL past PAGE_SIZE - sizeof(control block), then
 * -EINVAL when not 8-byte aligned), then the frame (map_guest_page: -EINVAL for one the
 * domain does not own, the domain staying on the 2-level ABI), then a second control block
 * for the vcpu (map_control_block: -EINVAL); on success link_bits (17) is written back.
 * EVTCHNOP_expand_array then adds the first event array page.  Results in `rcs`.
 */
#include "common.S"

#define __HYPERVISOR_event_channel_op   32
#define EVTCHNOP_init_control           11
#define EVTCHNOP_expand_array           12

/* init_control(gfn in %eax, offset, vcpu) -> rcs[slot] */
.macro INIT_CONTROL offset, vcpu, slot
        movl    %eax, ctl
        movl    $0, ctl+4
        movl    $\offset, ctl+8
        movl    $\vcpu, ctl+12
        movb    $0, ctl+16
        movl    $EVTCHNOP_init_control, %ebx
        movl    $ctl, %ecx
        HCALL   __HYPERVISOR_event_channel_op
        movl    %eax, rcs+4*\slot
.endm

/* the frame of a page of ours: its mfn from the start_info mfn_list */
.macro MFN_OF va
        movl    $\va, %eax
        subl    $VIRT_BASE, %eax
        shrl    $12, %eax
        movl    SI_MFN_LIST(%ebp), %edx
        movl    (%edx,%eax,4), %eax
.endm

        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        movl    %esi, %ebp
        MFN_OF  cb_page
        INIT_CONTROL 4, 5, 0                    /* vcpu 5 (and a bad offset) */
        MFN_OF  cb_page
        INIT_CONTROL 4096-64, 0, 1              /* crosses the page */
        MFN_OF  cb_page
        INIT_CONTROL 4, 0, 2                    /* not 8-byte aligned */
        movl    $0xfffff, %eax
        INIT_CONTROL 0, 0, 3                    /* not our frame */
        MFN_OF  cb_page
        INIT_CONTROL 64, 0, 4                   /* fine */
        movzbl  ctl+16, %eax
        movl    %eax, link_bits
        MFN_OF  cb_page
        INIT_CONTROL 128, 0, 5                  /* a second one */
        MFN_OF  array_page
        movl    %eax, expand
        movl    $0, expand+4
        movl    $EVTCHNOP_expand_array, %ebx
        movl    $expand, %ecx
        HCALL   __HYPERVISOR_event_channel_op
        movl    %eax, rcs+24
        PRINT   done, done_end-done
        POWEROFF

        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc

        .data
        .globl rcs, link_bits
rcs:            .fill 7, 4, 0x55
link_bits:      .long 0
ctl:            .fill 24, 1, 0
expand:         .long 0, 0
done:   .ascii  "fifo: done\n"
done_end:

        .bss
        .balign 4096
        .globl cb_page, array_page
cb_page:        .space 4096
array_page:     .space 4096
        .space  4096
stack_top:
