"""Long hypercalls are preempted and continued as on Xen (hypercall_create_continuation):
the guest re-executes `int $0x82` with updated arguments until the work is done."""

from __future__ import annotations

import struct

from xenwb.abi import constants as C
from xenwb.abi.structs import PV32
from xenwb.hypervisor.hypercall import PREEMPT_BATCH
from xenwb.session import Session, Symbol

N = 3 * PREEMPT_BATCH + 17


def _run_code(s: Session, code: bytes, page: int) -> int:
    """Run `code` (ends with `mov [res], eax; jmp $`) on vcpu0 in ring 1 from its own page (a
    Python write is not seen by unicorn's translation cache, so code is never rewritten in
    place); returns how many traps it took."""
    m = s.machine
    v = m.vcpus[0]
    base = m.layout.stack.end + 0x40000 + page * 0x1000
    v.write_virt(base, code)
    v.cpu.eip = base
    before = m.domain.stats["hypercalls"]
    r = s.run(until=Symbol(base + len(code) - 2))
    assert r.reason.value == "requested", r
    return m.domain.stats["hypercalls"] - before


def _call(nr: int, ebx: int, ecx: int, edx: int = 0, esi: int = 0) -> bytes:
    return (b"\xb8" + struct.pack("<I", nr) + b"\xbb" + struct.pack("<I", ebx) + b"\xb9" + struct.pack("<I", ecx)
            + b"\xba" + struct.pack("<I", edx) + b"\xbe" + struct.pack("<I", esi) + b"\xcd\x82")


def test_multicall_and_mmu_update_continue() -> None:
    s = Session("pvdemo-pae", plugins=(), console=lambda b: None)
    s.run(until="finish")
    m = s.machine
    v = m.vcpus[0]
    data = m.layout.stack.end
    # a multicall of N xen_version(XENVER_version) entries
    entry = PV32.multicall_entry(C.Hypercall.xen_version, 0xDEAD)
    v.write_virt(data, bytes(entry) * N)
    res = data + 0x3F000
    traps = _run_code(s, _call(C.Hypercall.multicall, data, N) + b"\xa3" + struct.pack("<I", res) + b"\xeb\xfe", 0)
    assert traps == N // PREEMPT_BATCH + 1
    assert v.read_u32(res) == 0
    version = (C.XEN_MAJOR << 16) | C.XEN_MINOR
    results = [v.read_u32(data + i * 32 + 4) for i in range(N)]
    assert results == [version] * N
    # an mmu_update of N no-op MACHPHYS updates, with `done` accumulated across continuations
    pm = m.domain.physmap
    reqs = b"".join(bytes(PV32.mmu_update((pm.mfn(p) << 12) | C.MMU_MACHPHYS_UPDATE, p)) for p in range(N))
    v.write_virt(data, reqs)
    done = data + 0x3E000
    v.write_virt(done, b"\xff\xff\xff\xff")
    traps = _run_code(s, _call(C.Hypercall.mmu_update, data, N, done, C.DOMID_SELF)
                      + b"\xa3" + struct.pack("<I", res) + b"\xeb\xfe", 1)
    assert traps == N // PREEMPT_BATCH + 1
    assert v.read_u32(res) == 0 and v.read_u32(done) == N
