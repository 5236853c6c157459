"""physdev_op and physdev_op_compat: xen/arch/x86/physdev.c, public/physdev.h."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xenwb.abi.constants import Errno, PhysdevOp
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.mm import MMError, PageType

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

EINVAL, EFAULT, EPERM, ENOSYS, EBUSY = -Errno.EINVAL, -Errno.EFAULT, -Errno.EPERM, -Errno.ENOSYS, -Errno.EBUSY


def pirq_eoi_gmfn(vcpu: Vcpu, arg: int) -> int:
    """PHYSDEVOP_pirq_eoi_gmfn_v1/v2 (physdev.c): the guest gives a page of its own for the
    PIRQ EOI bitmap; Xen takes a writable type reference on it and keeps it mapped. Once
    per domain (-EBUSY after); a frame that is not the guest's or not writable is -EINVAL."""
    dom = vcpu.domain
    mfn = vcpu.read_ulong(arg)               # struct physdev_pirq_eoi_gmfn { xen_pfn_t gmfn; }
    if not dom.mm.is_owned(mfn):
        return EINVAL
    try:
        dom.mm.get_page(mfn)
        dom.mm.get_page_type(mfn, PageType.writable)
    except MMError:
        return EINVAL
    if dom.pirq_eoi_map_mfn:
        dom.mm.put_page_type(mfn)
        dom.mm.put_page(mfn)
        return EBUSY
    dom.pirq_eoi_map_mfn = mfn
    return 0


IOBMP_BYTES = 8192                      # the I/O bitmap of 65536 ports (physdev.c, IOBMP_BYTES)


def physdev(vcpu: Vcpu, cmd: int, arg: int) -> int:
    try:
        if cmd == PhysdevOp.set_iopl:
            iopl = vcpu.read_u32(arg)
            if iopl > 3:
                return EINVAL
            vcpu.iopl = iopl
            return 0
        if cmd == PhysdevOp.set_iobitmap:
            L = vcpu.domain.abi.physdev_set_iobitmap
            b = L.parse(vcpu.read_virt(arg, L.size()))
            # physdev.c: the whole bitmap must be guest-accessible (guest_handle_okay)
            if not vcpu.domain.geo.guest_range_ok(b.bitmap, IOBMP_BYTES) or b.nr_ports > 65536:
                return EINVAL
            vcpu.iobitmap = (b.bitmap, b.nr_ports)
            return 0
        if cmd == PhysdevOp.irq_status_query:
            vcpu.read_u32(arg)
            vcpu.write_virt(arg + 4, (0).to_bytes(4, "little"))
            return 0
        if cmd in (PhysdevOp.pirq_eoi_gmfn_v1, PhysdevOp.pirq_eoi_gmfn_v2):
            return pirq_eoi_gmfn(vcpu, arg)
        if cmd in (PhysdevOp.eoi,
                   PhysdevOp.map_pirq, PhysdevOp.unmap_pirq, PhysdevOp.setup_gsi, PhysdevOp.get_free_pirq,
                   PhysdevOp.pci_device_add, PhysdevOp.pci_device_remove, PhysdevOp.manage_pci_add,
                   PhysdevOp.manage_pci_remove, PhysdevOp.manage_pci_add_ext, PhysdevOp.restore_msi,
                   PhysdevOp.restore_msi_ext, PhysdevOp.pci_mmcfg_reserved, PhysdevOp.apic_read,
                   PhysdevOp.apic_write, PhysdevOp.alloc_irq_vector, PhysdevOp.free_irq_vector,
                   PhysdevOp.prepare_msix, PhysdevOp.release_msix, PhysdevOp.pci_device_reset,
                   PhysdevOp.dbgp_op):
            return EPERM       # a domU without devices or IRQ privileges
    except GuestFault:
        return EFAULT
    return vcpu.domain.unimplemented(f"physdev_op command {cmd}")


def decode_physdev_op(vcpu: Vcpu, cmd: int, arg: int) -> dict:
    try:
        name = PhysdevOp(cmd).name
    except ValueError:
        name = str(cmd)
    out = {"cmd": name, "arg": f"{arg:#x}"}
    if cmd == PhysdevOp.set_iopl:
        try:
            out["iopl"] = vcpu.read_u32(arg)
        except GuestFault:
            pass
    return out


def do_physdev_op(vcpu: Vcpu, cmd: int, arg: int, *_: int) -> int:
    return physdev(vcpu, cmd, arg)


def do_physdev_op_compat(vcpu: Vcpu, arg: int, *_: int) -> int:
    try:
        cmd = vcpu.read_u32(arg)
    except GuestFault:
        return EFAULT
    return physdev(vcpu, cmd, arg + 4)


def decode_physdev_op_compat(vcpu: Vcpu, arg: int, *_: int) -> Any:
    return {"arg": f"{arg:#x}"}
