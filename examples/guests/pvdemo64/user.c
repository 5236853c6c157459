/*
 * user.c - pvdemo64: a user-mode task, the way Linux runs /init on Xen PV.
 *
 * A user L4 that maps only the low region (through the same L3 as our
 * kernel L4: the kernel sees user memory, the user sees nothing of the
 * kernel), installed with MMUEXT_NEW_USER_BASEPTR; a kernel stack for
 * bounces from user mode (stack_switch); FS base (TLS) and user GS base by
 * set_segment_base; then the iret hypercall to CS/SS of our GDT with RPL 3,
 * which makes Xen switch to user mode (toggle_guest_mode: user L4, swapgs).
 *
 * The task (userprog.S) makes system calls with "syscall": Xen bounces each to
 * our syscall callback (head.S syscall_callback -> do_syscall) on the
 * stack_switch stack, in kernel mode again with the kernel L4 and GS base;
 * the frame's RCX/R11 are as the CPU left them.  We return with the iret
 * hypercall and VGCF_in_syscall (sysret semantics).  It also takes page
 * faults (bounced with the error code's U bit set; one is fixed by mapping
 * the page and retried, two are expected and skipped) and an event upcall
 * while in user mode.  SYS_EXIT comes back here for good (head.S user_exit).
 *
 * Expected behaviour: xen/arch/x86/x86_64/entry.S (lstar_enter,
 * switch_to_kernel, create_bounce_frame), xen/arch/x86/pv/iret.c (do_iret),
 * xen/arch/x86/pv/domain.c (toggle_guest_mode), pv/misc-hypercalls.c
 * (do_set_segment_base), pv/traps.c (pv_inject_event: the #PF U bit),
 * xen/arch/x86/mm.c (MMUEXT_NEW_USER_BASEPTR; m2p_strict and slot 256).
 */
#include <stddef.h>
#include <stdint.h>

#include "xen.h"
#include "hypercall.h"
#include "lib.h"
#include "pvdemo64.h"
#include "user.h"

extern uint8_t user_data_page[PAGE_SIZE], user_tls_page[PAGE_SIZE], user_gs_pages[2][PAGE_SIZE],
    low_tls_page[PAGE_SIZE], user_demand_page[PAGE_SIZE];
extern char user_entry[], user_msg[], __user_text_start[];
extern char task_stack_top[];
extern uint64_t syscall_entry_rflags;
long run_user(uint64_t rip, uint64_t rsp, uint64_t cs, uint64_t ss, uint64_t arg);
void user_exit(long code) NORETURN;

#define PTE_USER_RW (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_NX)
#define PDE_FLAGS   (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)
#define TLS_MAGIC   0x7157000000000007
#define GS_MAGIC    0x6500000000000001
#define GS2_MAGIC   0x6500000000000002
#define USER_WAIT_NS (200ULL * 1000 * 1000)     /* how long the task waits for an event */

static struct user_data *const ud = (struct user_data *)user_data_page;   /* kernel alias */
static uint64_t user_cs, user_ss, kernel_sp_frame_rip;
static int in_user_task;

/* What the kernel side saw, checked after the task exited. */
#define MAX_USER_FAULTS 4
static struct user_fault {
    uint64_t cr2, error_code, rip, cs, ss, frame_rip_va;
    uint8_t saved_mask, mask_in_handler;
    int action;                             /* 1 mapped, 2 resumed at the fixup */
    int rc;
} user_faults[MAX_USER_FAULTS];
static unsigned int nr_user_faults;
static struct {
    unsigned int count;
    uint64_t cs, ss, rsp, rflags, frame_rip_va;
    uint8_t saved_mask;
} user_upcalls;
static unsigned int nr_syscalls;
static uint64_t shadow_after_sel;
static int rc_gs_user, rc_gs_sel, rc_arm_timer = 1;
static char user_said[64];
static long user_said_len = -1;

