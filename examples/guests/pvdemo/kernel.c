/*
 * kernel.c - pvdemo: a small 32-bit Xen PV kernel that walks the boot path of
 * Linux's 2007 i386 Xen port (start_info, hypercall page, xen_version,
 * vm_assist, trap table and callbacks, shared_info and the virtual IF, its own
 * pinned page tables, a GDT, multicalls, exceptions) and checks each step.
 *
 * Every check prints one line on the Xen console (console_io):
 *     "pvdemo: <what>"   when it passed,
 *     "FAIL: <what>"     when it did not,
 * and the run ends with "pvdemo: all N checks passed" + SHUTDOWN_poweroff, or
 * "pvdemo: K checks FAILED (of N)" + SHUTDOWN_crash.
 *
 * Written against the Xen public headers and hypervisor sources (xen.h names
 * the header of every constant); it uses only what the PV ABI guarantees, so
 * the same image should pass on a real Xen and on an emulator.
 *
 * Event channels, virtual time and SMP (a second vCPU brought up with
 * VCPUOP_initialise, IPIs, timer ticks per vCPU) are in smp.c; the event
 * callback below hands every upcall to its 2-level scan.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "xen.h"
#include "hypercall.h"
#include "lib.h"
#include "pvdemo.h"

/* ------------------------------------------------------------------------
 * Page-table geometry (x86 architecture; Xen PV rules in xen/arch/x86/mm.c)
 * ------------------------------------------------------------------------ */
#if CONFIG_PAE
typedef uint64_t pte_t;
#define L1_ENTRIES      512
#define L2_ENTRIES      512
#define L3_ENTRIES      4           /* a PAE "pgd": only 4 entries are used */
#define L2_SHIFT        21
#define L3_SHIFT        30
#define PTE_ADDR_MASK   0x000FFFFFFFFFF000ULL
#define PIN_TOP_CMD     MMUEXT_PIN_L3_TABLE
#define TOP_LEVEL       3
#else
typedef uint32_t pte_t;
#define L1_ENTRIES      1024
#define L2_ENTRIES      1024
#define L2_SHIFT        22
#define PTE_ADDR_MASK   0xFFFFF000UL
#define PIN_TOP_CMD     MMUEXT_PIN_L2_TABLE
#define TOP_LEVEL       2
#endif

#define l1_index(va)    ((((uint32_t)(va)) >> PAGE_SHIFT) & (L1_ENTRIES - 1))
#define l2_index(va)    ((((uint32_t)(va)) >> L2_SHIFT) & (L2_ENTRIES - 1))
#if CONFIG_PAE
#define l3_index(va)    (((uint32_t)(va)) >> L3_SHIFT)
#endif

/* ------------------------------------------------------------------------
 * Symbols from head.S and the linker script
 * ------------------------------------------------------------------------ */
extern char divide_error[], debug[], nmi[], int3[], overflow[], bounds[],
    invalid_op[], device_not_available[], double_fault[],
    coprocessor_segment_overrun[], invalid_TSS[], segment_not_present[],
    stack_segment[], general_protection[], page_fault[],
    spurious_interrupt_bug[], coprocessor_error[], alignment_check[],
    machine_check[], simd_coprocessor_error[];
extern char boot_stack_top[];
extern char _text[], _end[];

uint32_t probe_read(uint32_t va);
uint32_t probe_hlt(void);
uint32_t probe_int3(void);
extern char probe_read_insn[], probe_hlt_insn[], probe_int3_insn[],
    probe_int3_next[], probe_read_cr3_insn[];

/* Called from head.S */
void start_kernel(start_info_t *si) NORETURN;
void do_trap(struct trap_frame *f);
void do_hypervisor_callback(struct trap_frame *f);
void do_failsafe_callback(struct failsafe_frame *f);

/* ------------------------------------------------------------------------
 * Global state
 * ------------------------------------------------------------------------ */
start_info_t *xen_start_info;               /* ESI at entry, stored by head.S */
struct shared_info *HYPERVISOR_shared_info; /* mapped in step_shared_info() */

/* Set by the probe_* helpers in head.S just before an instruction that is
 * meant to trap; do_trap() resumes there and clears it. */
volatile uint32_t trap_fixup_eip;

/* Start of the Xen-owned area and of the read-only machine-to-phys table
 * (MACH2PHYS_VIRT_START == HYPERVISOR_VIRT_START for PV32).  Replaced by the
 * value XENVER_platform_parameters reports. */
static uint32_t hv_virt_start = HYPERVISOR_VIRT_START;
static const volatile uint32_t *machine_to_phys =
    (const volatile uint32_t *)HYPERVISOR_VIRT_START;

/* Per-vCPU state (pvdemo.h); this_vcpu() tells the vCPUs apart by their stacks. */
struct vcpu_state vcpus[NR_VCPUS];

/* What the last expected trap looked like (filled by do_trap). */
static struct {
    volatile unsigned int count;
    uint32_t vector, error_code, eip, cs, eflags, cr2;
    uint8_t saved_mask;         /* frame CS bits 16-23 */
    uint8_t mask_in_handler;    /* vcpu_info.evtchn_upcall_mask on entry */
} last_trap;

static unsigned int checks_run, checks_failed;
long xen_ver;                   /* XENVER_version: major << 16 | minor */
static uint32_t cpuid_xen_version;
static char guest_magic[33];

/* Must still be zero at entry: the domain builder zero-fills .bss. */
static uint32_t bss_canary[64];
/* Read back after the page-table switch. */
static volatile uint32_t data_canary = 0x600dcafe;

/* Page-aligned .bss pages; all of them lie under the first L1 table. */
static uint8_t shared_info_page[PAGE_SIZE] PAGE_ALIGNED;  /* VA for shared_info */
#define PGT_POOL_PAGES 8
static uint8_t pgt_pool[PGT_POOL_PAGES][PAGE_SIZE] PAGE_ALIGNED;
static unsigned int pgt_pool_used;
#define NR_SCRATCH_PAGES 8
static uint8_t scratch_pages[NR_SCRATCH_PAGES][PAGE_SIZE] PAGE_ALIGNED;
uint64_t gdt[PAGE_SIZE / 8] PAGE_ALIGNED;

