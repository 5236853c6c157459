"""Event filters shared by the tracer, the trace writers and the CLI: by vcpu (every event
kind), and by hypercall name, result (failures only) and caller address range (these three
select hypercalls, multicall entries included, and leave every other kind out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xenwb.registry import CommandError, parse_int
from xenwb.trace_events import Formatter, Record, event

_HC = event("hypercall")
_HC_EID, _HC_RET, _HC_EIP = _HC.eid, _HC.col("ret"), _HC.col("eip")


@dataclass
class EventFilter:
    names: frozenset[str] | None = None
    vcpus: frozenset[int] | None = None
    failed_only: bool = False
    eip_range: tuple[int, int] | None = None     # [lo, hi)

    def match(self, ev: dict[str, Any]) -> bool:
        """The vcpu criterion applies to every event; any hypercall criterion keeps only
        the hypercall events (multicall entries included) that meet it."""
        if self.vcpus is not None and ev.get("vcpu") not in self.vcpus:
            return False
        if not self.selects_hypercalls:
            return True
        if ev.get("kind") != "hypercall":
            return False
        if self.names is not None and ev.get("name") not in self.names:
            return False
        if self.failed_only and not (isinstance(ev.get("ret"), int) and ev["ret"] < 0):
            return False
        if self.eip_range is not None:
            eip = ev.get("eip")
            if not isinstance(eip, int) or not self.eip_range[0] <= eip < self.eip_range[1]:
                return False
        return True

    def match_record(self, rec: Record, fmt: Formatter) -> bool:
        """match() on a trace record (the name derived only when the names matter)."""
        if self.vcpus is not None and rec[2] not in self.vcpus:
            return False
        if not self.selects_hypercalls:
            return True
        if rec[0] != _HC_EID:
            return False
        if self.names is not None and fmt.name(rec) not in self.names:
            return False
        if self.failed_only and not rec[_HC_RET] < 0:
            return False
        if self.eip_range is not None and not self.eip_range[0] <= rec[_HC_EIP] < self.eip_range[1]:
            return False
        return True

    @property
    def selects_hypercalls(self) -> bool:
        """A hypercall criterion (name, failed, range) is set: other event kinds are left out."""
        return self.names is not None or self.failed_only or self.eip_range is not None

    @property
    def empty(self) -> bool:
        return self.vcpus is None and not self.selects_hypercalls


def parse_range(text: str) -> tuple[int, int]:
    """LO-HI or LO+SIZE (numbers in C syntax)."""
    if "+" in text:
        lo, size = text.split("+", 1)
        a = parse_int(lo, "range")
        return a, a + parse_int(size, "range")
    if "-" in text:
        lo, hi = text.split("-", 1)
        return parse_int(lo, "range"), parse_int(hi, "range")
    raise CommandError(f"range {text!r}: use LO-HI or LO+SIZE")


def build_filter(names: str | None = None, vcpus: str | None = None, failed: bool = False,
                 eip_range: str | None = None) -> EventFilter:
    return EventFilter(
        names=frozenset(n.strip() for n in names.split(",") if n.strip()) if names else None,
        vcpus=frozenset(parse_int(v, "vcpu") for v in vcpus.split(",")) if vcpus else None,
        failed_only=failed,
        eip_range=parse_range(eip_range) if eip_range else None)
