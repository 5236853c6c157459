"""The stub's parts, in process: packet tables and their schemas, the protocol over a real
(stopped) machine with a recording runner, the memory map, the thread list, the hypercall
syscall tables, and the target descriptions (both widths) as gdb reads them."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from gdbstub.memmap import MAX_REGIONS, regions
from gdbstub.packets import ALL_THREADS, Command, CommandTable, compile_schema, parse_params, parse_tid
from gdbstub.protocol import E_FAULT, E_INVAL, Protocol
from gdbstub.syscalls import data_directory, syscalls_xml
from gdbstub.target import AMD64, I386, RegisterFile, arch_for
from gdbstub.threads import ThreadList
from gdbstub.transport import Transport
from xenwb.abi import constants as C
from xenwb.control import Controller
from xenwb.examples import resolve_guest
from xenwb.hypervisor.paging import walk
from xenwb.hypervisor.vcpu import VcpuState
from xenwb.machine import Machine

GDB = shutil.which("gdb")


# ------------------------------------------------------------------------------------------- packet tables
def test_schema_parsing_follows_qemus_notation():
    f, req = compile_schema("l,l:x0")
    assert parse_params(b"c0001000,4:01020304", f, req) == [0xC0001000, 4, b"\x01\x02\x03\x04"]
    f, req = compile_schema("o.t0")
    assert parse_params(b"g1", f, req) == [b"g", 1] and parse_params(b"cp1.-1", f, req) == [b"c", ALL_THREADS]
    f, req = compile_schema("l;|l0")                   # C sig[;addr]
    assert parse_params(b"0b", f, req) == [11] and parse_params(b"0b;c000", f, req) == [11, 0xC000]
    f, req = compile_schema("|l0")
    assert parse_params(b"", f, req) == []
    f, req = compile_schema("l,l0")
    for bad in (b"", b"10", b"10,", b"zz,4", b"10,4,5", b"-1,4", b"10,0x4"):
        with pytest.raises(ValueError):
            parse_params(bad, f, req)
    for bad in ("l", "l,l", "q0", "l||l0"):
        with pytest.raises(ValueError):
            compile_schema(bad)
    assert parse_tid(b"p1.2") == 2 and parse_tid(b"-1") == ALL_THREADS


def test_table_lookup_exact_first_then_prefixes_in_order():
    table = CommandTable([Command(b"qSupported", lambda p: b"bare"),
                          Command(b"qSupported:", lambda p, s: s, "s0", prefix=True),
                          Command(b"m", lambda p, a, n: (a, n), "l,l0", prefix=True)])
    assert table.lookup(b"qSupported")[1] == []
    assert table.lookup(b"qSupported:swbreak+")[1] == [b"swbreak+"]
    assert table.lookup(b"m10,4")[1] == [16, 4]
    assert table.lookup(b"qOther") is None and table.lookup(b"") is None
    with pytest.raises(ValueError):
        Command(b"g", lambda p: b"", "l0")              # parameters need a prefix command
    with pytest.raises(ValueError):
        CommandTable([Command(b"g", lambda p: b""), Command(b"g", lambda p: b"")])


# ------------------------------------------------------------------------------------------- the protocol
class Link:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, payload: bytes) -> None:
        self.sent.append(payload)

    def stop_acks(self) -> None:
        pass


class Runner:
    def __init__(self) -> None:
        self.starts: list[tuple] = []

    def start(self, mode, vcpu, *, start, end, run, signal) -> None:
        self.starts.append((mode, vcpu, run))

    def interrupt(self) -> None:
        pass


@pytest.fixture(scope="module")
def machine() -> Machine:
    m = Machine(resolve_guest("pvdemo-pae"), vcpus=2)
    m.domain.console_sink = lambda b: None
    return m


@pytest.fixture
def proto(machine) -> Protocol:
    return Protocol(Controller(machine), Link(), Runner())


def test_vcont_thread_ids_select_vcpus(proto):
    """Thread 1 is vcpu 0, which is not 'any thread' (0): `vCont;s:1;c` steps vcpu 0 with
    vcpu 1 running, and only a missing `c` holds the other vcpus (scheduler-locking)."""
    for pkt, want in ((b"vCont;s:1;c", ("step", 0, None)), (b"vCont;s:2;c", ("step", 1, None)),
                      (b"vCont;s:1", ("step", 0, {0})), (b"vCont;c", ("continue", None, None)),
                      (b"vCont;c:2", ("continue", None, {1})), (b"vCont;r10,20:p1.1;c", ("range", 0, None))):
        proto.waiting = False
        assert proto.dispatch(pkt) is None, pkt
        assert proto.runner.starts[-1] == want, pkt
    assert proto.dispatch(b"vCont;t") == b"OK"
    for bad in (b"vCont;x", b"vCont;s:9", b"vCont;", b"vCont;rzz"):
        assert proto.dispatch(bad) == E_INVAL, bad


def test_malformed_and_unknown_packets(proto):
    for bad in (b"m", b"mzz,4", b"m0,4,5", b"M0,4:0102", b"H", b"Hg", b"Hz1", b"Z0,0", b"p", b"Pzz=00",
                b"qRcmd,zz", b"qXfer:features:read:target.xml:zz,1", b"QCatchSyscalls:1;zz", b"G00"):
        assert proto.dispatch(bad) == E_INVAL, bad
    for unknown in (b"qNoSuch", b"vMustReplyEmpty", b"jThreadsInfo", b"Z9,0,1", b"!"):
        assert proto.dispatch(unknown) == b"", unknown


def test_physical_memory_mode(proto, machine):
    dom = machine.domain
    first = dom.mem.read(dom.physmap.mfn(0) << 12, 16)
    assert proto.dispatch(b"qqemu.PhyMemMode") == b"0"
    assert proto.dispatch(b"qqemu.Supported") == b"PhyMemMode"
    assert proto.dispatch(b"Qqemu.PhyMemMode:1") == b"OK" and proto.dispatch(b"qqemu.PhyMemMode") == b"1"
    assert proto.dispatch(b"m0,10") == first.hex().encode()                 # pfn 0, through the p2m
    last = dom.physmap.nr_pages << 12
    assert len(bytes.fromhex(proto.dispatch(b"m%x,10" % (last - 8)).decode())) == 8     # up to the end of RAM
    assert proto.dispatch(b"m%x,4" % last) == E_FAULT
    pfn = 0x80
    va = machine.layout.virt_base + (pfn << 12)                              # the kernel maps pfn n at base + n pages
    old = proto.dispatch(b"m%x,4" % (pfn << 12))
    assert proto.dispatch(b"M%x,4:cafef00d" % (pfn << 12)) == b"OK"
    assert proto.dispatch(b"M%x,4:00" % (last - 1)) == E_INVAL
    assert proto.dispatch(b"M%x,2:0000" % (last - 1)) == E_FAULT             # all or nothing
    assert proto.dispatch(b"Qqemu.PhyMemMode:0") == b"OK"
    assert proto.dispatch(b"m%x,4" % va) == b"cafef00d"                    # the same byte, seen virtually
    assert proto.dispatch(b"M%x,4:%s" % (va, old)) == b"OK"
    assert proto.dispatch(b"Qqemu.PhyMemMode:2") == E_INVAL


def test_reads_follow_pagetable_writes(proto, machine):
    """Reads keep the stop's translations, but a debugger write (here: a PTE) drops them."""
    dom, v = machine.domain, machine.vcpus[0]
    base = machine.layout.virt_base
    x, y = base + 0x90 * 4096, base + 0x91 * 4096
    olds = [proto.dispatch(b"m%x,4" % a) for a in (x, y)]
    assert proto.dispatch(b"M%x,4:11111111" % x) == b"OK" and proto.dispatch(b"M%x,4:22222222" % y) == b"OK"
    assert proto.dispatch(b"m%x,4" % x) == b"11111111"                   # x's translation is kept now
    l1 = next(st for st in walk(dom.mem, dom.mode, v.cr3_mfn, x).steps if st.level == 1)
    size = dom.mode.pte_size
    pte_va = base + (dom.physmap.pfn(l1.table_mfn) << 12) + l1.index * size
    y_mfn = walk(dom.mem, dom.mode, v.cr3_mfn, y).mfn
    moved = (l1.pte & ~dom.mode.mfn_mask) | (y_mfn << 12)
    assert proto.dispatch(b"M%x,%x:%s" % (pte_va, size, moved.to_bytes(size, "little").hex().encode())) == b"OK"
    assert proto.dispatch(b"m%x,4" % x) == b"22222222"                   # through the new mapping
    assert proto.dispatch(b"M%x,%x:%s" % (pte_va, size, l1.pte.to_bytes(size, "little").hex().encode())) == b"OK"
    assert proto.dispatch(b"m%x,4" % x) == b"11111111"
    for a, old in zip((x, y), olds, strict=True):
        assert proto.dispatch(b"M%x,4:%s" % (a, old)) == b"OK"


