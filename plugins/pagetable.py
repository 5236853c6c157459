"""Pagetable walker: one address through every level, the whole address space as
coalesced ranges (like QEMU's `info mem`, with machine and guest frames), the inventory
of pagetable frames, and an invariant check of what Xen's mm.c guarantees. Non-PAE, PAE
and 4-level (64-bit guests: the kernel L4, the user L4, or any root by MFN).

Everything reads the live tables through xenwb.hypervisor.paging (walk, mappings: the
walker the hypervisor and the gdb stub use) and the page-type state of
xenwb.hypervisor.mm; Xen's own slots come from the domain's Xen area.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plugins.api import Arg, Opt, Plugin, command
from xenwb.abi import constants as C
from xenwb.hypervisor.mm import PT_TYPES, PageType
from xenwb.hypervisor.paging import Mapping, canonical, mappings, read_pte, walk
from xenwb.hypervisor.xenarea64 import M2P_SLOT
from xenwb.registry import CommandError, Result, parse_int, table

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.machine import Machine

PT_LIKE = (PageType.l1, PageType.l2, PageType.l3, PageType.l4, PageType.seg_desc)
SIZE_NAMES = {1 << 21: "2 MiB", 1 << 22: "4 MiB", 1 << 30: "1 GiB"}


@dataclass(frozen=True)
class Root:
    """The top-level table a command reads, and where it came from."""

    mfn: int
    label: str                 # "vcpu0 kernel", "vcpu0 user", "cr3 0x1234"
    vcpu: int | None


def _vcpu(m: Machine, n: int | None) -> Vcpu:
    if n is None:
        return m.vcpus[0]
    if not 0 <= n < len(m.vcpus):
        raise CommandError(f"no vcpu {n} (this run has {len(m.vcpus)})")
    return m.vcpus[n]


def _root(m: Machine, a: Any) -> Root:
    """The root named by --vcpu/--user/--cr3 (default: vcpu 0's kernel table)."""
    dom = m.domain
    if a.cr3 is not None:
        if a.user:
            raise CommandError("--user and --cr3 exclude each other")
        if not dom.mem.valid(a.cr3 << 12, 4096):
            raise CommandError(f"--cr3 {a.cr3:#x}: not a frame of machine memory")
        return Root(a.cr3, f"cr3 {a.cr3:#x}", None)
    v = _vcpu(m, a.vcpu)
    if not v.cr3_mfn:
        raise CommandError(f"vcpu{v.id} has no pagetables yet (not initialised)")
    if not a.user:
        return Root(v.cr3_mfn, f"vcpu{v.id} kernel", v.id)
    if not dom.is_64:
        raise CommandError("--user: a 32-bit guest has one pagetable for kernel and user mode")
    user = getattr(v, "user_cr3_mfn", 0)
    if not user:
        raise CommandError(f"vcpu{v.id} has no user L4 (MMUEXT_NEW_USER_BASEPTR is 0)")
    return Root(user, f"vcpu{v.id} user", v.id)


def leaf_mappings(m: Machine, root: int) -> Iterator[Mapping]:
    """Every present leaf mapping under root (va, leaf entry maddr, pte, mfn, writable, user,
    nx; .size and .level tell a superpage): the hypervisor's walker (paging.mappings)."""
    return mappings(m.domain.mem, m.domain.mode, root)


def _in_xen_range(dom: Domain, va: int) -> bool:
    """The hypervisor's part of every address space: [hv_start, 4 GiB) on 32-bit guests,
    L4 slots 256-271 on 64-bit ones (asm/x86_64/page.h is_guest_l4_slot)."""
    return dom.geo.hv_start <= va < dom.geo.hv_end


def _hex_va(dom: Domain, va: int) -> str:
    return f"{va:#0{18 if dom.is_64 else 10}x}"


def _pfn(dom: Domain, mfn: int | None) -> str | None:
    if mfn is None:
        return None
    p = dom.physmap.pfn(mfn)
    return f"{p:#x}" if p is not None else ("xen" if dom.mem.is_xen_frame(mfn) else None)


def _va(m: Machine, text: str) -> int:
    """A symbol, or a number (C syntax; negative numbers count down from the top)."""
    if not text[:1].isdigit() and not text.startswith("-"):
        sym = m.image.lookup(text)
        if sym is None:
            raise CommandError(f"VA: {text!r} is neither a number nor a symbol of the guest")
        return sym.address
    va = parse_int(text, "VA")
    if m.domain.is_64 and not -(1 << 63) <= va < 1 << 64:
        raise CommandError(f"VA {text!r} does not fit in 64 bits")
    return va & m.domain.geo.va_mask


def _root_opts(vcpu: Opt) -> tuple[Opt, ...]:
    return (vcpu, Opt("--user", help="the vcpu's user L4 (64-bit guests)"),
            Opt("--cr3", "MFN", "the tables rooted at this frame", int))


class PagetablePlugin(Plugin):
    name = "pagetable"
    description = "walk, dump and check Xen PV pagetables; inventory of pagetable frames"
    kinds = frozenset()

    def commands(self):
        vcpu = Opt("--vcpu", "N", "through this vcpu's pagetables (default 0)", int)
        return [
            command("pt walk", self.cmd_walk, "every level's entry for a virtual address",
                    Arg("va", "VA", "an address or a symbol"), *_root_opts(vcpu)),
            command("pt dump", self.cmd_dump, "the address space as coalesced ranges with frames",
                    *_root_opts(vcpu), Opt("--all", help="Xen's range too")),
            command("pt frames", self.cmd_frames, "pagetable and GDT frames: level, pinned, type count, referrers"),
            command("pt check", self.cmd_check, "what Xen's mm.c guarantees: typed roots and tables, "
                    "no writable mapping of a pagetable/GDT frame, no superpage, Xen's own slots"),
        ]

    # walk -----------------------------------------------------------------------------
    def walk(self, m: Machine, root: Root, va: int) -> dict[str, Any]:
        dom = m.domain
        mode = dom.mode
        if dom.is_64 and not canonical(va):
            raise CommandError(f"VA {va:#x} is not canonical (bits 63..47 must be equal)")
        w = walk(dom.mem, mode, root.mfn, va)
        levels = []
        for st in w.steps:
            leaf = st.present and mode.is_superpage(st.level, st.pte)
            child = None if not st.present else (w.mfn if leaf else mode.pte_mfn(st.pte))
            levels.append({"level": f"L{st.level}", "table_mfn": f"{st.table_mfn:#x}",
                           "table_pfn": _pfn(dom, st.table_mfn), "index": st.index,
                           "entry_maddr": f"{st.entry_maddr:#x}", "raw": f"{st.pte:#0{2 + 2 * mode.pte_size}x}",
                           "flags": st.flags + (["PAT"] if leaf and st.pte & 1 << 12 else []),   # a large page's PAT
                           "mfn": f"{child:#x}" if child is not None else None,
                           "pfn": _pfn(dom, child) if child is not None else None,
                           "maps": SIZE_NAMES.get(mode.level_span(st.level), "") + " page" if leaf else
                           ("4 KiB page" if st.present and st.level == 1 else "table" if st.present else "")})
        out = {"va": _hex_va(dom, va), "root": root.label, "vcpu": root.vcpu, "cr3_mfn": f"{root.mfn:#x}",
               "levels": levels, "mapped": w.mapped, "page_size": w.page_size}
        if w.mapped:
            out.update(mfn=f"{w.mfn:#x}", pfn=_pfn(dom, w.mfn), maddr=f"{w.maddr:#x}",
                       access=("RW" if w.writable else "RO") + (" user" if w.user else " kernel")
                       + (" NX" if w.nx else ""))
        return out

    def cmd_walk(self, m: Machine, a: Any) -> Result:
        root = _root(m, a)
        d = self.walk(m, root, _va(m, a.va))
        text = table(d["levels"], ["level", "table_mfn", "index", "entry_maddr", "raw", "flags", "mfn", "pfn", "maps"])
        size = f" in a {SIZE_NAMES[d['page_size']]} superpage" if d["page_size"] > 4096 else ""
        tail = (f"{d['va']} -> mfn {d['mfn']} (pfn {d['pfn']}) maddr {d['maddr']}: {d['access']}{size}"
                if d["mapped"] else f"{d['va']} is not mapped")
        return Result(d, f"{root.label} (mfn {root.mfn:#x})\n{text}\n{tail}")

    # dump -------------------------------------------------------------------------------
    def ranges(self, m: Machine, root: int, include_xen: bool = False) -> list[dict[str, Any]]:
        dom = m.domain
        out: list[dict[str, Any]] = []
        cur: dict[str, Any] | None = None
        m2p = dom.physmap.m2p_snapshot()
        for mp in leaf_mappings(m, root):
            if not include_xen and _in_xen_range(dom, mp.va):
                continue
            pfn = m2p[mp.mfn] if mp.mfn < len(m2p) else None
            pages = mp.size // 4096
            prot = ("rw" if mp.writable else "r-") + ("u" if mp.user else "-") + ("-" if mp.nx else "x")
            if cur is not None and cur["_next_va"] == mp.va and cur["prot"] == prot:
                if mp.size == 4096 and mp.mfn == cur["mfn_first"] == cur["_last_mfn"] \
                        and (cur["repeat"] or cur["pages"] == 1):
                    # one frame mapped again and again (Linux's p2m list maps its "missing"
                    # page over every hole): one range
                    cur["repeat"] = True
                    cur["_next_va"] += 4096
                    cur["pages"] += 1
                    continue
                if not cur["repeat"] and cur["_next_pfn"] is not None and cur["_next_pfn"] == pfn:
                    cur["_next_va"] += mp.size
                    cur["_next_pfn"] = pfn + pages
                    cur["pages"] += pages
                    cur["_last_mfn"] = mp.mfn + pages - 1
                    continue
            if cur is not None:
                out.append(cur)
            cur = {"va": mp.va, "pages": pages, "prot": prot, "mfn_first": mp.mfn, "_last_mfn": mp.mfn + pages - 1,
                   "pfn_first": pfn, "_next_va": mp.va + mp.size, "_next_pfn": pfn + pages if pfn is not None else None,
                   "repeat": False}
        if cur is not None:
            out.append(cur)
        for r in out:
            r["va_end"] = r.pop("_next_va")
            r["mfn_last"] = r.pop("_last_mfn")
            r.pop("_next_pfn")
        return out

    def cmd_dump(self, m: Machine, a: Any) -> Result:
        root = _root(m, a)
        rs = self.ranges(m, root.mfn, include_xen=a.all)
        w = 16 if m.domain.is_64 else 8
        rows = [{"range": f"{r['va']:0{w}x}-{r['va_end']:0{w}x}", "size": f"{r['pages'] * 4096:#x}", "prot": r["prot"],
                 "mfns": f"{r['mfn_first']:#x} x{r['pages']}" if r["repeat"] else
                 f"{r['mfn_first']:#x}..{r['mfn_last']:#x}",
                 "pfns": "xen" if r["pfn_first"] is None else f"{r['pfn_first']:#x} x{r['pages']}" if r["repeat"] else
                 f"{r['pfn_first']:#x}..{r['pfn_first'] + r['pages'] - 1:#x}"} for r in rs]
        return Result(rs, table(rows))

    # frames -----------------------------------------------------------------------------
    def frames(self, m: Machine) -> list[dict[str, Any]]:
        dom = m.domain
        rows = []
        for mfn, pi in sorted(dom.mm.pages.items()):
            if pi.type not in PT_LIKE or not (pi.type_count or pi.pinned):
                continue
            refs = [f"{r:#x}" for r in sorted(pi.referrers)]
            refs += [f"cr3:vcpu{v.id}" for v in m.vcpus if v.cr3_mfn == mfn]
            refs += [f"user-cr3:vcpu{v.id}" for v in m.vcpus if getattr(v, "user_cr3_mfn", 0) == mfn]
            refs += [f"gdt:vcpu{v.id}" for v in m.vcpus if mfn in v.gdt_frames]
            rows.append({"mfn": f"{mfn:#x}", "pfn": _pfn(dom, mfn), "type": pi.type.name
                         + (" (xen slots)" if pi.pae_xen_l2 else ""), "pinned": pi.pinned,
                         "type_count": pi.type_count, "refs": pi.count, "referenced_by": refs})
        return rows

    def cmd_frames(self, m: Machine, a: Any) -> Result:
        rows = self.frames(m)
        return Result(rows, table(rows))

    # check ------------------------------------------------------------------------------
    def roots(self, m: Machine) -> dict[int, str]:
        """Every top-level table in use: the vcpus' kernel and user roots, the pinned ones."""
        mm = m.domain.mm
        out: dict[int, str] = {}
        for v in m.vcpus:
            if v.cr3_mfn:
                out.setdefault(v.cr3_mfn, f"cr3:vcpu{v.id}")
            if getattr(v, "user_cr3_mfn", 0):
                out.setdefault(v.user_cr3_mfn, f"user-cr3:vcpu{v.id}")
        for mfn, pi in sorted(mm.pages.items()):
            if pi.pinned and pi.type == mm.top_type():
                out.setdefault(mfn, "pinned")
        return out

    def check(self, m: Machine) -> list[dict[str, Any]]:
        dom = m.domain
        mm, mode, mem = dom.mm, dom.mode, dom.mem
        top = mm.top_type()
        problems: list[dict[str, Any]] = []

        def problem(what: str, root: int, va: int | None, entry: int | None, mfn: int | None) -> None:
            problems.append({"problem": what, "root": f"{root:#x}", "va": _hex_va(dom, va) if va is not None else None,
                             "entry_maddr": f"{entry:#x}" if entry is not None else None,
                             "mfn": f"{mfn:#x}" if mfn is not None else None})

        roots = self.roots(m)
        # a root is a validated top-level table (mm.c new_guest_cr3: get_page_and_type of
        # PGT_root_page_table); a pinned frame holds its type (MMUEXT_PIN_*)
        for root, why in roots.items():
            pi = mm.pages.get(root)
            if pi is None or pi.type != top or not pi.type_count:
                problem(f"{why} is not a validated {top.name} table", root, None, None, root)
        for mfn, pi in sorted(mm.pages.items()):
            if pi.pinned and (pi.type not in PT_TYPES or not pi.type_count):
                problem(f"pinned frame without a pagetable type ({pi.type.name})", mfn, None, None, mfn)
        seen: set[int] = set()
        for root in sorted(roots):
            def on_table(level: int, mfn: int, va: int, entry: int | None, root: int = root) -> bool:
                if entry is None:
                    return True
                if _in_xen_range(dom, va) or mfn in seen:
                    return False            # Xen's own tables; a table already checked
                seen.add(mfn)
                pi = mm.pages.get(mfn)
                want = PageType(level)
                if pi is not None and pi.type_count and pi.type == level + 1 \
                        and not read_pte(mem, mode, entry) & C._PAGE_RW:
                    return False            # a read-only linear entry (mm.c define_get_linear_pagetable)
                if pi is None or pi.type != want or not pi.type_count:
                    got = pi.type.name if pi is not None and pi.type_count else "untyped"
                    problem(f"L{level + 1} entry points to a {got} frame, not a validated {want.name}",
                            root, va, entry, mfn)
                return True

            for mp in mappings(mem, mode, root, on_table):
                if _in_xen_range(dom, mp.va):
                    continue
                self._check_leaf(dom, root, mp, problem)
            self._check_xen_slots(dom, root, problem)
        return problems

    def _check_leaf(self, dom: Domain, root: int, mp: Mapping, problem) -> None:
        if mp.size > 4096:
            # Xen refuses PSE in a PV guest's L2/L3 entries (mm.c L2_DISALLOW_MASK, l3_disallow_mask)
            problem(f"{SIZE_NAMES.get(mp.size, mp.size)} superpage L{mp.level} entry (Xen refuses PSE)",
                    root, mp.va, mp.entry_maddr, mp.mfn)
            return
        pi = dom.mm.pages.get(mp.mfn)
        # mm.c get_page_from_l1e: a writable mapping needs PGT_writable_page, which a
        # pagetable or descriptor page cannot have
        if mp.pte & C._PAGE_RW and pi is not None and pi.type in PT_LIKE and pi.type_count:
            problem(f"writable mapping of a {pi.type.name} frame", root, mp.va, mp.entry_maddr, mp.mfn)

    def _check_xen_slots(self, dom: Domain, root: int, problem) -> None:
        mode, mem = dom.mode, dom.mem
        if dom.is_64:
            # mm.c init_xen_l4_slots writes slots 256-271 of every validated L4; slot 256 (the
            # read-only M2P) is filled by new_guest_cr3 (fill_ro_mpt) and blanked by
            # NEW_USER_BASEPTR under m2p_strict (zap_ro_mpt), so it holds either
            want = dom.xen.xen_l4_entries(True)
            for slot in dom.geo.xen_l4_slots:
                entry = (root << 12) + slot * 8
                raw = mem.read_u64(entry)
                if raw != want[slot] and not (slot == M2P_SLOT and raw == 0):
                    problem(f"L4 slot {slot} is not Xen's entry ({want[slot]:#x})", root,
                            mode.canonical_va(slot << 39), entry, mode.pte_mfn(raw))
            return
        top_l2 = self._top_l2(dom, root)
        if top_l2 is None:
            return
        xen_slots = dom.xen.xen_l2_entries()
        for slot in dom.geo.xen_l2_slots:
            entry = (top_l2 << 12) + slot * mode.pte_size
            raw = read_pte(mem, mode, entry)
            if raw != xen_slots.get(slot, 0):
                va = (3 << 30 | slot << 21) if mode.levels == 3 else slot << 22
                problem("guest entry in the hypervisor range", root, va, entry, mode.pte_mfn(raw))

    def _top_l2(self, dom: Domain, root: int) -> int | None:
        if dom.mode.levels == 2:
            return root
        l3e = read_pte(dom.mem, dom.mode, (root << 12) + 3 * dom.mode.pte_size)
        return dom.mode.pte_mfn(l3e) if l3e & 1 else None

    def cmd_check(self, m: Machine, a: Any) -> Result:
        p = self.check(m)
        roots = self.roots(m)
        text = "no invariant violations" if not p else table(p)
        return Result({"ok": not p, "problems": p, "roots": {f"{k:#x}": v for k, v in roots.items()}}, text)