/* ------------------------------------------------------------------------
 * Called from kernel.c / head.S while the task runs
 * ------------------------------------------------------------------------ */
static uint64_t cr2_now(void)
{
    volatile struct vcpu_info *vi = this_vcpu()->vi;

    return vi ? vi->arch.cr2 : 0;
}

/* A trap from user mode (do_trap): 1 if handled. */
int user_trap(struct trap_frame *f)
{
    struct user_fault *uf;

    if (!in_user_task || f->vector != 14 || nr_user_faults == MAX_USER_FAULTS)
        return 0;
    uf = &user_faults[nr_user_faults++];
    uf->cr2 = cr2_now();
    uf->error_code = f->error_code;
    uf->rip = f->rip;
    uf->cs = f->cs & 0xffff;
    uf->ss = f->ss;
    uf->saved_mask = (f->cs >> 32) & 0xff;
    uf->mask_in_handler = this_vcpu()->vi->evtchn_upcall_mask;
    uf->frame_rip_va = (uint64_t)&f->rip;
    if (uf->cr2 == USER_DEMAND_VA && (uf->error_code & PFEC_WRITE)) {
        /* Demand paging: map a page there and let the store run again. */
        uf->rc = HYPERVISOR_update_va_mapping(USER_DEMAND_VA,
                                              mfn_pte(virt_to_mfn(user_demand_page), PTE_USER_RW),
                                              UVMF_INVLPG);
        uf->action = 1;
        return uf->rc == 0;
    }
    if (ud->fixup) {
        /* A fault the task expects: resume at the address it gave us. */
        f->rip = ud->fixup;
        uf->action = 2;
        return 1;
    }
    return 0;
}

/* An event upcall that interrupted the task (do_hypervisor_callback). */
void user_upcall(struct trap_frame *f)
{
    if (!in_user_task)
        return;
    user_upcalls.count++;
    {   /* the last one: the one the task waited for in its step 8 */
        user_upcalls.cs = f->cs & 0xffff;
        user_upcalls.ss = f->ss;
        user_upcalls.rsp = f->rsp;
        user_upcalls.rflags = f->rflags;
        user_upcalls.saved_mask = (f->cs >> 32) & 0xff;
        user_upcalls.frame_rip_va = (uint64_t)&f->rip;
    }
    ud->user_upcalls++;
}

static uint64_t sys_check(struct trap_frame *f)
{
    volatile struct vcpu_info *vi = this_vcpu()->vi;
    uint64_t gs = rdmsr(MSR_GS_BASE), gs0 = read_gs0(), shadow = rdmsr(MSR_SHADOW_GS_BASE);
    uint64_t fs = rdmsr(MSR_FS_BASE), cr3 = probe_read_cr3();

    check((uint64_t)&f->rip == kernel_sp_frame_rip && f->rcx == f->r13 && f->r11 == f->r12,
          "syscall from user mode bounced to the syscall callback, frame at the stack_switch stack "
          "(RIP slot %p, want %#lx); RCX %#lx (the user's return address %#lx) and R11 %#lx "
          "(its RFLAGS %#lx) as the CPU left them", &f->rip, kernel_sp_frame_rip, f->rcx, f->r13,
          f->r11, f->r12);
    check(f->rip == f->rcx && (f->cs & 0xffffffffUL) == FLAT_USER_CS && ((f->cs >> 32) & 0xff) == 0 &&
          f->ss == FLAT_USER_SS && f->rsp == f->r14 && f->rflags == f->r12 &&
          (f->rflags & X86_EFLAGS_DF),
          "syscall frame: RIP %#lx, CS %#lx (Xen's FLAT_USER_CS64, saved mask 0), SS %#lx, RSP %#lx "
          "(user's %#lx), RFLAGS %#lx (the user's, DF included)", f->rip, f->cs, f->ss, f->rsp,
          f->r14, f->rflags);
    check(!(syscall_entry_rflags & X86_EFLAGS_DF) && vi->evtchn_upcall_mask == 1 &&
          gs == (uint64_t)&vcpus[0] && gs0 == gs && shadow == USER_GS_VA && fs == USER_TLS_VA &&
          cr3 == xen_pfn_to_cr3(kernel_l4_mfn),
          "in the syscall callback: DF clear (RFLAGS %#lx), events masked (CALLBACKF_mask_events), "
          "kernel GS base %#lx (%%gs:0 %#lx), user GS base %#lx in MSR_SHADOW_GS_BASE, FS base %#lx "
          "kept, CR3 %#lx (kernel L4)", syscall_entry_rflags, gs, gs0, shadow, fs, cr3);
    return SYS_CHECK_MAGIC | f->rdi;
}

