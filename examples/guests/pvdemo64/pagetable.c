/*
 * pagetable.c - pvdemo64's own 4-level page tables, built from the boot ones
 * the way Linux's xen_setup_kernel_pagetable (arch/x86/xen/mmu_pv.c) does:
 *
 *   copy the boot L4 (guest slots only: Xen owns 256-271 and fills them on
 *   validation), the L3 and L2 on the path to VIRT_BASE and the L1 that maps
 *   the image; the other boot L1s are shared.  Make every new table page
 *   read-only (in the copy and, with update_va_mapping, in the live boot
 *   tables), MMUEXT_PIN_L1_TABLE the L1 copy, MMUEXT_PIN_L4_TABLE the new L4,
 *   MMUEXT_NEW_BASEPTR, MMUEXT_UNPIN_TABLE the boot L4; after that the boot
 *   L4/L3/L2 and the copied L1 are ordinary pages again.
 *
 * Then the low region the user task lives in: an L1 filled while it is
 * still a plain page, an empty L2 and L3, each made read-only and pinned
 * (PIN_L1/L2/L3), hooked together and into our L4 by one mmu_update batch
 * (an L2, an L3 and an L4 entry).  Along the way: the updates Xen refuses
 * (a writable mapping of a page table: -EBUSY; an L4 entry in Xen's slots
 * 256-271 and a superpage L2 entry: -EINVAL), the flags Xen adds to what we
 * write (_PAGE_USER, bit 52 for kernel pages, _PAGE_GLOBAL for user pages),
 * a writable-pagetable (ptwr) store to an L1, and MMU_MACHPHYS_UPDATE.
 *
 * Validation rules: xen/arch/x86/mm.c (get_page_from_l1e, mod_l1..l4_entry,
 * do_mmu_update, do_mmuext_op) and xen/arch/x86/pv/mm.h (adjust_guest_l*e);
 * ptwr: xen/arch/x86/pv/ro-page-fault.c.
 */
#include <stddef.h>
#include <stdint.h>

#include "xen.h"
#include "hypercall.h"
#include "lib.h"
#include "pvdemo64.h"

#define PDE_FLAGS   (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)
#define PTE_RO      (_PAGE_PRESENT | _PAGE_ACCESSED)
#define PTE_RW      (_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_NX)
#define PTE_USER_RO (_PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED)
#define PTE_USER_RW (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_NX)

extern char __user_text_start[];

/* Backing pages of the low region (all inside the image, so they also have
 * their ordinary kernel mapping). */
uint8_t user_data_page[PAGE_SIZE] PAGE_ALIGNED;
uint8_t user_stack_pages[USER_STACK_PAGES][PAGE_SIZE] PAGE_ALIGNED;
uint8_t user_tls_page[PAGE_SIZE] PAGE_ALIGNED;
uint8_t user_gs_pages[2][PAGE_SIZE] PAGE_ALIGNED;
uint8_t low_tls_page[PAGE_SIZE] PAGE_ALIGNED;
uint8_t user_demand_page[PAGE_SIZE] PAGE_ALIGNED;
static uint8_t ptwr_pages[2][PAGE_SIZE] PAGE_ALIGNED;
static uint8_t pt_scratch[PAGE_SIZE] PAGE_ALIGNED;

#define PGT_POOL_PAGES 10
static uint8_t pgt_pool[PGT_POOL_PAGES][PAGE_SIZE] PAGE_ALIGNED;
static unsigned int pgt_pool_used;

uint64_t *kernel_l4, *kernel_l1, *low_l1;  /* pvdemo64.h */
uint64_t kernel_l4_mfn;
static uint64_t *low_l2, *low_l3;

static volatile uint64_t data_canary = 0x600dcafe600dcafe;

pgentry_t *pgt_alloc(void)
{
    pgentry_t *p;

    if (pgt_pool_used == PGT_POOL_PAGES)
        return NULL;
    p = (pgentry_t *)pgt_pool[pgt_pool_used++];
    memset(p, 0, PAGE_SIZE);
    return p;
}

/* Map one page of ours read-only in the current tables. */
int make_readonly(const void *va)
{
    return HYPERVISOR_update_va_mapping((unsigned long)va, mfn_pte(virt_to_mfn(va), PTE_RO),
                                        UVMF_INVLPG);
}