def test_addresses_follow_the_guest_width(proto):
    high = 0xFFFF800000001000
    assert proto.dispatch(b"m%x,4" % high) == E_INVAL                      # 32-bit guest: beyond its space
    assert proto.dispatch(b"Z0,%x,1" % high) == E_INVAL
    proto.arch = AMD64                                                       # what a 64-bit guest gets
    assert proto.dispatch(b"m%x,4" % high) == E_FAULT                       # parsed; nothing mapped there
    assert proto.dispatch(b"M%x,1:00" % high) == E_FAULT
    assert proto.dispatch(b"m1%016x,4" % 0) == E_INVAL                       # 72 bits


def test_stop_reply_expedites_what_g_reads(proto):
    reply = proto.stop_reason()
    assert reply.startswith(b"T05thread:1;")
    regs = proto.registers(0)
    off = I386.offsets
    for n in (I386.pc, I386.sp, I386.fp):
        assert b"%02x:%s;" % (n, regs[off[n]:off[n + 1]].hex().encode()) in reply
    proto._regs.clear()
    assert proto.stop_reason() == reply                                      # cheap path, same answer


def test_memory_map_of_the_boot_tables(proto, machine):
    reply = proto.dispatch(b"qXfer:memory-map:read::0,20000")
    assert reply[:1] == b"l"
    root = ET.fromstring(reply[1:])
    regs = [(int(r.get("start"), 16), int(r.get("length"), 16), r.get("type")) for r in root.findall("memory")]
    hv = machine.domain.geo.hv_start
    pos = 0
    for start, length, _ in regs:                      # in order, no overlap, the guest's part all covered
        assert start >= pos
        if start < hv:
            assert start == pos
        pos = start + length
    v = machine.vcpus[0]

    def kind(va: int) -> str:
        return next(t for s, n, t in regs if s <= va < s + n)
    base = machine.layout.virt_base
    assert kind(base) == "ram"                                              # the kernel: writable
    pt = machine.layout.pagetables
    assert all(kind(pt.va + i * 4096) == "rom" for i in range(pt.pages))    # pagetables: read-only
    assert all(t == "rom" for s, _, t in regs if s >= hv)                   # Xen's range
    assert v.debug_read(hv, 4) and kind(hv) == "rom"
    assert len(regs) <= MAX_REGIONS
    # read in pieces, as gdb does with a small packet size
    parts, off = [], 0
    while True:
        r = proto.dispatch(b"qXfer:memory-map:read::%x,100" % off)
        parts.append(r[1:])
        off += len(r) - 1
        if r[:1] == b"l":
            break
    assert b"".join(parts) == reply[1:]


