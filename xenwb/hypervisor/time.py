"""Virtual time: derived from execution, never from the host clock.

Each vcpu's clock counts bytes of guest code executed (xenwb/vclock.py); the
virtual TSC runs at 1 GHz with one tick per byte, and system time (ns since
boot) equals the TSC. A blocked vcpu's clock jumps forward to the moment it is
woken (a timer, an event), so idle time costs no host time. vcpu_time_info
therefore carries tsc_to_system_mul = 2^31 with tsc_shift = 1 (public/xen.h:
the 1 GHz example).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
