"""The trace bus: typed events from the machine to subscribers (writers, plugins, UIs).

Emitting is cheap when nobody listens: every emit_* returns at once if there are
no subscribers. Events are plain dicts with a fixed set of keys so that writers
can serialise them deterministically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xenwb.abi.constants import TRAP_NAMES, errno_name, hypercall_name

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu

Event = dict[str, Any]
Subscriber = Callable[[Event], None]


class TraceBus:
    def __init__(self) -> None:
        self.subscribers: list[Subscriber] = []
        self.active = False          # cheap test for the hot paths: does anyone listen?
        self.seq = 0
        self.decoder: Callable[..., Any] | None = None   # set by the hypervisor: argument decoding
        self.on_active: Callable[[bool], None] | None = None   # told when listening starts or stops

    def subscribe(self, fn: Subscriber) -> None:
        self.subscribers.append(fn)
        self._set_active(True)

    def unsubscribe(self, fn: Subscriber) -> None:
        if fn in self.subscribers:
            self.subscribers.remove(fn)
        self._set_active(bool(self.subscribers))

    def _set_active(self, on: bool) -> None:
        changed = on != self.active
        self.active = on
        if changed and self.on_active is not None:
            self.on_active(on)

    def _emit(self, vcpu: Vcpu | None, kind: str, name: str, time_ns: int | None = None, **fields: Any) -> None:
        if time_ns is None:
            time_ns = vcpu.domain.time.now(vcpu) if vcpu is not None else 0
        ev: Event = {"seq": self.seq, "vcpu": vcpu.id if vcpu is not None else None,
                     "time_ns": time_ns, "kind": kind, "name": name}
        ev.update(fields)
        self.seq += 1
        for fn in list(self.subscribers):
            fn(ev)

    # -- typed events ------------------------------------------------------------
    def emit_hypercall(self, vcpu: Vcpu, nr: int, args: tuple[int, ...], ret: int, eip: int,
                       decoded: Any, multicall: int | None = None, time_ns: int | None = None,
                       duration_ns: int = 0) -> None:
        if not self.subscribers:
            return
        self._emit(vcpu, "hypercall", hypercall_name(nr), time_ns=time_ns, nr=nr, eip=eip,
                   symbol=vcpu.domain.symbolize(eip), args=decoded, raw_args=list(args),
                   ret=ret, errno=errno_name(ret), multicall=multicall, duration_ns=duration_ns)

    def emit_fault(self, vcpu: Vcpu, vector: int, error_code: int | None, cr2: int | None,
                   regs: dict[str, int] | None) -> None:
        if not self.subscribers:
            return
        eip = (regs or vcpu.cpu.regs())["pc"]
        self._emit(vcpu, "fault", TRAP_NAMES.get(vector, f"vector{vector}"), vector=vector,
                   error_code=error_code, cr2=cr2, eip=eip, symbol=vcpu.domain.symbolize(eip))

    def emit_upcall(self, vcpu: Vcpu) -> None:
        if self.subscribers:
            self._emit(vcpu, "upcall", "event_callback", eip=vcpu.cpu.pc)

    def emit_failsafe(self, vcpu: Vcpu, target: dict[str, int]) -> None:
        if self.subscribers:
            self._emit(vcpu, "failsafe", "failsafe_callback", cs=target.get("cs"), eip=target.get("pc"))

    def emit_mask(self, vcpu: Vcpu, old: int, new: int) -> None:
        if self.subscribers:
            eip = vcpu.cpu.pc
            self._emit(vcpu, "mask", "upcall_mask", old=old, new=new, eip=eip,
                       symbol=vcpu.domain.symbolize(eip), by="xen")

    def emit_ptwr(self, vcpu: Vcpu, va: int, maddr: int, old: int, new: int) -> None:
        if self.subscribers:
            self._emit(vcpu, "ptwr", "writable_pagetable", va=va, maddr=maddr, old=old, new=new)

    def emit_emulated(self, vcpu: Vcpu, eip: int, insn: str) -> None:
        if self.subscribers:
            self._emit(vcpu, "emulate", insn.split()[0], eip=eip, insn=insn)

    def emit_console(self, vcpu: Vcpu | None, data: bytes) -> None:
        if self.subscribers:
            self._emit(vcpu, "console", "console", text=data.decode("latin-1"))

    def emit_shutdown(self, vcpu: Vcpu | None, reason: str) -> None:
        if self.subscribers:
            self._emit(vcpu, "shutdown", reason)

    def emit(self, vcpu: Vcpu | None, kind: str, name: str, **fields: Any) -> None:
        if self.subscribers:
            self._emit(vcpu, kind, name, **fields)