def test_memory_map_stays_bounded():
    page = 4096
    ranges = [(i * 2 * page, (i * 2 + 1) * page, i % 3 != 0) for i in range(3000)]     # 3000 mappings, gaps between
    out = regions(ranges, guest_end=1 << 31)
    assert len(out) <= MAX_REGIONS
    assert out[0][0] == 0 and sum(n for _, n, _ in out) == 1 << 31
    ro = {(s, e) for s, e, w in ranges if not w}
    kept = [(s, s + n) for s, n, t in out if t == "rom"]
    assert kept and all(r in ro for r in kept)                           # a rom region left is read-only indeed
    assert regions([(0, page, False)], guest_end=page * 4) == [(0, page, "rom"), (page, 3 * page, "ram")]


def test_thread_list_rebuilt_only_when_it_changes(machine):
    t = ThreadList()
    doc = t.xml(machine.vcpus)
    assert t.xml(machine.vcpus) is doc
    assert b'name="vcpu1">vcpu1 down<' in doc
    v = machine.vcpus[1]
    old = v.state
    v.state = VcpuState.blocked
    try:
        assert b"vcpu1 blocked" in t.xml(machine.vcpus)
    finally:
        v.state = old


def test_exec_file_names_the_guest_elf(proto, machine):
    for annex in (b"", b"a410", b"1"):
        reply = proto.dispatch(b"qXfer:exec-file:read:%s:0,1000" % annex)
        assert reply == b"l" + str(machine.image.path.resolve()).encode()


