/*
 * kernel.c - pvdemo64: a small x86_64 Xen PV kernel that walks the boot path
 * of Linux's x86_64 Xen PV port (arch/x86/xen/xen-head.S startup_xen,
 * enlighten_pv.c xen_start_kernel) and checks each step: start_info, the GS
 * base by WRMSR and set_segment_base, CPUID through the forced-emulation
 * prefix, xen_version, vm_assist, the M2P, trap table and callbacks,
 * shared_info and the virtual IF, its own pinned 4-level page tables
 * (pagetable.c), a GDT, a lazy-MMU multicall batch, exceptions; then event
 * channels, timers and SMP (smp.c) and a user-mode task (user.c).
 *
 * Every check prints one line on the Xen console (console_io):
 *     "pvdemo64: <what>"   when it passed,
 *     "FAIL: <what>"       when it did not,
 * and the run ends with "pvdemo64: all N checks passed" + SHUTDOWN_poweroff,
 * or "pvdemo64: K checks FAILED (of N)" + SHUTDOWN_crash.
 *
 * Written against the Xen 4.17 public headers and hypervisor sources (xen.h
 * names the header of every constant, README.md the source of every
 * expected answer); it uses only what the PV ABI guarantees, so the same
 * image should pass on a real Xen and on an emulator.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "xen.h"
#include "hypercall.h"
#include "lib.h"
#include "pvdemo64.h"

/* ------------------------------------------------------------------------
 * Symbols from head.S
 * ------------------------------------------------------------------------ */
extern char divide_error[], debug[], nmi[], int3[], overflow[], bounds[],
    invalid_op[], device_not_available[], double_fault[],
    coprocessor_segment_overrun[], invalid_TSS[], segment_not_present[],
    stack_segment[], general_protection[], page_fault[],
    spurious_interrupt_bug[], coprocessor_error[], alignment_check[],
    machine_check[], simd_coprocessor_error[], softint_81[];
extern char boot_stack_top[];

uint64_t probe_read(uint64_t va);
uint64_t probe_write(uint64_t va, uint64_t val);
uint64_t probe_hlt(void);
uint64_t probe_int3(void);
uint64_t probe_softint(void);
uint64_t probe_int_nohandler(void);
uint64_t probe_hypercall_regs(uint64_t out[3]);
extern char probe_read_insn[], probe_write_insn[], probe_hlt_insn[], probe_int3_insn[],
    probe_int3_next[], probe_softint_insn[], probe_softint_next[],
    probe_int_nohandler_insn[];
#define PROBE_RCX       0x1c1c1c1c1c1c1c1cUL
#define PROBE_R11       0x1111111111111111UL

/* Called from head.S */
void start_kernel(start_info_t *si) NORETURN;
void do_trap(struct trap_frame *f);
void do_hypervisor_callback(struct trap_frame *f);
void do_failsafe_callback(struct failsafe_frame *f);

/* ------------------------------------------------------------------------
 * Global state
 * ------------------------------------------------------------------------ */
start_info_t *xen_start_info;               /* RSI at entry, stored by head.S */
struct shared_info *HYPERVISOR_shared_info; /* mapped in step_shared_info() */

/* What Xen handed us at entry (head.S _start) */
uint64_t entry_rsi, entry_rsp, entry_cs, entry_ss, entry_rflags, early_gs_base;

/* Set by the probe_* helpers in head.S just before an instruction that is
 * meant to trap (vCPU 0 only); do_trap() resumes there and clears it. */
volatile uint64_t trap_fixup_rip;
uint64_t probe_rsp;                         /* RSP at the probed instruction */
uint64_t syscall_entry_rflags;              /* RFLAGS on entry to syscall_callback */

/* Per-vCPU state (pvdemo64.h); %gs:0 points at the running vCPU's. */
struct vcpu_state vcpus[NR_VCPUS];
volatile unsigned int bad_gs_upcalls;

struct trap_record last_trap;

static unsigned int checks_run, checks_failed;
long xen_ver;                   /* XENVER_version: major << 16 | minor */
static uint32_t cpuid_xen_version, cpuid_hypercall_msr;
char guest_magic[33];
int gdt_ok;

/* Must still be zero at entry: the domain builder zero-fills .bss. */
static uint64_t bss_canary[64];

/* Page-aligned .bss pages (all of them under the first boot L1). */
static uint8_t shared_info_page[PAGE_SIZE] PAGE_ALIGNED;  /* VA for shared_info */
#define NR_SCRATCH_PAGES 4
static uint8_t scratch_pages[NR_SCRATCH_PAGES][PAGE_SIZE] PAGE_ALIGNED;
uint64_t gdt[PAGE_SIZE / 8] PAGE_ALIGNED;
extern uint8_t low_tls_page[PAGE_SIZE];     /* pagetable.c, mapped at LOW_TLS_VA */

/* ------------------------------------------------------------------------
 * Console: console_io(CONSOLEIO_write).  With the hypercall page, output is
 * kept in a buffer until we have seen that Xen filled the page.
 * ------------------------------------------------------------------------ */
static int hypercalls_ready = !CONFIG_HYPERCALL_PAGE;
static char early_log[8192];
static unsigned int early_log_len;

void console_write(const char *s, unsigned int len)
{
    if (!hypercalls_ready) {
        while (len-- && early_log_len < sizeof(early_log))
            early_log[early_log_len++] = *s++;
        return;
    }
    (void)HYPERVISOR_console_io(CONSOLEIO_write, len, s);
}

static void early_log_flush(void)
{
    hypercalls_ready = 1;
    if (early_log_len)
        (void)HYPERVISOR_console_io(CONSOLEIO_write, early_log_len, early_log);
    early_log_len = 0;
}

/* ------------------------------------------------------------------------
 * Checks and the end of the run
 * ------------------------------------------------------------------------ */
int check(int ok, const char *fmt, ...)
{
    char buf[480];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);

    checks_run++;
    if (!ok)
        checks_failed++;
    printk("%s%s\n", ok ? "pvdemo64: " : "FAIL: ", buf);
    return ok;
}

static NORETURN void finish(void)
{
    struct sched_shutdown sd;
    struct vcpu_state *v = this_vcpu();

    printk("pvdemo64: %u event upcall(s), %u failsafe callback(s) taken on vcpu 0\n",
           v->upcalls, v->failsafes);
    check(bad_gs_upcalls == 0,
          "every handler found its struct vcpu_state at %%gs:0 (kernel GS base; %u did not)",
          bad_gs_upcalls);
    if (checks_failed == 0) {
        printk("pvdemo64: all %u checks passed\n", checks_run);
        sd.reason = SHUTDOWN_poweroff;
    } else {
        printk("pvdemo64: %u checks FAILED (of %u)\n", checks_failed, checks_run);
        sd.reason = SHUTDOWN_crash;
    }
    for (;;) {
        (void)HYPERVISOR_sched_op(SCHEDOP_shutdown, &sd);
        (void)HYPERVISOR_sched_op(SCHEDOP_yield, NULL);
    }
}

NORETURN void fatal(const char *why)
{
    checks_run++;
    checks_failed++;
    if (!hypercalls_ready)
        early_log_flush();      /* the last chance to say anything */
    printk("FAIL: %s - cannot continue\n", why);
    finish();
}

/* ------------------------------------------------------------------------
 * Frame numbers and small MMU helpers
 * ------------------------------------------------------------------------ */
/* VA of a machine frame of ours, through the M2P; NULL unless the M2P and
 * P2M agree and the frame is one of our nr_pages. */
void *mfn_to_virt(unsigned long mfn)
{
    unsigned long pfn = machine_to_phys()[mfn];

    if (pfn >= xen_start_info->nr_pages || pfn_to_mfn(pfn) != mfn)
        return NULL;
    return (void *)(VIRT_BASE + (pfn << PAGE_SHIFT));
}

