"""xen_version and vm_assist: xen/common/kernel.c, public/version.h."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from xenwb.abi import constants as C
from xenwb.abi.constants import Errno, Vmasst, XenFeat, XenVer
from xenwb.hypervisor.memory import GuestFault

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, ENOSYS = -Errno.EINVAL, -Errno.EFAULT, -Errno.ENOSYS
COMPILE_INFO = (b"gcc (xenwb emulation)", b"xenwb", b"xenwb.invalid", b"Sat Nov 21 00:00:00 UTC 2026")
CHANGESET = b"xenwb emulated hypervisor"
GUEST_HANDLE = bytes(16)


def capabilities(vcpu: Vcpu) -> str:
    """64-bit Xen runs x86_32p guests; only the old 32-bit non-PAE Xen runs x86_32 ones."""
    if vcpu.domain.pae:
        return "xen-3.0-x86_64 xen-3.0-x86_32p"
    return "xen-3.0-x86_32"


# Xen 4.17's XENVER_get_features, submap 0, for a PV domU (common/kernel.c at stable-4.17):
# memory_op_vnode_supported, and for PV mmu_pt_update_preserve_ad | highmem_assist |
# gnttab_map_avail_bits, and direct_mapped (a PV guest is not translated) = 0x220e0, the same for
# both widths; pae_pgdir_above_4gb once VMASST pae_extended_cr3 is on. runstate_phys_area,
# vcpu_time_phys_area and dm_msix_all_writes (18-20) came after 4.17.
FEATURES_PV = ((1 << XenFeat.mmu_pt_update_preserve_ad) | (1 << XenFeat.highmem_assist)
               | (1 << XenFeat.gnttab_map_avail_bits) | (1 << XenFeat.memory_op_vnode_supported)
               | (1 << XenFeat.direct_mapped))


def features(vcpu: Vcpu) -> int:
    """XENFEAT bits a PV domU sees (kernel.c do_xen_version, XENVER_get_features)."""
    f = FEATURES_PV
    if vcpu.domain.vm_assist & (1 << C.Vmasst.pae_extended_cr3):
        f |= 1 << XenFeat.pae_pgdir_above_4gb
    return f


def _str(vcpu: Vcpu, arg: int, data: bytes, size: int) -> int:
    try:
        vcpu.write_virt(arg, data[: size - 1].ljust(size, b"\0"))
    except GuestFault:
        return EFAULT
    return 0


def _var(vcpu: Vcpu, arg: int, data: bytes) -> int:
    """The *2 sub-ops: {u32 len; char buf[]}; a NULL arg asks for the size."""
    if arg == 0:
        return len(data)
    try:
        cap = vcpu.read_u32(arg)
        if cap < len(data):
            return -Errno.ENOBUFS
        vcpu.write_virt(arg + 4, data)
    except GuestFault:
        return EFAULT
    return len(data)


def do_xen_version(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    dom = vcpu.domain
    if cmd == XenVer.version:
        return (C.XEN_MAJOR << 16) | C.XEN_MINOR
    if cmd == XenVer.extraversion:
        return _str(vcpu, arg, C.XEN_EXTRAVERSION.encode(), 16)
    if cmd == XenVer.compile_info:
        data = b"".join(s[: n - 1].ljust(n, b"\0") for s, n in zip(COMPILE_INFO, (64, 16, 32, 32), strict=False))
        try:
            vcpu.write_virt(arg, data)
        except GuestFault:
            return EFAULT
        return 0
    if cmd == XenVer.capabilities:
        return _str(vcpu, arg, capabilities(vcpu).encode(), 1024)
    if cmd == XenVer.changeset:
        return _str(vcpu, arg, CHANGESET, 64)
    if cmd == XenVer.platform_parameters:
        try:
            vcpu.write_ulong(arg, dom.geo.hv_start)     # xen_platform_parameters.virt_start
        except GuestFault:
            return EFAULT
        return 0
    if cmd == XenVer.get_features:
        try:
            idx = vcpu.read_u32(arg)
        except GuestFault:
            return EFAULT
        if idx != 0:
            return EINVAL
        try:
            vcpu.write_virt(arg + 4, struct.pack("<I", features(vcpu)))
        except GuestFault:
            return EFAULT
        return 0
    if cmd == XenVer.pagesize:
        return EINVAL if arg else 4096
    if cmd == XenVer.guest_handle:
        try:
            vcpu.write_virt(arg, GUEST_HANDLE)
        except GuestFault:
            return EFAULT
        return 0
    if cmd == XenVer.commandline:
        return _str(vcpu, arg, b"", 1024)   # Xen's own command line: empty for a domU's eyes
    if cmd == XenVer.build_id:
        return -Errno.ENODATA
    if cmd == XenVer.extraversion2:
        return _var(vcpu, arg, C.XEN_EXTRAVERSION.encode())
    if cmd == XenVer.capabilities2:
        return _var(vcpu, arg, capabilities(vcpu).encode())
    if cmd == XenVer.changeset2:
        return _var(vcpu, arg, CHANGESET)
    if cmd == XenVer.commandline2:
        return _var(vcpu, arg, b"")
    return dom.unimplemented(f"xen_version command {cmd}")


def decode_xen_version(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> Any:
    return {
        "cmd": XenVer(cmd).name if cmd in XenVer._value2member_map_ else str(cmd), "arg": f"{arg:#x}"}


# VMASST types a PV32 guest may set (VM_ASSIST_VALID for compat guests)
VMASST_VALID_PV32 = ((1 << Vmasst.four_gb_segments) | (1 << Vmasst.four_gb_segments_notify)
                     | (1 << Vmasst.writable_pagetables) | (1 << Vmasst.pae_extended_cr3)
                     | (1 << Vmasst.architectural_iopl) | (1 << Vmasst.runstate_update_flag))


# asm/domain.h PV64_VM_ASSIST_MASK: the PV32 ones (harmless on 64-bit) and m2p_strict
VMASST_VALID_PV64 = VMASST_VALID_PV32 | (1 << Vmasst.m2p_strict)


def do_vm_assist(vcpu: Vcpu, cmd: int, vtype: int, *_: int) -> int:
    """common/domain.c do_vm_assist: type < BITS_PER_LONG and in the domain's valid mask."""
    dom = vcpu.domain
    valid, bits = (VMASST_VALID_PV64, 64) if dom.is_64 else (VMASST_VALID_PV32, 32)
    if vtype >= bits or not (valid >> vtype) & 1:
        return EINVAL
    if cmd == C.VMASST_CMD_enable:
        dom.vm_assist |= 1 << vtype
    elif cmd == C.VMASST_CMD_disable:
        dom.vm_assist &= ~(1 << vtype)
    else:
        return ENOSYS
    dom.mm.m2p_strict = bool(dom.vm_assist & (1 << Vmasst.m2p_strict))
    return 0


def decode_vm_assist(vcpu: Vcpu, cmd: int, t: int, *_: int) -> Any:
    return {
        "cmd": {0: "enable", 1: "disable"}.get(cmd, str(cmd)),
        "type": Vmasst(t).name if t in Vmasst._value2member_map_ else str(t)}