# ------------------------------------------------------------------------------------------- hypercall names
def test_syscall_table_lists_every_hypercall():
    root = ET.fromstring(syscalls_xml())
    got = {int(s.get("number")): s.get("name") for s in root.findall("syscall")}
    assert got == {int(h): h.name for h in C.Hypercall}
    groups = {s.get("name"): s.get("groups").split(",") for s in root.findall("syscall")}
    assert "memory" in groups["mmu_update"] and "xen" in groups["iret"]


def test_data_directory_links_the_system_one(tmp_path):
    system = tmp_path / "share-gdb"
    (system / "python" / "gdb").mkdir(parents=True)
    (system / "syscalls").mkdir()
    (system / "syscalls" / "i386-linux.xml").write_text("linux")
    (system / "syscalls" / "arm-linux.xml").write_text("arm")
    d = data_directory(system, tmp_path / "cache")
    assert (d / "python").resolve() == (system / "python").resolve()
    assert (d / "syscalls" / "arm-linux.xml").read_text() == "arm"
    for name in ("i386-linux.xml", "amd64-linux.xml"):
        assert "mmu_update" in (d / "syscalls" / name).read_text()
    assert data_directory(system, tmp_path / "cache") == d                  # built once
    assert len(list((tmp_path / "cache").iterdir())) == 1


