"""set_trap_table, set_callbacks, callback_op, nmi_op: xen/arch/x86/pv/callback.c (the
native 64-bit handlers and their compat flavours for 32-bit guests)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import CallbackType, Errno
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.paging import canonical
from xenwb.hypervisor.state import TrapInfo

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, ENOSYS = -Errno.EINVAL, -Errno.EFAULT, -Errno.ENOSYS


def _fix_cs(cs: int, rpl: int = 1) -> int:
    """fixup_guest_code_selector: an RPL below the guest kernel's (1 on 32-bit, 3 on 64-bit)
    is raised to it."""
    return cs if cs & 3 >= rpl else (cs & ~3) | rpl


def do_set_trap_table(vcpu: Vcpu, traps: int, *_: int) -> int:
    """Entries up to one with address 0; a 64-bit address must be canonical (-EINVAL).
    A NULL table clears all 256."""
    if traps == 0:
        vcpu.trap_ctxt = [None] * 256
        return 0
    L = vcpu.domain.abi.trap_info
    long = vcpu.word == 8
    for i in range(256):
        try:
            ti = L.parse(vcpu.read_virt(traps + i * L.size(), L.size()))
        except GuestFault:
            return EFAULT
        if ti.address == 0:
            break
        if long and not canonical(ti.address):
            return EINVAL
        vcpu.trap_ctxt[ti.vector] = TrapInfo(ti.vector, ti.flags, _fix_cs(ti.cs, 3 if long else 1), ti.address)
    return 0


def decode_trap_table(vcpu: Vcpu, traps: int) -> dict[str, Any]:
    if traps == 0:
        return {"traps": "NULL (clear)"}
    L = vcpu.domain.abi.trap_info
    out = []
    for i in range(256):
        try:
            ti = L.parse(vcpu.read_virt(traps + i * L.size(), L.size()))
        except GuestFault:
            break
        if ti.address == 0:
            break
        out.append({"vector": ti.vector, "name": C.TRAP_NAMES.get(ti.vector, ""), "dpl": ti.flags & 3,
                    "mask_events": bool(ti.flags & 4), "cs": f"{ti.cs:#x}", "address": f"{ti.address:#x}",
                    "symbol": vcpu.domain.symbolize(ti.address)})
    return {"traps": f"{traps:#x}", "entries": out}


def do_set_callbacks(vcpu: Vcpu, event_cs: int, event_eip: int, failsafe_cs: int, failsafe_eip: int,
                     *_: int) -> int:
    vcpu.event_cs, vcpu.event_eip = _fix_cs(event_cs), event_eip
    vcpu.failsafe_cs, vcpu.failsafe_eip = _fix_cs(failsafe_cs), failsafe_eip
    vcpu.failsafe_mask = False
    return 0


def register_callback(vcpu: Vcpu, ctype: int, flags: int, cs: int, eip: int) -> int:
    """callback.c register_guest_callback, compat flavour."""
    mask = bool(flags & C.CALLBACKF_mask_events)
    cs = _fix_cs(cs)
    if ctype == CallbackType.event:
        vcpu.event_cs, vcpu.event_eip = cs, eip
    elif ctype == CallbackType.failsafe:
        vcpu.failsafe_cs, vcpu.failsafe_eip, vcpu.failsafe_mask = cs, eip, mask
    elif ctype in (CallbackType.syscall32, CallbackType.sysenter):
        vcpu.callbacks[ctype] = (cs, eip, flags)
    elif ctype == CallbackType.nmi:
        vcpu.trap_ctxt[2] = TrapInfo(2, 4, C.FLAT_KERNEL_CS, eip)
        vcpu.callbacks[ctype] = (cs, eip, flags)
    else:
        return ENOSYS
    return 0


def do_callback_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    L = vcpu.domain.abi
    if cmd == C.CALLBACKOP_register:
        try:
            cb = L.callback_register.parse(vcpu.read_virt(arg, L.callback_register.size()))
        except GuestFault:
            return EFAULT
        return register_callback(vcpu, cb.type, cb.flags, cb.cs, cb.eip)
    if cmd == C.CALLBACKOP_unregister:
        try:
            cb = L.callback_unregister.parse(vcpu.read_virt(arg, L.callback_unregister.size()))
        except GuestFault:
            return EFAULT
        if cb.type in (CallbackType.event, CallbackType.failsafe, CallbackType.syscall32,
                       CallbackType.sysenter):
            return EINVAL        # callback.c compat_unregister_guest_callback
        if cb.type != CallbackType.nmi:
            return ENOSYS
        vcpu.trap_ctxt[2] = None
        vcpu.callbacks.pop(CallbackType.nmi, None)
        return 0
    return EINVAL    # compat: unknown command


def decode_callback_op(vcpu: Vcpu, cmd: int, arg: int) -> dict[str, Any]:
    """callback_op's argument in either width (a 32-bit callback is CS:EIP, a 64-bit one an address)."""
    L = vcpu.domain.abi
    name = {0: "register", 1: "unregister"}.get(cmd, str(cmd))
    try:
        if cmd == 0:
            cb = L.callback_register.parse(vcpu.read_virt(arg, L.callback_register.size()))
            try:
                tname = CallbackType(cb.type).name
            except ValueError:
                tname = str(cb.type)
            ip = cb.address if vcpu.word == 8 else cb.eip
            where = f"{ip:#x}" if vcpu.word == 8 else f"{cb.cs:#x}:{ip:#x}"
            return {"cmd": name, "type": tname, "flags": cb.flags, "address": where,
                    "symbol": vcpu.domain.symbolize(ip)}
        if cmd == 1:
            cb = L.callback_unregister.parse(vcpu.read_virt(arg, L.callback_unregister.size()))
            return {"cmd": name, "type": cb.type}
    except GuestFault:
        return {"cmd": name, "arg": f"{arg:#x} (unreadable)"}
    return {"cmd": name, "arg": f"{arg:#x}"}


