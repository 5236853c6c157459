"""The plain state types the hypervisor's subsystems share (xen/include/xen/sched.h):
a vcpu's scheduling state, a trap table entry, and the domain crash."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class VcpuState(enum.Enum):
    down = "down"
    running = "running"
    blocked = "blocked"
    stopped = "stopped"        # held by the workbench (gdb's scheduler-locking)


@dataclass
class TrapInfo:
    """One entry of a vcpu's trap table (struct trap_info)."""

    vector: int
    flags: int
    cs: int
    address: int

    def registered(self, word: int) -> bool:
        """pv/traps.c null_trap_bounce: a 64-bit entry needs an address, a 32-bit one a
        non-null code selector."""
        return bool(self.address) if word == 8 else bool(self.cs & ~3)


class DomainCrash(Exception):
    """The hypervisor crashes the domain (as domain_crash() does)."""