# ------------------------------------------------------------------------------------------- target descriptions
@pytest.mark.skipif(GDB is None, reason="gdb is not installed")
@pytest.mark.parametrize("arch", [I386, AMD64], ids=["i386", "amd64"])
def test_gdb_reads_the_description_with_our_g_layout(tmp_path: Path, arch):
    xml = tmp_path / "target.xml"
    xml.write_bytes(arch.xml)
    out = subprocess.run([GDB, "-nx", "-batch", "-ex", f"set tdesc filename {xml}", "-ex", "show architecture",
                          "-ex", "maint print remote-registers"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "warning" not in out.stderr.lower(), out.stderr
    assert f'"{arch.name}"' in out.stdout or arch.name in out.stdout
    layout = {}
    for line in out.stdout.splitlines():
        f = line.split()
        if len(f) >= 7 and f[0] != "Name" and f[0] != "''" and f[-2].isdigit() and f[-1].isdigit():
            layout[f[0]] = (int(f[-2]), int(f[-1]), int(f[4]))           # remote number, g offset, size
    assert layout == {r.name: (i, arch.offsets[i], r.size) for i, r in enumerate(arch.registers)}


def test_amd64_register_file_reads_a_64_bit_engine():
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    values = {X.UC_X86_REG_RAX: 0x1122334455667788, X.UC_X86_REG_R15: 0xF0F0F0F0F0F0F0F0,
              X.UC_X86_REG_RIP: 0xFFFFFFFF81000000, X.UC_X86_REG_RSP: 0xFFFFC90000001000,
              X.UC_X86_REG_FS_BASE: 0x7FFF0000, X.UC_X86_REG_XMM15: (1 << 127) | 5}
    for reg, value in values.items():
        uc.reg_write(reg, value)
    uc.msr_write(0xC0000102, 0xABCD000)                                     # MSR_SHADOW_GS_BASE
    vcpu = SimpleNamespace(cpu=SimpleNamespace(uc=uc), cr2=0xDEAD000, domain=SimpleNamespace(
        geo=SimpleNamespace(hv_start=1 << 64)))
    g = RegisterFile(AMD64).read(vcpu, orig_ax=24)
    assert len(g) == AMD64.g_size == 616
    off, num = AMD64.offsets, AMD64.regnum

    def reg(name: str) -> int:
        i = num[name]
        return int.from_bytes(g[off[i]:off[i + 1]], "little")
    assert reg("rax") == values[X.UC_X86_REG_RAX] and reg("r15") == values[X.UC_X86_REG_R15]
    assert reg("rip") == values[X.UC_X86_REG_RIP] and reg("rsp") == values[X.UC_X86_REG_RSP]
    assert reg("fs_base") == 0x7FFF0000 and reg("k_gs_base") == 0xABCD000
    assert reg("xmm15") == values[X.UC_X86_REG_XMM15]
    assert reg("orig_rax") == 24 and reg("cr2") == 0xDEAD000
    assert struct.unpack_from("<Q", g, off[num["rip"]])[0] == values[X.UC_X86_REG_RIP]
    assert arch_for(8) is AMD64 and arch_for(4) is I386
    with pytest.raises(ValueError):
        arch_for(2)


def test_descriptions_declare_gdbs_features():
    for arch, feats in ((I386, ["core", "sse", "linux", "sys"]), (AMD64, ["core", "sse", "linux", "segments", "sys"])):
        root = ET.fromstring(arch.xml)
        assert root.findtext("osabi") == "GNU/Linux"
        assert [f.get("name") for f in root.findall("feature")] == [f"org.gnu.gdb.i386.{n}" for n in feats]
        names = [r.get("name") for r in root.iter("reg")]
        assert names == [r.name for r in arch.registers]
    sys_regs = [r.get("name") for f in ET.fromstring(AMD64.xml).findall("feature")
                if f.get("name").endswith(".sys") for r in f.findall("reg")]
    assert sys_regs == ["k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"]
    assert re.search(r'name="rip" bitsize="64"', AMD64.xml.decode())


# ------------------------------------------------------------------------------------------- transport
def test_interrupt_watch_never_blocks_on_bytes_the_session_took():
    """The machine thread's watch during a long step selects on gdb's socket, then peeks. If
    the session's thread reads the bytes in between (the step just ended), the peek must
    return at once: a blocking one waited for gdb, which waits for the next stop reply (a
    full-suite hang in the 1000-stepi test). The interleaving is forced with a socketpair."""
    ours, gdb = socket.socketpair()
    try:
        t = Transport(ours, max_payload=4096)
        gdb.sendall(b"$c#63")
        real_wait = t.wait

        def wait_then_lose_the_bytes(fds, timeout):
            ready = real_wait(fds, timeout)
            ours.recv(64)                        # the session's thread reads them meanwhile
            return ready

        t.wait = wait_then_lose_the_bytes        # type: ignore[method-assign]
        result: list[bool] = []
        watcher = threading.Thread(target=lambda: result.append(t.interrupt_pending([], 0.01)), daemon=True)
        watcher.start()
        watcher.join(2.0)
        assert not watcher.is_alive(), "the watch blocked on a peek"
        assert result == [False]
        t.wait = real_wait                       # type: ignore[method-assign]
        gdb.sendall(b"\x03")
        assert t.interrupt_pending([], 1.0)      # a Ctrl-C still counts
    finally:
        gdb.close()
        ours.close()