/* Map a freed page-table page writable again and prove it with a store. */
static int remap_writable(void *va, int *rc_out)
{
    volatile uint64_t *w = va;
    uint64_t saved;
    int rc;

    rc = HYPERVISOR_update_va_mapping((unsigned long)va, mfn_pte(virt_to_mfn(va), PTE_RW),
                                      UVMF_INVLPG);
    *rc_out = rc;
    if (rc)
        return 0;
    saved = w[0];
    w[0] = 0x5a5aa5a55a5aa5a5;
    barrier();
    if (w[0] != 0x5a5aa5a55a5aa5a5)
        return 0;
    w[0] = saved;
    return 1;
}

static int in_boot_tables(const void *va)
{
    unsigned long first = virt_to_pfn((void *)xen_start_info->pt_base);
    unsigned long pfn = virt_to_pfn(va);

    return va && pfn >= first && pfn < first + xen_start_info->nr_pt_frames;
}

static int mmu_update1(volatile pgentry_t *entry, pgentry_t val, unsigned int *done)
{
    struct mmu_update u;

    u.ptr = virt_to_maddr(entry) | MMU_NORMAL_PT_UPDATE;
    u.val = val;
    *done = 0;
    return HYPERVISOR_mmu_update(&u, 1, done, DOMID_SELF);
}

/* ------------------------------------------------------------------------
 * The kernel tables
 * ------------------------------------------------------------------------ */
