"""Xen's part of the address space is out of the guest's reach.

A ring-1 kernel is 'supervisor' to the MMU, so every page of the hypervisor range it can
reach must be read-only to it, except scratch that is never read back (the call gate's
ring-0 stack). Checked on the live tables of a booted guest, for both paging modes."""

from __future__ import annotations

import pytest

from plugins.pagetable import leaf_mappings
from xenwb.session import Session


@pytest.mark.parametrize("guest", ["pvdemo-pae", "pvdemo-nonpae"])
def test_hypervisor_range_is_read_only_to_the_guest(guest: str) -> None:
    s = Session(guest, plugins=("pagetable",), vcpus=2, console=lambda b: None)
    s.run()
    m = s.machine
    xen = m.domain.xen
    stacks = {xen.stack_va(v.id) for v in m.vcpus}
    writable = set()
    for v in m.vcpus:
        for va, _, _, mfn, rw, _us, _nx in leaf_mappings(m, v.cr3_mfn):
            if va >= m.domain.geo.hv_start:
                if m.domain.mm.is_owned(mfn):       # only GDT frames, in the per-vcpu GDT area
                    gdts = {f for u in m.vcpus for f in u.gdt_frames}
                    assert mfn in gdts and not rw, f"guest frame {mfn:#x} mapped at {va:#x}"
                if rw:
                    writable.add(va)
    assert writable == stacks
    for v in m.vcpus:
        tss = xen.tss_va(v.id)
        walk = s.command(f"pt walk {tss:#x} --vcpu {v.id}").data
        assert walk["mapped"] and walk["access"].startswith("RO")