int mmuext(unsigned int cmd, unsigned long arg1)
{
    struct mmuext_op op = { .cmd = cmd };
    unsigned int done = 0;
    int rc;

    op.arg1.mfn = arg1;
    rc = HYPERVISOR_mmuext_op(&op, 1, &done, DOMID_SELF);
    if (rc == 0 && done != 1)
        rc = -9999;             /* Xen claimed success but did nothing */
    return rc;
}

/* ------------------------------------------------------------------------
 * Events: the "virtual IF" is !vcpu_info.evtchn_upcall_mask.  Re-enabling
 * must check evtchn_upcall_pending and make Xen deliver it with any
 * hypercall (Linux: xen_irq_enable / xen_force_evtchn_callback).
 * ------------------------------------------------------------------------ */
void force_evtchn_callback(void)
{
    (void)HYPERVISOR_xen_version(XENVER_version, NULL);
}

void events_enable(void)
{
    volatile struct vcpu_info *vi = this_vcpu()->vi;

    vi->evtchn_upcall_mask = 0;
    barrier();                  /* unmask, then check for pending events */
    if (vi->evtchn_upcall_pending)
        force_evtchn_callback();
}

void events_disable(void)
{
    this_vcpu()->vi->evtchn_upcall_mask = 1;
    barrier();
}

/* ------------------------------------------------------------------------
 * Exception and callback handlers (entered from the stubs in head.S)
 * ------------------------------------------------------------------------ */
static const char *const trap_names[20] = {
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "(9)",
    "#TS", "#NP", "#SS", "#GP", "#PF", "(15)", "#MF", "#AC", "#MC", "#XM",
};

static void report_frame(const char *what, struct trap_frame *f)
{
    volatile struct vcpu_info *vi = this_vcpu()->vi;

    printk("FAIL: %s %s (vector %#lx), error code %#lx, rip %p, cs %#lx, rflags %#lx, "
           "rsp %p, ss %#lx, rcx %#lx, r11 %#lx",
           what, f->vector < ARRAY_SIZE(trap_names) ? trap_names[f->vector] : "",
           f->vector, f->error_code, (void *)f->rip, f->cs, f->rflags, (void *)f->rsp,
           f->ss, f->rcx, f->r11);
    if (f->vector == 14 && vi)
        printk(", cr2 %#lx", vi->arch.cr2);
    printk("\n");
}

void do_trap(struct trap_frame *f)
{
    struct vcpu_state *v = this_vcpu();
    uint64_t fixup = trap_fixup_rip;

    /* From guest user mode: Xen put the frame on the stack_switch stack. */
    if ((f->cs & 3) == 3) {
        if (user_trap(f))
            return;
        report_frame("unexpected trap from user mode:", f);
        fatal("unexpected exception in user mode");
    }

    if (fixup && v->id == 0 && f->vector < 256) {
        /* An expected trap from one of the probe_* helpers. */
        last_trap.vector = f->vector;
        last_trap.error_code = f->error_code;
        last_trap.rip = f->rip;
        last_trap.cs = f->cs;
        last_trap.rflags = f->rflags;
        last_trap.rsp = f->rsp;
        last_trap.ss = f->ss;
        last_trap.rcx = f->rcx;
        last_trap.r11 = f->r11;
        last_trap.saved_mask = (f->cs >> 32) & 0xff;
        /* Linux reads CR2 from vcpu_info too (xen_read_cr2). */
        last_trap.cr2 = (f->vector == 14 && v->vi) ? v->vi->arch.cr2 : 0;
        last_trap.mask_in_handler = v->vi ? v->vi->evtchn_upcall_mask : 0xff;
        last_trap.frame_va = (uint64_t)&f->rip;
        barrier();
        last_trap.count++;
        trap_fixup_rip = 0;
        f->rip = fixup;
        return;
    }

    report_frame("unexpected", f);
    fatal("unexpected exception");
}

void do_hypervisor_callback(struct trap_frame *f)
{
    struct vcpu_state *v = this_vcpu();

    v->upcalls++;
    if ((f->cs & 3) == 3)
        user_upcall(f);         /* user.c: it interrupted the user task */
    if (v->vi)
        evtchn_do_upcall();     /* smp.c: Linux's 2-level scan and port dispatch */
}

void do_failsafe_callback(struct failsafe_frame *f)
{
    this_vcpu()->failsafes++;
    printk("pvdemo64: failsafe callback at rip %p: Xen could not load ds %#lx es %#lx "
           "fs %#lx gs %#lx; retrying with them dropped\n",
           (void *)f->rip, f->ds, f->es, f->fs, f->gs);
}

/* ------------------------------------------------------------------------
 * Step 1: start_info and the state Xen started us in
 * ------------------------------------------------------------------------ */
static int in_boot_mapping(uint64_t va, unsigned long nr_pages)
{
    return va >= VIRT_BASE && ((va - VIRT_BASE) >> PAGE_SHIFT) < nr_pages;
}

static void step_start_info(struct start_info *si)
{
    const char *want = "xen-3.0-x86_64";
    uint64_t si_va = (uint64_t)si, end = ((uint64_t)_end + PAGE_SIZE - 1) & ~(uint64_t)(PAGE_SIZE - 1);
    uint64_t stack_top = si->pt_base + (si->nr_pt_frames + 1) * PAGE_SIZE;
    unsigned long si_pfn = virt_to_pfn(si), pfn, bad = 0;
    unsigned int i;
    uint64_t nonzero = 0;

    memcpy(guest_magic, si->magic, sizeof(si->magic));
    guest_magic[sizeof(si->magic)] = '\0';
    check(strcmp(guest_magic, want) == 0 && si_va == entry_rsi,
          "start_info at %p (RSI at entry %#lx): magic \"%s\" (want \"%s\")",
          si, entry_rsi, guest_magic, want);

    printk("pvdemo64:   nr_pages %lu (%lu MiB), shared_info maddr %#lx, flags %#x%s%s%s\n",
           si->nr_pages, si->nr_pages >> 8, si->shared_info, si->flags,
           (si->flags & SIF_PRIVILEGED) ? " privileged" : "",
           (si->flags & SIF_INITDOMAIN) ? " initdomain" : "",
           (si->flags & SIF_VIRT_P2M_4TOOLS) ? " virt_p2m_4tools" : "");
    printk("pvdemo64:   pt_base %p, nr_pt_frames %lu, mfn_list %p\n",
           (void *)si->pt_base, si->nr_pt_frames, (void *)si->mfn_list);
    printk("pvdemo64:   store mfn %#lx port %u, console mfn %#lx port %u, mod_start %#lx mod_len %lu\n",
           si->store_mfn, si->store_evtchn, si->console.domU.mfn,
           si->console.domU.evtchn, si->mod_start, si->mod_len);
    printk("pvdemo64:   cmd_line \"%.*s\"\n",
           (int)strnlen((const char *)si->cmd_line, MAX_GUEST_CMDLINE),
           (const char *)si->cmd_line);

    check(si->nr_pages >= 1024 && (si->flags & SIF_VIRT_P2M_4TOOLS) &&
          !(si->flags & (SIF_PRIVILEGED | SIF_INITDOMAIN)),
          "nr_pages %lu; flags %#x: SIF_VIRT_P2M_4TOOLS (set by libxc for every domain), "
          "not privileged, not the initial domain", si->nr_pages, si->flags);

    /* xc_dom_build_image (tools/libs/guest/xg_dom_core.c) lays out, in
     * virtual order: kernel, p2m list, start_info, xenstore, console, page
     * tables (L4 first), boot stack page. */
    check(virt_to_pfn(_text) == 0 && si->mfn_list >= end && si_va > si->mfn_list &&
          si_va - si->mfn_list >= si->nr_pages * 8 && !(si_va & (PAGE_SIZE - 1)) &&
          si->pt_base == si_va + 3 * PAGE_SIZE && si->nr_pt_frames >= 4 &&
          in_boot_mapping(stack_top, si->nr_pages) &&
          si->store_mfn == pfn_to_mfn(si_pfn + 1) && si->console.domU.mfn == pfn_to_mfn(si_pfn + 2),
          "boot layout: image at pfn 0 (%p..%p), p2m %p, start_info %p, xenstore and console "
          "pages after it, L4 (pt_base) %p, %lu table frames",
          _text, _end, (void *)si->mfn_list, si, (void *)si->pt_base, si->nr_pt_frames);
    check(entry_rsp == stack_top,
          "initial RSP %#lx = top of the boot stack page after the page tables (want %#lx)",
          entry_rsp, stack_top);
    entry_cs &= 0xffff;         /* "mov %cs, %eax": the high bits are not architectural */
    entry_ss &= 0xffff;
    check(entry_cs == FLAT_KERNEL_CS && entry_ss == FLAT_KERNEL_SS &&
          (entry_rflags & X86_EFLAGS_IF) && !(entry_rflags & X86_EFLAGS_IOPL),
          "entered at CPL 3 with CS %#lx (FLAT_KERNEL_CS64 0xe033), SS %#lx (FLAT_KERNEL_SS64 0xe02b), "
          "RFLAGS %#lx (IF set, IOPL 0)", entry_cs, entry_ss, entry_rflags);

    /* The P2M: one u64 MFN per PFN, all valid. */
    for (pfn = 0; pfn < si->nr_pages; pfn++)
        if (pfn_to_mfn(pfn) == INVALID_P2M_ENTRY || pfn_to_mfn(pfn) >> 40)
            bad++;
    check(bad == 0, "p2m (8-byte entries): %lu pfns, %lu invalid; pfn 0 -> mfn %#lx, "
          "pfn %lu -> mfn %#lx", si->nr_pages, bad, pfn_to_mfn(0), si->nr_pages - 1,
          pfn_to_mfn(si->nr_pages - 1));

    for (i = 0; i < ARRAY_SIZE(bss_canary); i++)
        nonzero |= bss_canary[i];
    check(nonzero == 0, ".bss was zero-filled by the domain builder");
}

