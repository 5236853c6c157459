"""Event masks per vcpu: upcall_mask, upcall_pending, pending_sel, the ports bound to
each vcpu, the history of mask changes with call sites, and the longest masked windows.

Guests flip evtchn_upcall_mask with plain stores (Linux's xen_irq_disable), which the
hypervisor never sees: the core observes them while somebody wants "mask" events
(hypervisor/upcall_mask.py) and publishes them, like the hypervisor's own changes (upcall
delivery, iret, block), as "mask" events, which this plugin keeps: the last `--history`
changes as the trace's records, and the `--history` longest masked windows.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import TYPE_CHECKING, Any

from plugins.api import Arg, Opt, Plugin, command
from xenwb.hypervisor.event_channel import PortState
from xenwb.hypervisor.state import VcpuState
from xenwb.registry import CommandError, Result, table
from xenwb.trace_events import Record, event

if TYPE_CHECKING:
    from xenwb.hypervisor.vcpu import Vcpu
    from xenwb.machine import Machine

PORT_TYPES = {int(s): s.name for s in PortState}         # the core's EVTCHNSTAT_* names
_MASK = event("mask")
_OLD, _NEW, _EIP, _BY = _MASK.col("old"), _MASK.col("new"), _MASK.col("eip"), _MASK.col("by")
_UP, _DOWN = event("vcpu", "up"), event("vcpu", "down")
_TARGET = _UP.col("target")


class EventMaskPlugin(Plugin):
    name = "evmask"
    description = "per-vcpu event masks: state, bound ports, mask history, longest masked windows"
    kinds = frozenset({"mask", "vcpu"})

    def __init__(self, machine: Machine) -> None:
        super().__init__(machine)
        self.history_records: deque[Record] = deque(maxlen=self.history)
        # the longest windows: a min-heap of (duration, -start, n, vcpu, start, end, masked_at, unmasked_at)
        self._windows: list[tuple[int, int, int, int, int, int, int | None, int | None]] = []
        self._nwin = 0
        self.masked_since: dict[int, tuple[int, int | None]] = {}

    def set_history(self, n: int) -> None:
        super().set_history(n)
        self.history_records = deque(self.history_records, maxlen=n)

    def on_enable(self) -> None:
        for v in self.machine.vcpus:               # a vcpu that is not up yet is masked from when it is
            if v.upcall_mask and v.state is not VcpuState.down:
                self.masked_since[v.id] = (self.machine.domain.time.now(v), None)

    def on_record(self, rec: Record) -> None:
        if rec[0] == _UP.eid or rec[0] == _DOWN.eid:
            self._up_or_down(rec)
            return
        if rec[0] != _MASK.eid:
            return
        self.history_records.append(rec)
        vid, now, eip = rec[2], rec[3], rec[_EIP]
        if rec[_NEW]:
            self.masked_since[vid] = (now, eip)
            return
        self._close(vid, now, eip)

    def _up_or_down(self, rec: Record) -> None:
        """VCPUOP_up of a masked vcpu opens its window; VCPUOP_down closes one (offline time is
        not masked time)."""
        vid, now = rec[_TARGET], rec[3]
        if rec[0] == _DOWN.eid:
            self._close(vid, now, None)
        elif vid < len(self.machine.vcpus) and self.machine.vcpus[vid].upcall_mask:
            self.masked_since.setdefault(vid, (now, None))

    def _close(self, vid: int, now: int, eip: int | None) -> None:
        start = self.masked_since.pop(vid, None)
        if start is None:
            return
        self._nwin += 1
        w = (now - start[0], -start[0], self._nwin, vid, start[0], now, start[1], eip)
        if len(self._windows) < max(1, self.history):
            heapq.heappush(self._windows, w)
        elif w > self._windows[0]:
            heapq.heapreplace(self._windows, w)

    @property
    def history_list(self) -> list[dict[str, Any]]:
        sym = self.trace.formatter.symbolize
        return [{"vcpu": r[2], "time_ns": r[3], "old": r[_OLD], "new": r[_NEW], "eip": r[_EIP],
                 "symbol": sym(r[_EIP]) if r[_EIP] is not None else None, "by": r[_BY]} for r in self.history_records]

    @property
    def windows(self) -> list[dict[str, Any]]:
        """The longest masked windows kept, longest first."""
        sym = self.trace.formatter.symbolize
        out = []
        for w in sorted(self._windows, reverse=True):
            _, _, _, vid, start, end, m_at, u_at = w
            out.append({"vcpu": vid, "start_ns": start, "end_ns": end, "duration_ns": end - start,
                        "masked_at": m_at, "masked_at_symbol": sym(m_at) if m_at else None,
                        "unmasked_at": u_at, "unmasked_at_symbol": sym(u_at) if u_at is not None else None})
        return out

    # commands ---------------------------------------------------------------------------
    def commands(self):
        return [
            command("evmask", self.cmd_state, "per-vcpu upcall mask/pending, pending_sel and bound ports",
                    Arg("vcpu", "VCPU", "only this vcpu", int, None)),
            command("evmask history", self.cmd_history, "mask changes with call sites",
                    Opt("--vcpu", "V", "only this vcpu's", int), Opt("--last", "K", "the last K", int, 20)),
            command("evmask windows", self.cmd_windows, "longest windows with events masked",
                    Opt("--vcpu", "V", "only this vcpu's", int), Opt("--top", "K", "the K longest", int, 10)),
        ]

    def vcpu_state(self, v: Vcpu) -> dict[str, Any]:
        dom = self.machine.domain
        ev = dom.evtchn  # type: ignore[attr-defined]
        sel = v.pending_sel
        ports = []
        for port, p in enumerate(ev.ports):
            if port == 0 or p.state == PortState.closed or p.vcpu != v.id:
                continue
            ports.append({"port": port, "type": PORT_TYPES.get(int(p.state), str(p.state)),
                          "detail": (f"virq {p.virq}" if p.state == PortState.virq else
                                     f"dom{p.remote_dom}:{p.remote_port}" if p.state == PortState.interdomain else
                                     f"dom{p.remote_dom}" if p.state == PortState.unbound else ""),
                          "pending": ev.is_pending(port), "masked": ev.is_masked(port)})
        since = self.masked_since.get(v.id)
        return {"vcpu": v.id, "upcall_mask": v.upcall_mask, "upcall_pending": v.upcall_pending,
                "pending_sel": f"{sel:#010x}", "masked_for_ns": dom.time.now(v) - since[0] if since else 0,
                "ports": ports}

    def cmd_state(self, m: Machine, a: Any) -> Result:
        if a.vcpu is not None and not 0 <= a.vcpu < len(m.vcpus):
            raise CommandError(f"no vcpu {a.vcpu} (this run has {len(m.vcpus)})")
        vcpus = [m.vcpus[a.vcpu]] if a.vcpu is not None else m.vcpus
        data = [self.vcpu_state(v) for v in vcpus]
        parts = []
        for d in data:
            parts.append(f"vcpu{d['vcpu']}: upcall_mask={d['upcall_mask']} upcall_pending={d['upcall_pending']} "
                         f"pending_sel={d['pending_sel']}"
                         + (f" (masked for {d['masked_for_ns']} ns)" if d["upcall_mask"] else ""))
            parts.append(table(d["ports"]) if d["ports"] else "  no ports bound to this vcpu")
        return Result(data, "\n".join(parts))

    def cmd_history(self, m: Machine, a: Any) -> Result:
        recs = [h for h in self.history_list if a.vcpu is None or h["vcpu"] == a.vcpu]
        recs = recs[-a.last:] if a.last > 0 else recs
        rows = [dict(h, eip=f"{h['eip']:#010x}" if h["eip"] is not None else None) for h in recs]
        return Result(recs, table(rows, ["vcpu", "time_ns", "old", "new", "by", "eip", "symbol"]))

    def cmd_windows(self, m: Machine, a: Any) -> Result:
        wins = [w for w in self.windows if a.vcpu is None or w["vcpu"] == a.vcpu]
        wins = sorted(wins, key=lambda w: (-w["duration_ns"], w["start_ns"]))[:a.top]
        rows = [{"vcpu": w["vcpu"], "duration_ns": w["duration_ns"], "start_ns": w["start_ns"],
                 "masked_at": w["masked_at_symbol"] or (f"{w['masked_at']:#x}" if w["masked_at"] else None),
                 "unmasked_at": w["unmasked_at_symbol"] or (f"{w['unmasked_at']:#x}" if w["unmasked_at"] else None)}
                for w in wins]
        return Result(wins, table(rows))
