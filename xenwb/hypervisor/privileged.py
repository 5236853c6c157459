"""The control-domain interfaces a domU reaches but may not use, answered as Xen 4.17 with the
dummy XSM policy answers them (xen/include/xsm/dummy.h: XSM_PRIV is -EPERM for any domain but
the control domain; XSM_DM_PRIV too, a domU being nobody's device model).

Each handler does what its Xen counterpart does before the XSM check, so an unreadable
argument or a wrong interface version gets the answer it gets on Xen:
sysctl (common/sysctl.c do_sysctl), domctl (common/domctl.c do_domctl), platform_op
(arch/x86/platform_hypercall.c do_platform_op), kexec_op (common/kexec.c), hypfs_op
(common/hypfs.c), mca (arch/x86/cpu/mcheck/mce.c do_mca), paging_domctl_cont
(arch/x86/mm/paging.c), dm_op (common/dm.c do_dm_op, arch/x86/hvm/dm.c dm_op) and
xenoprof_op (common/xenoprof.c).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from xenwb.abi.constants import Errno
from xenwb.hypervisor.memory import GuestFault

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EPERM, EFAULT, EACCES, ESRCH, EINVAL, E2BIG, ENODATA, EOPNOTSUPP, ENODEV = (
    -Errno.EPERM, -Errno.EFAULT, -Errno.EACCES, -Errno.ESRCH, -Errno.EINVAL, -Errno.E2BIG, -Errno.ENODATA,
    -Errno.EOPNOTSUPP, -Errno.ENODEV)

XEN_SYSCTL_INTERFACE_VERSION = 0x15          # public/sysctl.h (4.17)
XEN_DOMCTL_INTERFACE_VERSION = 0x15          # public/domctl.h (4.17)
XENPF_INTERFACE_VERSION = 0x03000001         # public/platform.h
SYSCTL_SIZE = PLATFORM_OP_SIZE = 8 + 128     # cmd, interface_version, union { ... pad[128] }
DOMCTL_SIZE = 16 + 128                       # cmd, interface_version, domain, _pad[3], union
XEN_DOMCTL_createdomain, XEN_DOMCTL_getdomaininfo, XEN_DOMCTL_shadow_op = 1, 5, 10
XEN_DOMCTL_test_assign_device, XEN_DOMCTL_vm_event_op = 45, 56
DOMID_FIRST_RESERVED, DOMID_INVALID = 0x7FF0, 0x7FF4
DM_OP_MAX_BUFS = 2                           # struct dmop_args: buf[2]
XENOPROF_LAST_OP = 17
XENOPROF_INIT, XENOPROF_GET_BUFFER = 0, 14
XENOPROF_NONPRIV = frozenset({0, 8, 11, 14})     # init, enable_virq, disable_virq, get_buffer
DOM0 = 0                                         # the control domain the workbench stands for


def _domain_exists(vcpu: Vcpu, domid: int) -> bool:
    """rcu_lock_domain_by_id: dom0 and the guest itself (DOMID_SELF is no id here)."""
    return domid in (DOM0, vcpu.domain.domid)


def _domctl_head(op: bytes) -> tuple[int, int, int]:
    """cmd, interface_version, domain: the fixed head of struct xen_domctl (public/domctl.h:
    two uint32_t, then domid_t), ahead of its union (not declared in abi/: tools-only header)."""
    cmd, version = struct.unpack_from("<II", op)
    (domid,) = struct.unpack_from("<H", op, 8)
    return cmd, version, domid


def _copy_header(vcpu: Vcpu, arg: int, size: int) -> bytes | None:
    """copy_from_guest of the whole structure: None where it faults."""
    try:
        return vcpu.read_virt(arg, size)
    except GuestFault:
        return None


def do_sysctl(vcpu: Vcpu, arg: int, *_: int) -> int:
    """do_sysctl: -EFAULT, -EACCES for another interface version, then xsm_sysctl (XSM_PRIV)."""
    op = _copy_header(vcpu, arg, SYSCTL_SIZE)
    if op is None:
        return EFAULT
    if struct.unpack_from("<I", op, 4)[0] != XEN_SYSCTL_INTERFACE_VERSION:
        return EACCES
    return EPERM


def do_platform_op(vcpu: Vcpu, arg: int, *_: int) -> int:
    """do_platform_op: -EFAULT, -EACCES, then xsm_platform_op (XSM_PRIV)."""
    op = _copy_header(vcpu, arg, PLATFORM_OP_SIZE)
    if op is None:
        return EFAULT
    if struct.unpack_from("<I", op, 4)[0] != XENPF_INTERFACE_VERSION:
        return EACCES
    return EPERM


def do_domctl(vcpu: Vcpu, arg: int, *_: int) -> int:
    """do_domctl: -EFAULT, -EACCES, the target domain looked up by id (-ESRCH for one that
    does not exist; getdomaininfo takes the next id up, -EINVAL for a reserved id), then the
    XSM check: XSM_PRIV, or XSM_XS_PRIV for getdomaininfo, -EPERM either way for a domU."""
    op = _copy_header(vcpu, arg, DOMCTL_SIZE)
    if op is None:
        return EFAULT
    cmd, version, domid = _domctl_head(op)
    if version != XEN_DOMCTL_INTERFACE_VERSION:
        return EACCES
    if cmd == XEN_DOMCTL_createdomain:
        return EPERM
    if cmd == XEN_DOMCTL_vm_event_op:
        # XEN_VM_EVENT_GET_VERSION answers any domain, before any XSM check
        return vcpu.domain.unimplemented("domctl XEN_DOMCTL_vm_event_op")
    if cmd == XEN_DOMCTL_test_assign_device and domid == DOMID_INVALID:
        return EPERM
    if cmd == XEN_DOMCTL_getdomaininfo and not _domain_exists(vcpu, domid):
        if domid >= DOMID_FIRST_RESERVED:
            return EINVAL
        return EPERM if domid < max(DOM0, vcpu.domain.domid) else ESRCH
    return EPERM if _domain_exists(vcpu, domid) else ESRCH


def do_paging_domctl_cont(vcpu: Vcpu, arg: int, *_: int) -> int:
    """do_paging_domctl_cont: -EFAULT; -EOPNOTSUPP unless a shadow_op of this interface
    version; -ESRCH for an unknown domain; then xsm_domctl (XSM_PRIV)."""
    op = _copy_header(vcpu, arg, DOMCTL_SIZE)
    if op is None:
        return EFAULT
    cmd, version, domid = _domctl_head(op)
    if version != XEN_DOMCTL_INTERFACE_VERSION or cmd != XEN_DOMCTL_shadow_op:
        return EOPNOTSUPP
    return EPERM if _domain_exists(vcpu, domid) else ESRCH


def do_kexec_op(vcpu: Vcpu, *_: int) -> int:
    """do_kexec_op_internal: xsm_kexec (XSM_PRIV) comes first."""
    return EPERM


def do_hypfs_op(vcpu: Vcpu, *_: int) -> int:
    """do_hypfs_op: xsm_hypfs_op (XSM_PRIV) comes first, even for get_version."""
    return EPERM


def do_mca(vcpu: Vcpu, *_: int) -> int:
    """do_mca: xsm_do_mca (XSM_PRIV) before the argument is read."""
    return EPERM


def do_dm_op(vcpu: Vcpu, domid: int, nr_bufs: int, bufs: int, *_: int) -> int:
    """do_dm_op: -ENODATA without buffers, -E2BIG for more than two, -EFAULT for an unreadable
    buffer array; then rcu_lock_remote_domain_by_id: the caller itself is -EPERM (a domain is
    not its own device model), an unknown id -ESRCH; dom0 is no HVM domain: -EINVAL."""
    nr_bufs &= 0xFFFFFFFF
    if not nr_bufs:
        return ENODATA
    if nr_bufs > DM_OP_MAX_BUFS:
        return E2BIG
    buf_size = 16 if vcpu.word == 8 else 8       # xen_dm_op_buf: handle, xen_ulong_t size
    try:
        vcpu.read_virt(bufs, nr_bufs * buf_size)
    except GuestFault:
        return EFAULT
    domid &= 0xFFFF
    if domid == vcpu.domain.domid:
        return EPERM
    return EINVAL if _domain_exists(vcpu, domid) else ESRCH


def do_xenoprof_op(vcpu: Vcpu, op: int, arg: int, *_: int) -> int:
    """do_xenoprof_op: -EINVAL outside the ops; -EPERM for the privileged ones (a domU is not
    the primary profiler). XENOPROF_init reads its argument, then xenoprof_arch_init:
    -ENODEV, the workbench's CPU being no model oprofile/nmi_int.c knows (cpu_type NULL).
    enable_virq/disable_virq: -EPERM from set_active/reset_active (not an active domain).
    get_buffer would share sample pages with the guest: not modelled."""
    op &= 0xFFFFFFFF
    if op >= 1 << 31:
        op -= 1 << 32
    if op < 0 or op > XENOPROF_LAST_OP:
        return EINVAL
    if op == XENOPROF_GET_BUFFER:
        return vcpu.domain.unimplemented("xenoprof_op XENOPROF_get_buffer")
    if op != XENOPROF_INIT:
        return EPERM
    try:
        vcpu.read_virt(arg, 8 + 64)               # struct xenoprof_init: num_events, is_primary, cpu_type[64]
    except GuestFault:
        return EFAULT
    return ENODEV


def decode_header(vcpu: Vcpu, arg: int, *_: int) -> Any:
    """cmd and interface version of a sysctl, domctl or platform_op structure."""
    try:
        cmd, version = struct.unpack("<II", vcpu.read_virt(arg, 8))
    except GuestFault:
        return {"op": f"{arg:#x}", "unreadable": True}
    return {"op": f"{arg:#x}", "cmd": cmd, "interface_version": f"{version:#x}"}