static int build_kernel_tables(void)
{
    struct start_info *si = xen_start_info;
    pgentry_t *old_l4 = (pgentry_t *)si->pt_base, *old_l3, *old_l2, *old_l1;
    pgentry_t *new_l4, *new_l3, *new_l2, *new_l1, *tables[4];
    pgentry_t e4, e3, e2, e1, orig;
    unsigned long old_l4_mfn = virt_to_mfn(old_l4), new_l4_mfn, pfn, mfn;
    unsigned int i, done, ntables = 0;
    uint64_t cr3, traps;
    int rc, rc2, ok;

    printk("pvdemo64: building own 4-level page tables from the boot tables at %p (mfn %#lx)\n",
           old_l4, old_l4_mfn);

    /* The boot path to VIRT_BASE: L4[511] -> L3[510] -> L2[0] -> L1. */
    e4 = old_l4[l4_index(VIRT_BASE)];
    old_l3 = (e4 & _PAGE_PRESENT) ? mfn_to_virt(pte_mfn(e4)) : NULL;
    e3 = old_l3 ? old_l3[l3_index(VIRT_BASE)] : 0;
    old_l2 = (e3 & _PAGE_PRESENT) ? mfn_to_virt(pte_mfn(e3)) : NULL;
    e2 = old_l2 ? old_l2[l2_index(VIRT_BASE)] : 0;
    old_l1 = (e2 & _PAGE_PRESENT) ? mfn_to_virt(pte_mfn(e2)) : NULL;
    if (!check(in_boot_tables(old_l3) && in_boot_tables(old_l2) && in_boot_tables(old_l1) &&
               (uint64_t)old_l3 == si->pt_base + PAGE_SIZE &&
               (uint64_t)old_l2 == si->pt_base + 2 * PAGE_SIZE &&
               (uint64_t)old_l1 == si->pt_base + 3 * PAGE_SIZE,
               "boot tables in the builder's order L4 %p, L3 %p, L2 %p, L1 %p (entries %#lx, %#lx, %#lx)",
               old_l4, old_l3, old_l2, old_l1, e4, e3, e2) || !old_l1)
        return 0;

    /* The builder writes L4-L2 entries with P|RW|A|D|U and L1 entries with
     * P|RW|A (read-only for the table pages); pinning the L4 made Xen add
     * _PAGE_USER and bit 52 (_PAGE_GUEST_KERNEL) to the L1 entries. */
    e1 = old_l1[l1_index(_text)];
    i = l1_index(si->pt_base);
    check((e4 & PDE_FLAGS) == PDE_FLAGS && (e3 & PDE_FLAGS) == PDE_FLAGS &&
          (e2 & PDE_FLAGS) == PDE_FLAGS && pte_mfn(e1) == virt_to_mfn(_text) &&
          (e1 & (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER)) == (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER) &&
          (e1 & _PAGE_GUEST_KERNEL) &&
          (virt_to_pfn((void *)si->pt_base) >= 512 || !(old_l1[i] & _PAGE_RW)) &&
          (old_l4[ROOT_PAGETABLE_FIRST_XEN_SLOT] & _PAGE_PRESENT),
          "boot entries: L4/L3/L2 %#lx/%#lx/%#lx (P|RW|U|A|D), image L1e %#lx (P|RW, U and bit 52 "
          "added by Xen), L1e of the L4 %#lx (read-only); Xen's M2P slot 256 present (%#lx)",
          e4 & 0xfff, e3 & 0xfff, e2 & 0xfff, e1, old_l1[i], old_l4[ROOT_PAGETABLE_FIRST_XEN_SLOT]);

    new_l4 = pgt_alloc();
    new_l3 = pgt_alloc();
    new_l2 = pgt_alloc();
    new_l1 = pgt_alloc();
    tables[ntables++] = new_l4;
    tables[ntables++] = new_l3;
    tables[ntables++] = new_l2;
    tables[ntables++] = new_l1;
    for (i = 0; i < 512; i++)
        if (i < ROOT_PAGETABLE_FIRST_XEN_SLOT || i > ROOT_PAGETABLE_LAST_XEN_SLOT)
            new_l4[i] = old_l4[i];
    memcpy(new_l3, old_l3, PAGE_SIZE);
    memcpy(new_l2, old_l2, PAGE_SIZE);
    memcpy(new_l1, old_l1, PAGE_SIZE);
    new_l4[l4_index(VIRT_BASE)] = (e4 & ~PTE_ADDR_MASK) | virt_to_maddr(new_l3);
    new_l3[l3_index(VIRT_BASE)] = (e3 & ~PTE_ADDR_MASK) | virt_to_maddr(new_l2);
    new_l2[l2_index(VIRT_BASE)] = (e2 & ~PTE_ADDR_MASK) | virt_to_maddr(new_l1);

    /* Page-table frames may not be mapped writable anywhere (Xen refuses to
     * validate them otherwise): first in the L1 copy, still an ordinary RW
     * page, then in the live boot L1. */
    for (i = 0; i < ntables; i++)
        new_l1[l1_index(tables[i])] &= ~(pgentry_t)_PAGE_RW;
    ok = 1;
    for (i = 0; i < ntables; i++) {
        rc = make_readonly(tables[i]);
        if (rc) {
            printk("FAIL:   update_va_mapping(%p, read-only) rc %d\n", tables[i], rc);
            ok = 0;
        }
    }
    check(ok, "new L4 %p, L3 %p, L2 %p, L1 %p made read-only with update_va_mapping",
          new_l4, new_l3, new_l2, new_l1);

    new_l4_mfn = virt_to_mfn(new_l4);
    rc = mmuext(MMUEXT_PIN_L1_TABLE, virt_to_mfn(new_l1));
    check(rc == 0, "MMUEXT_PIN_L1_TABLE L1 copy (mfn %#lx) rc %d", virt_to_mfn(new_l1), rc);
    /* Without VMASST_TYPE_m2p_strict Xen creates an L4 with the M2P slot
     * (256) blank and fills it when the L4 becomes a kernel one
     * (promote_l4_table -> init_xen_l4_slots(..., m2p_strict);
     * new_guest_cr3 -> fill_ro_mpt; public/xen.h VMASST_TYPE_m2p_strict). */
    rc = mmuext(MMUEXT_PIN_L4_TABLE, new_l4_mfn);
    e4 = new_l4[ROOT_PAGETABLE_FIRST_XEN_SLOT];
    check(rc == 0 && e4 == 0,
          "MMUEXT_PIN_L4_TABLE new L4 (mfn %#lx) rc %d; its M2P slot 256 is still blank (%#lx)",
          new_l4_mfn, rc, e4);
    if (rc)
        return 0;

    rc = mmuext(MMUEXT_NEW_BASEPTR, new_l4_mfn);
    e4 = new_l4[ROOT_PAGETABLE_FIRST_XEN_SLOT];
    check(rc == 0 && (e4 & (_PAGE_PRESENT | _PAGE_USER)) == (_PAGE_PRESENT | _PAGE_USER) &&
          e4 == old_l4[ROOT_PAGETABLE_FIRST_XEN_SLOT],
          "MMUEXT_NEW_BASEPTR -> mfn %#lx rc %d; Xen filled slot 256 with the M2P entry of the boot L4 (%#lx)",
          new_l4_mfn, rc, e4);
    if (rc)
        return 0;
    kernel_l4 = new_l4;
    kernel_l1 = new_l1;
    kernel_l4_mfn = new_l4_mfn;
    check(data_canary == 0x600dcafe600dcafe && xen_start_info == si &&
          machine_to_phys()[new_l4_mfn] == virt_to_pfn(new_l4),
          "running on the new page tables: data read back (%#lx), M2P still mapped", data_canary);

    traps = last_trap.count;
    cr3 = probe_read_cr3();
    check(last_trap.count == traps && cr3 == xen_pfn_to_cr3(new_l4_mfn),
          "mov %%cr3 emulated by Xen: %#lx (want xen_pfn_to_cr3(mfn %#lx) = mfn << 12)",
          cr3, new_l4_mfn);

    /* What Xen refuses.  A writable mapping of a page-table page: the page
     * cannot take the writable type while it is an L4 (get_page_from_l1e
     * -> could_not_pin: -EBUSY), whichever way we ask. */
    i = l1_index(new_l4);
    orig = new_l1[i];
    rc = mmu_update1(&new_l1[i], mfn_pte(new_l4_mfn, PTE_RW), &done);
    rc2 = HYPERVISOR_update_va_mapping((unsigned long)new_l4, mfn_pte(new_l4_mfn, PTE_RW), UVMF_INVLPG);
    check(rc == -XEN_EBUSY && done == 0 && rc2 == -XEN_EBUSY && new_l1[i] == orig,
          "writable mapping of the L4 refused: mmu_update %d, update_va_mapping %d (-EBUSY); "
          "entry unchanged", rc, rc2);
    /* L4 slots 256-271 are Xen's (mod_l4_entry: -EINVAL). */
    rc = mmu_update1(&new_l4[ROOT_PAGETABLE_FIRST_XEN_SLOT], new_l4[l4_index(VIRT_BASE)], &done);
    rc2 = mmu_update1(&new_l4[ROOT_PAGETABLE_LAST_XEN_SLOT], 0, &done);
    check(rc == -XEN_EINVAL && rc2 == -XEN_EINVAL,
          "mmu_update of L4 slot 256 %d, of slot 271 %d (-EINVAL: Xen's slots)", rc, rc2);

    /* mmu_update on a live L1 entry: pt_scratch loses RW, then gets it back
     * (the L1 is mapped read-only, so we can read what Xen wrote). */
    i = l1_index(pt_scratch);
    orig = new_l1[i];
    rc = mmu_update1(&new_l1[i], orig & ~(pgentry_t)_PAGE_RW, &done);
    ok = rc == 0 && done == 1 && !(new_l1[i] & _PAGE_RW) && pte_mfn(new_l1[i]) == pte_mfn(orig);
    (void)mmuext(MMUEXT_INVLPG_LOCAL, (unsigned long)pt_scratch);
    ok = ok && pt_scratch[0] == 0;          /* still readable */
    rc2 = mmu_update1(&new_l1[i], orig, &done);
    ok = ok && rc2 == 0 && (new_l1[i] & _PAGE_RW);
    (void)mmuext(MMUEXT_INVLPG_LOCAL, (unsigned long)pt_scratch);
    pt_scratch[0] = 1;                      /* writable again */
    pt_scratch[0] = 0;
    check(ok, "mmu_update(MMU_NORMAL_PT_UPDATE) of L1 entry %u at maddr %#lx: RW off and on "
          "(rc %d, %d)", i, virt_to_maddr(&new_l1[i]), rc, rc2);

    rc = mmuext(MMUEXT_UNPIN_TABLE, old_l4_mfn);
    check(rc == 0, "MMUEXT_UNPIN_TABLE boot L4 (mfn %#lx) rc %d", old_l4_mfn, rc);
    if (rc == 0) {
        /* Nothing references the boot L4, L3, L2 or the copied L1 now. */
        ok = remap_writable(old_l1, &rc) && remap_writable(old_l2, &rc) &&
             remap_writable(old_l3, &rc) && remap_writable(old_l4, &rc);
        check(ok, "boot L4, L3, L2 and the copied L1 are free: mapped writable again (rc %d)", rc);
    }

    /* MMU_MACHPHYS_UPDATE: rewrite one M2P entry with the value it has. */
    pfn = virt_to_pfn(pt_scratch);
    mfn = pfn_to_mfn(pfn);
    {
        struct mmu_update u = { ((maddr_t)mfn << PAGE_SHIFT) | MMU_MACHPHYS_UPDATE, pfn };

        done = 0;
        rc = HYPERVISOR_mmu_update(&u, 1, &done, DOMID_SELF);
    }
    check(rc == 0 && done == 1 && machine_to_phys()[mfn] == pfn,
          "mmu_update(MMU_MACHPHYS_UPDATE) M2P[%#lx] = %#lx (rc %d), read back %#lx",
          mfn, pfn, rc, machine_to_phys()[mfn]);
    return 1;
}