/* Data the TLS-style descriptor in our GDT points at. */
static uint32_t tls_words[4] = { 0x7157a000, 0x7157a001, 0x7157a002, 0x7157a003 };

/* ------------------------------------------------------------------------
 * Console: console_io(CONSOLEIO_write).  Until the hypercall page is usable
 * (MSR variant: until we have written the MSR) output is kept in a buffer.
 * ------------------------------------------------------------------------ */
static int hypercall_page_ready;
static char early_log[4096];
static unsigned int early_log_len;

void console_write(const char *s, unsigned int len)
{
    if (!hypercall_page_ready) {
        while (len-- && early_log_len < sizeof(early_log))
            early_log[early_log_len++] = *s++;
        return;
    }
    (void)HYPERVISOR_console_io(CONSOLEIO_write, len, s);
}

static void early_log_flush(void)
{
    hypercall_page_ready = 1;
    if (early_log_len)
        (void)HYPERVISOR_console_io(CONSOLEIO_write, early_log_len, early_log);
    early_log_len = 0;
}

/* ------------------------------------------------------------------------
 * Checks and the end of the run
 * ------------------------------------------------------------------------ */
int check(int ok, const char *fmt, ...)
{
    char buf[400];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);

    checks_run++;
    if (!ok)
        checks_failed++;
    printk("%s%s\n", ok ? "pvdemo: " : "FAIL: ", buf);
    return ok;
}

