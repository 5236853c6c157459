"""stack_switch, fpu_taskswitch, set/get_debugreg (and, for 64-bit guests, set_segment_base):
xen/arch/x86/pv/misc-hypercalls.c; xsm_op: the dummy XSM module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno
from xenwb.hypervisor.debugreg import get_debugreg, set_debugreg
from xenwb.hypervisor.paging import canonical
from xenwb.hypervisor.traps import data_segment_loadable, descriptor_of

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.hypervisor.vcpu64 import Vcpu64
    from xenwb.hypervisor.xenarea import HvGeometry

EINVAL, EPERM, ENODEV, ENOSYS, EOPNOTSUPP = (-Errno.EINVAL, -Errno.EPERM, -Errno.ENODEV, -Errno.ENOSYS,
                                             -Errno.EOPNOTSUPP)


def do_stack_switch(vcpu: Vcpu, ss: int, esp: int, *_: int) -> int:
    """The stack for bounces from user mode; SS gets the guest kernel's RPL (1 or 3:
    fixup_guest_stack_selector)."""
    rpl = 3 if vcpu.word == 8 else 1
    if ss & 3 < rpl:
        ss = (ss & ~3) | rpl
    vcpu.kernel_ss, vcpu.kernel_sp = ss & 0xFFFF, esp
    return 0


def do_set_segment_base(vcpu: Vcpu64, which: int, base: int, *_: int) -> int:
    """set_segment_base (64-bit guests only): FS base; the user GS base (the shadow one, the
    guest being in kernel mode); the kernel GS base; or a user %gs selector, its base taken
    from the descriptor (a selector that does not load leaves NUL)."""
    cpu = vcpu.cpu
    which &= 0xFFFFFFFF
    if which in (C.SEGBASE_FS, C.SEGBASE_GS_USER, C.SEGBASE_GS_KERNEL):
        if not canonical(base):
            return EINVAL
        if which == C.SEGBASE_FS:
            cpu.fs_base = base
        elif which == C.SEGBASE_GS_USER:
            cpu.shadow_gs_base = base
            vcpu.gs_base_user = base
        else:
            cpu.gs_base = base
        return 0
    if which == C.SEGBASE_GS_USER_SEL:
        sel = base & 0xFFFF
        if sel > 3:
            sel |= 3
        new_base = 0
        if sel > 3:
            d = descriptor_of(vcpu, sel) if data_segment_loadable(vcpu, sel, 3) else None
            if d is None:
                sel = 0
            else:
                new_base = ((d >> 16) & 0xFFFFFF) | (((d >> 56) & 0xFF) << 24)
        kernel_gs = cpu.gs_base
        cpu.set_reg("gs", sel)
        cpu.gs_base = kernel_gs
        cpu.shadow_gs_base = new_base
        vcpu.gs_base_user = new_base
        return 0
    return EINVAL


def decode_set_segment_base(vcpu: Vcpu, which: int, base: int, *_: int) -> Any:
    names = {C.SEGBASE_FS: "FS", C.SEGBASE_GS_USER: "GS_USER", C.SEGBASE_GS_KERNEL: "GS_KERNEL",
             C.SEGBASE_GS_USER_SEL: "GS_USER_SEL"}
    return {"which": names.get(which, str(which)), "base": f"{base:#x}"}


def do_fpu_taskswitch(vcpu: Vcpu, set_ts: int, *_: int) -> int:
    vcpu.set_virtual_ts(bool(set_ts))
    return 0


def do_set_debugreg(vcpu: Vcpu, reg: int, value: int, *_: int) -> int:
    return set_debugreg(vcpu, reg, value)


def do_get_debugreg(vcpu: Vcpu, reg: int, *_: int) -> int:
    """do_get_debugreg: the register, or -ENODEV (x86emul_read_dr)."""
    value = get_debugreg(vcpu, reg)
    return ENODEV if value is None else value


def do_xsm_op(vcpu: Vcpu, *_: int) -> int:
    return ENOSYS      # the dummy XSM module: no XSM ops


def do_xenpmu_op(vcpu: Vcpu, *_: int) -> int:
    """arch/x86/cpu/vpmu.c do_xenpmu_op: -EOPNOTSUPP while the vPMU is off (Xen's default,
    no "vpmu=" on its command line)."""
    return EOPNOTSUPP


def decode_stack_switch(geo: HvGeometry, ss: int, esp: int, *_: int) -> Any:
    return {"ss": f"{ss:#x}", "rsp" if geo.word == 8 else "esp": f"{esp:#x}"}


def decode_fpu_taskswitch(vcpu: Vcpu, s: int, *_: int) -> Any:
    return {"set": s}


def decode_set_debugreg(vcpu: Vcpu, r: int, val: int, *_: int) -> Any:
    return {"reg": r, "value": f"{val:#x}"}


def decode_get_debugreg(vcpu: Vcpu, r: int, *_: int) -> Any:
    return {"reg": r}
