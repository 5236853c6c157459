"""Multicall decoder: each batch as one record with every entry decoded and its own
result, failed entries flagged, per-batch and per-op statistics, and the flushing call site.

Batches are kept as the trace's compact records of their entries (at most `--history`
entries' worth of batches); a command derives what it shows."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from plugins.api import Arg, Opt, Plugin, command
from plugins.hypercalls import brief_args
from xenwb.abi.constants import hypercall_name
from xenwb.registry import CommandError, Result, parse_int, table
from xenwb.trace_events import Record, event

if TYPE_CHECKING:
    from xenwb.machine import Machine

_HC = event("hypercall")
_BEGIN, _END = event("multicall", "multicall_begin"), event("multicall", "multicall_end")
_NR, _RET, _MC = _HC.col("nr"), _HC.col("ret"), _HC.col("multicall")
_B_EIP, _E_BATCH = _BEGIN.col("eip"), _END.col("batch")


class Batch(NamedTuple):
    batch: int               # the seq of its multicall_begin
    vcpu: int
    time_ns: int
    caller: int
    entries: tuple[Record, ...]
    failed: int


class MulticallDecoder(Plugin):
    name = "multicall"
    description = "multicall batches: entries decoded with results, failures, statistics"
    kinds = frozenset({"multicall", "hypercall"})
    deferred = kinds                  # it keeps them and reads nothing else

    def __init__(self, machine: Machine) -> None:
        super().__init__(machine)
        self.batches: deque[Batch] = deque(maxlen=self._max_batches())
        self.open: dict[int, tuple[Record, list[Record]]] = {}      # batch seq -> (begin, entries)
        self.op_stats: dict[int, list[int]] = {}                     # nr -> [entries, failed]
        self.count = 0

    def _max_batches(self) -> int:
        return max(1, self.history // 10)          # a batch holds about ten entries

    def set_history(self, n: int) -> None:
        super().set_history(n)
        self.batches = deque(self.batches, maxlen=self._max_batches())

    def on_record(self, rec: Record) -> None:
        self.on_records((rec,))

    def on_records(self, recs: Sequence[Record]) -> None:
        hc, begin_eid, end_eid = _HC.eid, _BEGIN.eid, _END.eid
        for rec in recs:
            eid = rec[0]
            if eid == hc:                   # most of them: an entry only inside an open batch
                if rec[_MC] is not None and self.open:
                    self._entry(rec)
            elif eid == begin_eid:
                self.open[rec[1]] = (rec, [])
            elif eid == end_eid:
                o = self.open.pop(rec[_E_BATCH], None)
                if o is not None:
                    begin, entries = o
                    failed = sum(1 for e in entries if e[_RET] < 0)
                    self.batches.append(Batch(begin[1], begin[2], begin[3], begin[_B_EIP], tuple(entries), failed))
                    self.count += 1

    def _entry(self, rec: Record) -> None:
        o = self.open.get(rec[_MC])
        if o is None:
            return
        o[1].append(rec)                # as they come: the bus packs captured arguments
        st = self.op_stats.get(rec[_NR])
        if st is None:
            st = self.op_stats[rec[_NR]] = [0, 0]
        st[0] += 1
        st[1] += rec[_RET] < 0

    def commands(self):
        return [
            command("multicall list", self.cmd_list, "recent batches: size, failures, call site",
                    Opt("--last", "K", "the last K batches", int, 20)),
            command("multicall show", self.cmd_show, "one batch entry by entry (default: the largest)",
                    Arg("which", "BATCH|largest|last", "a batch's seq, the largest, or the last", default="largest")),
            command("multicall stats", self.cmd_stats, "per-op and per-batch statistics"),
        ]

    def largest(self) -> Batch | None:
        return max(self.batches, key=lambda b: (len(b.entries), -b.batch), default=None)

    def batch_dict(self, b: Batch) -> dict[str, Any]:
        fmt = self.trace.formatter
        entries = []
        for i, e in enumerate(b.entries):
            d = fmt.as_dict(e)
            entries.append({"index": i, "op": d["name"], "args": d["args"], "ret": d["ret"], "errno": d["errno"],
                            "failed": d["ret"] < 0})
        return {"batch": b.batch, "vcpu": b.vcpu, "time_ns": b.time_ns, "caller": b.caller,
                "symbol": fmt.symbolize(b.caller), "entries": entries, "failed": b.failed, "size": len(b.entries)}

    def cmd_list(self, m: Machine, a: Any) -> Result:
        recs = [self.batch_dict(b) for b in list(self.batches)[-a.last:]] if a.last > 0 else \
            [self.batch_dict(b) for b in self.batches]
        rows = [{"batch": b["batch"], "vcpu": b["vcpu"], "time_ns": b["time_ns"], "entries": b["size"],
                 "failed": b["failed"], "caller": f"{b['caller']:#010x}" if b["caller"] is not None else None,
                 "symbol": b["symbol"]} for b in recs]
        return Result(recs, table(rows))

    def cmd_show(self, m: Machine, a: Any) -> Result:
        which = a.which
        if which == "largest":
            b = self.largest()
        elif which == "last":
            b = self.batches[-1] if self.batches else None
        else:
            n = parse_int(which, "BATCH")
            b = next((x for x in self.batches if x.batch == n), None)
        if b is None:
            raise CommandError("no such multicall batch recorded")
        d = self.batch_dict(b)
        rows = [{"#": e["index"], "op": e["op"], "args": brief_args(e["args"], 100), "ret": e["ret"],
                 "errno": e["errno"], "FAILED": "<--" if e["failed"] else ""} for e in d["entries"]]
        head = (f"batch {d['batch']} on vcpu{d['vcpu']} at {d['time_ns']} ns, {d['size']} entries, "
                f"{d['failed']} failed, flushed from {d['caller']:#x}"
                + (f" <{d['symbol']}>" if d["symbol"] else ""))
        return Result(d, head + "\n" + table(rows))

    def cmd_stats(self, m: Machine, a: Any) -> Result:
        sizes = [len(b.entries) for b in self.batches]
        batch = {"batches": self.count, "entries": sum(sizes), "largest": max(sizes, default=0),
                 "mean": round(sum(sizes) / len(sizes), 2) if sizes else 0,
                 "with_failures": sum(1 for b in self.batches if b.failed)}
        rows = [{"op": hypercall_name(nr), "entries": st[0], "failed": st[1]}
                for nr, st in sorted(self.op_stats.items(), key=lambda kv: -kv[1][0])]
        text = "  ".join(f"{k}={v}" for k, v in batch.items()) + "\n" + table(rows)
        return Result({"batches": batch, "ops": rows}, text)