static NORETURN void finish(void)
{
    struct sched_shutdown sd;
    struct vcpu_state *v = this_vcpu();

    printk("pvdemo: %u event upcall(s), %u failsafe callback(s) taken\n",
           v->upcalls, v->failsafes);
    if (checks_failed == 0) {
        printk("pvdemo: all %u checks passed\n", checks_run);
        sd.reason = SHUTDOWN_poweroff;
    } else {
        printk("pvdemo: %u checks FAILED (of %u)\n", checks_failed, checks_run);
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
    printk("FAIL: %s - cannot continue\n", why);
    finish();
}

/* ------------------------------------------------------------------------
 * Frame numbers.  The P2M (start_info.mfn_list, one u32 MFN per PFN) maps
 * our pseudo-physical frames to machine frames; the read-only M2P Xen maps
 * at hv_virt_start goes the other way.  PFN n is mapped at VIRT_BASE + n*4K.
 * ------------------------------------------------------------------------ */
static inline uint32_t pte_mfn(pte_t e)
{
    return (uint32_t)((e & PTE_ADDR_MASK) >> PAGE_SHIFT);
}

static inline pte_t mfn_pte(uint32_t mfn, uint32_t flags)
{
    return ((pte_t)mfn << PAGE_SHIFT) | flags;
}

/* VA of a machine frame of ours, through the M2P; NULL unless the M2P and
 * P2M agree and the frame is one of our nr_pages. */
static void *mfn_to_virt(uint32_t mfn)
{
    uint32_t pfn = machine_to_phys[mfn];

    if (pfn >= xen_start_info->nr_pages || pfn_to_mfn(pfn) != mfn)
        return NULL;
    return (void *)(VIRT_BASE + (pfn << PAGE_SHIFT));
}

static int mmuext(unsigned int cmd, uint32_t arg1)
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
 * hypercall (Linux: xen_restore_fl / xen_force_evtchn_callback).
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

void do_trap(struct trap_frame *f)
{
    struct vcpu_state *v = this_vcpu();
    uint32_t fixup = trap_fixup_eip;

    if (fixup) {
        /* An expected trap from one of the probe_* helpers. */
        last_trap.vector = f->vector;
        last_trap.error_code = f->error_code;
        last_trap.eip = f->eip;
        last_trap.cs = f->cs & 0xffff;
        last_trap.saved_mask = (f->cs >> 16) & 0xff;
        last_trap.eflags = f->eflags;
        /* Linux reads CR2 from vcpu_info too (xen_read_cr2). */
        last_trap.cr2 = (f->vector == 14 && v->vi) ? v->vi->arch.cr2 : 0;
        last_trap.mask_in_handler = v->vi ? v->vi->evtchn_upcall_mask : 0xff;
        barrier();
        last_trap.count++;
        trap_fixup_eip = 0;
        f->eip = fixup;
        return;
    }

    printk("FAIL: unexpected %s (vector %u), error code %#x, at eip %p, cs %#x, eflags %#x",
           f->vector < ARRAY_SIZE(trap_names) ? trap_names[f->vector] : "?",
           f->vector, f->error_code, (void *)f->eip, f->cs, f->eflags);
    if (f->vector == 14 && v->vi)
        printk(", cr2 %#x", v->vi->arch.cr2);
    printk("\n");
    fatal("unexpected exception");
}

void do_hypervisor_callback(struct trap_frame *f)
{
    struct vcpu_state *v = this_vcpu();

    (void)f;
    v->upcalls++;
    if (v->vi)
        evtchn_do_upcall();     /* smp.c: Linux's 2-level scan and port dispatch */
}

void do_failsafe_callback(struct failsafe_frame *f)
{
    this_vcpu()->failsafes++;
    printk("pvdemo: failsafe callback at eip %p: Xen could not load ds %#x es %#x "
           "fs %#x gs %#x; continuing with flat DS/ES and null FS/GS\n",
           (void *)f->eip, f->ds, f->es, f->fs, f->gs);
}

/* ------------------------------------------------------------------------
 * Step 3: start_info
 * ------------------------------------------------------------------------ */
/* va is a page of ours above the image (PFN < nr_pages; computed on PFNs so
 * that big domains, whose pages do not all fit above VIRT_BASE, work too). */
static int in_image_or_after(uint32_t va, uint32_t nr_pages)
{
    return va >= (uint32_t)_end && ((va - VIRT_BASE) >> PAGE_SHIFT) < nr_pages;
}

static void step_start_info(struct start_info *si)
{
    const char *want = CONFIG_PAE ? "xen-3.0-x86_32p" : "xen-3.0-x86_32";
    unsigned int i, nonzero = 0;

    memcpy(guest_magic, si->magic, sizeof(si->magic));
    guest_magic[sizeof(si->magic)] = '\0';
    check(strncmp(guest_magic, "xen-3.0-x86_32", 14) == 0 && strcmp(guest_magic, want) == 0,
          "start_info at %p: magic \"%s\" (want \"%s\")", si, guest_magic, want);

    printk("pvdemo:   nr_pages %u (%u MiB), shared_info maddr %#x, flags %#x%s%s\n",
           si->nr_pages, si->nr_pages >> 8, si->shared_info, si->flags,
           (si->flags & SIF_PRIVILEGED) ? " privileged" : "",
           (si->flags & SIF_INITDOMAIN) ? " initdomain" : "");
    printk("pvdemo:   pt_base %p, nr_pt_frames %u, mfn_list %p\n",
           (void *)si->pt_base, si->nr_pt_frames, (void *)si->mfn_list);
    printk("pvdemo:   store mfn %#x port %u, console mfn %#x port %u, mod_start %p mod_len %u\n",
           si->store_mfn, si->store_evtchn, si->console.domU.mfn,
           si->console.domU.evtchn, (void *)si->mod_start, si->mod_len);
    printk("pvdemo:   cmd_line \"%.*s\"\n",
           (int)strnlen((const char *)si->cmd_line, MAX_GUEST_CMDLINE),
           (const char *)si->cmd_line);

    check((uint32_t)si == (uint32_t)xen_start_info && in_image_or_after((uint32_t)si, si->nr_pages) &&
          !(si->pt_base & (PAGE_SIZE - 1)) && in_image_or_after(si->pt_base, si->nr_pages) &&
          in_image_or_after(si->mfn_list, si->nr_pages) && si->nr_pt_frames > 0,
          "boot layout: start_info, pt_base and mfn_list lie in the boot mapping after the image (%p..%p)",
          _text, _end);

    for (i = 0; i < ARRAY_SIZE(bss_canary); i++)
        nonzero |= bss_canary[i];
    check(nonzero == 0, ".bss was zero-filled by the domain builder");
}

/* ------------------------------------------------------------------------
 * Step 4: Xen CPUID leaves (forced emulation) and the hypercall page
 * ------------------------------------------------------------------------ */
static void xen_cpuid(uint32_t leaf, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d)
{
    /* ud2; .ascii "xen"; cpuid: Xen's #UD handler emulates the CPUID against
     * the domain's policy, including the hypervisor leaves. */
    asm volatile (XEN_EMULATE_PREFIX_BYTES "cpuid"
                  : "=a" (*a), "=b" (*b), "=c" (*c), "=d" (*d)
                  : "0" (leaf), "2" (0));
}

static void wrmsr(uint32_t msr, uint64_t val)
{
    asm volatile ("wrmsr"
                  : : "c" (msr), "a" ((uint32_t)val), "d" ((uint32_t)(val >> 32))
                  : "memory");
}

/* Ask Xen to write the hypercall stubs: WRMSR(msr, machine address of the
 * page).  Byte 0 is poisoned first and must become 0xB8 ("mov $0,%eax"). */
static int fill_hypercall_page_via_msr(uint32_t msr)
{
    volatile uint8_t *hp = hypercall_page;
    maddr_t ma = virt_to_maddr(hypercall_page);

    hp[0] = 0xcc;
    wrmsr(msr, ma);
    return check(hp[0] == 0xb8,
                 "hypercall page at %p filled by WRMSR %#x <- %#llx (pfn %#x -> mfn %#x): first byte %#x",
                 hypercall_page, msr, (unsigned long long)ma, virt_to_pfn(hypercall_page),
                 virt_to_mfn(hypercall_page), hp[0]);
}

static void step_hypercall_page(void)
{
    static const uint8_t stub0[8] = { 0xb8, 0, 0, 0, 0, 0xcd, 0x82, 0xc3 };
    static const uint8_t stub_iret[8] = { 0x50, 0xb8, 23, 0, 0, 0, 0xcd, 0x82 };
    volatile uint8_t *hp = hypercall_page;
    uint32_t base, a = 0, b = 0, c = 0, d = 0, msr = 0, pages = 0;
    int found;

    for (base = XEN_CPUID_FIRST_LEAF; base < XEN_CPUID_LAST_BASE; base += XEN_CPUID_LEAF_STRIDE) {
        xen_cpuid(base, &a, &b, &c, &d);
        if (b == XEN_CPUID_SIGNATURE_EBX && c == XEN_CPUID_SIGNATURE_ECX &&
            d == XEN_CPUID_SIGNATURE_EDX && a - base >= 2)
            break;
    }
    found = base < XEN_CPUID_LAST_BASE;
    check(found, "CPUID leaf %#x via the forced-emulation prefix: signature \"XenVMMXenVMM\", max leaf %#x",
          found ? base : XEN_CPUID_FIRST_LEAF, a);
    if (found) {
        xen_cpuid(base + 1, &a, &b, &c, &d);
        cpuid_xen_version = a;
        printk("pvdemo:   CPUID %#x: Xen %u.%u\n", base + 1, a >> 16, a & 0xffff);
        xen_cpuid(base + 2, &a, &b, &c, &d);
        pages = a;
        msr = b;
        check(pages >= 1, "CPUID %#x: %u hypercall page(s), MSR %#x, features %#x",
              base + 2, pages, msr, c);
    }

#if CONFIG_HYPERCALL_NOTE
    if (!check(hp[0] == 0xb8,
               "hypercall page at %p filled by the domain builder (XEN_ELFNOTE_HYPERCALL_PAGE): first byte %#x",
               hypercall_page, hp[0]) && found && pages)
        fill_hypercall_page_via_msr(msr);   /* fallback, so we can report */
#else
    if (found && pages)
        fill_hypercall_page_via_msr(msr);
#endif

    if (hp[0] != 0xb8) {
        /* No way to reach Xen (not even to print).  Without a trap table,
         * this #UD makes Xen crash the domain. */
        asm volatile ("ud2");
    }
    early_log_flush();

    check(memcmp((const void *)hp, stub0, 8) == 0 &&
          memcmp((const void *)(hp + __HYPERVISOR_iret * 32), stub_iret, 8) == 0,
          "hypercall stubs: #0 = %02x %02x %02x %02x %02x %02x %02x %02x, "
          "#23 (iret) = %02x %02x %02x %02x %02x %02x %02x %02x",
          hp[0], hp[1], hp[2], hp[3], hp[4], hp[5], hp[6], hp[7],
          hp[736], hp[737], hp[738], hp[739], hp[740], hp[741], hp[742], hp[743]);
}

/* ------------------------------------------------------------------------
 * Step 5: xen_version and vm_assist
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
    struct xen_feature_info fi = { .submap_idx = 0 };
    struct xen_platform_parameters pp = { 0 };
    long rc;

    xen_ver = HYPERVISOR_xen_version(XENVER_version, NULL);
    check(xen_ver > 0 && (!cpuid_xen_version || (uint32_t)xen_ver == cpuid_xen_version),
          "XENVER_version: Xen %ld.%ld (CPUID said %u.%u)", xen_ver >> 16, xen_ver & 0xffff,
          cpuid_xen_version >> 16, cpuid_xen_version & 0xffff);

    rc = HYPERVISOR_xen_version(XENVER_get_features, &fi);
    check(rc == 0 && !(fi.submap & (1u << XENFEAT_auto_translated_physmap)),
          "XENVER_get_features(0) = %#x (rc %ld): not auto-translated%s%s%s", fi.submap, rc,
          (fi.submap & (1u << XENFEAT_writable_page_tables)) ? ", writable_page_tables" : "",
          (fi.submap & (1u << XENFEAT_pae_pgdir_above_4gb)) ? ", pae_pgdir_above_4gb" : "",
          (fi.submap & (1u << XENFEAT_supervisor_mode_kernel)) ? ", supervisor_mode_kernel" : "");

    rc = HYPERVISOR_xen_version(XENVER_platform_parameters, &pp);
    check(rc == 0 && pp.virt_start == HYPERVISOR_VIRT_START,
          "XENVER_platform_parameters: virt_start %#x (want %#x, rc %ld)",
          pp.virt_start, HYPERVISOR_VIRT_START, rc);
    if (rc == 0 && pp.virt_start >= VIRT_BASE) {
        hv_virt_start = pp.virt_start;
        machine_to_phys = (const volatile uint32_t *)hv_virt_start;
    }

    rc = HYPERVISOR_xen_version(XENVER_capabilities, caps);
    caps[sizeof(caps) - 1] = '\0';
    check(rc == 0 && list_has_word(caps, guest_magic),
          "XENVER_capabilities \"%s\" lists our guest type \"%s\" (rc %ld)", caps, guest_magic, rc);

    rc = HYPERVISOR_vm_assist(VMASST_CMD_enable, VMASST_TYPE_writable_pagetables);
    check(rc == 0, "vm_assist(enable, writable_pagetables) rc %ld", rc);
    rc = HYPERVISOR_vm_assist(VMASST_CMD_enable, VMASST_TYPE_4gb_segments);
    check(rc == 0, "vm_assist(enable, 4gb_segments) rc %ld", rc);
#if CONFIG_PAE
    rc = HYPERVISOR_vm_assist(VMASST_CMD_enable, VMASST_TYPE_pae_extended_cr3);
    check(rc == 0, "vm_assist(enable, pae_extended_cr3) rc %ld", rc);
#endif
}

/* ------------------------------------------------------------------------
 * Step 6: virtual IDT and callbacks
 * ------------------------------------------------------------------------ */
#define TRAP(vec, flags, handler) { vec, flags, FLAT_KERNEL_CS, (uint32_t)(handler) }
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
    { 0, 0, 0, 0 }                          /* address 0 ends the table */
};

