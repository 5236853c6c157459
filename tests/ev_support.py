"""Helpers for the event-channel, time and SMP tests: the tiny guest tests/guests/ev_timer.S
(built with gcc -m32 and ld -m elf_i386) and a machine wrapper to patch its inputs and read
its results by symbol."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

from xenwb.machine import Machine, RunResult

GUEST_SRC = Path(__file__).resolve().parent / "guests" / "ev_timer.S"

MODES = {"hang": 0, "singleshot": 1, "set_timer_op": 2, "periodic": 3, "poll_timeout": 4,
         "poll_masked": 5, "self_ipi": 6, "idle": 7, "masked_hang": 8, "block_upcall": 9, "pingpong": 10}


def have_toolchain() -> bool:
    return all(shutil.which(t) for t in ("gcc", "ld", "nm"))


def build_ev_guest(outdir: Path) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    obj, elf = outdir / "ev_timer.o", outdir / "ev_timer"
    for cmd in (["gcc", "-m32", "-c", "-nostdlib", "-ffreestanding", "-o", str(obj), str(GUEST_SRC)],
                ["ld", "-m", "elf_i386", "-Ttext-segment=0xC0000000", "-e", "_start", "--build-id=none",
                 "-z", "noexecstack", "-o", str(elf), str(obj)]):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{p.stderr}{p.stdout}")
    return elf


def symbols(elf: Path) -> dict[str, int]:
    """Every symbol of the guest (nm): the loader keeps one name per address."""
    out = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    return {p[2]: int(p[0], 16) for p in (line.split() for line in out.splitlines()) if len(p) == 3}


class EvGuest:
    """A machine running ev_timer.S in one mode, with its variables at hand."""

    def __init__(self, elf: Path, mode: str, *, vcpus: int = 1, **inputs: int) -> None:
        self.m = Machine(elf, vcpus=vcpus)
        self.symbols = symbols(elf)
        self.dom = self.m.domain
        self.v = self.m.vcpus[0]
        self.set("mode", MODES[mode])
        for name, value in inputs.items():
            self.set(name, value, 8 if name in ("deadline", "period") else 4)

    def addr(self, sym: str) -> int:
        return self.symbols[sym]

    def set(self, sym: str, value: int, size: int = 4) -> None:
        self.v.write_virt(self.addr(sym), struct.pack("<Q" if size == 8 else "<I", value))

    def u32(self, sym: str, index: int = 0) -> int:
        return struct.unpack("<I", self.v.read_virt(self.addr(sym) + 4 * index, 4))[0]

    def u64(self, sym: str, index: int = 0) -> int:
        return struct.unpack("<Q", self.v.read_virt(self.addr(sym) + 8 * index, 8))[0]

    def s32(self, sym: str) -> int:
        v = self.u32(sym)
        return v - (1 << 32) if v & 0x80000000 else v

    def start_ap(self, vid: int = 1, entry: str = "ap_entry", stack_top: str = "ap_stack_top") -> None:
        """Bring vcpu `vid` up before the run, as the guest's vCPU 0 would: VCPUOP_initialise
        with a context entering `entry` on `stack_top` (ring 1, the guest's page tables,
        `upcall` as event callback), then VCPUOP_up."""
        from xenwb.abi import constants as C
        from xenwb.abi.structs import PV32
        c = PV32.vcpu_guest_context()
        c.flags = C.VGCF_in_kernel
        r = c.user_regs
        r.cs, r.ss, r.ds, r.es = C.FLAT_RING1_CS, C.FLAT_RING1_DS, C.FLAT_RING1_DS, C.FLAT_RING1_DS
        r.eip, r.esp, r.eflags = self.addr(entry), self.addr(stack_top), 0x202
        c.kernel_ss, c.kernel_sp = C.FLAT_RING1_DS, r.esp
        mfn = self.v.cr3_mfn
        c.ctrlreg[3] = ((mfn << 12) | (mfn >> 20)) & 0xFFFFFFFF
        c.event_callback_cs, c.event_callback_eip = C.FLAT_RING1_CS, self.addr("upcall")
        arg = self.m.layout.stack.end + 0x10000
        self.v.write_virt(arg, bytes(c))
        H = C.Hypercall.vcpu_op
        assert self.dom.call(self.v, H, (0, vid, arg, 0, 0), eip=0) == 0
        assert self.dom.call(self.v, H, (1, vid, 0, 0, 0), eip=0) == 0

    def run(self) -> RunResult:
        return self.m.run()
