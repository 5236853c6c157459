"""Event masks per vcpu: upcall_mask, upcall_pending, pending_sel, the ports bound to
each vcpu, the history of mask changes with call sites, and the longest masked windows.

The port state is read the way the domain's event channel ABI keeps it: on the 2-level
ABI the evtchn_pending/evtchn_mask words of shared_info (unsigned long: 32 bits on a
32-bit guest, 64 on a 64-bit one) and the vcpu's evtchn_pending_sel; on the FIFO ABI
(event_fifo.c, which Linux 6.1 uses) each vcpu's control block (READY bits, the heads of
its 16 queues) and each port's event word (PENDING, MASKED, LINKED, BUSY, LINK), with
the port's priority.

Guests flip evtchn_upcall_mask with plain stores (Linux's xen_irq_disable), which the
hypervisor never sees: the core observes them while somebody wants "mask" events
(hypervisor/upcall_mask.py) and publishes them, like the hypervisor's own changes (upcall
delivery, iret, block), as "mask" events, which this plugin keeps: the last `--history`
changes as the trace's records, and the `--history` longest masked windows.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from plugins.api import Arg, Opt, Plugin, command
from xenwb.hypervisor.event_channel import PortState
from xenwb.hypervisor.event_fifo import BUSY, LINK_MASK, PRIORITY_DEFAULT, Fifo
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
    deferred = frozenset({"mask"})    # a vcpu coming up is seen at once: it reads the vcpu's mask

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
        elif rec[0] == _MASK.eid:
            self.on_records((rec,))

    def on_records(self, recs: Sequence[Record]) -> None:
        """Mask changes (deferred), or any record one at a time."""
        mask, history, since = _MASK.eid, self.history_records, self.masked_since
        for rec in recs:
            if rec[0] != mask:
                self.on_record(rec)
            elif rec[_NEW]:
                history.append(rec)
                since[rec[2]] = (rec[3], rec[_EIP])
            else:
                history.append(rec)
                self._close(rec[2], rec[3], rec[_EIP])

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

    def _port_detail(self, p: Any) -> str:
        if p.state == PortState.virq:
            return f"virq {p.virq}"
        if p.state == PortState.interdomain:
            return f"dom{p.remote_dom}:{p.remote_port}"
        if p.state == PortState.unbound:
            return f"dom{p.remote_dom}"
        return ""

    def vcpu_state(self, v: Vcpu) -> dict[str, Any]:
        dom = self.machine.domain
        ev = dom.evtchn  # type: ignore[attr-defined]
        fifo = ev.ops if isinstance(ev.ops, Fifo) else None
        word = dom.abi.abi.word
        sel = v.pending_sel
        ports = []
        for port, p in enumerate(ev.ports):
            if port == 0 or p.state == PortState.closed or p.vcpu != v.id:
                continue
            row: dict[str, Any] = {"port": port, "type": PORT_TYPES.get(int(p.state), str(p.state)),
                                   "detail": self._port_detail(p), "pending": ev.is_pending(port),
                                   "masked": ev.is_masked(port)}
            if fifo is not None:
                w = fifo.word(port)
                row.update(linked=fifo.is_linked(port), busy=w is not None and bool(w & BUSY),
                           priority=fifo.priority.get(port, PRIORITY_DEFAULT),
                           link=(w & LINK_MASK) if w is not None else None,
                           word=f"{w:#010x}" if w is not None else None)
            else:
                row.update(word=port // (8 * word), bit=port % (8 * word))
            ports.append(row)
        since = self.masked_since.get(v.id)
        out: dict[str, Any] = {
            "vcpu": v.id, "abi": ev.ops.name, "upcall_mask": v.upcall_mask, "upcall_pending": v.upcall_pending,
            "pending_sel": f"{sel:#0{2 + 2 * word}x}", "masked_for_ns": dom.time.now(v) - since[0] if since else 0,
            "ports": ports}
        if fifo is not None:
            out["control_block"] = self._control_block(fifo, v.id)
        else:
            out["words"] = self._words(v, ports, word)
        return out

    def _words(self, v: Vcpu, ports: list[dict[str, Any]], word: int) -> list[dict[str, Any]]:
        """The shared_info evtchn_pending/evtchn_mask words (unsigned long, from the ABI
        layout) that hold this vcpu's ports or are selected in its pending_sel."""
        dom = self.machine.domain
        si = dom.abi.shared_info
        frame = dom.mem.frame(dom.shared_info_mfn)
        sel = v.pending_sel
        wanted = sorted({p["word"] for p in ports} | {i for i in range(8 * word) if sel >> i & 1})
        out = []
        for i in wanted:
            pend = int.from_bytes(frame[si.offset("evtchn_pending") + i * word:][:word], "little")
            mask = int.from_bytes(frame[si.offset("evtchn_mask") + i * word:][:word], "little")
            out.append({"word": i, "pending": f"{pend:#0{2 + 2 * word}x}", "mask": f"{mask:#0{2 + 2 * word}x}",
                        "in_pending_sel": bool(sel >> i & 1)})
        return out

    def _control_block(self, fifo: Fifo, vid: int) -> dict[str, Any] | None:
        """The vcpu's evtchn_fifo_control_block: READY bits, queue heads, linked queues."""
        block = fifo.control_block(vid)
        if block is None:
            return None
        queues = fifo.queues().get(vid, {})
        return {"maddr": f"{fifo.control[vid]:#x}", "ready": f"{block.ready:#06x}",
                "ready_queues": [q for q in range(len(block.head)) if block.ready >> q & 1],
                "heads": {q: h for q, h in enumerate(block.head) if h},
                "queues": {q: chain for q, chain in queues.items()}}

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
            cb = d.get("control_block", False)
            if cb is None:
                parts.append("  FIFO: no control block (EVTCHNOP_init_control not done on this vcpu)")
            elif cb:
                heads = " ".join(f"q{q}={h}" for q, h in cb["heads"].items()) or "none"
                linked = " ".join(f"q{q}:{','.join(map(str, c)) or '-'}" for q, c in cb["queues"].items()) or "none"
                parts.append(f"  FIFO control block at {cb['maddr']}: READY {cb['ready']} "
                             f"(queues {cb['ready_queues'] or 'none'}), heads {heads}, linked {linked}")
            if d.get("words"):
                parts.append("  2-level words: " + ", ".join(
                    f"[{w['word']}] pending {w['pending']} mask {w['mask']}" + (" (selected)" if w["in_pending_sel"]
                                                                                else "") for w in d["words"]))
            if d["ports"]:
                parts.append(table(d["ports"]))
            else:
                parts.append("  no ports bound to this vcpu")
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