static void step_traps_and_callbacks(void)
{
    struct callback_register event = {
        .type = CALLBACKTYPE_event,
        .flags = CALLBACKF_mask_events,     /* implied for event callbacks */
        .address = { FLAT_KERNEL_CS, (uint32_t)hypervisor_callback },
    };
    struct callback_register failsafe = {
        .type = CALLBACKTYPE_failsafe,
        .flags = CALLBACKF_mask_events,
        .address = { FLAT_KERNEL_CS, (uint32_t)failsafe_callback },
    };
    int rc;

    rc = HYPERVISOR_set_trap_table(trap_table);
    check(rc == 0, "trap table installed: vectors 0-19 at cs %#x, #PF with TI_IF, #BP/#OF DPL 3 (rc %d)",
          FLAT_KERNEL_CS, rc);

    /* The old interface (Linux <= 2.6.2x used it), then the callback_op one. */
    rc = HYPERVISOR_set_callbacks(FLAT_KERNEL_CS, (unsigned long)hypervisor_callback,
                                  FLAT_KERNEL_CS, (unsigned long)failsafe_callback);
    check(rc == 0, "set_callbacks: event %#x:%p, failsafe %#x:%p (rc %d)",
          FLAT_KERNEL_CS, hypervisor_callback, FLAT_KERNEL_CS, failsafe_callback, rc);
    rc = HYPERVISOR_callback_op(CALLBACKOP_register, &event);
    check(rc == 0, "callback_op(register, event) rc %d", rc);
    rc = HYPERVISOR_callback_op(CALLBACKOP_register, &failsafe);
    check(rc == 0, "callback_op(register, failsafe, mask_events) rc %d", rc);
}