/* The syscall callback (head.S syscall_callback). */
void do_syscall(struct trap_frame *f)
{
    long n;

    nr_syscalls++;
    /* SYS_CHECK returns sysret-style (VGCF_in_syscall), the others with a
     * plain iret as Linux 6.1 does (head.S pops this as iret_context.flags). */
    f->error_code = 0;
    if (f->rax == SYS_CHECK) {
        f->rax = sys_check(f);
        f->error_code = VGCF_in_syscall;
    } else if (f->rax == SYS_SET_GS_USER) {
        if (f->rdi == USER_GS2_VA)
            rc_gs_user = HYPERVISOR_set_segment_base(SEGBASE_GS_USER, f->rdi);
        else {
            shadow_after_sel = rdmsr(MSR_SHADOW_GS_BASE);
            (void)HYPERVISOR_set_segment_base(SEGBASE_GS_USER, f->rdi);
        }
        f->rax = 0;
    } else if (f->rax == SYS_SET_GS_SEL) {
        rc_gs_sel = HYPERVISOR_set_segment_base(SEGBASE_GS_USER_SEL, f->rdi);
        f->rax = 0;
    } else if (f->rax == SYS_WRITE) {
        /* The user buffer is reachable through our own L4 (its low region). */
        n = (long)f->rsi;
        if (f->rdi >= USER_CODE_VA && f->rdi + n <= USER_CODE_VA + USER_CODE_PAGES * PAGE_SIZE &&
            n > 0 && n < (long)sizeof(user_said)) {
            memcpy(user_said, (const void *)f->rdi, n);
            user_said[n] = '\0';
            user_said_len = n;
            printk("pvdemo64: the user task says \"%s\"\n", user_said);
            f->rax = n;
        } else
            f->rax = -XEN_EFAULT;
    } else if (f->rax == SYS_ARM_TIMER) {
        struct vcpu_set_singleshot_timer ss = { .timeout_abs_ns = xen_clock_ns() + 1000000 };

        rc_arm_timer = HYPERVISOR_vcpu_op(VCPUOP_set_singleshot_timer, 0, &ss);
        f->rax = rc_arm_timer;
    } else if (f->rax == SYS_EXIT) {
        in_user_task = 0;
        user_exit((long)f->rdi);
    } else
        f->rax = -XEN_ENOSYS;
    /* As Linux's xen_entry_SYSCALL_64: Xen puts its own FLAT_USER_CS/SS in
     * the frame; the task runs on our GDT's, so a plain iret returns to those. */
    f->cs = user_cs;
    f->ss = user_ss;
}

/* ------------------------------------------------------------------------
 * Step 16: set up, run and check the task
 * ------------------------------------------------------------------------ */
static uint64_t ns_to_tsc(uint64_t ns)
{
    volatile struct vcpu_time_info *t = &this_vcpu()->vi->time;
    uint64_t tsc;

    if (!t->tsc_to_system_mul)
        return ns;
    tsc = (ns << 32) / t->tsc_to_system_mul;
    return t->tsc_shift >= 0 ? tsc >> t->tsc_shift : tsc << -t->tsc_shift;
}

