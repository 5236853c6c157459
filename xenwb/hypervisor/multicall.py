"""multicall: xen/common/multicall.c (compat entry layout from public/xen.h).

Entries run in order; each result is stored in its entry. The multicall itself
returns 0 even when entries fail; a nested multicall entry gets -EINVAL; an iret
entry ends the batch (its frame is consumed as usual).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, hypercall_name
from xenwb.hypervisor.hypercall import PREEMPT_BATCH, create_continuation
from xenwb.hypervisor.memory import GuestFault
from xenwb.trace_events import packed

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT = -Errno.EINVAL, -Errno.EFAULT
_NESTED = packed({"nested": True})       # what the trace shows of a nested multicall entry's arguments


def do_multicall(vcpu: Vcpu, calls: int, nr: int, *_: int) -> int:
    if vcpu.in_multicall:
        return EINVAL
    dom = vcpu.domain
    L = dom.abi.multicall_entry
    size = L.size()
    eip = dom.caller_eip(vcpu) if dom.trace.want_multicall else 0
    batch = dom.trace.emit_multicall_begin(vcpu, calls, nr, eip)
    vcpu.in_multicall = True
    try:
        for i in range(nr):
            if i == PREEMPT_BATCH:
                # multicall.c: hypercall_create_continuation(__HYPERVISOR_multicall, "hi", list, nr - i)
                return create_continuation(vcpu, calls + i * size, nr - i)
            addr = calls + i * size
            try:
                e = L.parse(vcpu.read_virt(addr, size))
            except GuestFault:
                return EFAULT
            dom.stats["multicall_entries"] += 1
            if e.op == C.Hypercall.iret:
                # mc_exit: the multicall returns the entry's result, do_iret's restored RAX/EAX
                # ("Saved %rax gets written back", pv/iret.c), stored best effort (multicall.c)
                vcpu.do_iret()
                ret = vcpu.cpu.reg("rax" if vcpu.word == 8 else "eax")
                try:
                    vcpu.write_ulong(addr + L.offset("result"), ret)
                except GuestFault:
                    pass
                return ret
            if e.op == C.Hypercall.multicall:
                ret = EINVAL
                dom.trace.emit_hypercall(vcpu, e.op, tuple(e.args[:5]), ret, eip, _NESTED, batch)
            else:
                ret = dom.call(vcpu, e.op, tuple(e.args[:5]), eip=eip, multicall=batch)
            try:
                vcpu.write_ulong(addr + L.offset("result"), ret)
            except GuestFault:
                return EFAULT
            if dom.finished:
                break
    finally:
        vcpu.in_multicall = False
        dom.trace.emit_multicall_end(vcpu, nr, batch)
    return 0


def decode_multicall(vcpu: Vcpu, calls: int, nr: int) -> dict[str, Any]:
    L = vcpu.domain.abi.multicall_entry
    size = L.size()
    entries = []
    for i in range(min(nr, 256)):
        try:
            e = L.parse(vcpu.read_virt(calls + i * size, size))
        except GuestFault:
            entries.append({"unreadable": f"{calls + i * size:#x}"})
            break
        entries.append({"op": hypercall_name(e.op), "args": vcpu.domain.decode_args(vcpu, e.op, tuple(e.args[:5]))})
    return {"calls": f"{calls:#x}", "nr": nr, "entries": entries}