/* ------------------------------------------------------------------------
 * Step 7: kernel stack for ring 3 -> ring 1 transitions
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
    unsigned int upcalls_before, pending_before;
    int rc, unmasked;

    /* The .bss page's own frame simply becomes unmapped (and unused). */
    rc = HYPERVISOR_update_va_mapping((unsigned long)shared_info_page,
                                      (pte_t)si->shared_info | _PAGE_PRESENT | _PAGE_RW |
                                      _PAGE_ACCESSED | _PAGE_DIRTY,
                                      UVMF_INVLPG);
    check(rc == 0, "shared_info (maddr %#x) mapped at %p with update_va_mapping (rc %d)",
          si->shared_info, shared_info_page, rc);
    if (rc)
        fatal("no shared_info");
    HYPERVISOR_shared_info = (struct shared_info *)shared_info_page;
    v->id = 0;
    v->vi = vi = &HYPERVISOR_shared_info->vcpu_info[0];

    check(vi->evtchn_upcall_mask == 1,
          "vcpu_info[0] at boot: evtchn_upcall_mask %u (want 1), upcall_pending %u, pending_sel %#x",
          vi->evtchn_upcall_mask, vi->evtchn_upcall_pending, vi->evtchn_pending_sel);

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
 * Step 9: our own page tables, built from the boot ones (Linux's
 * xen_pagetable_setup_start/done, pin style):
 *   new top table (PAE: L3 + a private copy of each present L2; non-PAE: L2)
 *   + a private copy of the L1 that maps VIRT_BASE; the other L1s are shared.
 * Build them in RW pages, make those pages read-only everywhere, pin, switch,
 * unpin the boot top table; then the boot top table (and PAE L2s) and the
 * copied boot L1 are ordinary pages again and can be mapped writable.
 * ------------------------------------------------------------------------ */
static pte_t *pgt_alloc(void)
{
    pte_t *p;

    if (pgt_pool_used == PGT_POOL_PAGES)
        return NULL;
    p = (pte_t *)pgt_pool[pgt_pool_used++];
    memset(p, 0, PAGE_SIZE);
    return p;
}

/* Map a freed page-table page writable again and prove it with a store. */
static int remap_writable(void *va, int *rc_out)
{
    volatile uint32_t *w = va;
    uint32_t saved;
    int rc;

    rc = HYPERVISOR_update_va_mapping((unsigned long)va,
                                      mfn_pte(virt_to_mfn(va), _PAGE_PRESENT | _PAGE_RW |
                                              _PAGE_ACCESSED),
                                      UVMF_INVLPG);
    *rc_out = rc;
    if (rc)
        return 0;
    saved = w[0];
    w[0] = 0x5a5aa5a5;
    barrier();
    if (w[0] != 0x5a5aa5a5)
        return 0;
    w[0] = saved;
    return 1;
}

static int in_boot_tables(const void *va)
{
    uint32_t first = virt_to_pfn((void *)xen_start_info->pt_base);
    uint32_t pfn = virt_to_pfn(va);

    return pfn >= first && pfn < first + xen_start_info->nr_pt_frames;
}

