"""Guests are untrusted: random arguments to every hypercall get an errno (or succeed), and
never an internal error of the workbench. Seeded, so a failure reproduces."""

from __future__ import annotations

import random

import pytest

from xenwb.hypervisor.memory import GuestFault
from xenwb.hypervisor.state import DomainCrash
from xenwb.machine import Machine

SEED = 20261121
INTERESTING = [0, 1, 2, 3, 0x7FF0, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xC0000000, 0xF5800000,
               0xFC000000, 0x1000, 0x4000]


def _arg(rng: random.Random, m: Machine) -> int:
    r = rng.random()
    if r < 0.35:
        return rng.choice(INTERESTING)
    if r < 0.6:                                   # a readable, writable guest address
        return m.layout.stack.end + rng.randrange(0, 0x40000)
    if r < 0.75:                                  # small numbers: commands, counts, ports
        return rng.randrange(0, 64)
    return rng.getrandbits(32)


@pytest.mark.parametrize("guest", ["pvdemo-pae", "pvdemo-nonpae"])
def test_random_hypercall_arguments(guest: str) -> None:
    from xenwb.examples import resolve_guest
    path = resolve_guest(guest)
    rng = random.Random(SEED)
    calls = 0
    for nr in list(range(0, 45)) + [48, 49, 63, 100, 0xFFFFFFFF]:
        if nr == 23:                              # iret consumes a frame: covered by test_traps
            continue
        m = Machine(path)
        m.domain.console_sink = lambda b: None
        v = m.vcpus[0]
        scratch = m.layout.stack.end
        for _ in range(40):
            # fill the scratch area with random structures for pointer arguments
            try:
                v.write_virt(scratch + rng.randrange(0, 0x3F000), rng.randbytes(0x100))
            except GuestFault:
                pass                              # an earlier random call unmapped it
            args = tuple(_arg(rng, m) for _ in range(5))
            try:
                ret = m.domain.call(v, nr, args, eip=0)
            except DomainCrash as e:
                assert "internal error" not in str(e), f"hypercall {nr} {[hex(a) for a in args]}: {e}"
                break
            calls += 1
            if nr != 9:                           # get_debugreg returns register contents
                assert -4096 < ret < 1 << 32, (nr, args, ret)
            if m.domain.finished:
                break
    assert calls > 1000