def do_nmi_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    """nmi_op: 0 register (struct xennmi_callback: the handler address), 1 unregister."""
    if cmd == 0:
        try:
            handler = vcpu.read_ulong(arg)
        except GuestFault:
            return EFAULT
        if vcpu.word == 8:
            return register_callback64(vcpu, CallbackType.nmi, 0, handler)
        return register_callback(vcpu, CallbackType.nmi, C.CALLBACKF_mask_events, C.FLAT_KERNEL_CS, handler)
    if cmd == 1:
        vcpu.trap_ctxt[2] = None
        return 0
    return ENOSYS


def decode_set_trap_table(vcpu: Vcpu, traps: int, *_: int) -> Any:
    return decode_trap_table(vcpu, traps)


def decode_set_callbacks(vcpu: Vcpu, ecs: int, eeip: int, fcs: int, feip: int, *_: int) -> Any:
    return {
        "event": f"{ecs:#x}:{eeip:#x}", "event_symbol": vcpu.domain.symbolize(eeip),
        "failsafe": f"{fcs:#x}:{feip:#x}", "failsafe_symbol": vcpu.domain.symbolize(feip)}



# ---------------------------------------------------------------- the native 64-bit ABI
def register_callback64(vcpu: Vcpu, ctype: int, flags: int, address: int) -> int:
    """register_guest_callback: one canonical address per kind; mask_events becomes
    VGCF_failsafe/syscall_disables_events (or the syscall32/sysenter flags); nmi installs
    trap_ctxt[2] with events masked; other types -ENOSYS."""
    v = vcpu
    if not canonical(address):
        return EINVAL
    mask = bool(flags & C.CALLBACKF_mask_events)
    if ctype == CallbackType.event:
        v.event_eip = address
    elif ctype == CallbackType.failsafe:
        v.failsafe_eip, v.failsafe_mask = address, mask
    elif ctype == CallbackType.syscall:
        v.syscall_eip, v.syscall_mask = address, mask
    elif ctype == CallbackType.syscall32:
        v.syscall32_eip, v.syscall32_mask = address, mask
    elif ctype == CallbackType.sysenter:
        v.sysenter_eip, v.sysenter_mask = address, mask
    elif ctype == CallbackType.nmi:
        v.trap_ctxt[2] = TrapInfo(2, 4, C.FLAT_KERNEL_CS64, address)
    else:
        return ENOSYS
    v.callbacks[ctype] = (0, address, flags)
    return 0


def do_set_callbacks64(vcpu: Vcpu, event: int, failsafe: int, syscall: int, *_: int) -> int:
    """set_callbacks(event, failsafe, syscall): three registrations with flags 0, results
    ignored."""
    register_callback64(vcpu, CallbackType.event, 0, event)
    register_callback64(vcpu, CallbackType.failsafe, 0, failsafe)
    register_callback64(vcpu, CallbackType.syscall, 0, syscall)
    return 0


def do_callback_op64(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    L = vcpu.domain.abi
    if cmd == C.CALLBACKOP_register:
        try:
            cb = L.callback_register.parse(vcpu.read_virt(arg, L.callback_register.size()))
        except GuestFault:
            return EFAULT
        return register_callback64(vcpu, cb.type, cb.flags, cb.address)
    if cmd == C.CALLBACKOP_unregister:
        try:
            cb = L.callback_unregister.parse(vcpu.read_virt(arg, L.callback_unregister.size()))
        except GuestFault:
            return EFAULT
        if cb.type in (CallbackType.event, CallbackType.failsafe, CallbackType.syscall, CallbackType.syscall32,
                       CallbackType.sysenter):
            return EINVAL
        if cb.type != CallbackType.nmi:
            return ENOSYS
        vcpu.trap_ctxt[2] = None
        vcpu.callbacks.pop(CallbackType.nmi, None)
        return 0
    return ENOSYS


def decode_set_callbacks64(vcpu: Vcpu, event: int, failsafe: int, syscall: int, *_: int) -> Any:
    sym = vcpu.domain.symbolize
    return {"event": f"{event:#x}", "event_symbol": sym(event), "failsafe": f"{failsafe:#x}",
            "failsafe_symbol": sym(failsafe), "syscall": f"{syscall:#x}", "syscall_symbol": sym(syscall)}