static void step_pagetables(void)
{
    struct start_info *si = xen_start_info;
    pte_t *old_top = (pte_t *)si->pt_base;
    uint32_t old_top_mfn = virt_to_mfn(old_top);
    pte_t *new_top, *kl2 = NULL, *old_l1, *new_l1;
    pte_t *tables[PGT_POOL_PAGES];
    unsigned int ntables = 0, i, kidx, done;
    uint32_t new_top_mfn, cr3, traps;
    struct mmu_update u;
    pte_t orig;
    int rc, rc2, ok;
#if CONFIG_PAE
    pte_t *old_l2[L3_ENTRIES] = { NULL };
#endif

    printk("pvdemo: building own %d-level page tables from the boot tables at %p (mfn %#x)\n",
           TOP_LEVEL, old_top, old_top_mfn);
    check(machine_to_phys[old_top_mfn] == virt_to_pfn(old_top),
          "M2P at %#x: M2P[%#x] = %#x = pfn of pt_base", hv_virt_start, old_top_mfn,
          machine_to_phys[old_top_mfn]);

    new_top = pgt_alloc();
    tables[ntables++] = new_top;

#if CONFIG_PAE
    /* Copy each present L2.  The L2 under L3[3] holds Xen's slots from
     * l2_index(hv_virt_start) (428) up; Xen fills those itself when it
     * validates the new L2, so they are left zero. */
    for (i = 0; i < L3_ENTRIES; i++) {
        pte_t e = old_top[i];
        unsigned int n = (i == 3) ? l2_index(hv_virt_start) : L2_ENTRIES;
        pte_t *nl2;

        if (!(e & _PAGE_PRESENT))
            continue;
        old_l2[i] = mfn_to_virt(pte_mfn(e));
        nl2 = pgt_alloc();
        if (!old_l2[i] || !in_boot_tables(old_l2[i]) || !nl2) {
            check(0, "boot L3[%u] = %#llx: L2 not found in the boot tables", i,
                  (unsigned long long)e);
            return;
        }
        tables[ntables++] = nl2;
        memcpy(nl2, old_l2[i], n * sizeof(pte_t));
        new_top[i] = (e & ~PTE_ADDR_MASK) | virt_to_maddr(nl2);
        if (i == l3_index(VIRT_BASE))
            kl2 = nl2;
    }
#else
    /* Guest slots only; slots from l2_index(hv_virt_start) (1008) up are
     * Xen's and Xen fills them when it validates the new L2. */
    memcpy(new_top, old_top, l2_index(hv_virt_start) * sizeof(pte_t));
    kl2 = new_top;
#endif
    kidx = l2_index(VIRT_BASE);
    if (!kl2 || !(kl2[kidx] & _PAGE_PRESENT)) {
        check(0, "boot tables do not map VIRT_BASE %#x", VIRT_BASE);
        return;
    }

    /* A private copy of the L1 that maps the image (and all pool pages). */
    old_l1 = mfn_to_virt(pte_mfn(kl2[kidx]));
    new_l1 = pgt_alloc();
    if (!old_l1 || !in_boot_tables(old_l1) || !new_l1) {
        check(0, "boot L1 for VIRT_BASE (L2 entry %#llx) not found in the boot tables",
              (unsigned long long)kl2[kidx]);
        return;
    }
    tables[ntables++] = new_l1;
    memcpy(new_l1, old_l1, PAGE_SIZE);
    kl2[kidx] = (kl2[kidx] & ~PTE_ADDR_MASK) | virt_to_maddr(new_l1);
    printk("pvdemo:   copied the boot tables into %u pool pages (top %p, L1 copy %p of boot L1 %p)\n",
           ntables, new_top, new_l1, old_l1);

    /* Page-table frames may not be mapped writable anywhere (Xen refuses to
     * validate them otherwise): first in the new L1 copy, which still is an
     * ordinary RW page, then in the live boot tables. */
    for (i = 0; i < ntables; i++)
        new_l1[l1_index(tables[i])] &= ~(pte_t)_PAGE_RW;
    ok = 1;
    for (i = 0; i < ntables; i++) {
        rc = HYPERVISOR_update_va_mapping((unsigned long)tables[i],
                                          mfn_pte(virt_to_mfn(tables[i]),
                                                  _PAGE_PRESENT | _PAGE_ACCESSED),
                                          UVMF_NONE);
        if (rc) {
            printk("FAIL:   update_va_mapping(%p, read-only) rc %d\n", tables[i], rc);
            ok = 0;
        }
    }
    check(ok, "%u new table pages made read-only with update_va_mapping", ntables);

    new_top_mfn = virt_to_mfn(new_top);
    rc = mmuext(MMUEXT_PIN_L1_TABLE, virt_to_mfn(new_l1));
    check(rc == 0, "MMUEXT_PIN_L1_TABLE L1 copy (mfn %#x) rc %d", virt_to_mfn(new_l1), rc);
    rc = mmuext(PIN_TOP_CMD, new_top_mfn);
    check(rc == 0, "MMUEXT_PIN_L%d_TABLE new top table (mfn %#x) rc %d", TOP_LEVEL,
          new_top_mfn, rc);
    if (rc)
        return;

    rc = mmuext(MMUEXT_NEW_BASEPTR, new_top_mfn);
    check(rc == 0, "MMUEXT_NEW_BASEPTR -> mfn %#x rc %d", new_top_mfn, rc);
    if (rc)
        return;
    check(data_canary == 0x600dcafe && xen_start_info == si && tables[0] == new_top,
          "running on the new page tables: data read back (%#x)", data_canary);

    traps = last_trap.count;
    cr3 = probe_read_cr3();
    check(last_trap.count == traps && xen_cr3_to_pfn(cr3) == new_top_mfn,
          "new CR3 mfn %#x (mov %%cr3 emulated by Xen: %#x; want mfn %#x)",
          xen_cr3_to_pfn(cr3), cr3, new_top_mfn);

    /* mmu_update on a live entry of the new L1: the PTE of scratch page 0
     * loses RW, then gets it back (the L1 is mapped read-only, so we can
     * read what Xen wrote). */
    i = l1_index(scratch_pages[0]);
    orig = new_l1[i];
    u.ptr = virt_to_maddr(&new_l1[i]) | MMU_NORMAL_PT_UPDATE;
    u.val = orig & ~(pte_t)_PAGE_RW;
    done = 0;
    rc = HYPERVISOR_mmu_update(&u, 1, &done, DOMID_SELF);
    ok = rc == 0 && done == 1 && !(new_l1[i] & _PAGE_RW) && pte_mfn(new_l1[i]) == pte_mfn(orig);
    (void)mmuext(MMUEXT_INVLPG_LOCAL, (uint32_t)scratch_pages[0]);
    ok = ok && scratch_pages[0][0] == 0;    /* still readable */
    u.val = orig;
    rc2 = HYPERVISOR_mmu_update(&u, 1, NULL, DOMID_SELF);
    ok = ok && rc2 == 0 && (new_l1[i] & _PAGE_RW);
    (void)mmuext(MMUEXT_INVLPG_LOCAL, (uint32_t)scratch_pages[0]);
    scratch_pages[0][0] = 1;                /* writable again */
    scratch_pages[0][0] = 0;
    check(ok, "mmu_update(MMU_NORMAL_PT_UPDATE) at maddr %#llx (new L1 entry %u): RW off and on (rc %d, %d, done %u)",
          (unsigned long long)(u.ptr & ~(uint64_t)(sizeof(pte_t) - 1)), i, rc, rc2, done);

    rc = mmuext(MMUEXT_UNPIN_TABLE, old_top_mfn);
    check(rc == 0, "MMUEXT_UNPIN_TABLE boot top table (mfn %#x) rc %d", old_top_mfn, rc);
    if (rc == 0) {
        /* Nothing references the boot top table (and PAE L2s) or the copied
         * boot L1 any more: they are plain pages again. */
        ok = remap_writable(old_l1, &rc);
        check(ok, "boot L1 %p (mfn %#x) is free: mapped writable again (rc %d)",
              old_l1, virt_to_mfn(old_l1), rc);
        ok = remap_writable(old_top, &rc);
#if CONFIG_PAE
        for (i = 0; i < L3_ENTRIES && ok; i++)
            if (old_l2[i])
                ok = remap_writable(old_l2[i], &rc);
#endif
        check(ok, "boot top table %p%s free: mapped writable again (rc %d)", old_top,
              CONFIG_PAE ? " and its L2s are" : " is", rc);
    }

    /* MMU_MACHPHYS_UPDATE: rewrite one M2P entry with the value it has. */
    {
        uint32_t pfn = virt_to_pfn(scratch_pages[1]), mfn = pfn_to_mfn(pfn);

        u.ptr = ((maddr_t)mfn << PAGE_SHIFT) | MMU_MACHPHYS_UPDATE;
        u.val = pfn;
        done = 0;
        rc = HYPERVISOR_mmu_update(&u, 1, &done, DOMID_SELF);
        check(rc == 0 && done == 1 && machine_to_phys[mfn] == pfn,
              "mmu_update(MMU_MACHPHYS_UPDATE) M2P[%#x] = %#x (rc %d), read back %#x",
              mfn, pfn, rc, machine_to_phys[mfn]);
    }
}