/* ------------------------------------------------------------------------
 * Step 2: Xen CPUID leaves through the forced-emulation prefix
 * ------------------------------------------------------------------------ */
static void xen_cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    /* ud2; .ascii "xen"; cpuid: Xen's #UD handler (pv/emul-inv-op.c)
     * emulates the CPUID against the domain's policy, hypervisor leaves
     * included, and resumes after the 7 bytes (Linux: xen_cpuid). */
    asm volatile (XEN_EMULATE_PREFIX_BYTES "cpuid"
                  : "=a" (*a), "=b" (*b), "=c" (*c), "=d" (*d)
                  : "0" (leaf), "2" (0));
}

static void step_cpuid(void)
{
    uint32_t base, a = 0, b = 0, c = 0, d = 0, vendor[3];
    int found;

    xen_cpuid(0, &a, &vendor[0], &vendor[2], &vendor[1]);
    xen_cpuid(0x80000001, &a, &b, &c, &d);
    check(d & (1u << 29),
          "CPUID 0x80000001 via the forced-emulation prefix: EDX %#x, long mode (bit 29) set (vendor \"%.12s\")",
          d, (const char *)vendor);

    for (base = XEN_CPUID_FIRST_LEAF; base < XEN_CPUID_LAST_BASE; base += XEN_CPUID_LEAF_STRIDE) {
        xen_cpuid(base, &a, &b, &c, &d);
        if (b == XEN_CPUID_SIGNATURE_EBX && c == XEN_CPUID_SIGNATURE_ECX &&
            d == XEN_CPUID_SIGNATURE_EDX && a - base >= 2)
            break;
    }
    found = base < XEN_CPUID_LAST_BASE;
    check(found && base == XEN_CPUID_FIRST_LEAF,
          "CPUID leaf %#x: signature \"XenVMMXenVMM\", max leaf %#x",
          found ? base : XEN_CPUID_FIRST_LEAF, a);
    if (!found)
        return;
    xen_cpuid(base + 1, &a, &b, &c, &d);
    cpuid_xen_version = a;
    check(a >> 16 >= 3, "CPUID %#x: Xen %u.%u", base + 1, a >> 16, a & 0xffff);
    xen_cpuid(base + 2, &a, &b, &c, &d);
    cpuid_hypercall_msr = b;
    check(a == 1 && b == XEN_HYPERCALL_MSR,
          "CPUID %#x: %u hypercall page(s), MSR %#x, features %#x (bit 0: MMU_PT_UPDATE_PRESERVE_AD)",
          base + 2, a, b, c);
}

/* ------------------------------------------------------------------------
 * Step 3: how hypercalls are made
 * ------------------------------------------------------------------------ */
#if CONFIG_HYPERCALL_PAGE
/* Ask Xen to write the stubs: WRMSR(msr, machine address of the page)
 * (guest_wrmsr_xen in xen/arch/x86/msr.c).  Only a fallback here. */
static void fill_hypercall_page_via_msr(void)
{
    volatile uint8_t *hp = hypercall_page;
    maddr_t ma = virt_to_maddr(hypercall_page);

    hp[0] = 0xcc;
    wrmsr(cpuid_hypercall_msr ? cpuid_hypercall_msr : XEN_HYPERCALL_MSR, ma);
    check(hp[0] == 0x51, "fallback: hypercall page filled by WRMSR %#x <- %#lx: first byte %#x",
          cpuid_hypercall_msr, ma, hp[0]);
}
#endif

static void step_hypercalls(void)
{
    uint64_t regs[3];
    long ver;
#if CONFIG_HYPERCALL_PAGE
    /* pv_ring3_init_hypercall_page (xen/arch/x86/pv/hypercall.c) */
    static const uint8_t stub0[14] = { 0x51, 0x41, 0x53, 0xb8, 0, 0, 0, 0,
                                       0x0f, 0x05, 0x41, 0x5b, 0x59, 0xc3 };
    static const uint8_t stub_iret[11] = { 0x51, 0x41, 0x53, 0x50, 0xb8, 23, 0, 0, 0,
                                           0x0f, 0x05 };
    volatile uint8_t *hp = hypercall_page;
    const volatile uint8_t *h23 = hp + __HYPERVISOR_iret * 32;

    if (!check(hp[0] == 0x51,
               "hypercall page at %p (pfn %#lx) filled by the domain builder "
               "(XEN_ELFNOTE_HYPERCALL_PAGE): first byte %#x",
               hypercall_page, virt_to_pfn(hypercall_page), hp[0]))
        fill_hypercall_page_via_msr();
    if (hp[0] != 0x51) {
        /* No way to reach Xen (not even to print).  Without a trap table,
         * this #UD makes Xen crash the domain. */
        asm volatile ("ud2");
    }
    early_log_flush();
    check(memcmp((const void *)hp, stub0, sizeof(stub0)) == 0 &&
          memcmp((const void *)(hp + 17 * 32 + 4), "\x11\0\0\0", 4) == 0 &&
          memcmp((const void *)h23, stub_iret, sizeof(stub_iret)) == 0,
          "hypercall stubs: #0 = %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x "
          "(push rcx; push r11; mov $0,eax; syscall; pop r11; pop rcx; ret), "
          "#23 (iret) = %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x %02x",
          hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6], hp[7], hp[8], hp[9], hp[10], hp[11],
          hp[12], hp[13], h23[0], h23[1], h23[2], h23[3], h23[4], h23[5], h23[6], h23[7], h23[8],
          h23[9], h23[10]);
#else
    printk("pvdemo64: no hypercall page: every hypercall is an inline \"mov $nr,%%eax; syscall\"\n");
