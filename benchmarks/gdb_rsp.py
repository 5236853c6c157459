#!/usr/bin/env python3
"""gdb remote protocol speed: xenwb's stub against QEMU's gdbstub, side by side, through real gdb.

Measures, in one run and with the same gdb script for both targets:

* stepi round trips per second (gdb's own `stepi`, as a user drives it: a vCont step, the stop
  reply, and whatever gdb fetches to show the new location);
* memory read throughput (64 KiB reads through gdb.Inferior.read_memory, so gdb splits them
  into packets as the stub's PacketSize allows);
* small memory reads per second (64 bytes each: latency-bound, like `x/16xw`).

Both targets run the same small C program built here with gcc -m32 (a loop calling work(),
and a 1 MiB buffer that the reads go through): as a multiboot kernel under Debian's
qemu-system-i386 (`-gdb tcp:127.0.0.1:PORT -S -display none -nographic`, i.e. qemu's `-s -S`
on a loopback port), and as a Xen PV kernel (Xen notes, hypercall page) under
`xenwb run KERNEL --gdb 127.0.0.1:PORT --wait`. Stepping starts at work() on both.
Prints figures and ratios (xenwb / QEMU; goals on an idle machine: stepi and 64 KiB reads
>= 1.0, 64-byte reads >= 0.8), the machine's load average before and after, and where the
stub's time goes per packet kind (XENWB_GDB_STATS). No pass/fail.

    python3 benchmarks/gdb_rsp.py [--steps 3000] [--batches 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support.client import XenwbProcess  # noqa: E402

BOOT_S = r"""
        .section .multiboot, "a"
        .align 4
        .long 0x1BADB002            /* multiboot magic */
        .long 0                     /* flags: ELF kernel, nothing requested */
        .long -0x1BADB002
        .text
        .globl _start
_start:
        movl    $stack_top, %esp
        call    main
1:      hlt
        jmp     1b
        .bss
        .align 16
        .skip 16384
stack_top:
"""

MAIN_C = r"""
volatile unsigned int counter;
unsigned char buf[1 << 20];
__attribute__((noinline)) void work(int i) { counter += i; buf[i & 0xfffff] = (unsigned char)i; }
void main(void) { for (;;) for (int i = 0; i < 100000; i++) work(i); }
"""

# The same C code as a Xen PV guest for xenwb: Xen ELF notes, a hypercall page, linked at
# VIRT_BASE like pvdemo. Both targets then step through identical instructions and gdb does
# the same work per stop on both.
PV_BOOT_S = r"""
#define NOTE(type, desc)                                    \
        .pushsection .note.Xen, "a", @note;                 \
        .balign 4;                                          \
        .long 2f - 1f, 4f - 3f, type;                       \
1:      .asciz "Xen";                                       \
2:      .balign 4;                                          \
3:      desc;                                               \
4:      .balign 4;                                          \
        .popsection
        NOTE(6, .asciz "gdbbench")                /* GUEST_OS */
        NOTE(5, .asciz "xen-3.0")                 /* XEN_VERSION */
        NOTE(8, .asciz "generic")                 /* LOADER */
        NOTE(3, .long 0xC0000000)                 /* VIRT_BASE */
        NOTE(4, .long 0xC0000000)                 /* PADDR_OFFSET */
        NOTE(1, .long _start)                     /* ENTRY */
        NOTE(2, .long hypercall_page)             /* HYPERCALL_PAGE */
        NOTE(9, .asciz "yes")                     /* PAE_MODE */
        NOTE(10, .asciz "!writable_page_tables|pae_pgdir_above_4gb")  /* FEATURES */
        .section .text.head, "ax"
        .globl _start
_start:
        movl    $stack_top, %esp
        call    main
1:      jmp     1b
        .balign 4096
        .globl hypercall_page
hypercall_page:
        .fill   4096, 1, 0xcc
        .bss
        .align 16
        .skip 16384
