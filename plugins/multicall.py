"""Multicall decoder: each batch as one record with every entry decoded and its own
result, failed entries flagged, per-batch and per-op statistics, and the flushing call site."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from plugins.api import Plugin
from plugins.hypercalls import brief_args
from xenwb.registry import CommandError, Result, parse_int, table

if TYPE_CHECKING:
    from xenwb.machine import Machine


class MulticallDecoder(Plugin):
    name = "multicall"
    description = "multicall batches: entries decoded with results, failures, statistics"
    kinds = frozenset({"multicall", "hypercall"})

    def __init__(self, machine: Machine) -> None:
        super().__init__(machine)
        self.batches: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.open: dict[int, dict[str, Any]] = {}       # batch seq -> record being filled
        self.op_stats: dict[str, dict[str, int]] = {}
        self.count = 0

    def on_event(self, ev: dict[str, Any]) -> None:
        if ev["kind"] == "multicall":
            if ev["name"] == "multicall_begin":
                self.open[ev["seq"]] = {"batch": ev["seq"], "vcpu": ev["vcpu"], "time_ns": ev["time_ns"],
                                        "caller": ev.get("eip"), "symbol": ev.get("symbol"), "entries": []}
            elif ev["name"] == "multicall_end":
                rec = self.open.pop(ev.get("batch"), None)
                if rec is not None:
                    rec["failed"] = sum(1 for e in rec["entries"] if e["failed"])
                    rec["size"] = len(rec["entries"])
                    self.batches.append(rec)
                    self.count += 1
            return
        batch = ev.get("multicall")
        if batch is None:
            return
        rec = self.open.get(batch)
        if rec is None:
            return
        failed = ev["ret"] < 0
        rec["entries"].append({"index": len(rec["entries"]), "op": ev["name"], "args": ev["args"],
                               "ret": ev["ret"], "errno": ev.get("errno"), "failed": failed})
        st = self.op_stats.setdefault(ev["name"], {"entries": 0, "failed": 0})
        st["entries"] += 1
        st["failed"] += failed

    def commands(self):
        return [
            ("multicall list", self.cmd_list, "recent batches: size, failures, call site", "[--last K]"),
            ("multicall show", self.cmd_show, "one batch entry by entry (default: the largest)",
             "[BATCH|largest|last]"),
            ("multicall stats", self.cmd_stats, "per-op and per-batch statistics", ""),
        ]

    def largest(self) -> dict[str, Any] | None:
        return max(self.batches, key=lambda b: (b["size"], -b["batch"]), default=None)

    def cmd_list(self, m: Machine, args: list[str]) -> Result:
        last = parse_int(args[1], "--last") if len(args) == 2 and args[0] == "--last" else 20
        recs = list(self.batches)[-last:]
        rows = [{"batch": b["batch"], "vcpu": b["vcpu"], "time_ns": b["time_ns"], "entries": b["size"],
                 "failed": b["failed"], "caller": f"{b['caller']:#010x}" if b["caller"] is not None else None,
                 "symbol": b["symbol"]} for b in recs]
        return Result(recs, table(rows))

    def cmd_show(self, m: Machine, args: list[str]) -> Result:
        which = args[0] if args else "largest"
        if which == "largest":
            b = self.largest()
        elif which == "last":
            b = self.batches[-1] if self.batches else None
        else:
            n = parse_int(which, "BATCH")
            b = next((x for x in self.batches if x["batch"] == n), None)
        if b is None:
            raise CommandError("no such multicall batch recorded")
        rows = [{"#": e["index"], "op": e["op"], "args": brief_args(e["args"], 100), "ret": e["ret"],
                 "errno": e["errno"], "FAILED": "<--" if e["failed"] else ""} for e in b["entries"]]
        head = (f"batch {b['batch']} on vcpu{b['vcpu']} at {b['time_ns']} ns, {b['size']} entries, "
                f"{b['failed']} failed, flushed from {b['caller']:#x}"
                + (f" <{b['symbol']}>" if b["symbol"] else ""))
        return Result(b, head + "\n" + table(rows))

    def cmd_stats(self, m: Machine, args: list[str]) -> Result:
        sizes = [b["size"] for b in self.batches]
        batch = {"batches": self.count, "entries": sum(sizes), "largest": max(sizes, default=0),
                 "mean": round(sum(sizes) / len(sizes), 2) if sizes else 0,
                 "with_failures": sum(1 for b in self.batches if b["failed"])}
        rows = [{"op": op, **st} for op, st in sorted(self.op_stats.items(), key=lambda kv: -kv[1]["entries"])]
        text = "  ".join(f"{k}={v}" for k, v in batch.items()) + "\n" + table(rows)
        return Result({"batches": batch, "ops": rows}, text)