#endif
    /* Any syscall in guest-kernel mode is a hypercall, and Xen returns from
     * it with sysretq: RCX = the return address, R11 = RFLAGS. */
    ver = (long)probe_hypercall_regs(regs);
    check(ver > 0 && (!cpuid_xen_version || (uint32_t)ver == cpuid_xen_version) &&
          regs[0] == regs[2] && (regs[1] & X86_EFLAGS_IF) && (regs[1] & X86_EFLAGS_FIXED) &&
          !(regs[1] & X86_EFLAGS_IOPL),
          "raw syscall xen_version(0) = %#lx; afterwards RCX %#lx (want the return address %#lx), "
          "R11 %#lx (RFLAGS: IF set, IOPL 0), as sysretq leaves them",
          ver, regs[0], regs[2], regs[1]);
}

/* ------------------------------------------------------------------------
 * Step 4: the kernel GS base (WRMSR in head.S, then set_segment_base)
 * ------------------------------------------------------------------------ */
static struct {
    uint64_t self;
    uint64_t magic;
} gs_probe = { 0, 0x9e5ba5e0 };

static void step_gs_base(void)
{
    uint64_t vcpu0 = (uint64_t)&vcpus[0], g_msr, g_mem, g_msr2, g_mem2, shadow0, shadow1, gs1;
    int rc, rc2, rc3, rc4;

    g_msr = rdmsr(MSR_GS_BASE);
    g_mem = read_gs0();
    check(early_gs_base == vcpu0 && g_msr == vcpu0 && g_mem == vcpu0,
          "native WRMSR(MSR_GS_BASE, %#lx) at entry (emulated by Xen): RDMSR reads %#lx, %%gs:0 = %#lx",
          early_gs_base, g_msr, g_mem);

    /* Move the GS base away and back.  Nothing in between may use
     * this_vcpu() (no printk). */
    gs_probe.self = (uint64_t)&gs_probe;
    rc = HYPERVISOR_set_segment_base(SEGBASE_GS_KERNEL, (uint64_t)&gs_probe);
    g_msr = rdmsr(MSR_GS_BASE);
    g_mem = read_gs0();
    rc2 = HYPERVISOR_set_segment_base(SEGBASE_GS_KERNEL, vcpu0);
    g_msr2 = rdmsr(MSR_GS_BASE);
    g_mem2 = read_gs0();
    check(rc == 0 && rc2 == 0 && g_msr == (uint64_t)&gs_probe && g_mem == (uint64_t)&gs_probe &&
          g_msr2 == vcpu0 && g_mem2 == vcpu0,
          "set_segment_base(SEGBASE_GS_KERNEL, %p) rc %d: RDMSR %#lx, %%gs:0 %#lx; back to %#lx rc %d: "
          "RDMSR %#lx, %%gs:0 %#lx", &gs_probe, rc, g_msr, g_mem, vcpu0, rc2, g_msr2, g_mem2);

    /* The user GS base lives in MSR_SHADOW_GS_BASE while in kernel mode. */
    shadow0 = rdmsr(MSR_SHADOW_GS_BASE);
    rc = HYPERVISOR_set_segment_base(SEGBASE_GS_USER, USER_GS_VA);
    shadow1 = rdmsr(MSR_SHADOW_GS_BASE);
    gs1 = rdmsr(MSR_GS_BASE);
    wrmsr(MSR_SHADOW_GS_BASE, USER_GS2_VA);
    g_msr = rdmsr(MSR_SHADOW_GS_BASE);
    rc2 = HYPERVISOR_set_segment_base(SEGBASE_GS_USER, 0);
    check(shadow0 == 0 && rc == 0 && shadow1 == USER_GS_VA && gs1 == vcpu0 && g_msr == USER_GS2_VA &&
          rc2 == 0 && rdmsr(MSR_SHADOW_GS_BASE) == 0,
          "user GS base: %#lx at boot; set_segment_base(SEGBASE_GS_USER, %#x) rc %d -> "
          "RDMSR(SHADOW_GS_BASE) %#lx, GS_BASE still %#lx; WRMSR(SHADOW_GS_BASE, %#x) -> %#lx",
          shadow0, USER_GS_VA, rc, shadow1, gs1, USER_GS2_VA, g_msr);

    rc = HYPERVISOR_set_segment_base(SEGBASE_FS, 0x0000800000000000UL);     /* not canonical */
    rc2 = HYPERVISOR_set_segment_base(SEGBASE_GS_KERNEL, 0xffff000000000000UL);
    rc3 = HYPERVISOR_set_segment_base(4, 0);
    rc4 = HYPERVISOR_set_segment_base(SEGBASE_FS, 0);
    check(rc == -XEN_EINVAL && rc2 == -XEN_EINVAL && rc3 == -XEN_EINVAL && rc4 == 0 &&
          rdmsr(MSR_GS_BASE) == vcpu0 && rdmsr(MSR_FS_BASE) == 0,
          "set_segment_base errors: non-canonical FS %d, non-canonical GS %d, which=4 %d (-EINVAL); "
          "FS base 0 rc %d", rc, rc2, rc3, rc4);
}

/* ------------------------------------------------------------------------
 * Step 5: xen_version, vm_assist, the M2P
 * ------------------------------------------------------------------------ */
static int list_has_word(const char *list, const char *word)
{
    size_t n = strlen(word);

    while (*list) {
        while (*list == ' ')
            list++;
        if (strncmp(list, word, n) == 0 && (list[n] == ' ' || list[n] == '\0'))
            return 1;
        while (*list && *list != ' ')
            list++;
    }
    return 0;
}