stack_top:
"""

PV_LINK_LD = """
OUTPUT_FORMAT("elf32-i386")
ENTRY(_start)
PHDRS { text PT_LOAD FLAGS(5); data PT_LOAD FLAGS(6); note PT_NOTE FLAGS(4); }
SECTIONS {
  . = 0xC0000000;
  .text : { *(.text.head) *(.text .text.*) } :text
  .note.Xen : { *(.note.Xen) } :text :note
  .rodata : { *(.rodata .rodata.*) } :text
  . = ALIGN(4096);
  .data : { *(.data .data.*) } :data
  .bss : { *(.bss .bss.*) *(COMMON) . = ALIGN(4096); } :data
  /DISCARD/ : { *(.eh_frame) *(.note.gnu.property) *(.note.GNU-stack) *(.comment) }
}
"""

LINK_LD = """
ENTRY(_start)
SECTIONS {
  . = 0x100000;
  .text : { *(.multiboot) *(.text*) }
  .rodata : { *(.rodata*) }
  .data : { *(.data*) }
  .bss : { *(.bss*) *(COMMON) }
}
"""

GDB_SCRIPT = r"""
import gdb, time
base = 0


def setup(tag, port, func):
    global base
    gdb.execute("set confirm off")
    gdb.execute("set pagination off")
    gdb.execute("target remote 127.0.0.1:%d" % port)
    gdb.execute("hbreak " + func)
    gdb.execute("continue", to_string=True)
    gdb.execute("delete")
    base = int(gdb.parse_and_eval("(unsigned long)&buf"))
    for _ in range(20):
        gdb.execute("stepi", to_string=True)
    print("RESULT %d ready" % tag)


def stepi(tag, n):
    t = time.perf_counter()
    for _ in range(n):
        gdb.execute("stepi", to_string=True)
    print("RESULT %d %r" % (tag, time.perf_counter() - t))


def reads(tag, n, size):
    inf = gdb.selected_inferior()
    t = time.perf_counter()
    for k in range(n):
        inf.read_memory(base + (k * size) % 0x100000, size)
    print("RESULT %d %r" % (tag, time.perf_counter() - t))
