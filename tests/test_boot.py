"""Every bundled example boots to a clean poweroff, deterministically.

The pvdemo kernels check each step of the PV boot path themselves and end with
"all N checks passed" before SCHEDOP_shutdown(poweroff). Virtual time comes from executed code
only, so two runs of the same guest must give the same console bytes and the same trace events
(README: "Same guest, same inputs: same trace").
"""

from __future__ import annotations

import re

import pytest
from support.harness import example_machine

from xenwb.examples import list_examples
from xenwb.machine import Machine, StopReason

EXAMPLES = [e.name for e in list_examples()]


def boot(name: str) -> tuple[Machine, bytes, list[dict]]:
    m = example_machine(name)
    out: list[bytes] = []
    events: list[dict] = []
    m.domain.console_sink = out.append
    m.domain.trace.subscribe(events.append)
    m.set_limits(timeout_ns=60 * 10**9)
    r = m.run()
    console = b"".join(out)
    assert r.reason is StopReason.shutdown, f"{name}: {r}\n{console.decode('latin-1')}"
    assert m.domain.shutdown_reason == 0
    return m, console, events


def test_every_example_family_bundled() -> None:
    assert len(EXAMPLES) == 6
    assert {"pvdemo-pae", "pvdemo-nonpae", "pvdemo64", "pvdemo64-inline"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_boots_deterministically(name: str) -> None:
    m1, console1, ev1 = boot(name)
    text = console1.decode("latin-1")
    found = re.search(r"all (\d+) checks passed", text)
    assert found and int(found.group(1)) > 0, text
    assert m1.domain.crash_report is None
    assert [e["name"] for e in ev1 if e["kind"] == "shutdown"] == ["poweroff"]
    assert [e["seq"] for e in ev1] == list(range(ev1[0]["seq"], ev1[0]["seq"] + len(ev1)))
    hcalls = [e for e in ev1 if e["kind"] == "hypercall"]
    assert hcalls and all({"nr", "ret", "args"} <= e.keys() for e in hcalls)
    _, console2, ev2 = boot(name)
    assert console2 == console1
    assert ev2 == ev1


def test_instruction_limit_resume_makes_progress() -> None:
    """set_limits(max_instructions=N) is an exact guard (README); continuing with N+1 must
    execute exactly one more instruction."""
    m = example_machine("pvdemo-pae")
    m.set_limits(max_instructions=40)
    assert m.run().reason is StopReason.instruction_limit
    eip = m.vcpus[0].cpu.eip
    m.set_limits(max_instructions=m.instructions() + 1)
    assert m.run().reason is StopReason.instruction_limit
    assert m.vcpus[0].cpu.eip != eip