void step_user(void)
{
    struct vcpu_state *v = this_vcpu();
    volatile struct vcpu_info *vi = v->vi;
    uint64_t *user_l4, e256, kernel_va = (uint64_t)_text, m2p_va;
    unsigned long user_l4_mfn;
    const struct user_fault *f0 = &user_faults[0], *f1 = &user_faults[1], *f2 = &user_faults[2];
    long code;
    int rc, rc2, rc3;

    if (!low_l1 || !gdt_ok || !kernel_l4_mfn) {
        check(0, "user task: needs our page tables, the low region and our GDT");
        return;
    }
    user_cs = GDT_SEL(GDT_USER_CS);
    user_ss = GDT_SEL(GDT_USER_DS);
    events_disable();

    /* The user L4: the low region only (slot 0, the kernel's L3 for it). */
    user_l4 = pgt_alloc();
    if (!user_l4) {
        check(0, "user task: no page for the user L4");
        return;
    }
    user_l4[l4_index(LOW_REGION_VA)] = kernel_l4[l4_index(LOW_REGION_VA)];
    user_l4_mfn = virt_to_mfn(user_l4);
    rc = make_readonly(user_l4);
    rc2 = mmuext(MMUEXT_PIN_L4_TABLE, user_l4_mfn);
    rc3 = mmuext(MMUEXT_NEW_USER_BASEPTR, user_l4_mfn);
    e256 = user_l4[ROOT_PAGETABLE_FIRST_XEN_SLOT];
    check(rc == 0 && rc2 == 0 && rc3 == 0 && e256 == 0 && user_l4[l4_index(VIRT_BASE)] == 0,
          "user L4 %p (mfn %#lx): read-only %d, MMUEXT_PIN_L4_TABLE %d, MMUEXT_NEW_USER_BASEPTR %d; "
          "maps only slot 0; its M2P slot stays blank (never a kernel L4, no m2p_strict)",
          user_l4, user_l4_mfn, rc, rc2, rc3);
    if (rc2 || rc3)
        return;

    /* Kernel stack for bounces from user mode, TLS and GS bases. */
    ((volatile uint64_t *)user_tls_page)[0] = TLS_MAGIC;
    ((volatile uint64_t *)user_gs_pages[0])[0] = GS_MAGIC;
    ((volatile uint64_t *)user_gs_pages[1])[0] = GS2_MAGIC;
    rc = HYPERVISOR_stack_switch(FLAT_KERNEL_SS, (unsigned long)task_stack_top);
    kernel_sp_frame_rip = ((uint64_t)task_stack_top & ~15UL) - 40;
    rc2 = HYPERVISOR_set_segment_base(SEGBASE_FS, USER_TLS_VA);
    rc3 = HYPERVISOR_set_segment_base(SEGBASE_GS_USER, USER_GS_VA);
    check(rc == 0 && rc2 == 0 && rc3 == 0 && rdmsr(MSR_FS_BASE) == USER_TLS_VA &&
          rdmsr(MSR_SHADOW_GS_BASE) == USER_GS_VA && rdmsr(MSR_GS_BASE) == (uint64_t)&vcpus[0],
          "task set up: stack_switch(%#x, %p) %d, set_segment_base(SEGBASE_FS, %#x) %d, "
          "(SEGBASE_GS_USER, %#x) %d", FLAT_KERNEL_SS, task_stack_top, rc, USER_TLS_VA, rc2,
          USER_GS_VA, rc3);

    /* No events while the task runs but the one it asks for (SYS_ARM_TIMER):
     * an event delivered right on the exit of an iret with VGCF_in_syscall
     * would bounce with the RCX/R11 of the iret hypercall itself (Xen does
     * not restore them on that path), not the sysret values SYS_CHECK's
     * return is checked for. */
    rc = HYPERVISOR_vcpu_op(VCPUOP_stop_periodic_timer, 0, NULL);
    rc2 = HYPERVISOR_vcpu_op(VCPUOP_stop_singleshot_timer, 0, NULL);
    check(rc == 0 && rc2 == 0, "timers stopped for the task: VCPUOP_stop_periodic_timer %d, "
          "VCPUOP_stop_singleshot_timer %d", rc, rc2);

    memset(ud, 0, sizeof(*ud));
    m2p_va = MACH2PHYS_VIRT_START + 8 * virt_to_mfn(user_data_page);
    ud->m2p_va = m2p_va;
    ud->m2p_val = USER_KERNEL_READ_SENTINEL;
    ud->kernel_va = kernel_va;
    ud->kernel_read_val = USER_KERNEL_READ_SENTINEL;
    ud->tsc_limit = ns_to_tsc(USER_WAIT_NS);
    ud->gs_sel_in = GDT_SEL(GDT_TLS);
    printk("pvdemo64: entering user mode at %#lx (iret hypercall, CS %#lx, SS %#lx, RSP %#x)\n",
           USER_CODE_VA + (uint64_t)(user_entry - __user_text_start), user_cs, user_ss, USER_STACK_TOP);

    in_user_task = 1;
    code = run_user(USER_CODE_VA + (uint64_t)(user_entry - __user_text_start), USER_STACK_TOP,
                    user_cs, user_ss, USER_DATA_VA);
    in_user_task = 0;
    events_enable();

    check(code == USER_EXIT_CODE && ud->progress == 9 && nr_syscalls == 7,
          "the task ran to its end: SYS_EXIT(%ld) after %u system calls (step %lu) brought us back "
          "to the kernel", code, nr_syscalls, ud->progress);
    check((ud->cs & 0xffff) == user_cs && (ud->ss & 0xffff) == user_ss && ud->fs0 == TLS_MAGIC &&
          ud->gs0 == GS_MAGIC,
          "in user mode: CS %#lx, SS %#lx (our GDT, RPL 3), %%fs:0 = %#lx (SEGBASE_FS), "
          "%%gs:0 = %#lx (the user GS base: Xen swapped GS on the way out)",
          ud->cs, ud->ss, ud->fs0, ud->gs0);
    check(ud->sys_rax == (SYS_CHECK_MAGIC | 0x1234) && ud->sys_rcx == ud->sys_expect_rcx &&
          ud->sys_r11 == ud->sys_rflags_before && ud->sys_rflags_after == ud->sys_rflags_before &&
          (ud->cs_after_sysret & 0xffff) == FLAT_USER_CS && (ud->ss_after_sysret & 0xffff) == FLAT_USER_SS,
          "back from the syscall (iret with VGCF_in_syscall): RAX %#lx, RCX %#lx (= RIP %#lx), "
          "R11 %#lx and RFLAGS %#lx (= RFLAGS before, %#lx), CS %#lx / SS %#lx (Xen's sysretq)",
          ud->sys_rax, ud->sys_rcx, ud->sys_expect_rcx, ud->sys_r11, ud->sys_rflags_after,
          ud->sys_rflags_before, ud->cs_after_sysret, ud->ss_after_sysret);
    check((ud->cs_after_iret & 0xffff) == user_cs && (ud->ss_after_iret & 0xffff) == user_ss,
          "back from a syscall by a plain iret (flags 0): CS %#lx, SS %#lx from the frame again",
          ud->cs_after_iret, ud->ss_after_iret);
    check(rc_gs_user == 0 && ud->gs0_after_set == GS2_MAGIC && rc_gs_sel == 0 &&
          (ud->gs_sel & 0xffff) == GDT_SEL(GDT_TLS) && ud->gs0_sel == ((volatile uint64_t *)low_tls_page)[0] &&
          shadow_after_sel == LOW_TLS_VA && ud->gs0_restored == GS_MAGIC,
          "GS from kernel mode: SEGBASE_GS_USER(%#x) -> user %%gs:0 %#lx; SEGBASE_GS_USER_SEL(%#x) "
          "-> user %%gs %#lx, base %#lx (the descriptor's), %%gs:0 %#lx; SEGBASE_GS_USER(%#x) -> %#lx",
          USER_GS2_VA, ud->gs0_after_set, GDT_SEL(GDT_TLS), ud->gs_sel, shadow_after_sel,
          ud->gs0_sel, USER_GS_VA, ud->gs0_restored);

    check(nr_user_faults == 3 && f0->cr2 == m2p_va && f0->error_code == PFEC_USER &&
          f0->action == 2 && ud->m2p_val == USER_KERNEL_READ_SENTINEL,
          "user read of the M2P at %#lx faulted (#PF, error code %#lx: user, read, not present; "
          "slot 256 is blank in a user-only L4) and was resumed", f0->cr2, f0->error_code);
    check(nr_user_faults >= 2 && f1->cr2 == USER_DEMAND_VA && f1->error_code == (PFEC_USER | PFEC_WRITE) &&
          f1->cs == user_cs && f1->ss == user_ss && f1->frame_rip_va == kernel_sp_frame_rip &&
          f1->saved_mask == 0 && f1->mask_in_handler == 1 && f1->action == 1 && f1->rc == 0 &&
          ud->demand_val == USER_DEMAND_MAGIC,
          "user #PF at %#lx: error code %#lx (user, write, not present), CS %#lx, SS %#lx, frame at "
          "the stack_switch stack, TI_IF masked events; the page mapped, the store retried (%#lx)",
          f1->cr2, f1->error_code, f1->cs, f1->ss, ud->demand_val);
    check(nr_user_faults >= 3 && f2->cr2 == kernel_va && f2->error_code == PFEC_USER &&
          f2->action == 2 && ud->fault_resumed == 1 && ud->kernel_read_val == USER_KERNEL_READ_SENTINEL,
          "user read of kernel address %#lx faulted (error code %#lx: the user L4 maps no kernel) "
          "and was resumed at its fixup", f2->cr2, f2->error_code);
    check(rc_arm_timer == 0 && user_upcalls.count >= 1 && ud->user_upcalls == user_upcalls.count &&
          ud->waited_tsc < ud->tsc_limit &&
          user_upcalls.cs == user_cs &&
          user_upcalls.ss == user_ss && user_upcalls.rsp >= USER_STACK_VA &&
          user_upcalls.rsp <= USER_STACK_TOP && user_upcalls.frame_rip_va == kernel_sp_frame_rip &&
          user_upcalls.saved_mask == 0 && (user_upcalls.rflags & X86_EFLAGS_IF),
          "event upcalls interrupted user mode (%u; the task waited %lu TSC ticks for the VIRQ_TIMER of "
          "the single-shot timer it asked for): "
          "frame CS %#lx, SS %#lx, RSP %#lx on the user stack, saved mask 0, on the stack_switch stack",
          user_upcalls.count, ud->waited_tsc, user_upcalls.cs, user_upcalls.ss, user_upcalls.rsp);
    check(user_said_len == (long)strlen("hello from user mode") && ud->write_ret == (uint64_t)user_said_len &&
          strcmp(user_said, "hello from user mode") == 0,
          "SYS_WRITE: the kernel read the task's message through its own L4 (%ld bytes)", user_said_len);

    rc = mmuext(MMUEXT_NEW_USER_BASEPTR, 0);
    rc2 = mmuext(MMUEXT_UNPIN_TABLE, user_l4_mfn);
    rc3 = HYPERVISOR_set_segment_base(SEGBASE_FS, 0);
    check(rc == 0 && rc2 == 0 && rc3 == 0 && vi->evtchn_upcall_mask == 0,
          "task gone: MMUEXT_NEW_USER_BASEPTR(0) %d, MMUEXT_UNPIN_TABLE(user L4) %d, FS base 0 %d", rc, rc2, rc3);
}
