"""Pagetable walker: one address through every level, the whole address space as
coalesced ranges (like QEMU's `info mem`, with machine and guest frames), the inventory
of pagetable frames, and an invariant check (no writable mapping of a pagetable or
GDT frame, nothing of the guest's in the hypervisor range). Non-PAE and PAE.

Everything reads the live tables through xenwb.hypervisor.paging and the page-type
state of xenwb.hypervisor.mm: the same code the hypervisor and the gdb stub use.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from plugins.api import Arg, Opt, Plugin, command
from xenwb.hypervisor.mm import PageType
from xenwb.hypervisor.paging import Mapping, mappings, read_pte, walk
from xenwb.registry import CommandError, Result, parse_int, table

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.machine import Machine

PT_LIKE = (PageType.l1, PageType.l2, PageType.l3, PageType.l4, PageType.seg_desc)


def _vcpu(m: Machine, n: int | None) -> Vcpu:
    if n is None:
        return m.vcpus[0]
    if not 0 <= n < len(m.vcpus):
        raise CommandError(f"no vcpu {n}")
    return m.vcpus[n]


def leaf_mappings(m: Machine, root: int) -> Iterator[Mapping]:
    """(va, l1 entry maddr, pte, mfn, writable, user, nx) for every present 4 KiB mapping:
    the hypervisor's walker (paging.mappings)."""
    return mappings(m.domain.mem, m.domain.mode, root)


