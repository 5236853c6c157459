"""Event masks per vcpu: upcall_mask, upcall_pending, pending_sel, the ports bound to
each vcpu, the history of mask changes with call sites, and the longest masked windows.

Guests flip evtchn_upcall_mask with plain stores (Linux's xen_irq_disable), which the
hypervisor never sees: the core observes them while the trace has listeners
(hypervisor/upcall_mask.py) and publishes them, like the hypervisor's own changes (upcall
delivery, iret, block), as "mask" events, which this plugin keeps.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from plugins.api import Plugin
from xenwb.registry import CommandError, Result, parse_int, table

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.machine import Machine

PORT_TYPES = {0: "closed", 1: "unbound", 2: "interdomain", 3: "pirq", 4: "virq", 5: "ipi"}


class EventMaskPlugin(Plugin):
    name = "evmask"
    description = "per-vcpu event masks: state, bound ports, mask history, longest masked windows"
    kinds = frozenset({"mask", "vcpu"})

    def __init__(self, machine: Machine) -> None:
        super().__init__(machine)
        self.history: deque[dict[str, Any]] = deque(maxlen=100_000)
        self.windows: list[dict[str, Any]] = []
        self.masked_since: dict[int, tuple[int, int | None]] = {}

    def on_enable(self) -> None:
        for v in self.machine.vcpus:
            if v.upcall_mask:
                self.masked_since[v.id] = (self.machine.domain.time.now(v), None)

    def on_event(self, ev: dict[str, Any]) -> None:
        if ev["kind"] == "mask":
            v = self.machine.vcpus[ev["vcpu"]]
            self._record(v, ev["old"], ev["new"], ev.get("eip"), ev.get("by", "xen"), ev["time_ns"])

    def _record(self, v: Vcpu, old: int, new: int, eip: int | None, source: str, t: int | None = None) -> None:
        dom = self.machine.domain
        now = dom.time.now(v) if t is None else t
        sym = dom.symbolize(eip) if eip is not None else None
        self.history.append({"vcpu": v.id, "time_ns": now, "old": old, "new": new, "eip": eip,
                             "symbol": sym, "by": source})
        if new:
            self.masked_since[v.id] = (now, eip)
        else:
            start = self.masked_since.pop(v.id, None)
            if start is not None:
                self.windows.append({"vcpu": v.id, "start_ns": start[0], "end_ns": now,
                                     "duration_ns": now - start[0], "masked_at": start[1],
                                     "masked_at_symbol": dom.symbolize(start[1]) if start[1] else None,
                                     "unmasked_at": eip, "unmasked_at_symbol": sym})

    # commands ---------------------------------------------------------------------------
    def commands(self):
        return [
            ("evmask", self.cmd_state, "per-vcpu upcall mask/pending, pending_sel and bound ports", "[VCPU]"),
            ("evmask history", self.cmd_history, "mask changes with call sites", "[--vcpu V] [--last K]"),
            ("evmask windows", self.cmd_windows, "longest windows with events masked", "[--vcpu V] [--top K]"),
        ]

    def vcpu_state(self, v: Vcpu) -> dict[str, Any]:
        dom = self.machine.domain
        ev = dom.evtchn  # type: ignore[attr-defined]
        sel = v.pending_sel
        ports = []
        for port, p in enumerate(ev.ports):
            if port == 0 or p.state == 0 or p.vcpu != v.id:
                continue
            ports.append({"port": port, "type": PORT_TYPES.get(int(p.state), str(p.state)),
                          "detail": (f"virq {p.virq}" if p.state == 4 else
                                     f"dom{p.remote_dom}:{p.remote_port}" if p.state == 2 else
                                     f"dom{p.remote_dom}" if p.state == 1 else ""),
                          "pending": ev.is_pending(port), "masked": ev.is_masked(port)})
        since = self.masked_since.get(v.id)
        return {"vcpu": v.id, "upcall_mask": v.upcall_mask, "upcall_pending": v.upcall_pending,
                "pending_sel": f"{sel:#010x}", "masked_for_ns": dom.time.now(v) - since[0] if since else 0,
                "ports": ports}

    def cmd_state(self, m: Machine, args: list[str]) -> Result:
        vcpus = [m.vcpus[parse_int(args[0], "VCPU")]] if args else m.vcpus
        data = [self.vcpu_state(v) for v in vcpus]
        parts = []
        for d in data:
            parts.append(f"vcpu{d['vcpu']}: upcall_mask={d['upcall_mask']} upcall_pending={d['upcall_pending']} "
                         f"pending_sel={d['pending_sel']}"
                         + (f" (masked for {d['masked_for_ns']} ns)" if d["upcall_mask"] else ""))
            parts.append(table(d["ports"]) if d["ports"] else "  no ports bound to this vcpu")
        return Result(data, "\n".join(parts))

    def _vcpu_opt(self, args: list[str], key: str, default: int) -> tuple[int | None, int]:
        vcpu, n = None, default
        it = iter(args)
        for a in it:
            if a == "--vcpu":
                vcpu = parse_int(next(it, ""), "--vcpu")
            elif a == key:
                n = parse_int(next(it, ""), key)
            else:
                raise CommandError(f"unknown argument {a!r}")
        return vcpu, n

    def cmd_history(self, m: Machine, args: list[str]) -> Result:
        vcpu, last = self._vcpu_opt(args, "--last", 20)
        recs = [h for h in self.history if vcpu is None or h["vcpu"] == vcpu][-last:]
        rows = [dict(h, eip=f"{h['eip']:#010x}" if h["eip"] is not None else None) for h in recs]
        return Result(recs, table(rows, ["vcpu", "time_ns", "old", "new", "by", "eip", "symbol"]))

    def cmd_windows(self, m: Machine, args: list[str]) -> Result:
        vcpu, top = self._vcpu_opt(args, "--top", 10)
        wins = [w for w in self.windows if vcpu is None or w["vcpu"] == vcpu]
        wins = sorted(wins, key=lambda w: (-w["duration_ns"], w["start_ns"]))[:top]
        rows = [{"vcpu": w["vcpu"], "duration_ns": w["duration_ns"], "start_ns": w["start_ns"],
                 "masked_at": w["masked_at_symbol"] or (f"{w['masked_at']:#x}" if w["masked_at"] else None),
                 "unmasked_at": w["unmasked_at_symbol"] or (f"{w['unmasked_at']:#x}" if w["unmasked_at"] else None)}
                for w in wins]
        return Result(wins, table(rows))