/* ------------------------------------------------------------------------
 * Step 10: a GDT of our own
 * ------------------------------------------------------------------------ */
#define GDT_KERNEL_CS       1
#define GDT_KERNEL_DS       2
#define GDT_TLS             3
#define GDT_SEL(idx)        (((idx) << 3) | 1)      /* TI = GDT, RPL 1 */

/* Segment descriptor; access = bits 8-15 of the high word (P, DPL, S, type)
 * plus G (bit 23) and D/B (bit 22). */
static uint64_t make_desc(uint32_t base, uint32_t limit, uint32_t access)
{
    uint32_t lo = (base << 16) | (limit & 0xffff);
    uint32_t hi = (base & 0xff000000) | ((base >> 16) & 0xff) | (limit & 0xf0000) | access;

    return ((uint64_t)hi << 32) | lo;
}
#define DESC_DATA_DPL1_BYTES  0x0040b300    /* P, DPL 1, data RW accessed, 32-bit, byte limit */

static uint32_t read_fs_word0(unsigned int sel)
{
    uint32_t v;

    asm volatile ("movl %1, %%fs\n\t"
                  "movl %%fs:0, %0"
                  : "=r" (v) : "r" (sel) : "memory");
    return v;
}

static void step_gdt(void)
{
    unsigned long frames[1];
    uint64_t tls0, tls1;
    uint32_t v0, v1;
    int rc;

    gdt[GDT_KERNEL_CS] = 0x00cfbb000000ffffULL;    /* flat 4 GiB code, DPL 1 */
    gdt[GDT_KERNEL_DS] = 0x00cfb3000000ffffULL;    /* flat 4 GiB data, DPL 1 */
    tls0 = make_desc((uint32_t)&tls_words[0], sizeof(tls_words) - 1, DESC_DATA_DPL1_BYTES);
    tls1 = make_desc((uint32_t)&tls_words[1], sizeof(tls_words) - 5, DESC_DATA_DPL1_BYTES);
    gdt[GDT_TLS] = tls0;

    frames[0] = virt_to_mfn(gdt);
    rc = HYPERVISOR_update_va_mapping((unsigned long)gdt,
                                      mfn_pte(frames[0], _PAGE_PRESENT | _PAGE_ACCESSED),
                                      UVMF_INVLPG);
    check(rc == 0, "GDT page %p (mfn %#lx) made read-only (rc %d)", gdt, frames[0], rc);
    rc = HYPERVISOR_set_gdt(frames, GDT_ENTRIES);
    check(rc == 0, "set_gdt: 1 frame, %u entries (rc %d)", GDT_ENTRIES, rc);
    if (rc)
        return;

    v0 = read_fs_word0(GDT_SEL(GDT_TLS));
    check(v0 == tls_words[0], "%%fs = %#x (own GDT entry %u, base %p): %%fs:0 reads %#x",
          GDT_SEL(GDT_TLS), GDT_TLS, &tls_words[0], v0);

    rc = HYPERVISOR_update_descriptor(virt_to_maddr(&gdt[GDT_TLS]), tls1);
    v1 = read_fs_word0(GDT_SEL(GDT_TLS));
    check(rc == 0 && gdt[GDT_TLS] == tls1 && v1 == tls_words[1],
          "update_descriptor(maddr %#llx, base %p) rc %d: %%fs:0 now reads %#x",
          (unsigned long long)virt_to_maddr(&gdt[GDT_TLS]), &tls_words[1], rc, v1);
}

/* ------------------------------------------------------------------------
 * Step 11: multicalls (Linux batches page-table updates this way in lazy
 * MMU mode)
 * ------------------------------------------------------------------------ */
static void mc_update_va_mapping(struct multicall_entry *mc, unsigned long va, pte_t pte,
                                 unsigned long flags)
{
    mc->op = __HYPERVISOR_update_va_mapping;
    mc->result = 0xdeadbeef;
    mc->args[0] = va;
    mc->args[1] = (uint32_t)pte;
    mc->args[2] = (uint32_t)((uint64_t)pte >> 32);
    mc->args[3] = flags;
}

