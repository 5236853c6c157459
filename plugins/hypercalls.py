"""Hypercall tracer: every hypercall with vcpu, virtual time, caller and symbol, decoded
arguments, result and errno, duration; filters; a summary per hypercall.

It keeps the trace's compact records (at most `--history` of them, the captured guest
structures as encoded JSON) and derives names, symbols and decoded arguments only for
what a command shows."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from plugins.api import Arg, Opt, Plugin, command
from plugins.filters import build_filter
from xenwb.abi.constants import hypercall_name
from xenwb.registry import CommandError, Result, table
from xenwb.trace_events import Record, event

if TYPE_CHECKING:
    from xenwb.machine import Machine

_HC = event("hypercall")
_SEQ, _NR, _RET, _MC, _DUR = 1, _HC.col("nr"), _HC.col("ret"), _HC.col("multicall"), _HC.col("duration_ns")


def brief_args(args: Any, limit: int = 80) -> str:
    """One-line rendering of decoded arguments for tables."""
    if isinstance(args, dict):
        parts = []
        for k, v in args.items():
            if isinstance(v, list) and all(isinstance(x, str) for x in v):
                v = "|".join(v)
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                inner = "; ".join(brief_args(x, 40) for x in v[:2])
                v = f"[{inner}{'; ...' if len(v) > 2 else ''}]"
            elif isinstance(v, (list, dict)):
                v = f"[{len(v)}]" if isinstance(v, list) else "{..}"
            parts.append(f"{k}={v}")
        text = " ".join(parts)
    else:
        text = str(args)
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HypercallTracer(Plugin):
    name = "hypercalls"
    description = "every hypercall: caller, decoded arguments, result, duration; summary"
    kinds = frozenset({"hypercall"})
    deferred = kinds                  # it keeps them and reads nothing else

    def __init__(self, machine: Machine) -> None:
        super().__init__(machine)
        self.records: deque[Record] = deque(maxlen=self.history)
        self.stats: dict[int, list[int]] = {}      # nr -> [calls, failed, time_ns, in_multicall]

    def set_history(self, n: int) -> None:
        super().set_history(n)
        self.records = deque(self.records, maxlen=n)

    def on_record(self, rec: Record) -> None:
        self.on_records((rec,))

    def on_records(self, recs: Sequence[Record]) -> None:
        self.records.extend(recs)       # kept as they come: the bus packs captured arguments
        stats = self.stats
        for rec in recs:
            st = stats.get(rec[_NR])
            if st is None:
                st = stats[rec[_NR]] = [0, 0, 0, 0]
            st[0] += 1
            st[2] += rec[_DUR]
            if rec[_RET] < 0:
                st[1] += 1
            if rec[_MC] is not None:
                st[3] += 1

    def commands(self):
        return [
            command("hypercalls", self.cmd_list, "recent hypercalls, filtered",
                    Opt("--name", "N[,N]", "only these hypercalls (multicall entries included)"),
                    Opt("--vcpu", "V", "only this vcpu's"),
                    Opt("--failed", help="only failed calls (result < 0)"),
                    Opt("--range", "LO-HI", "only calls from LO-HI or LO+SIZE"),
                    Opt("--last", "K", "the last K (0: all kept)", int, 20)),
            command("hypercalls summary", self.cmd_summary, "calls, failures and virtual time per hypercall"),
            command("hypercalls show", self.cmd_show, "one hypercall with all its decoded arguments",
                    Arg("seq", "SEQ", "its seq (the trace's event number)", int)),
        ]

    def select(self, a: Any) -> list[Record]:
        f = build_filter(a.name, a.vcpu, a.failed, a.range)
        fmt = self.trace.formatter
        rows = list(self.records) if f.empty else [r for r in self.records if f.match_record(r, fmt)]
        return rows[-a.last:] if a.last > 0 else rows

    def cmd_list(self, m: Machine, a: Any) -> Result:
        evs = [self.trace.as_dict(r) for r in self.select(a)]
        rows = [{"seq": e["seq"], "vcpu": e["vcpu"], "time_ns": e["time_ns"], "caller": f"{e['eip']:#010x}",
                 "symbol": e.get("symbol"),
                 "hypercall": e["name"] + (" (mc)" if e.get("multicall") is not None else ""),
                 "args": brief_args(e["args"]), "ret": e["ret"], "errno": e.get("errno")} for e in evs]
        return Result(evs, table(rows))

    def cmd_summary(self, m: Machine, a: Any) -> Result:
        rows = [{"hypercall": hypercall_name(nr), "calls": st[0], "failed": st[1], "time_ns": st[2],
                 "in_multicall": st[3]} for nr, st in sorted(self.stats.items(), key=lambda kv: -kv[1][0])]
        total = {"hypercall": "total", "calls": sum(r["calls"] for r in rows),
                 "failed": sum(r["failed"] for r in rows), "time_ns": sum(r["time_ns"] for r in rows),
                 "in_multicall": sum(r["in_multicall"] for r in rows)}
        return Result(rows, table(rows + [total] if rows else rows))

    def cmd_show(self, m: Machine, a: Any) -> Result:
        for r in self.records:
            if r[_SEQ] == a.seq:
                e = self.trace.as_dict(r)
                return Result(e, json.dumps(e, indent=2, default=str))
        raise CommandError(f"no hypercall with seq {a.seq} in the last {len(self.records)} records")