static void step_xen_version(void)
{
    static xen_capabilities_info_t caps;
    struct start_info *si = xen_start_info;
    struct xen_feature_info fi = { .submap_idx = 0 }, fi2 = { .submap_idx = 0 };
    struct xen_platform_parameters pp = { 0 };
    struct xen_machphys_mapping mm = { 0 };
    unsigned long pfns[5], i, bad = 0;
    long rc, rc2, rc3, rc4, rc5;

    xen_ver = HYPERVISOR_xen_version(XENVER_version, NULL);
    check(xen_ver > 0 && (!cpuid_xen_version || (uint32_t)xen_ver == cpuid_xen_version),
          "XENVER_version: Xen %ld.%ld (CPUID said %u.%u)", xen_ver >> 16, xen_ver & 0xffff,
          cpuid_xen_version >> 16, cpuid_xen_version & 0xffff);

    /* common/kernel.c: a PV domU gets mmu_pt_update_preserve_ad,
     * highmem_assist, gnttab_map_avail_bits, direct_mapped, vnode; never
     * writable_page_tables or auto_translated_physmap (translated guests
     * only); pae_pgdir_above_4gb once VMASST pae_extended_cr3 is on. */
    rc = HYPERVISOR_xen_version(XENVER_get_features, &fi);
    check(rc == 0 && !(fi.submap & (1u << XENFEAT_auto_translated_physmap)) &&
          !(fi.submap & (1u << XENFEAT_writable_page_tables)) &&
          (fi.submap & (1u << XENFEAT_mmu_pt_update_preserve_ad)),
          "XENVER_get_features(0) = %#x (rc %ld): mmu_pt_update_preserve_ad, not auto-translated, "
          "not writable_page_tables", fi.submap, rc);

    rc = HYPERVISOR_xen_version(XENVER_platform_parameters, &pp);
    check(rc == 0 && pp.virt_start == HYPERVISOR_VIRT_START,
          "XENVER_platform_parameters: virt_start %#lx (want %#lx, rc %ld)",
          pp.virt_start, HYPERVISOR_VIRT_START, rc);

    rc = HYPERVISOR_xen_version(XENVER_capabilities, caps);
    caps[sizeof(caps) - 1] = '\0';
    check(rc == 0 && list_has_word(caps, guest_magic),
          "XENVER_capabilities \"%s\" lists our guest type \"%s\" (rc %ld)", caps, guest_magic, rc);

    /* As Linux's xen_arch_setup (4gb_segments, writable_pagetables,
     * pae_extended_cr3) and xen_time_init (runstate_update_flag). */
    rc = HYPERVISOR_vm_assist(VMASST_CMD_enable, VMASST_TYPE_4gb_segments);
    rc2 = HYPERVISOR_vm_assist(VMASST_CMD_enable, VMASST_TYPE_writable_pagetables);
    rc3 = HYPERVISOR_vm_assist(VMASST_CMD_enable, VMASST_TYPE_pae_extended_cr3);
    rc4 = HYPERVISOR_vm_assist(VMASST_CMD_enable, VMASST_TYPE_runstate_update_flag);
    check(rc == 0 && rc2 == 0 && rc3 == 0 && rc4 == 0,
          "vm_assist(enable): 4gb_segments %ld, writable_pagetables %ld, pae_extended_cr3 %ld, "
          "runstate_update_flag %ld", rc, rc2, rc3, rc4);
    rc = HYPERVISOR_vm_assist(VMASST_CMD_enable, 31);
    rc2 = HYPERVISOR_vm_assist(VMASST_CMD_enable, 64);
    rc3 = HYPERVISOR_vm_assist(7, VMASST_TYPE_writable_pagetables);
    check(rc == -XEN_EINVAL && rc2 == -XEN_EINVAL && rc3 == -XEN_ENOSYS,
          "vm_assist errors: type 31 %ld, type 64 %ld (-EINVAL: not in PV64_VM_ASSIST_MASK), "
          "cmd 7 %ld (-ENOSYS)", rc, rc2, rc3);
    rc = HYPERVISOR_xen_version(XENVER_get_features, &fi2);
    check(rc == 0 && (fi2.submap & (1u << XENFEAT_pae_pgdir_above_4gb)) &&
          (fi2.submap & ~(1u << XENFEAT_pae_pgdir_above_4gb)) == fi.submap,
          "XENVER_get_features(0) after VMASST_TYPE_pae_extended_cr3 = %#x: pae_pgdir_above_4gb added",
          fi2.submap);

    rc = HYPERVISOR_memory_op(XENMEM_machphys_mapping, &mm);
    check(rc == 0 && mm.v_start == MACH2PHYS_VIRT_START && mm.v_end == MACH2PHYS_VIRT_END &&
          mm.max_mfn == (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START) / 8 - 1,
          "XENMEM_machphys_mapping (rc %ld): M2P %#lx-%#lx, max_mfn %#lx", rc, mm.v_start,
          mm.v_end, mm.max_mfn);

    /* Read the M2P directly (Linux: mfn_to_pfn) for a few of our frames. */
    pfns[0] = 0;
    pfns[1] = virt_to_pfn(si);
    pfns[2] = virt_to_pfn((void *)si->pt_base);
    pfns[3] = si->nr_pages / 2;
    pfns[4] = si->nr_pages - 1;
    for (i = 0; i < ARRAY_SIZE(pfns); i++)
        if (machine_to_phys()[pfn_to_mfn(pfns[i])] != pfns[i])
            bad++;
    rc5 = (long)machine_to_phys()[pfn_to_mfn(pfns[2])];
    check(bad == 0, "M2P at %#lx read directly: m2p[p2m[pfn]] == pfn for pfns 0, %lu (start_info), "
          "%lu (L4: m2p[%#lx] = %#lx), %lu, %lu", MACH2PHYS_VIRT_START, pfns[1], pfns[2],
          pfn_to_mfn(pfns[2]), rc5, pfns[3], pfns[4]);
}

/* ------------------------------------------------------------------------
 * Step 6: virtual IDT and callbacks
 * ------------------------------------------------------------------------ */
#define TRAP(vec, flags, handler) { vec, flags, FLAT_KERNEL_CS, (unsigned long)(handler) }
const struct trap_info trap_table[] = {
    TRAP( 0, TI_DPL(0), divide_error),
    TRAP( 1, TI_DPL(0), debug),
    TRAP( 2, TI_DPL(0), nmi),
    TRAP( 3, TI_DPL(3), int3),              /* int3 / into allowed from any ring */
    TRAP( 4, TI_DPL(3), overflow),
    TRAP( 5, TI_DPL(0), bounds),
    TRAP( 6, TI_DPL(0), invalid_op),
    TRAP( 7, TI_DPL(0), device_not_available),
    TRAP( 8, TI_DPL(0), double_fault),
    TRAP( 9, TI_DPL(0), coprocessor_segment_overrun),
    TRAP(10, TI_DPL(0), invalid_TSS),
    TRAP(11, TI_DPL(0), segment_not_present),
    TRAP(12, TI_DPL(0), stack_segment),
    TRAP(13, TI_DPL(0), general_protection),
    TRAP(14, TI_DPL(0) | TI_IF, page_fault), /* like Linux: an "interrupt gate" */
    TRAP(15, TI_DPL(0), spurious_interrupt_bug),
    TRAP(16, TI_DPL(0), coprocessor_error),
    TRAP(17, TI_DPL(0), alignment_check),
    TRAP(18, TI_DPL(0), machine_check),
    TRAP(19, TI_DPL(0), simd_coprocessor_error),
    TRAP(VEC_SOFTINT, TI_DPL(1), softint_81),   /* "int $0x81" from the kernel only */
    { 0, 0, 0, 0 }                          /* address 0 ends the table */
};

static int register_callback(unsigned int type, unsigned int flags, void *address)
{
    struct callback_register cb = { .type = type, .flags = flags, .address = (unsigned long)address };

    return HYPERVISOR_callback_op(CALLBACKOP_register, &cb);
}

static void step_traps_and_callbacks(void)
{
    struct callback_unregister un = { .type = CALLBACKTYPE_event };
    struct callback_register bad = { .type = CALLBACKTYPE_event, .address = 0x0000800000000000UL };
    int rc, rc2, rc3, rc4, rc5;

    rc = HYPERVISOR_set_trap_table(trap_table);
    check(rc == 0, "set_trap_table: vectors 0-19 and %#x (16-byte trap_info, cs %#x), #PF with TI_IF, "
          "#BP/#OF DPL 3, %#x DPL 1 (rc %d)", VEC_SOFTINT, FLAT_KERNEL_CS, VEC_SOFTINT, rc);

    /* The x86_64 set_callbacks takes three addresses (event, failsafe,
     * syscall) and no selectors; Linux uses callback_op instead. */
    rc = HYPERVISOR_set_callbacks((unsigned long)hypervisor_callback,
                                  (unsigned long)failsafe_callback,
                                  (unsigned long)syscall_callback);
    check(rc == 0, "set_callbacks(event %p, failsafe %p, syscall %p) rc %d",
          hypervisor_callback, failsafe_callback, syscall_callback, rc);

    /* What Linux's xen_arch_setup / xen_enable_syscall / xen_enable_sysenter
     * register, all with CALLBACKF_mask_events. */
    rc = register_callback(CALLBACKTYPE_event, CALLBACKF_mask_events, hypervisor_callback);
    rc2 = register_callback(CALLBACKTYPE_failsafe, CALLBACKF_mask_events, failsafe_callback);
    rc3 = register_callback(CALLBACKTYPE_syscall, CALLBACKF_mask_events, syscall_callback);
    rc4 = register_callback(CALLBACKTYPE_syscall32, CALLBACKF_mask_events, syscall32_callback);
    rc5 = register_callback(CALLBACKTYPE_sysenter, CALLBACKF_mask_events, sysenter_callback);
    check(rc == 0 && rc2 == 0 && rc3 == 0 && rc4 == 0 && rc5 == 0,
          "callback_op(CALLBACKOP_register, mask_events): event %d, failsafe %d, syscall %d, "
          "syscall32 %d, sysenter %d", rc, rc2, rc3, rc4, rc5);

    rc = HYPERVISOR_callback_op(CALLBACKOP_unregister, &un);
    rc2 = HYPERVISOR_callback_op(CALLBACKOP_register, &bad);
    rc3 = register_callback(3, 0, hypervisor_callback);     /* CALLBACKTYPE_sysenter_deprecated */
    check(rc == -XEN_EINVAL && rc2 == -XEN_EINVAL && rc3 == -XEN_ENOSYS,
          "callback_op errors: unregister(event) %d (-EINVAL), non-canonical address %d (-EINVAL), "
          "type 3 %d (-ENOSYS)", rc, rc2, rc3);
}

