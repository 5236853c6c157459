"""stack_switch, fpu_taskswitch, set/get_debugreg (and, for 64-bit guests, set_segment_base):
xen/arch/x86/pv/misc-hypercalls.c; xsm_op: the dummy XSM module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenwb.abi.constants import Errno

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

CR4_DE = 1 << 3
EINVAL, EPERM, ENODEV, ENOSYS = -Errno.EINVAL, -Errno.EPERM, -Errno.ENODEV, -Errno.ENOSYS


def do_stack_switch(vcpu: Vcpu, ss: int, esp: int, *_: int) -> int:
    if ss & 3 == 0:
        ss |= 1
    vcpu.kernel_ss, vcpu.kernel_sp = ss & 0xFFFF, esp
    return 0


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


def do_set_debugreg(vcpu: Vcpu, reg: int, value: int, *_: int) -> int:
    return set_debugreg(vcpu, reg, value)


def do_get_debugreg(vcpu: Vcpu, reg: int, *_: int) -> int:
    if reg in (4, 5) and not vcpu.cr4 & CR4_DE:
        reg += 2
    if reg > 7 or reg in (4, 5):
        return ENODEV
    return vcpu.debugreg[reg]


def do_xsm_op(vcpu: Vcpu, *_: int) -> int:
    return ENOSYS      # the dummy XSM module: no XSM ops


def decode_stack_switch(vcpu: Vcpu, ss: int, esp: int, *_: int) -> Any:
    return {"ss": f"{ss:#x}", "esp": f"{esp:#x}"}


def decode_fpu_taskswitch(vcpu: Vcpu, s: int, *_: int) -> Any:
    return {"set": s}


def decode_set_debugreg(vcpu: Vcpu, r: int, val: int, *_: int) -> Any:
    return {"reg": r, "value": f"{val:#x}"}


def decode_get_debugreg(vcpu: Vcpu, r: int, *_: int) -> Any:
    return {"reg": r}