/* ------------------------------------------------------------------------
 * The low region [0x400000, 0x600000): L4[0] -> L3[0] -> L2[2] -> low_l1
 * ------------------------------------------------------------------------ */
static void low_map(uint64_t va, const void *page, uint64_t flags)
{
    low_l1[l1_index(va)] = mfn_pte(virt_to_mfn(page), flags);
}

static void build_low_region(void)
{
    volatile uint64_t *ud = (volatile uint64_t *)user_data_page;
    volatile uint64_t *ptwr_va = (volatile uint64_t *)LOW_PTWR_VA;
    volatile pgentry_t *pte;
    struct mmu_update req[3];
    unsigned int i, done = 0, traps;
    pgentry_t e_kernel, e_user, e_ptwr;
    int rc, rc2, rc3, rc4, ok;

    low_l1 = pgt_alloc();
    low_l2 = pgt_alloc();
    low_l3 = pgt_alloc();
    if (!low_l1 || !low_l2 || !low_l3 || !kernel_l4) {
        check(0, "low region: no page-table pages");
        return;
    }
    /* Filled while it is still an ordinary page: direct stores. */
    for (i = 0; i < USER_CODE_PAGES; i++)
        low_map(USER_CODE_VA + i * PAGE_SIZE, __user_text_start + i * PAGE_SIZE, PTE_USER_RO);
    low_map(USER_DATA_VA, user_data_page, PTE_USER_RW);
    for (i = 0; i < USER_STACK_PAGES; i++)
        low_map(USER_STACK_VA + i * PAGE_SIZE, user_stack_pages[i], PTE_USER_RW);
    low_map(USER_TLS_VA, user_tls_page, PTE_USER_RW);
    low_map(USER_GS_VA, user_gs_pages[0], PTE_USER_RW);
    low_map(USER_GS2_VA, user_gs_pages[1], PTE_USER_RW);
    low_map(LOW_TLS_VA, low_tls_page, PTE_USER_RW);

    rc = make_readonly(low_l1);
    rc |= make_readonly(low_l2);
    rc |= make_readonly(low_l3);
    rc2 = mmuext(MMUEXT_PIN_L1_TABLE, virt_to_mfn(low_l1));
    rc3 = mmuext(MMUEXT_PIN_L2_TABLE, virt_to_mfn(low_l2));
    rc4 = mmuext(MMUEXT_PIN_L3_TABLE, virt_to_mfn(low_l3));
    check(rc == 0 && rc2 == 0 && rc3 == 0 && rc4 == 0,
          "low region tables read-only (rc %d) and pinned: MMUEXT_PIN_L1_TABLE %d, "
          "PIN_L2_TABLE %d, PIN_L3_TABLE %d", rc, rc2, rc3, rc4);

    /* One batch, bottom up, as Linux's set_pmd/set_pud/set_pgd do in lazy
     * MMU mode: an L2 entry, an L3 entry, an L4 entry. */
    req[0].ptr = virt_to_maddr(&low_l2[l2_index(LOW_REGION_VA)]) | MMU_NORMAL_PT_UPDATE;
    req[0].val = virt_to_maddr(low_l1) | PDE_FLAGS;
    req[1].ptr = virt_to_maddr(&low_l3[l3_index(LOW_REGION_VA)]) | MMU_NORMAL_PT_UPDATE;
    req[1].val = virt_to_maddr(low_l2) | PDE_FLAGS;
    req[2].ptr = virt_to_maddr(&kernel_l4[l4_index(LOW_REGION_VA)]) | MMU_NORMAL_PT_UPDATE;
    req[2].val = virt_to_maddr(low_l3) | PDE_FLAGS;
    rc = HYPERVISOR_mmu_update(req, 3, &done, DOMID_SELF);
    ud[0] = 0x10e510e510e510e5;
    check(rc == 0 && done == 3 && pte_mfn(kernel_l4[0]) == virt_to_mfn(low_l3) &&
          *(volatile uint64_t *)USER_DATA_VA == 0x10e510e510e510e5,
          "mmu_update batch L2[2], L3[0], L4[0] (rc %d, done %u): the low region at %#x is mapped "
          "(L4[0] %#lx)", rc, done, LOW_REGION_VA, kernel_l4[0]);
    ud[0] = 0;

    rc = mmu_update1(&low_l2[l2_index(LOW_REGION_VA) + 1],
                     mfn_pte(virt_to_mfn(ptwr_pages[0]), PDE_FLAGS | _PAGE_PSE), &done);
    check(rc == -XEN_EINVAL && low_l2[l2_index(LOW_REGION_VA) + 1] == 0,
          "mmu_update of an L2 entry with _PAGE_PSE (a superpage): %d (-EINVAL)", rc);

    /* What Xen adds to an L1 entry (adjust_guest_l1e): a kernel entry
     * (written without _PAGE_USER) gets U and bit 52, a user entry gets G. */
    pte = &low_l1[l1_index(LOW_PTWR_VA)];
    rc = HYPERVISOR_update_va_mapping(LOW_PTWR_VA, mfn_pte(virt_to_mfn(ptwr_pages[0]), PTE_RW),
                                      UVMF_INVLPG);
    e_kernel = *pte;
    rc2 = HYPERVISOR_update_va_mapping(LOW_PTWR_VA, mfn_pte(virt_to_mfn(ptwr_pages[0]), PTE_USER_RW),
                                       UVMF_INVLPG);
    e_user = *pte;
    check(rc == 0 && rc2 == 0 &&
          (e_kernel & (_PAGE_USER | _PAGE_GUEST_KERNEL | _PAGE_GLOBAL)) == (_PAGE_USER | _PAGE_GUEST_KERNEL) &&
          (e_user & (_PAGE_USER | _PAGE_GUEST_KERNEL | _PAGE_GLOBAL)) == (_PAGE_USER | _PAGE_GLOBAL),
          "Xen's L1 adjustments: written without U -> %#lx (U and bit 52 added), with U -> %#lx "
          "(G added)", e_kernel, e_user);

    /* Writable page tables: a plain store into the (read-only) L1 is
     * emulated by Xen, not bounced to us. */
    ((volatile uint64_t *)ptwr_pages[0])[0] = 0xaaaa0000aaaa0000;
    ((volatile uint64_t *)ptwr_pages[1])[0] = 0xbbbb0000bbbb0000;
    traps = last_trap.count;
    ok = *ptwr_va == 0xaaaa0000aaaa0000;
    *pte = mfn_pte(virt_to_mfn(ptwr_pages[1]), PTE_USER_RW);
    e_ptwr = *pte;
    (void)mmuext(MMUEXT_INVLPG_LOCAL, LOW_PTWR_VA);
    check(ok && last_trap.count == traps && pte_mfn(e_ptwr) == virt_to_mfn(ptwr_pages[1]) &&
          *ptwr_va == 0xbbbb0000bbbb0000,
          "writable page tables: a plain store to the read-only L1 entry of %#x (emulated by Xen) "
          "switched it to mfn %#lx (entry %#lx)", LOW_PTWR_VA, pte_mfn(e_ptwr), e_ptwr);
    (void)HYPERVISOR_update_va_mapping(LOW_PTWR_VA, 0, UVMF_INVLPG);
}

void step_pagetables(void)
{
    if (build_kernel_tables())
        build_low_region();
}