/* ------------------------------------------------------------------------
 * Step 7: the kernel stack Xen uses for bounces from user mode
 * ------------------------------------------------------------------------ */
static void step_stack_switch(void)
{
    int rc = HYPERVISOR_stack_switch(FLAT_KERNEL_SS, (unsigned long)boot_stack_top);

    check(rc == 0, "stack_switch(%#x, %p) rc %d", FLAT_KERNEL_SS, boot_stack_top, rc);
}

/* ------------------------------------------------------------------------
 * Step 8: shared_info and the virtual interrupt flag
 * ------------------------------------------------------------------------ */
static void step_shared_info(void)
{
    struct start_info *si = xen_start_info;
    struct vcpu_state *v = this_vcpu();
    volatile struct vcpu_info *vi;
    unsigned int upcalls_before, pending_before, i, masked = 0;
    int rc, unmasked;

    /* As Linux's xen_pv_init_platform: map the machine frame by
     * update_va_mapping (the .bss page's own frame becomes unmapped). */
    rc = HYPERVISOR_update_va_mapping((unsigned long)shared_info_page,
                                      si->shared_info | _PAGE_PRESENT | _PAGE_RW |
                                      _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_NX,
                                      UVMF_INVLPG);
    check(rc == 0, "shared_info (maddr %#lx) mapped at %p with update_va_mapping (rc %d)",
          si->shared_info, shared_info_page, rc);
    if (rc)
        fatal("no shared_info");
    HYPERVISOR_shared_info = (struct shared_info *)shared_info_page;
    v->vi = vi = &HYPERVISOR_shared_info->vcpu_info[0];

    for (i = 0; i < XEN_LEGACY_MAX_VCPUS; i++)
        masked += HYPERVISOR_shared_info->vcpu_info[i].evtchn_upcall_mask == 1;
    check(vi->evtchn_upcall_mask == 1 && masked == XEN_LEGACY_MAX_VCPUS,
          "events masked at boot: vcpu_info[0].evtchn_upcall_mask %u (%u of 32 slots masked), "
          "upcall_pending %u, pending_sel %#lx",
          vi->evtchn_upcall_mask, masked, vi->evtchn_upcall_pending, vi->evtchn_pending_sel);

    upcalls_before = v->upcalls;
    pending_before = vi->evtchn_upcall_pending;
    events_enable();
    unmasked = vi->evtchn_upcall_mask == 0;
    events_disable();
    check(unmasked && vi->evtchn_upcall_mask == 1 &&
          (!pending_before || v->upcalls > upcalls_before),
          "events unmasked and masked again through vcpu_info (pending %u before; %u upcall(s) taken)",
          pending_before, v->upcalls - upcalls_before);
}

/* ------------------------------------------------------------------------
 * Step 10: a GDT of our own (Linux: xen_load_gdt_boot / xen_load_tls)
 * ------------------------------------------------------------------------ */
/* Segment descriptor; access = bits 8-15 of the high word (P, DPL, S, type)
 * plus G (bit 23), D/B (bit 22), L (bit 21). */
static uint64_t make_desc(uint32_t base, uint32_t limit, uint32_t access)
{
    uint32_t lo = (base << 16) | (limit & 0xffff);
    uint32_t hi = (base & 0xff000000) | ((base >> 16) & 0xff) | (limit & 0xf0000) | access;

    return ((uint64_t)hi << 32) | lo;
}
#define DESC_DATA_DPL3_BYTES  0x0040f300    /* P, DPL 3, data RW accessed, byte limit */
#define DESC_TSS64            0x00008900    /* P, DPL 0, 64-bit TSS (a system descriptor) */
#define DESC_DPL(d)           (((d) >> 45) & 3)

static uint64_t read_fs_word0(unsigned int sel)
{
    uint64_t v;

    asm volatile ("movl %1, %%fs\n\t"
                  "movq %%fs:0, %0"
                  : "=r" (v) : "r" (sel) : "memory");
    return v;
}

static void step_gdt(void)
{
    volatile uint64_t *tls = (volatile uint64_t *)low_tls_page;
    unsigned long frames[1];
    uint64_t tls0, tls1;
    uint64_t v0, v1;
    unsigned int ds, es;
    int rc, rc2, rc3;

    /* Linux's 64-bit GDT layout (arch/x86/include/asm/segment.h); DPL 0
     * where Linux has it, which Xen raises to 3 (check_descriptor). */
    gdt[GDT_KERNEL_CS] = 0x00af9b000000ffffULL;    /* 64-bit code, DPL 0, accessed */
    gdt[GDT_KERNEL_DS] = 0x00cf93000000ffffULL;    /* data, DPL 0 */
    gdt[GDT_USER32_CS] = 0x00cffb000000ffffULL;    /* 32-bit code, DPL 3 */
    gdt[GDT_USER_DS] = 0x00cff3000000ffffULL;      /* data, DPL 3 */
    gdt[GDT_USER_CS] = 0x00affb000000ffffULL;      /* 64-bit code, DPL 3 */
    tls[0] = 0x7157a00000000000;
    tls[1] = 0x7157a00000000001;
    /* In 64-bit mode a selector load gives FS a 32-bit base: the TLS word
     * lives in the low region (LOW_TLS_VA, mapped by pagetable.c). */
    tls0 = make_desc(LOW_TLS_VA, PAGE_SIZE - 1, DESC_DATA_DPL3_BYTES);
    tls1 = make_desc(LOW_TLS_VA + 8, PAGE_SIZE - 9, DESC_DATA_DPL3_BYTES);
    gdt[GDT_TLS] = tls0;

    frames[0] = virt_to_mfn(gdt);
    rc = HYPERVISOR_update_va_mapping((unsigned long)gdt,
                                      mfn_pte(frames[0], _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_NX),
                                      UVMF_INVLPG);
    check(rc == 0, "GDT page %p (mfn %#lx) made read-only (rc %d)", gdt, frames[0], rc);
    rc = HYPERVISOR_set_gdt(frames, GDT_ENTRIES);
    check(rc == 0 && DESC_DPL(gdt[GDT_KERNEL_CS]) == 3 && DESC_DPL(gdt[GDT_KERNEL_DS]) == 3 &&
          gdt[GDT_KERNEL_CS] == 0x00affb000000ffffULL && gdt[GDT_USER_CS] == 0x00affb000000ffffULL,
          "set_gdt: 1 frame, %u entries (rc %d); Xen raised the DPL 0 descriptors to 3 in place "
          "(kernel CS %#lx, DS %#lx)", GDT_ENTRIES, rc, gdt[GDT_KERNEL_CS], gdt[GDT_KERNEL_DS]);
    if (rc)
        return;
    gdt_ok = 1;

    asm volatile ("movl %2, %%ds\n\t"
                  "movl %3, %%es\n\t"
                  "movl %%ds, %0\n\t"
                  "movl %%es, %1"
                  : "=&r" (ds), "=&r" (es)
                  : "r" (GDT_SEL(GDT_USER_DS)), "r" (GDT_SEL(GDT_KERNEL_DS)) : "memory");
    ds &= 0xffff;
    es &= 0xffff;
    check(ds == GDT_SEL(GDT_USER_DS) && es == GDT_SEL(GDT_KERNEL_DS),
          "data selectors from our GDT loaded: %%ds = %#x, %%es = %#x", ds, es);

    v0 = read_fs_word0(GDT_SEL(GDT_TLS));
    check(v0 == tls[0], "%%fs = %#x (own GDT entry %u, base %#x): %%fs:0 reads %#lx",
          GDT_SEL(GDT_TLS), GDT_TLS, LOW_TLS_VA, v0);

    rc = HYPERVISOR_update_descriptor(virt_to_maddr(&gdt[GDT_TLS]), tls1);
    v1 = read_fs_word0(GDT_SEL(GDT_TLS));
    check(rc == 0 && gdt[GDT_TLS] == tls1 && v1 == tls[1],
          "update_descriptor(maddr %#lx, base %#x) rc %d: %%fs:0 now reads %#lx",
          virt_to_maddr(&gdt[GDT_TLS]), LOW_TLS_VA + 8, rc, v1);
    /* Back to the first descriptor (SEGBASE_GS_USER_SEL uses it later). */
    rc3 = HYPERVISOR_update_descriptor(virt_to_maddr(&gdt[GDT_TLS]), tls0);

    rc = HYPERVISOR_update_descriptor(virt_to_maddr(&gdt[GDT_TLS + 1]),
                                      make_desc(0, 0x67, DESC_TSS64));
    rc2 = HYPERVISOR_update_descriptor(virt_to_maddr(&gdt[GDT_TLS]) + 4, tls0);
    check(rc == -XEN_EINVAL && rc2 == -XEN_EINVAL && rc3 == 0 && gdt[GDT_TLS + 1] == 0,
          "update_descriptor refused a TSS descriptor (%d) and a misaligned address (%d) with -EINVAL",
          rc, rc2);

    /* Null selectors again; the FS base comes from set_segment_base later. */
    asm volatile ("movl %0, %%ds\n\t"
                  "movl %0, %%es\n\t"
                  "movl %0, %%fs" : : "r" (0) : "memory");
}

