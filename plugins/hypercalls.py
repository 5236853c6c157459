"""Hypercall tracer: every hypercall with vcpu, virtual time, caller and symbol, decoded
arguments, result and errno, duration; filters; a summary per hypercall."""

from __future__ import annotations

import json
from collections import deque
from typing import TYPE_CHECKING, Any

from plugins.api import Options, Plugin
from plugins.filters import build_filter
from xenwb.registry import CommandError, Result, parse_int, table

if TYPE_CHECKING:
    from xenwb.machine import Machine

DEFAULT_KEEP = 100_000


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

    def __init__(self, machine: Machine) -> None:
        super().__init__(machine)
        self.records: deque[dict[str, Any]] = deque(maxlen=DEFAULT_KEEP)
        self.stats: dict[str, dict[str, int]] = {}

    def on_event(self, ev: dict[str, Any]) -> None:
        self.records.append(ev)
        st = self.stats.get(ev["name"])
        if st is None:
            st = self.stats[ev["name"]] = {"calls": 0, "failed": 0, "time_ns": 0, "in_multicall": 0}
        st["calls"] += 1
        st["time_ns"] += ev.get("duration_ns", 0)
        if ev["ret"] < 0:
            st["failed"] += 1
        if ev.get("multicall") is not None:
            st["in_multicall"] += 1

    def commands(self):
        return [
            ("hypercalls", self.cmd_list, "recent hypercalls, filtered",
             "[--name N[,N]] [--vcpu V] [--failed] [--range LO-HI] [--last K]"),
            ("hypercalls summary", self.cmd_summary, "calls, failures and virtual time per hypercall", ""),
            ("hypercalls show", self.cmd_show, "one hypercall with all its decoded arguments", "SEQ"),
        ]

    def select(self, args: list[str]) -> list[dict[str, Any]]:
        o = Options(args, {"failed"}, {"name", "vcpu", "range", "last"})
        f = build_filter(o.values.get("name"), o.values.get("vcpu"), "failed" in o.flags, o.values.get("range"))
        rows = [r for r in self.records if f.match(r)]
        last = parse_int(o.values.get("last", "20"), "--last")
        return rows[-last:] if last > 0 else rows

    def cmd_list(self, m: Machine, args: list[str]) -> Result:
        evs = self.select(args)
        rows = [{"seq": e["seq"], "vcpu": e["vcpu"], "time_ns": e["time_ns"], "caller": f"{e['eip']:#010x}",
                 "symbol": e.get("symbol"),
                 "hypercall": e["name"] + (" (mc)" if e.get("multicall") is not None else ""),
                 "args": brief_args(e["args"]), "ret": e["ret"], "errno": e.get("errno")} for e in evs]
        return Result(evs, table(rows))

    def cmd_summary(self, m: Machine, args: list[str]) -> Result:
        rows = [{"hypercall": n, **st} for n, st in sorted(self.stats.items(), key=lambda kv: -kv[1]["calls"])]
        total = {"hypercall": "total", "calls": sum(r["calls"] for r in rows),
                 "failed": sum(r["failed"] for r in rows), "time_ns": sum(r["time_ns"] for r in rows),
                 "in_multicall": sum(r["in_multicall"] for r in rows)}
        return Result(rows, table(rows + [total] if rows else rows))

    def cmd_show(self, m: Machine, args: list[str]) -> Result:
        if len(args) != 1:
            raise CommandError("usage: hypercalls show SEQ")
        seq = parse_int(args[0], "SEQ")
        for e in self.records:
            if e["seq"] == seq:
                return Result(e, json.dumps(e, indent=2, default=str))
        raise CommandError(f"no hypercall with seq {seq} in the last {len(self.records)} records")
