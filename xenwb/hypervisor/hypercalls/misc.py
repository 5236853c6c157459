"""stack_switch, fpu_taskswitch, set/get_debugreg, vm_assist, set_segment_base,
iret (handled in traps.py), xsm_op: xen/arch/x86/pv/misc-hypercalls.c, traps.c, common/kernel.c."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, Vmasst
from xenwb.hypervisor.hypercalls import hypercall

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

CR4_DE = 1 << 3
EINVAL, EPERM, ENODEV, ENOSYS = -Errno.EINVAL, -Errno.EPERM, -Errno.ENODEV, -Errno.ENOSYS
# VMASST types a PV32 guest may set (VM_ASSIST_VALID for compat guests)
VMASST_VALID_PV32 = ((1 << Vmasst.four_gb_segments) | (1 << Vmasst.four_gb_segments_notify)
                     | (1 << Vmasst.writable_pagetables) | (1 << Vmasst.pae_extended_cr3)
                     | (1 << Vmasst.architectural_iopl) | (1 << Vmasst.runstate_update_flag))


@hypercall(C.Hypercall.stack_switch, decoder=lambda v, ss, esp, *_: {"ss": f"{ss:#x}", "esp": f"{esp:#x}"})
def do_stack_switch(vcpu: Vcpu, ss: int, esp: int, *_: int) -> int:
    if ss & 3 == 0:
        ss |= 1
    vcpu.kernel_ss, vcpu.kernel_sp = ss & 0xFFFF, esp
    return 0


@hypercall(C.Hypercall.fpu_taskswitch, decoder=lambda v, s, *_: {"set": s})
def do_fpu_taskswitch(vcpu: Vcpu, set_ts: int, *_: int) -> int:
    vcpu.set_virtual_ts(bool(set_ts))
    return 0


def set_debugreg(vcpu: Vcpu, reg: int, value: int) -> int:
    """set_debugreg (traps.c): DR0-3 must be guest addresses; DR7.GD is refused."""
    value &= 0xFFFFFFFF
    if reg in (4, 5) and not vcpu.cr4 & CR4_DE:
        reg += 2                     # DR4/DR5 alias DR6/DR7 unless CR4.DE (traps.c set_debugreg)
    if reg < 4:
        if value >= vcpu.domain.geo.hv_start - 3:
            return EPERM
    elif reg == 6:
        value = (value & 0xE00F) | 0xFFFF0FF0
    elif reg == 7:
        if value & (1 << 13):
            return EPERM
        value |= 0x400
    elif reg in (4, 5):
        return ENODEV
    else:
        return ENODEV
    vcpu.debugreg[reg] = value
    return 0


@hypercall(C.Hypercall.set_debugreg, decoder=lambda v, r, val, *_: {"reg": r, "value": f"{val:#x}"})
def do_set_debugreg(vcpu: Vcpu, reg: int, value: int, *_: int) -> int:
    return set_debugreg(vcpu, reg, value)


@hypercall(C.Hypercall.get_debugreg, decoder=lambda v, r, *_: {"reg": r})
def do_get_debugreg(vcpu: Vcpu, reg: int, *_: int) -> int:
    if reg in (4, 5) and not vcpu.cr4 & CR4_DE:
        reg += 2
    if reg > 7 or reg in (4, 5):
        return ENODEV
    return vcpu.debugreg[reg]


@hypercall(C.Hypercall.vm_assist, decoder=lambda v, cmd, t, *_: {
    "cmd": {0: "enable", 1: "disable"}.get(cmd, str(cmd)),
    "type": Vmasst(t).name if t in Vmasst._value2member_map_ else str(t)})
def do_vm_assist(vcpu: Vcpu, cmd: int, vtype: int, *_: int) -> int:
    dom = vcpu.domain
    if vtype >= 32 or not (VMASST_VALID_PV32 >> vtype) & 1:   # BITS_PER_LONG of a PV32 guest
        return EINVAL
    if cmd == C.VMASST_CMD_enable:
        dom.vm_assist |= 1 << vtype
    elif cmd == C.VMASST_CMD_disable:
        dom.vm_assist &= ~(1 << vtype)
    else:
        return ENOSYS
    return 0


@hypercall(C.Hypercall.set_segment_base)
def do_set_segment_base(vcpu: Vcpu, *_: int) -> int:
    return ENOSYS      # PV64 only: a PV32 guest gets -ENOSYS


@hypercall(C.Hypercall.xsm_op)
def do_xsm_op(vcpu: Vcpu, *_: int) -> int:
    return ENOSYS      # the dummy XSM module: no XSM ops
