"""mmu_update, mmuext_op, update_va_mapping(_otherdomain): xen/arch/x86/mm.c.

Processing stops at the first failing entry; `done` (when given) receives the
count of entries completed; the call returns that entry's error.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, MmuextCmd
from xenwb.hypervisor.hypercalls import PREEMPT_BATCH, create_continuation, hypercall
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.mm import MMError, PageType
from xenwb.hypervisor.paging import decode_flags, walk

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, EPERM, ESRCH, EACCES, EOPNOTSUPP, ENOSYS = (
    -Errno.EINVAL, -Errno.EFAULT, -Errno.EPERM, -Errno.ESRCH, -Errno.EACCES, -Errno.EOPNOTSUPP, -Errno.ENOSYS)
MMU_UPDATE_PREEMPTED = 0x80000000


def _foreigndom_ok(fd: int) -> bool:
    dom = fd & 0xFFFF
    pt_owner = fd >> 16
    return dom in (C.DOMID_SELF, 1) and pt_owner in (0, 2)   # domain 1 is this domU


def _resumed_done(vcpu: Vcpu, count: int, done_ptr: int) -> int:
    """A continuation (count has MMU_UPDATE_PREEMPTED) goes on counting from *done."""
    if count & MMU_UPDATE_PREEMPTED and done_ptr:
        try:
            return vcpu.read_u32(done_ptr)
        except GuestFault:
            return 0
    return 0


def _write_done(vcpu: Vcpu, done_ptr: int, n: int) -> None:
    if done_ptr:
        try:
            vcpu.write_virt(done_ptr, struct.pack("<I", n))
        except GuestFault:
            pass


# ---------------------------------------------------------------- mmu_update
def pte_update(vcpu: Vcpu, ptr: int, val: int, preserve_ad: bool) -> int:
    """MMU_NORMAL_PT_UPDATE / PRESERVE_AD: a checked write to machine address ptr."""
    dom = vcpu.domain
    mm = dom.mm
    size = dom.mode.pte_size
    mfn = ptr >> 12
    if ptr % size:
        return EINVAL
    if not mm.is_owned(mfn):
        mm.last_error = f"mmu_update: mfn {mfn:#x} is not owned by the domain"
        return EINVAL
    pi = mm.page(mfn)
    idx = (ptr & 0xFFF) // size
    try:
        if pi.type in (PageType.l1, PageType.l2, PageType.l3) and pi.type_count:
            mm.mod_entry(mfn, idx, val, preserve_ad=preserve_ad)
            if pi.type != PageType.l1:
                for v in dom.vcpus:
                    v.cpu.flush_tlb()
        elif pi.type_count == 0 or pi.type == PageType.writable:
            # a page of no special type is a plain writable page
            mm.get_page_type(mfn, PageType.writable)
            try:
                data = struct.pack("<Q" if size == 8 else "<I", val & ((1 << (8 * size)) - 1))
                dom.mem.write(ptr, data)
            finally:
                mm.put_page_type(mfn)
        else:
            mm.last_error = f"mmu_update: mfn {mfn:#x} is a {pi.type.name} page"
            return EINVAL
    except MMError as e:
        return e.errno
    return 0


def machphys_update(vcpu: Vcpu, ptr: int, val: int) -> int:
    """MMU_MACHPHYS_UPDATE: m2p[ptr >> 12] = val for a frame the domain owns."""
    dom = vcpu.domain
    mfn = ptr >> 12
    if not dom.mm.is_owned(mfn):
        dom.mm.last_error = f"machphys_update: mfn {mfn:#x} is not owned by the domain"
        return EINVAL
    dom.physmap.set_m2p(mfn, val & 0xFFFFFFFF)
    return 0


@hypercall(C.Hypercall.mmu_update, decoder=lambda v, reqs, count, done, fd: decode_mmu_update(v, reqs, count, done, fd))
def do_mmu_update(vcpu: Vcpu, reqs: int, count: int, done_ptr: int, foreigndom: int, *_: int) -> int:
    if vcpu.in_multicall and count & MMU_UPDATE_PREEMPTED:
        return EINVAL
    done = _resumed_done(vcpu, count, done_ptr)
    count &= ~MMU_UPDATE_PREEMPTED
    if not _foreigndom_ok(foreigndom):
        return ESRCH
    L = vcpu.domain.abi.mmu_update
    rc = 0
    for i in range(count):
        if i == PREEMPT_BATCH and not vcpu.in_multicall:
            _write_done(vcpu, done_ptr, done)
            return create_continuation(vcpu, reqs + i * 16, (count - i) | MMU_UPDATE_PREEMPTED, done_ptr,
                                       foreigndom)
        try:
            req = L.parse(vcpu.read_virt(reqs + i * 16, 16))
        except GuestFault:
            rc = EFAULT
            break
        # mm.c: cmd = req.ptr & (sizeof(l1_pgentry_t) - 1): 3 bits with 8-byte PTEs, 2 without
        cmd = req.ptr & (vcpu.domain.mode.pte_size - 1)
        ptr = req.ptr & ~(vcpu.domain.mode.pte_size - 1)
        if cmd in (C.MMU_NORMAL_PT_UPDATE, C.MMU_PT_UPDATE_PRESERVE_AD, C.MMU_PT_UPDATE_NO_TRANSLATE):
            rc = pte_update(vcpu, ptr, req.val, cmd == C.MMU_PT_UPDATE_PRESERVE_AD)
        elif cmd == C.MMU_MACHPHYS_UPDATE:
            rc = machphys_update(vcpu, ptr, req.val)
        else:
            rc = ENOSYS
        if rc:
            break
        done += 1
    _write_done(vcpu, done_ptr, done)
    return rc


def decode_mmu_update(vcpu: Vcpu, reqs: int, count: int, done: int, fd: int) -> dict[str, Any]:
    L = vcpu.domain.abi.mmu_update
    items = []
    n = count & ~MMU_UPDATE_PREEMPTED
    for i in range(min(n, 64)):
        try:
            req = L.parse(vcpu.read_virt(reqs + i * 16, 16))
        except GuestFault:
            items.append({"unreadable": f"{reqs + i * 16:#x}"})
            break
        mask = vcpu.domain.mode.pte_size - 1
        cmd = req.ptr & mask
        item: dict[str, Any] = {"cmd": C.MMU_UPDATE_NAMES.get(cmd, str(cmd)), "ptr": f"{req.ptr & ~mask:#x}",
                                "val": f"{req.val:#x}"}
        if cmd != C.MMU_MACHPHYS_UPDATE:
            item["flags"] = decode_flags(req.val)
        items.append(item)
    return {"reqs": f"{reqs:#x}", "count": n, "done": f"{done:#x}", "foreigndom": f"{fd:#x}", "req": items}


# ---------------------------------------------------------------- update_va_mapping
def _l1_slot_for(vcpu: Vcpu, va: int) -> tuple[int, int] | None:
    """(L1 mfn, index) of the entry mapping va in the current kernel tables."""
    dom = vcpu.domain
    w = walk(dom.mem, dom.mode, vcpu.cr3_mfn, va)
    l1_steps = [s for s in w.steps if s.level == 2]
    if not l1_steps or not l1_steps[0].present:
        return None
    l2e = l1_steps[0].pte
    if l2e & C._PAGE_PSE:
        return None
    return dom.mode.pte_mfn(l2e), dom.mode.index(va, 1)


def flush_by_flags(vcpu: Vcpu, flags: int, va: int) -> int:
    """UVMF flush semantics: TLB_FLUSH or INVLPG, local / all / a vcpu bitmap."""
    dom = vcpu.domain
    kind = flags & C.UVMF_FLUSHTYPE_MASK
    if kind == C.UVMF_NONE:
        return 0
    sel = flags & ~C.UVMF_FLUSHTYPE_MASK
    if sel == C.UVMF_LOCAL:
        targets = [vcpu]
    elif sel == C.UVMF_ALL:
        targets = dom.vcpus
    else:
        try:
            mask = vcpu.read_u32(sel)
        except GuestFault:
            return EFAULT
        targets = [v for v in dom.vcpus if mask >> v.id & 1]
    for v in targets:
        v.cpu.flush_tlb()
    return 0


def update_va_mapping(vcpu: Vcpu, va: int, pte: int, flags: int) -> int:
    dom = vcpu.domain
    if va >= dom.geo.hv_start:
        dom.mm.last_error = f"update_va_mapping: va {va:#x} is in the hypervisor range"
        return EINVAL
    slot = _l1_slot_for(vcpu, va)
    if slot is None:
        dom.mm.last_error = f"update_va_mapping: no L1 table maps va {va:#x}"
        return EINVAL
    l1, idx = slot
    pi = dom.mm.pages.get(l1)
    if pi is None or pi.type != PageType.l1 or not pi.type_count:
        return EINVAL
    try:
        dom.mm.mod_entry(l1, idx, pte)
    except MMError as e:
        return e.errno
    return flush_by_flags(vcpu, flags, va)


@hypercall(C.Hypercall.update_va_mapping,
           decoder=lambda v, va, lo, hi, fl, *_: decode_uvm(v, va, lo, hi, fl))
def do_update_va_mapping(vcpu: Vcpu, va: int, lo: int, hi: int, flags: int, _unused: int = 0) -> int:
    pte = lo | (hi << 32) if vcpu.domain.pae else lo
    return update_va_mapping(vcpu, va, pte, flags)


@hypercall(C.Hypercall.update_va_mapping_otherdomain)
def do_update_va_mapping_otherdomain(vcpu: Vcpu, va: int, lo: int, hi: int, flags: int, domid: int) -> int:
    if domid & 0xFFFF not in (C.DOMID_SELF, vcpu.domain.domid):
        return ESRCH
    return do_update_va_mapping(vcpu, va, lo, hi, flags)


def _uvmf_name(flags: int) -> str:
    kind = ["NONE", "TLB_FLUSH", "INVLPG", "?"][flags & 3]
    sel = flags & ~3
    return f"{kind}|{'LOCAL' if sel == 0 else 'ALL' if sel == 4 else f'MULTI({sel:#x})'}"


def decode_uvm(vcpu: Vcpu, va: int, lo: int, hi: int, flags: int) -> dict[str, Any]:
    pte = lo | (hi << 32) if vcpu.domain.pae else lo
    return {"va": f"{va:#x}", "pte": f"{pte:#x}", "mfn": f"{vcpu.domain.mode.pte_mfn(pte):#x}",
            "pte_flags": decode_flags(pte), "flags": _uvmf_name(flags)}


# ---------------------------------------------------------------- mmuext_op
def new_baseptr(vcpu: Vcpu, mfn: int) -> int:
    """MMUEXT_NEW_BASEPTR / mov to CR3: switch to a validated top-level table."""
    dom = vcpu.domain
    if mfn == vcpu.cr3_mfn:
        vcpu.cpu.set_cr3(mfn)
        return 0
    try:
        dom.mm.get_root(mfn)
    except MMError:
        return EINVAL
    old = vcpu.cr3_mfn
    vcpu.cr3_mfn = mfn
    vcpu.cpu.set_cr3(mfn)
    if old:
        dom.mm.put_root(old)
    return 0


def _vcpumask(vcpu: Vcpu, ptr: int) -> list | int:
    try:
        mask = vcpu.read_u32(ptr)
    except GuestFault:
        return EFAULT
    return [v for v in vcpu.domain.vcpus if mask >> v.id & 1]


def mmuext_one(vcpu: Vcpu, cmd: int, arg1: int, arg2: int) -> int:
    dom = vcpu.domain
    mm = dom.mm
    pae = dom.pae
    try:
        if cmd in (MmuextCmd.PIN_L1_TABLE, MmuextCmd.PIN_L2_TABLE, MmuextCmd.PIN_L3_TABLE,
                   MmuextCmd.PIN_L4_TABLE):
            level = cmd - MmuextCmd.PIN_L1_TABLE + 1
            if level > (3 if pae else 2):
                # levels the guest's paging does not have are ignored: PIN_L4 for a compat
                # guest on 64-bit Xen, PIN_L3/L4 on non-PAE x86_32 Xen (do_mmuext_op)
                return 0
            mm.pin(arg1, PageType(level))
            return 0
        if cmd == MmuextCmd.UNPIN_TABLE:
            mm.unpin(arg1)
            return 0
        if cmd == MmuextCmd.NEW_BASEPTR:
            return new_baseptr(vcpu, arg1)
        if cmd in (MmuextCmd.TLB_FLUSH_LOCAL, MmuextCmd.INVLPG_LOCAL):
            vcpu.cpu.flush_tlb()
            return 0
        if cmd in (MmuextCmd.TLB_FLUSH_MULTI, MmuextCmd.INVLPG_MULTI):
            # both take the vCPU bitmap in arg2.vcpumask; an unreadable one is -EINVAL (mm.c)
            targets = _vcpumask(vcpu, arg2)
            if isinstance(targets, int):
                return EINVAL
            for v in targets:
                v.cpu.flush_tlb()
            return 0
        if cmd in (MmuextCmd.TLB_FLUSH_ALL, MmuextCmd.INVLPG_ALL):
            for v in dom.vcpus:
                v.cpu.flush_tlb()
            return 0
        if cmd in (MmuextCmd.FLUSH_CACHE, MmuextCmd.FLUSH_CACHE_GLOBAL):
            return EACCES                   # a domU has no cache-flush permission
        if cmd == MmuextCmd.SET_LDT:
            return set_ldt(vcpu, arg1, arg2)
        if cmd == MmuextCmd.NEW_USER_BASEPTR:
            return EINVAL                   # PV64 only
        if cmd == MmuextCmd.CLEAR_PAGE:
            return _with_writable(vcpu, arg1, lambda: dom.mem.zero_frame(arg1))
        if cmd == MmuextCmd.COPY_PAGE:
            if not mm.is_owned(arg2):
                return EINVAL
            pi = mm.page(arg2)
            if pi.type_count and pi.type != PageType.writable and pi.type != PageType.none:
                pass   # reading any owned frame is allowed
            return _with_writable(vcpu, arg1, lambda: dom.mem.write(arg1 << 12, bytes(dom.mem.frame(arg2))))
        if cmd in (MmuextCmd.MARK_SUPER, MmuextCmd.UNMARK_SUPER):
            return EOPNOTSUPP
    except MMError as e:
        return e.errno
    return dom.unimplemented(f"mmuext_op command {cmd}")


def _with_writable(vcpu: Vcpu, mfn: int, fn) -> int:
    mm = vcpu.domain.mm
    if not mm.is_owned(mfn):
        return EINVAL
    try:
        mm.get_page_type(mfn, PageType.writable)
    except MMError as e:
        return e.errno
    try:
        fn()
    finally:
        mm.put_page_type(mfn)
    return 0


def set_ldt(vcpu: Vcpu, base: int, ents: int) -> int:
    """MMUEXT_SET_LDT: page-aligned base, at most 8192 entries, inside guest space."""
    dom = vcpu.domain
    if base & 0xFFF or ents > 8192 or (ents and base + ents * 8 > dom.geo.hv_start):
        return EINVAL
    from unicorn import x86_const as X
    vcpu.ldt_base, vcpu.ldt_ents = base, ents
    if ents:
        vcpu.cpu.uc.reg_write(X.UC_X86_REG_LDTR, (0, base, ents * 8 - 1, 0x8200))
    else:
        vcpu.cpu.uc.reg_write(X.UC_X86_REG_LDTR, (0, 0, 0, 0))
    vcpu.cpu.flush_tlb()
    return 0


@hypercall(C.Hypercall.mmuext_op, decoder=lambda v, ops, count, done, fd: decode_mmuext(v, ops, count, done, fd))
def do_mmuext_op(vcpu: Vcpu, ops: int, count: int, done_ptr: int, foreigndom: int, *_: int) -> int:
    if vcpu.in_multicall and count & MMU_UPDATE_PREEMPTED:
        return EINVAL
    done = _resumed_done(vcpu, count, done_ptr)
    count &= ~MMU_UPDATE_PREEMPTED
    if not _foreigndom_ok(foreigndom):
        return ESRCH
    L = vcpu.domain.abi.mmuext_op
    size = L.size()
    rc = 0
    for i in range(count):
        if i == PREEMPT_BATCH and not vcpu.in_multicall:
            _write_done(vcpu, done_ptr, done)
            return create_continuation(vcpu, ops + i * size, (count - i) | MMU_UPDATE_PREEMPTED, done_ptr,
                                       foreigndom)
        try:
            op = L.parse(vcpu.read_virt(ops + i * size, size))
        except GuestFault:
            rc = EFAULT
            break
        rc = mmuext_one(vcpu, op.cmd, op.arg1, op.arg2)
        if rc:
            break
        done += 1
    _write_done(vcpu, done_ptr, done)
    return rc


def decode_mmuext(vcpu: Vcpu, ops: int, count: int, done: int, fd: int) -> dict[str, Any]:
    L = vcpu.domain.abi.mmuext_op
    size = L.size()
    n = count & ~MMU_UPDATE_PREEMPTED
    items = []
    for i in range(min(n, 64)):
        try:
            op = L.parse(vcpu.read_virt(ops + i * size, size))
        except GuestFault:
            items.append({"unreadable": f"{ops + i * size:#x}"})
            break
        try:
            name = MmuextCmd(op.cmd).name
        except ValueError:
            name = str(op.cmd)
        items.append({"cmd": name, "arg1": f"{op.arg1:#x}", "arg2": f"{op.arg2:#x}"})
    return {"ops": f"{ops:#x}", "count": n, "done": f"{done:#x}", "foreigndom": f"{fd:#x}", "op": items}