static void step_multicall(void)
{
    struct multicall_entry mc[NR_SCRATCH_PAGES + 1];
    struct mmuext_op flush = { .cmd = MMUEXT_TLB_FLUSH_LOCAL };
    unsigned int i, n = 0;
    pte_t pte;
    int rc, ok;

    memset(mc, 0, sizeof(mc));
    for (i = 0; i < NR_SCRATCH_PAGES; i++) {
        pte = mfn_pte(virt_to_mfn(scratch_pages[i]),
                      _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY);
        mc_update_va_mapping(&mc[n++], (unsigned long)scratch_pages[i], pte,
                             i == NR_SCRATCH_PAGES - 1 ? UVMF_TLB_FLUSH | UVMF_LOCAL : UVMF_NONE);
    }
    mc[n].op = __HYPERVISOR_mmuext_op;
    mc[n].result = 0xdeadbeef;
    mc[n].args[0] = (uint32_t)&flush;
    mc[n].args[1] = 1;
    mc[n].args[2] = 0;                  /* no "done" pointer */
    mc[n].args[3] = DOMID_SELF;
    n++;

    rc = HYPERVISOR_multicall(mc, n);
    ok = rc == 0;
    for (i = 0; i < n; i++) {
        if (mc[i].result != 0) {
            printk("FAIL:   multicall entry %u (op %u) result %d\n", i, mc[i].op,
                   (int)mc[i].result);
            ok = 0;
        }
    }
    for (i = 0; i < NR_SCRATCH_PAGES; i++) {
        scratch_pages[i][PAGE_SIZE - 1] = (uint8_t)i;
        ok = ok && scratch_pages[i][PAGE_SIZE - 1] == (uint8_t)i;
    }
    check(ok, "multicall of %u entries (%u x update_va_mapping, the last with UVMF_TLB_FLUSH|UVMF_LOCAL, "
          "+ mmuext_op TLB_FLUSH_LOCAL): rc %d, every result 0", n, NR_SCRATCH_PAGES, rc);

    /* A batch with a failing entry in the middle: a mapping in the Xen area.
     * Xen stores each call's own result and carries on with the next. */
    pte = mfn_pte(virt_to_mfn(scratch_pages[0]),
                  _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY);
    memset(mc, 0, sizeof(mc));
    mc_update_va_mapping(&mc[0], (unsigned long)scratch_pages[0], pte, UVMF_INVLPG);
    mc_update_va_mapping(&mc[1], hv_virt_start, pte, UVMF_INVLPG);
    mc[2].op = __HYPERVISOR_xen_version;
    mc[2].result = 0xdeadbeef;
    mc[2].args[0] = XENVER_version;
    mc[2].args[1] = 0;
    rc = HYPERVISOR_multicall(mc, 3);
    check(rc == 0 && mc[0].result == 0 && (int32_t)mc[1].result < 0 &&
          mc[2].result == (uint32_t)xen_ver,
          "multicall with a failing entry: update_va_mapping(%#x) -> %d (-errno), "
          "neighbours -> %d / %#x (rc %d)",
          hv_virt_start, (int)mc[1].result, (int)mc[0].result, mc[2].result, rc);
}

/* ------------------------------------------------------------------------
 * Step 12: exceptions bounced through the trap table
 * ------------------------------------------------------------------------ */
#define PF_PROBE_VA 0x1000      /* below the kernel; not mapped by anybody */

static void step_faults(void)
{
    volatile struct vcpu_info *vi = this_vcpu()->vi;
    unsigned int before;
    int got;

    /* Events on, so entering a TI_IF handler visibly masks them and the
     * iret hypercall visibly restores the mask from EFLAGS.IF. */
    events_enable();

    before = last_trap.count;
    (void)probe_read(PF_PROBE_VA);
    got = last_trap.count == before + 1 && last_trap.vector == 14;
    check(got && last_trap.eip == (uint32_t)probe_read_insn && last_trap.cr2 == PF_PROBE_VA &&
          (last_trap.cs & 3) == 1,
          "#PF handled at %p: read of %#x, cr2 %#x (vcpu_info), cs %#x",
          (void *)last_trap.eip, PF_PROBE_VA, last_trap.cr2, last_trap.cs);
    check(got && (last_trap.error_code & (PFEC_PRESENT | PFEC_WRITE | PFEC_USER |
                                          PFEC_RSVD | PFEC_INSN)) == 0,
          "#PF error code %#x: not present, read, supervisor", last_trap.error_code);
    check(got && last_trap.mask_in_handler == 1 && last_trap.saved_mask == 0 &&
          (last_trap.eflags & X86_EFLAGS_IF) && vi->evtchn_upcall_mask == 0,
          "#PF handler ran with events masked (TI_IF): mask %u, saved mask %u, frame IF %u; "
          "mask %u after iret", last_trap.mask_in_handler, last_trap.saved_mask,
          !!(last_trap.eflags & X86_EFLAGS_IF), vi->evtchn_upcall_mask);

    before = last_trap.count;
    (void)probe_hlt();
    got = last_trap.count == before + 1 && last_trap.vector == 13;
    check(got && last_trap.eip == (uint32_t)probe_hlt_insn && last_trap.error_code == 0 &&
          last_trap.mask_in_handler == 0,
          "#GP handled at %p: hlt in ring 1, error code %#x, events left unmasked (mask %u)",
          (void *)last_trap.eip, last_trap.error_code, last_trap.mask_in_handler);

    before = last_trap.count;
    (void)probe_int3();
    got = last_trap.count == before + 1 && last_trap.vector == 3;
    check(got && last_trap.eip == (uint32_t)probe_int3_next,
          "#BP handled: int3 at %p, saved eip %p (the next instruction)",
          probe_int3_insn, (void *)last_trap.eip);

    events_disable();
}

/* ------------------------------------------------------------------------
 * Entry from head.S
 * ------------------------------------------------------------------------ */
void start_kernel(start_info_t *si)
{
    printk("pvdemo: booting, %s, hypercall page %s\n",
           CONFIG_PAE ? "PAE (3-level)" : "non-PAE (2-level)",
           CONFIG_HYPERCALL_NOTE ? "from XEN_ELFNOTE_HYPERCALL_PAGE" : "through the CPUID MSR");

    step_start_info(si);            /*  3 */
    step_hypercall_page();          /*  4 (output is buffered until here) */
    step_xen_version();             /*  5 */
    step_traps_and_callbacks();     /*  6 */
    step_stack_switch();            /*  7 */
    step_shared_info();             /*  8 */
    step_pagetables();              /*  9 */
    step_gdt();                     /* 10 */
    step_multicall();               /* 11 */
    step_faults();                  /* 12 */
    step_events();                  /* 13: event channels (smp.c) */
    step_time();                    /* 14: virtual time and timers */
    step_smp();                     /* 15: secondary vCPUs, IPIs, ticks per vCPU */
    finish();                       /* 16 */
}