/* ------------------------------------------------------------------------
 * Step 11: a lazy-MMU style multicall batch (Linux batches its page-table
 * updates, stack_switch and TLS loads this way; xen/common/multicall.c)
 * ------------------------------------------------------------------------ */
static void mc_set(struct multicall_entry *mc, unsigned long op, unsigned long a0,
                   unsigned long a1, unsigned long a2, unsigned long a3)
{
    mc->op = op;
    mc->result = 0xdeadbeefdeadbeef;
    mc->args[0] = a0;
    mc->args[1] = a1;
    mc->args[2] = a2;
    mc->args[3] = a3;
    mc->args[4] = mc->args[5] = 0;
}

static void step_multicall(void)
{
    static struct multicall_entry mc[12];
    static struct mmu_update req, bad;
    static struct mmuext_op invlpg, flush;
    pgentry_t rw = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_NX;
    pgentry_t ro = _PAGE_PRESENT | _PAGE_ACCESSED | _PAGE_NX;
    uint64_t tls2 = make_desc(LOW_TLS_VA + 16, 0xff, DESC_DATA_DPL3_BYTES);
    long want[ARRAY_SIZE(mc)];
    unsigned long ops[ARRAY_SIZE(mc)];
    unsigned int i, n = 0, wrong = 0;
    int rc, ok;

    if (!kernel_l4 || !kernel_l1) {
        check(0, "multicall: needs our own page tables");
        return;
    }
    mc_set(&mc[n], __HYPERVISOR_update_va_mapping, (unsigned long)scratch_pages[0],
           mfn_pte(virt_to_mfn(scratch_pages[0]), rw), UVMF_NONE, 0);
    want[n++] = 0;
    mc_set(&mc[n], __HYPERVISOR_update_va_mapping, (unsigned long)scratch_pages[1],
           mfn_pte(virt_to_mfn(scratch_pages[1]), rw), UVMF_NONE, 0);
    want[n++] = 0;
    mc_set(&mc[n], __HYPERVISOR_update_va_mapping, (unsigned long)scratch_pages[2],
           mfn_pte(virt_to_mfn(scratch_pages[2]), ro), UVMF_INVLPG, 0);
    want[n++] = 0;
    req.ptr = virt_to_maddr(&kernel_l1[l1_index(scratch_pages[3])]) | MMU_NORMAL_PT_UPDATE;
    req.val = mfn_pte(virt_to_mfn(scratch_pages[3]), ro);
    mc_set(&mc[n], __HYPERVISOR_mmu_update, (unsigned long)&req, 1, 0, DOMID_SELF);
    want[n++] = 0;
    invlpg.cmd = MMUEXT_INVLPG_LOCAL;
    invlpg.arg1.linear_addr = (unsigned long)scratch_pages[3];
    mc_set(&mc[n], __HYPERVISOR_mmuext_op, (unsigned long)&invlpg, 1, 0, DOMID_SELF);
    want[n++] = 0;
    mc_set(&mc[n], __HYPERVISOR_stack_switch, FLAT_KERNEL_SS, (unsigned long)boot_stack_top, 0, 0);
    want[n++] = 0;
    mc_set(&mc[n], __HYPERVISOR_set_segment_base, SEGBASE_GS_USER, USER_GS2_VA, 0, 0);
    want[n++] = 0;
    /* The failing entry: an L4 entry in Xen's slot 256 (mod_l4_entry). */
    bad.ptr = virt_to_maddr(&kernel_l4[ROOT_PAGETABLE_FIRST_XEN_SLOT]) | MMU_NORMAL_PT_UPDATE;
    bad.val = kernel_l4[l4_index(VIRT_BASE)];
    mc_set(&mc[n], __HYPERVISOR_mmu_update, (unsigned long)&bad, 1, 0, DOMID_SELF);
    want[n++] = -XEN_EINVAL;
    mc_set(&mc[n], __HYPERVISOR_xen_version, XENVER_version, 0, 0, 0);
    want[n++] = xen_ver;
    mc_set(&mc[n], __HYPERVISOR_update_descriptor, virt_to_maddr(&gdt[GDT_TLS + 1]), tls2, 0, 0);
    want[n++] = 0;
    flush.cmd = MMUEXT_TLB_FLUSH_LOCAL;
    mc_set(&mc[n], __HYPERVISOR_mmuext_op, (unsigned long)&flush, 1, 0, DOMID_SELF);
    want[n++] = 0;
    mc_set(&mc[n], __HYPERVISOR_update_va_mapping, (unsigned long)scratch_pages[3],
           mfn_pte(virt_to_mfn(scratch_pages[3]), rw), UVMF_TLB_FLUSH | UVMF_LOCAL, 0);
    want[n++] = 0;

    /* Only "result" may be read afterwards: a debug Xen fills the rest of
     * each processed entry with 0xAA. */
    for (i = 0; i < n; i++)
        ops[i] = mc[i].op;
    rc = HYPERVISOR_multicall(mc, n);
    for (i = 0; i < n; i++) {
        if ((long)mc[i].result != want[i]) {
            printk("FAIL:   multicall entry %u (hypercall %lu) result %ld, want %ld\n", i,
                   ops[i], (long)mc[i].result, want[i]);
            wrong++;
        }
    }
    ok = rc == 0 && wrong == 0;
    /* The effects: scratch 2 read-only, scratch 3 writable again, the user
     * GS base, the new descriptor. */
    ok = ok && !(kernel_l1[l1_index(scratch_pages[2])] & _PAGE_RW) &&
         (kernel_l1[l1_index(scratch_pages[3])] & _PAGE_RW) &&
         rdmsr(MSR_SHADOW_GS_BASE) == USER_GS2_VA && (!gdt_ok || gdt[GDT_TLS + 1] == tls2);
    scratch_pages[0][1] = scratch_pages[1][1] = scratch_pages[3][1] = 1;
    ok = ok && scratch_pages[2][1] == 0 && scratch_pages[3][1] == 1;
    check(ok, "multicall of %u entries (update_va_mapping x3, mmu_update, mmuext INVLPG_LOCAL, "
          "stack_switch, set_segment_base, a failing mmu_update of L4 slot 256 -> %ld, xen_version, "
          "update_descriptor, mmuext TLB_FLUSH_LOCAL, update_va_mapping with UVMF_TLB_FLUSH): "
          "rc %d, each result as expected, effects visible", n, (long)mc[7].result, rc);

    (void)HYPERVISOR_update_va_mapping((unsigned long)scratch_pages[2],
                                       mfn_pte(virt_to_mfn(scratch_pages[2]), rw), UVMF_INVLPG);
    (void)HYPERVISOR_set_segment_base(SEGBASE_GS_USER, 0);

    /* A multicall inside a multicall is refused (do_multicall: reentry). */
    mc_set(&mc[0], __HYPERVISOR_multicall, (unsigned long)&mc[1], 1, 0, 0);
    mc_set(&mc[1], __HYPERVISOR_xen_version, XENVER_version, 0, 0, 0);
    mc_set(&mc[2], __HYPERVISOR_xen_version, XENVER_version, 0, 0, 0);
    rc = HYPERVISOR_multicall(mc, 1);
    rc = rc == 0 ? HYPERVISOR_multicall(&mc[2], 1) : rc;
    check(rc == 0 && (long)mc[0].result == -XEN_EINVAL && (long)mc[2].result == xen_ver,
          "a nested multicall entry -> %ld (-EINVAL); a plain one afterwards -> %#lx",
          (long)mc[0].result, (long)mc[2].result);
}