class PagetablePlugin(Plugin):
    name = "pagetable"
    description = "walk, dump and check Xen PV pagetables; inventory of pagetable frames"
    kinds = frozenset()

    def commands(self):
        vcpu = Opt("--vcpu", "N", "through this vcpu's pagetables (default 0)", int)
        return [
            command("pt walk", self.cmd_walk, "every level's entry for a virtual address",
                    Arg("va", "VA", "an address or a symbol"), vcpu),
            command("pt dump", self.cmd_dump, "the address space as coalesced ranges with frames",
                    vcpu, Opt("--all", help="Xen's range too")),
            command("pt frames", self.cmd_frames, "pagetable and GDT frames: level, pinned, type count, referrers"),
            command("pt check", self.cmd_check, "writable pagetable/GDT mappings, guest mappings in Xen's range"),
        ]

    # walk -----------------------------------------------------------------------------
    def walk(self, m: Machine, v: Vcpu, va: int) -> dict[str, Any]:
        dom = m.domain
        w = walk(dom.mem, dom.mode, v.cr3_mfn, va)
        levels = []
        for st in w.steps:
            child = dom.mode.pte_mfn(st.pte) if st.present else None
            levels.append({"level": f"L{st.level}", "table_mfn": f"{st.table_mfn:#x}",
                           "table_pfn": _pfn(dom, st.table_mfn), "index": st.index,
                           "entry_maddr": f"{st.entry_maddr:#x}", "raw": f"{st.pte:#0{2 + 2 * dom.mode.pte_size}x}",
                           "flags": st.flags, "mfn": f"{child:#x}" if child is not None else None,
                           "pfn": _pfn(dom, child) if child is not None else None})
        out = {"va": f"{va:#010x}", "vcpu": v.id, "cr3_mfn": f"{v.cr3_mfn:#x}", "levels": levels,
               "mapped": w.mapped}
        if w.mapped:
            out.update(mfn=f"{w.mfn:#x}", pfn=_pfn(dom, w.mfn), maddr=f"{w.maddr:#x}",
                       access=("RW" if w.writable else "RO") + (" user" if w.user else " kernel")
                       + (" NX" if w.nx else ""))
        return out

    def cmd_walk(self, m: Machine, a: Any) -> Result:
        v = _vcpu(m, a.vcpu)
        va = _va(m, a.va)
        d = self.walk(m, v, va)
        text = table(d["levels"], ["level", "table_mfn", "index", "entry_maddr", "raw", "flags", "mfn", "pfn"])
        tail = (f"{d['va']} -> mfn {d['mfn']} (pfn {d['pfn']}) maddr {d['maddr']}: {d['access']}"
                if d["mapped"] else f"{d['va']} is not mapped")
        return Result(d, text + "\n" + tail)

    # dump -------------------------------------------------------------------------------
    def ranges(self, m: Machine, v: Vcpu, include_xen: bool = False) -> list[dict[str, Any]]:
        dom = m.domain
        out: list[dict[str, Any]] = []
        cur: dict[str, Any] | None = None
        for va, _, _pte, mfn, rw, us, nx in leaf_mappings(m, v.cr3_mfn):
            if va >= dom.geo.hv_start and not include_xen:
                continue
            pfn = dom.physmap.pfn(mfn)
            prot = ("rw" if rw else "r-") + ("u" if us else "-") + ("-" if nx else "x")
            if (cur is not None and cur["_next_va"] == va and cur["prot"] == prot
                    and cur["_next_pfn"] is not None and cur["_next_pfn"] == pfn):
                cur["_next_va"] += 4096
                cur["_next_pfn"] = pfn + 1
                cur["pages"] += 1
                cur["_last_mfn"] = mfn
                continue
            if cur is not None:
                out.append(cur)
            cur = {"va": va, "pages": 1, "prot": prot, "mfn_first": mfn, "_last_mfn": mfn, "pfn_first": pfn,
                   "_next_va": va + 4096, "_next_pfn": pfn + 1 if pfn is not None else None}
        if cur is not None:
            out.append(cur)
        for r in out:
            r["va_end"] = r.pop("_next_va")
            r["mfn_last"] = r.pop("_last_mfn")
            r.pop("_next_pfn")
        return out

    def cmd_dump(self, m: Machine, a: Any) -> Result:
        rs = self.ranges(m, _vcpu(m, a.vcpu), include_xen=a.all)
        rows = [{"range": f"{r['va']:08x}-{r['va_end']:08x}", "size": f"{r['pages'] * 4096:#x}", "prot": r["prot"],
                 "mfns": f"{r['mfn_first']:#x}..{r['mfn_last']:#x}",
                 "pfns": f"{r['pfn_first']:#x}..{r['pfn_first'] + r['pages'] - 1:#x}"
                if r["pfn_first"] is not None else "xen"} for r in rs]
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
            refs += [f"gdt:vcpu{v.id}" for v in m.vcpus if mfn in v.gdt_frames]
            rows.append({"mfn": f"{mfn:#x}", "pfn": _pfn(dom, mfn), "type": pi.type.name
                         + (" (xen slots)" if pi.pae_xen_l2 else ""), "pinned": pi.pinned,
                         "type_count": pi.type_count, "refs": pi.count, "referenced_by": refs})
        return rows

    def cmd_frames(self, m: Machine, a: Any) -> Result:
        rows = self.frames(m)
        return Result(rows, table(rows))

    # check ------------------------------------------------------------------------------
    def check(self, m: Machine) -> list[dict[str, Any]]:
        dom = m.domain
        problems = []
        roots = {v.cr3_mfn for v in m.vcpus if v.cr3_mfn}
        roots |= {mfn for mfn, pi in dom.mm.pages.items() if pi.pinned and pi.type == dom.mm.top_type()}
        xen_slots = dom.xen.xen_l2_entries()
        for root in sorted(roots):
            for va, maddr, _pte, mfn, rw, _us, _nx in leaf_mappings(m, root):
                pi = dom.mm.pages.get(mfn)
                if va >= dom.geo.hv_start:
                    continue
                # writable through every level: a read-only linear slot (an L2 entry naming an
                # L2, as mm.c get_l2_linear_pagetable allows) maps the tables read-only
                if rw and pi is not None and pi.type in PT_LIKE and pi.type_count:
                    problems.append({"problem": f"writable mapping of a {pi.type.name} frame", "root": f"{root:#x}",
                                     "va": f"{va:#010x}", "entry_maddr": f"{maddr:#x}", "mfn": f"{mfn:#x}"})
            # the hypervisor range: only Xen's own entries may be there
            top_l2 = self._top_l2(m, root)
            if top_l2 is not None:
                mode = dom.mode
                for slot in dom.geo.xen_l2_slots:
                    raw = read_pte(dom.mem, mode, (top_l2 << 12) + slot * mode.pte_size)
                    if raw != xen_slots.get(slot, 0):
                        va = (3 << 30 | slot << 21) if mode.levels == 3 else slot << 22
                        entry = (top_l2 << 12) + slot * mode.pte_size
                        problems.append({"problem": "guest entry in the hypervisor range", "root": f"{root:#x}",
                                         "va": f"{va:#010x}", "entry_maddr": f"{entry:#x}",
                                         "mfn": f"{mode.pte_mfn(raw):#x}"})
        return problems

    def _top_l2(self, m: Machine, root: int) -> int | None:
        dom = m.domain
        if dom.mode.levels == 2:
            return root
        l3e = read_pte(dom.mem, dom.mode, (root << 12) + 3 * dom.mode.pte_size)
        return dom.mode.pte_mfn(l3e) if l3e & 1 else None

    def cmd_check(self, m: Machine, a: Any) -> Result:
        p = self.check(m)
        text = "no invariant violations" if not p else table(p)
        return Result({"ok": not p, "problems": p}, text)


def _pfn(dom, mfn: int | None) -> str | None:
    if mfn is None:
        return None
    p = dom.physmap.pfn(mfn)
    return f"{p:#x}" if p is not None else ("xen" if dom.mem.is_xen_frame(mfn) else None)


def _va(m: Machine, text: str) -> int:
    sym = m.image.lookup(text) if not text[:1].isdigit() else None
    if sym is not None:
        return sym.address
    return parse_int(text, "VA") & 0xFFFFFFFF

