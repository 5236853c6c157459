"""The hypercall table: one module per family registers its handlers here.

A handler takes the vcpu and the five PV32 argument registers (EBX, ECX, EDX, ESI,
EDI) and returns the value for EAX (>= 0, or -errno). A decoder turns the same
arguments (and the guest structures they point to) into plain data for the trace.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

Handler = Callable[..., int]
Decoder = Callable[..., Any]


@dataclass(frozen=True)
class Entry:
    nr: int
    handler: Handler
    decoder: Decoder | None
    decoder_arity: int = 5      # how many argument registers the decoder takes


TABLE: dict[int, Entry] = {}

# Work a single trap does on a guest-sized list before it is preempted, as Xen's
# hypercall_preempt_check() would: the rest runs when the guest re-executes the call.
PREEMPT_BATCH = 512


def create_continuation(vcpu: Vcpu, *args: int) -> int:
    """hypercall_create_continuation: leave EAX (the hypercall number) as it is, put
    `args` in EBX..EDI and move EIP back onto `int $0x82`, so the guest traps again and
    the call goes on where it stopped. Never inside a multicall (entries run to the end)."""
    vcpu.continuation = args
    return 0


def hypercall(nr: int, decoder: Decoder | None = None) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        TABLE[int(nr)] = Entry(int(nr), fn, decoder, _arity(decoder) if decoder else 0)
        return fn
    return register


def _arity(fn: Callable[..., Any]) -> int:
    params = list(inspect.signature(fn).parameters.values())[1:]   # after the vcpu
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return 5
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def load_all() -> dict[int, Entry]:
    """Import every family module (each registers itself) and return the table."""
    from xenwb.hypervisor.hypercalls import (  # noqa: F401
        callback,
        console,
        descriptors,
        event_channel,
        grant_table,
        memory,
        misc,
        mm,
        multicall,
        physdev,
        sched,
        vcpu_op,
        version,
    )
    return TABLE


def decode_args(vcpu: Vcpu, nr: int, args: tuple[int, ...]) -> Any:
    """Decoded arguments of a call, or the raw registers when no decoder exists."""
    e = TABLE.get(nr)
    if e is None or e.decoder is None:
        return {"args": [f"{a:#x}" for a in args]}
    try:
        return e.decoder(vcpu, *args[: e.decoder_arity])
    except Exception as ex:  # a decoder must never take the machine down
        return {"undecodable": str(ex), "args": [f"{a:#x}" for a in args]}
