"""What every hypercall handler shares: the continuation of a preempted call.

A handler takes the vcpu and the guest's argument registers (PV32: EBX, ECX, EDX, ESI,
EDI) and returns the value for the result register (>= 0, or -errno). The one table of
handlers is hypercall_table.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

# Work a single trap does on a guest-sized list before it is preempted, as Xen's
# hypercall_preempt_check() would: the rest runs when the guest re-executes the call.
PREEMPT_BATCH = 512


def create_continuation(vcpu: Vcpu, *args: int) -> int:
    """hypercall_create_continuation: leave the hypercall number as it is, put `args` in
    the argument registers and move the pc back onto the trapping instruction, so the guest
    traps again and the call goes on where it stopped. Never inside a multicall (entries
    run to the end)."""
    vcpu.continuation = args
    return 0