/* ------------------------------------------------------------------------
 * Step 12: exceptions bounced through the trap table (pv_inject_event,
 * xen/arch/x86/pv/traps.c; create_bounce_frame, x86_64/entry.S)
 * ------------------------------------------------------------------------ */
static int frame_ok(uint64_t rip)
{
    /* A fault in guest-kernel mode: CS 0xe033 with its RPL cleared
     * ("andb $0xfc" in create_bounce_frame), bits 16-31 clear, SS 0xe02b,
     * RSP where the probe was, RCX/R11 slots = the values at the fault. */
    return last_trap.rip == rip && (last_trap.cs & 0xffffffffUL) == (FLAT_KERNEL_CS & ~3) &&
           (last_trap.cs >> 40) == 0 && last_trap.ss == FLAT_KERNEL_SS &&
           last_trap.rsp == probe_rsp && last_trap.rcx == PROBE_RCX && last_trap.r11 == PROBE_R11;
}

static void step_faults(void)
{
    volatile struct vcpu_info *vi = this_vcpu()->vi;
    unsigned int before;
    uint64_t gdt0 = gdt[0];
    int got;

    /* Events on, so entering a TI_IF handler visibly masks them and the
     * iret hypercall visibly restores the mask from RFLAGS.IF. */
    events_enable();

    before = last_trap.count;
    (void)probe_read(PF_PROBE_VA);
    got = last_trap.count == before + 1 && last_trap.vector == 14;
    check(got && frame_ok((uint64_t)probe_read_insn) && last_trap.cr2 == PF_PROBE_VA,
          "#PF handled: read of %#x at %p: cr2 %#lx (vcpu_info.arch.cr2), frame RIP %#lx, CS %#lx, "
          "SS %#lx, RSP %#lx (want %#lx), RCX %#lx, R11 %#lx", PF_PROBE_VA, probe_read_insn,
          last_trap.cr2, last_trap.rip, last_trap.cs, last_trap.ss, last_trap.rsp, probe_rsp,
          last_trap.rcx, last_trap.r11);
    check(got && last_trap.error_code == 0,
          "#PF error code %#lx: not present, read, and U clear (Xen reports guest-kernel mode, "
          "although the CPU was at CPL 3)", last_trap.error_code);
    check(got && last_trap.mask_in_handler == 1 && last_trap.saved_mask == 0 &&
          (last_trap.rflags & X86_EFLAGS_IF) && vi->evtchn_upcall_mask == 0 &&
          !(last_trap.rflags & X86_EFLAGS_IOPL),
          "#PF handler ran with events masked (TI_IF): mask %u, saved mask (CS bits 32-39) %u, "
          "frame RFLAGS %#lx; mask %u after iret", last_trap.mask_in_handler, last_trap.saved_mask,
          last_trap.rflags, vi->evtchn_upcall_mask);

    before = last_trap.count;
    (void)probe_write((uint64_t)&gdt[0], gdt0);
    got = last_trap.count == before + 1 && last_trap.vector == 14;
    check(got && frame_ok((uint64_t)probe_write_insn) && last_trap.cr2 == (uint64_t)&gdt[0] &&
          last_trap.error_code == (PFEC_PRESENT | PFEC_WRITE),
          "#PF on a write to the read-only GDT page %p: error code %#lx (present, write; "
          "not emulated: not an L1 page)", gdt, last_trap.error_code);

    before = last_trap.count;
    (void)probe_hlt();
    got = last_trap.count == before + 1 && last_trap.vector == 13;
    check(got && frame_ok((uint64_t)probe_hlt_insn) && last_trap.error_code == 0 &&
          last_trap.mask_in_handler == 0,
          "#GP handled at %p: hlt at CPL 3, error code %#lx, events left unmasked (mask %u)",
          (void *)last_trap.rip, last_trap.error_code, last_trap.mask_in_handler);

    before = last_trap.count;
    (void)probe_int3();
    got = last_trap.count == before + 1 && last_trap.vector == 3;
    check(got && frame_ok((uint64_t)probe_int3_next),
          "#BP handled: int3 at %p, saved RIP %#lx (the next instruction)",
          probe_int3_insn, last_trap.rip);

    before = last_trap.count;
    (void)probe_softint();
    got = last_trap.count == before + 1 && last_trap.vector == VEC_SOFTINT;
    check(got && frame_ok((uint64_t)probe_softint_next),
          "int $%#x (trap_info DPL 1) delivered as vector %#lx, RIP %#lx after the instruction",
          VEC_SOFTINT, last_trap.vector, last_trap.rip);

    before = last_trap.count;
    (void)probe_int_nohandler();
    got = last_trap.count == before + 1 && last_trap.vector == 13;
    check(got && frame_ok((uint64_t)probe_int_nohandler_insn) &&
          last_trap.error_code == ((VEC_NOHANDLER << 3) | 2),
          "int $%#x (no trap_info) -> #GP, error code %#lx (vector << 3 | 2), RIP at the int",
          VEC_NOHANDLER, last_trap.error_code);

    events_disable();
}

/* ------------------------------------------------------------------------
 * Entry from head.S
 * ------------------------------------------------------------------------ */
void start_kernel(start_info_t *si)
{
    unsigned int i;

    for (i = 0; i < NR_VCPUS; i++) {
        vcpus[i].self = &vcpus[i];
        vcpus[i].id = i;
    }
    printk("pvdemo64: booting, x86_64 PV, hypercalls %s\n",
           CONFIG_HYPERCALL_PAGE ? "through the hypercall page (XEN_ELFNOTE_HYPERCALL_PAGE)"
                                 : "by inline syscall (no hypercall page)");

    step_start_info(si);            /*  1 */
    step_cpuid();                   /*  2 */
    step_hypercalls();              /*  3 (with the page, output is buffered until here) */
    step_gs_base();                 /*  4 */
    step_xen_version();             /*  5 */
    step_traps_and_callbacks();     /*  6 */
    step_stack_switch();            /*  7 */
    step_shared_info();             /*  8 */
    step_pagetables();              /*  9: pagetable.c */
    step_gdt();                     /* 10 */
    step_multicall();               /* 11 */
    step_faults();                  /* 12 */
    step_events();                  /* 13: event channels (smp.c) */
    step_time();                    /* 14: virtual time and timers */
    step_smp();                     /* 15: secondary vCPUs, IPIs, ticks per vCPU */
    step_user();                    /* 16: a user-mode task (user.c) */
    finish();                       /* 17 */
}
