"""Virtual time, derived from execution, never from the host clock; and the records Xen
keeps the guest's view of it in: vcpu_time_info, the wallclock, the runstate.

Each vcpu's clock counts bytes of guest code executed (xenwb/vclock.py); the
virtual TSC runs at 1 GHz with one tick per byte, and system time (ns since
boot) equals the TSC. A blocked vcpu's clock jumps forward to the moment it is
woken (a timer, an event), so idle time costs no host time. vcpu_time_info
therefore carries tsc_to_system_mul = 2^31 with tsc_shift = 1 (public/xen.h:
the 1 GHz example).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xenwb.abi import constants as C
from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.state import VcpuState

if TYPE_CHECKING:
    from xenwb.hypervisor.domain import Domain
    from xenwb.hypervisor.vcpu import Vcpu

TSC_KHZ = 1_000_000
HYPERCALL_COST_NS = 50          # each trap into the hypervisor takes virtual time too
WALLCLOCK_EPOCH = 1_167_609_600  # 2007-01-01T00:00:00Z: the guest's wallclock at boot


class VirtualTime:
    tsc_khz = TSC_KHZ
    mul_frac = 0x80000000
    shift = 1

    def now(self, vcpu: Vcpu) -> int:
        """System time in ns as seen by vcpu."""
        return vcpu.clock.units

    def advance_to(self, vcpu: Vcpu, t: int) -> None:
        """A blocked vcpu wakes at time t: its clock never runs backwards."""
        if t > vcpu.clock.units:
            vcpu.clock.units = t

    def tsc(self, vcpu: Vcpu) -> int:
        return self.now(vcpu)

    def charge(self, vcpu: Vcpu, ns: int) -> None:
        vcpu.clock.units += ns


# Sources for the records: xen/arch/x86/time.c (__update_vcpu_system_time, collect_time_info:
# the version odd/even protocol), xen/common/sched/core.c (vcpu_runstate_change,
# vcpu_runstate_get), public/vcpu.h.
RUNSTATE_running, RUNSTATE_runnable, RUNSTATE_blocked, RUNSTATE_offline = 0, 1, 2, 3
XEN_PVCLOCK_TSC_STABLE_BIT = 1


def update_vcpu_time(dom: Domain, v: Vcpu, force: bool = False) -> None:
    """__update_vcpu_system_time (arch/x86/time.c): collect the record, and unless it is
    unchanged (or forced), write it with the version protocol: version odd
    (version_update_begin), the fields, version even again (version_update_end).

    The virtual TSC counts one tick per ns, so tsc_timestamp = system_time = the vcpu's clock
    and tsc_to_system_mul = 2^31, tsc_shift = 1 (the 1 GHz case of public/xen.h).
    XEN_PVCLOCK_TSC_STABLE_BIT stays clear (collect_time_info sets it only when Xen's
    clocksource is the TSC): each vcpu has its own clock, up to one scheduling quantum apart,
    so a guest must not assume the TSCs of different vcpus agree (Linux then keeps
    pvclock readings monotonic across vcpus itself)."""
    T = dom.abi.vcpu_time_info
    base = v.vcpu_info_maddr + dom.abi.vcpu_info.offset("time")
    mem = dom.mem
    now = dom.time.now(v)
    rec = T(tsc_timestamp=now, system_time=now, tsc_to_system_mul=dom.time.mul_frac, tsc_shift=dom.time.shift)
    first, end = T.offset("tsc_timestamp"), T.offset("flags") + 1
    fields = bytes(rec)[first:end]
    if not force and mem.read(base + first, len(fields)) == fields:
        return
    ver = base + T.offset("version")
    odd = ((mem.read_u32(ver) + 1) | 1) & 0xFFFFFFFF
    mem.write_u32(ver, odd)
    mem.write(base + first, fields)
    mem.write_u32(ver, (odd + 1) & 0xFFFFFFFF)
    update_secondary_time(dom, v)


def update_secondary_time(dom: Domain, v: Vcpu) -> None:
    """The copy of vcpu_time_info at the guest address VCPUOP_register_vcpu_time_memory_area
    gave (update_secondary_system_time, for the guest's vDSO): written through the kernel's
    tables with the same version protocol; a fault is ignored."""
    va = v.time_area
    if not va:
        return
    T = dom.abi.vcpu_time_info
    now = dom.time.now(v)
    rec = T(tsc_timestamp=now, system_time=now, tsc_to_system_mul=dom.time.mul_frac, tsc_shift=dom.time.shift)
    try:
        ver = v.read_u32(va)
        odd = ((ver + 1) | 1) & 0xFFFFFFFF
        v.write_virt(va, odd.to_bytes(4, "little"))
        v.write_virt(va + 4, bytes(rec)[4:])
        v.write_virt(va, ((odd + 1) & 0xFFFFFFFF).to_bytes(4, "little"))
    except GuestFault:
        pass


def init_wallclock(dom: Domain) -> None:
    """shared_info wc_*: the UTC time at system time 0 (fixed, so runs are repeatable),
    written with the same version protocol on wc_version (update_domain_wallclock_time)."""
    si = dom.abi.shared_info
    base = dom.shared_info_mfn << 12
    mem = dom.mem
    mem.write_u32(base + si.offset("wc_version"), 1)
    mem.write_u32(base + si.offset("wc_sec"), WALLCLOCK_EPOCH)
    mem.write_u32(base + si.offset("wc_nsec"), 0)
    mem.write_u32(base + si.offset("wc_version"), 2)


def runstate_of(v: Vcpu) -> int:
    return {VcpuState.running: RUNSTATE_running, VcpuState.blocked: RUNSTATE_blocked,
            VcpuState.down: RUNSTATE_offline, VcpuState.stopped: RUNSTATE_runnable}[v.state]


def account_runstate(dom: Domain, v: Vcpu) -> None:
    """vcpu_runstate_change (sched/core.c): time since the last change goes to the state the
    vcpu was in; the vcpu enters the state it is in now. Call it after changing v.state."""
    now = dom.time.now(v)
    st = v.runstate_state
    v.runstate_time[st] += max(0, now - v.runstate_entry)
    v.runstate_entry = max(now, v.runstate_entry)
    v.runstate_state = runstate_of(v)


def runstate_info(dom: Domain, v: Vcpu):
    """vcpu_runstate_get + the compat translation (44 bytes: i32 state, u64 entry, u64 time[4])."""
    account_runstate(dom, v)
    r = dom.abi.vcpu_runstate_info()
    r.state = v.runstate_state
    r.state_entry_time = v.runstate_entry
    for i in range(4):
        r.time[i] = v.runstate_time[i]
    return r


XEN_RUNSTATE_UPDATE = 1 << 63


def update_runstate_area(dom: Domain, v: Vcpu) -> None:
    """update_runstate_area (sched/core.c): write the registered area; a fault is ignored (as
    Xen does). With VMASST_TYPE_runstate_update_flag the guest sees XEN_RUNSTATE_UPDATE in
    state_entry_time while the record is being written."""
    if not v.runstate_area:
        return
    info = runstate_info(dom, v)
    L = dom.abi.vcpu_runstate_info
    entry = v.runstate_area + L.offset("state_entry_time")
    flag = dom.vm_assist & (1 << C.Vmasst.runstate_update_flag)
    try:
        if flag:
            v.write_virt(entry, (info.state_entry_time | XEN_RUNSTATE_UPDATE).to_bytes(8, "little"))
        v.write_virt(v.runstate_area, bytes(info))
    except GuestFault:
        pass