"""


def loopback_floor(n: int = 3000) -> float:
    """Microseconds per round trip of a bare TCP ping-pong between two Python processes."""
    import multiprocessing

    def echo(ls: socket.socket) -> None:
        c, _ = ls.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while c.recv(4096):
            c.sendall(b"$OK#9a")

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    proc = multiprocessing.get_context("fork").Process(target=echo, args=(ls,))
    proc.start()
    with socket.create_connection(ls.getsockname()) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t = time.perf_counter()
        for _ in range(n):
            c.sendall(b"$qC#b4")
            c.recv(100)
        dt = time.perf_counter() - t
    proc.join(5)
    ls.close()
    return dt / n * 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CFLAGS = ["-m32", "-ffreestanding", "-fno-pic", "-fno-stack-protector", "-fcf-protection=none", "-O2", "-g"]


def _build(work: Path, name: str, boot: str, ld: str) -> Path:
    d = work / name
    d.mkdir()
    (d / "boot.S").write_text(boot)
    (d / "main.c").write_text(MAIN_C)
    (d / "link.ld").write_text(ld)
    for src in ("boot.S", "main.c"):
        subprocess.run(["gcc", *CFLAGS, "-c", str(d / src), "-o", str(d / (src.split(".")[0] + ".o"))],
                       check=True, capture_output=True)
    out = d / "kernel.elf"
    subprocess.run(["ld", "-m", "elf_i386", "-T", str(d / "link.ld"), "--no-warn-rwx-segments", "-z", "noexecstack",
                    "-o", str(out), str(d / "boot.o"), str(d / "main.o")], check=True, capture_output=True)
    return out


def build_kernels(work: Path) -> tuple[Path, Path]:
    """(multiboot kernel for QEMU, Xen PV kernel for xenwb), the same C code in both."""
    return _build(work, "multiboot", BOOT_S, LINK_LD), _build(work, "pv", PV_BOOT_S, PV_LINK_LD)


def ensure_qemu() -> str | None:
    q = shutil.which("qemu-system-i386")
    if q:
        return q
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("qemu-system-i386 missing: installing Debian's qemu-system-x86 ...", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-system-x86"], env=env,
                       capture_output=True)
        return shutil.which("qemu-system-i386")
    return None


class GdbDriver:
    """One gdb (through pygdbmi) running GDB_SCRIPT's functions on request."""

    def __init__(self, elf: Path, script: Path) -> None:
        from pygdbmi.gdbcontroller import GdbController
        self.mi = GdbController(command=["gdb", "--nx", "--quiet", "--interpreter=mi3"],
                                time_to_check_for_additional_output_sec=0.01)
        self.token = 0
        self.call(f"file {elf}")
        self.call(f"source {script}")

    def call(self, cmd: str, timeout: float = 300) -> None:
        """Run a console command and wait for its result record."""
        quoted = cmd.replace("\\", "\\\\").replace('"', '\\"')
        self.token += 1
        self.mi.write(f'{self.token}-interpreter-exec console "{quoted}"', read_response=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.mi.get_gdb_response(timeout_sec=0.5, raise_error_on_timeout=False):
                if r["type"] == "result" and r.get("token") == self.token:
                    if r["message"] == "error":
                        raise RuntimeError(f"gdb: {cmd}: {r['payload']}")
                    return
        raise TimeoutError(f"gdb: {cmd} took more than {timeout}s")

    def py(self, fn: str, *args: object, timeout: float = 300) -> str:
        """Call a GDB_SCRIPT function; what it printed after its RESULT tag. (A function that
        resumes the target ends its MI command early with ^running: wait for the tag.)"""
        self.token += 1
        tag = self.token
        call = f"python {fn}({', '.join(map(repr, (tag, *args)))})"
        self.mi.write(f'{tag}-interpreter-exec console "{call}"', read_response=False)
        deadline = time.monotonic() + timeout
        prefix = f"RESULT {tag} "
        while time.monotonic() < deadline:
            for r in self.mi.get_gdb_response(timeout_sec=0.5, raise_error_on_timeout=False):
                if r["type"] == "console" and r["payload"].startswith(prefix):
                    return r["payload"][len(prefix):].strip()
                if r["type"] == "result" and r.get("token") == tag and r["message"] == "error":
                    raise RuntimeError(f"gdb: {call}: {r['payload']}")
        raise TimeoutError(f"gdb: {call} took more than {timeout}s")

    def timed(self, fn: str, *args: object) -> float:
        return float(self.py(fn, *args))

    def close(self) -> None:
        try:
            self.call("kill", timeout=10)
        except Exception:
            pass
        self.mi.exit()


def start_qemu(qemu: str, kernel: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([qemu, "-kernel", str(kernel), "-gdb", f"tcp:127.0.0.1:{port}", "-S", "-display", "none",
                             "-nographic", "-no-reboot"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    if proc.poll() is not None:
        raise RuntimeError("qemu did not start")
    return proc, port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(a: argparse.Namespace, pv: Path, mb: Path, qemu: str | None, script: Path) -> tuple[dict, dict, str]:
    """Interleave small batches on the two targets, so that the load of the machine (it
    changes by the second on a shared host) weighs on both alike; count each stub process's
    own CPU time per operation as well, a figure the load hardly moves."""
    os.environ["XENWB_GDB_STATS"] = "1"
    xp = XenwbProcess(str(pv), wait=True)
    os.environ.pop("XENWB_GDB_STATS", None)
    targets = {"xenwb": (pv, xp.port, xp.proc.pid)}
    qproc = None
    if qemu:
        qproc, qport = start_qemu(qemu, mb)
        targets["QEMU"] = (mb, qport, qproc.pid)
    drivers = {}
    try:
        for name, (elf, port, _) in targets.items():
            drivers[name] = GdbDriver(elf, script)
            drivers[name].py("setup", port, "work", timeout=60)
        kinds = ("stepi", "big", "small")
        totals = {n: dict.fromkeys(kinds, 0.0) for n in drivers}
        cpu = {n: dict.fromkeys(kinds, 0.0) for n in drivers}
        batches = max(1, a.batches)
        for _ in range(batches):
            for name, d in drivers.items():
                pid = targets[name][2]
                for kind, fn, args in (("stepi", "stepi", (a.steps // batches,)),
                                       ("big", "reads", (max(1, a.chunks // batches), 0x10000)),
                                       ("small", "reads", (a.small // batches, 64))):
                    c0 = cpu_seconds(pid)
                    totals[name][kind] += d.timed(fn, *args)
                    cpu[name][kind] += cpu_seconds(pid) - c0
        res = {}
        n_step, n_big, n_small = ((a.steps // batches) * batches, max(1, a.chunks // batches) * batches,
                                  (a.small // batches) * batches)
        for name, t in totals.items():
            res[name] = {"stepi": n_step / t["stepi"], "read_MBps": n_big * 0x10000 / t["big"] / 1e6,
                         "small_reads": n_small / t["small"], "cpu_stepi": cpu[name]["stepi"] / n_step * 1e6,
                         "cpu_big": cpu[name]["big"] / n_big * 1e6, "cpu_small": cpu[name]["small"] / n_small * 1e6}
    finally:
        for d in drivers.values():
            d.close()
        if qproc is not None:
            qproc.kill()
            qproc.wait(10)
    _, _, err = xp.finish(timeout=60)
    stats = "\n".join(ln for ln in err.splitlines() if ln.startswith("  ") or "gdb stats" in ln)
    return res.get("xenwb", {}), res.get("QEMU", {}), stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000, help="stepi per target (default 3000)")
    ap.add_argument("--chunks", type=int, default=80, help="64 KiB reads per target (default 80 = 5 MiB)")
    ap.add_argument("--small", type=int, default=3000, help="64-byte reads per target (default 3000)")
    ap.add_argument("--batches", type=int, default=20, help="alternations between the targets (default 20)")
    a = ap.parse_args()
    for tool in ("gdb", "gcc", "ld"):
        if not shutil.which(tool):
            print(f"gdb_rsp: needs {tool}", file=sys.stderr)
            return 2
    qemu = ensure_qemu()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="xenwb-gdb-bench-") as tmp:
        mb_kernel, pv_kernel = build_kernels(Path(tmp))
        script = Path(tmp) / "bench_gdb.py"
        script.write_text(GDB_SCRIPT)
        best, qbest, stats = measure(a, pv_kernel, mb_kernel, qemu, script)
    gdb_version = subprocess.run(["gdb", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"through {gdb_version}")
    if qemu:
        print("QEMU: " + subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0])
    print(f"{a.steps} stepi, {a.chunks} x 64 KiB reads, {a.small} x 64-byte reads per target, "
          f"in {a.batches} alternating batches")
    print(f"loopback TCP ping-pong floor on this machine: {loopback_floor():.0f} us per round trip")
    print(f"load average (1 min) before and after: {load_before[0]:.2f}, {os.getloadavg()[0]:.2f} "
          f"on {os.cpu_count()} CPUs (more than ~0.3 and the ratios swing: run it again)\n")
    rows = [("stepi round trips / s", "stepi", "{:10.0f}"),
            ("memory read, MB/s (64 KiB reads)", "read_MBps", "{:10.2f}"),
            ("small reads / s (64 bytes)", "small_reads", "{:10.0f}"),
            ("stub CPU per stepi, us (lower: better)", "cpu_stepi", "{:10.1f}"),
            ("stub CPU per 64 KiB read, us", "cpu_big", "{:10.1f}"),
            ("stub CPU per 64-byte read, us", "cpu_small", "{:10.1f}")]
    print(f"{'':38} {'xenwb':>10} {'QEMU':>10} {'xenwb/QEMU':>11}")
    for label, key, fmt in rows:
        q = qbest.get(key)
        qtext = fmt.format(q) if q else f"{'-':>10}"
        ratio = f"{best[key] / q:10.2f}x" if q else f"{'-':>11}"
        print(f"{label:38} {fmt.format(best[key])} {qtext} {ratio}")
    if not qemu:
        print("\n(QEMU not measured: install Debian's qemu-system-x86)")
    if stats:
        print("\nwhere xenwb's stub spends its time (stub side only, from reading a packet to sending its reply;")
        print("for vCont;s until the stop reply: the step and the hand-over to the machine thread; the rest of a")
        print("round trip is gdb and the kernel's loopback; on a loaded machine, waiting for a CPU too):")
        print(stats)
        line = f"\none stepi as gdb sees it: {1e6 / best['stepi']:.0f} us (xenwb)"
        if qemu:
            line += f", {1e6 / qbest['stepi']:.0f} us (QEMU)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
