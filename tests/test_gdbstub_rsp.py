"""The gdb stub at the protocol level: framing units, the target description, raw-socket
sessions against ``xenwb run --gdb`` (memory, breakpoints, threads, errors, disconnects),
and a fuzz run of more than 10,000 random and mutated packets after which the guest still
runs to its normal shutdown."""

from __future__ import annotations

import random
import re
import socket
import time
import xml.etree.ElementTree as ET

import pytest
from support.client import RspClient, XenwbProcess

from gdbstub import rsp
from gdbstub.protocol import PACKET_SIZE
from gdbstub.server import parse_address
from gdbstub.target import I386

REGISTERS, G_SIZE, TARGET_XML = I386.registers, I386.g_size, I386.xml


# ----------------------------------------------------------------------------------- framing
def test_checksum_and_frame():
    assert rsp.checksum(b"OK") == 0x9A
    assert rsp.frame(b"OK") == b"$OK#9a"
    assert rsp.frame(b"") == b"$#00"


def test_escape_roundtrip():
    data = bytes(range(256)) * 3
    esc = rsp.escape(data)
    assert b"$" not in esc and b"#" not in esc and b"*" not in esc
    assert rsp.unescape(esc) == data
    assert rsp.escape(b"}") == b"}]"
    assert rsp.unescape(b"ab}") == b"ab"           # a lone trailing escape is dropped


def test_hex_helpers():
    assert rsp.fromhex(b"00ff10") == b"\x00\xff\x10"
    assert rsp.parse_hex(b"c00028b0") == 0xC00028B0
    for bad in (b"", b"xyz", b"-1", b" 1"):
        with pytest.raises(ValueError):
            rsp.parse_hex(bad)
    for bad in (b"0", b"zz", b"0 0"):
        with pytest.raises(ValueError):
            rsp.fromhex(bad)


def test_reader_events_split_anywhere():
    stream = b"+-\x03noise$qSupported#37$g#67$m1,2#00$X0,1:}]#00" + rsp.frame(b"vCont;s:1")
    # the X packet's checksum is wrong on purpose; fix one and keep the other bad
    stream = stream.replace(b"$X0,1:}]#00", rsp.frame(b"X0,1:}]"))
    whole = rsp.PacketReader().feed(stream)
    for cut in range(len(stream) + 1):
        r = rsp.PacketReader()
        got = r.feed(stream[:cut]) + r.feed(stream[cut:])
        assert got == whole
    kinds = [(e.kind, e.payload) for e in whole]
    assert kinds == [("ack", b""), ("nak", b""), ("interrupt", b""), ("packet", b"qSupported"),
                     ("packet", b"g"), ("bad_checksum", b"m1,2"), ("packet", b"X0,1:}]"),
                     ("packet", b"vCont;s:1")]


def test_reader_oversized_and_restart():
    r = rsp.PacketReader(max_payload=100)
    evs = r.feed(b"$" + b"a" * 50)
    evs += r.feed(b"b" * 200)
    evs += r.feed(b"#00$?#3f")
    assert [e.kind for e in evs] == ["oversized", "packet"]
    assert r.pending == 0
    # a '$' inside a packet starts a new packet (the old one was cut short)
    assert [(e.kind, e.payload) for e in rsp.PacketReader().feed(b"$abc$g#67")] == [("packet", b"g")]


def test_parse_address():
    assert parse_address(None) == ("127.0.0.1", 1234)
    assert parse_address("1235") == ("127.0.0.1", 1235)
    assert parse_address(":1236") == ("127.0.0.1", 1236)
    assert parse_address("0.0.0.0:1237") == ("0.0.0.0", 1237)
    assert parse_address("[::1]:1238") == ("::1", 1238)
    for bad in ("pvdemo-pae", "host:", "70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_target_description():
    root = ET.fromstring(TARGET_XML)
    assert root.findtext("architecture") == "i386"
    feats = {f.get("name"): [r.get("name") for r in f.findall("reg")] for f in root.findall("feature")}
    core = feats["org.gnu.gdb.i386.core"]
    assert core[:16] == ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
                         "cs", "ss", "ds", "es", "fs", "gs"]
    assert core[16:24] == [f"st{i}" for i in range(8)]
    assert core[24:] == ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]
    assert feats["org.gnu.gdb.i386.sse"] == [f"xmm{i}" for i in range(8)] + ["mxcsr"]
    assert feats["org.gnu.gdb.i386.sys"] == ["cr0", "cr2", "cr3", "cr4"]
    regnums = [int(r.get("regnum")) for f in root.findall("feature") for r in f.findall("reg")]
    assert regnums == list(range(len(REGISTERS)))
    assert G_SIZE == 16 * 4 + 8 * 10 + 8 * 4 + 8 * 16 + 4 + 4 + 4 * 4


# ----------------------------------------------------------------------------------- sessions
@pytest.fixture
def xenwb():
    procs: list[XenwbProcess] = []

    def start(**kw) -> XenwbProcess:
        p = XenwbProcess(**kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


def _symbols() -> dict[str, int]:
    from xenwb.examples import resolve_guest
    from xenwb.loader import load_guest
    img = load_guest(resolve_guest("pvdemo-pae"))
    return {**{s.name: s.address for s in img.symbols}, "ENTRY": img.entry}


def _run_to_end(c: RspClient, p: XenwbProcess) -> str:
    reply = c.request(b"vCont;c", timeout=30)
    assert reply == b"W00", reply
    c.close()
    rc, out, err = p.finish()
    assert rc == 0, err
    assert "Traceback" not in err, err
    assert re.search(r"pvdemo: all \d+ checks passed", out), out[-500:]
    return out


def test_handshake_registers_memory_errors(xenwb):
    syms = _symbols()
    p = xenwb()
    with p.client() as c:
        sup = c.request(b"qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+")
        for feat in (b"PacketSize=", b"qXfer:features:read+", b"swbreak+", b"hwbreak+", b"vContSupported+",
                     b"QCatchSyscalls+", b"QStartNoAckMode+"):
            assert feat in sup
        assert c.request(b"vMustReplyEmpty") == b""
        assert c.request(b"qXfer:features:read:target.xml:0,ffff").startswith(b"l<?xml")
        assert c.request(b"qXfer:features:read:other.xml:0,ffff").startswith(b"E")
        stop = c.request(b"?")
        assert stop.startswith(b"T05thread:1;"), stop
        assert c.request(b"qfThreadInfo") == b"m1" and c.request(b"qsThreadInfo") == b"l"
        assert c.request(b"qC") == b"QC1" and c.request(b"qAttached") == b"1"
        extra = bytes.fromhex(c.request(b"qThreadExtraInfo,1").decode())
        assert extra.startswith(b"vcpu0 running")
        assert c.request(b"Hg1") == b"OK" and c.request(b"Hg5") == b"E22" and c.request(b"T5") == b"E22"
        g = bytes.fromhex(c.request(b"g").decode())
        assert len(g) == G_SIZE
        eip = int.from_bytes(g[32:36], "little")
        assert eip == syms["ENTRY"]                       # halted on the entry point
        assert c.request(b"p8") == g[32:36].hex().encode()
        assert c.request(b"p%x" % len(REGISTERS)) == b"E22"
        # memory: mapped, unmapped (E14), partial at the end of a mapping
        assert len(bytes.fromhex(c.request(b"m%x,10" % syms["start_kernel"]).decode())) == 16
        assert c.request(b"m1000,4") == b"E14"
        assert c.request(b"m100000000,4") == b"E22"
        addr = 0xC0000000
        while c.request(b"m%x,1" % addr) != b"E14":
            addr += 0x1000
        partial = bytes.fromhex(c.request(b"m%x,10" % (addr - 8)).decode())
        assert len(partial) == 8
        assert c.request(b"M%x,4:01020304" % (addr - 2)) == b"E14"
        # writes, X with binary escaping
        var = syms["checks_run"]
        assert c.request(b"M%x,4:2a000000" % var) == b"OK"
        assert c.request(b"m%x,4" % var) == b"2a000000"
        assert c.request(b"X%x,0:" % var) == b"OK"
        assert c.request(b"X%x,4:" % var + rsp.escape(b"}#$*")) == b"OK"
        assert c.request(b"m%x,4" % var) == b"7d23242a"
        assert c.request(b"M%x,4:00000000" % var) == b"OK"
        # malformed and unknown packets
        for bad in (b"m", b"mzz,4", b"M0", b"Xc0000000,4:ab", b"Z9,0,1", b"Z0,0", b"G00", b"Pzz=00", b"H", b"vCont;x"):
            r = c.request(bad)
            assert r == b"" or r.startswith(b"E"), (bad, r)
        assert c.request(b"qNoSuchQuery") == b"" and c.request(b"jUnknown") == b""
        # NAK on a bad checksum, then the retransmission is answered
        c.send_raw(b"$qC#00")
        assert c.read_ack() == b"-"
        assert c.request(b"qC") == b"QC1"
        # our NAK of a reply makes the stub send it again
        c.send_raw(rsp.frame(b"qAttached"))
        assert c.read_ack() == b"+"
        c.ack = False                                  # read without acknowledging...
        assert c.read_packet() == b"1"
        c.send_raw(b"-")                               # ...then claim it arrived garbled
        assert c.read_packet() == b"1"
        c.send_raw(b"+")
        c.ack = True
        # oversized: acknowledged, empty reply
        c.send_raw(rsp.frame(b"q" + b"A" * (PACKET_SIZE + 10)))
        assert c.read_ack() == b"+" and c.read_packet() == b""
        c.no_ack()
        assert c.request(b"qC") == b"QC1"
        _run_to_end(c, p)


def test_breakpoints_steps_watch_catch_raw(xenwb):
    syms = _symbols()
    sk = syms["start_kernel"]
    p = xenwb()
    with p.client() as c:
        c.no_ack()
        before = c.request(b"m%x,8" % sk)
        assert c.request(b"Z0,%x,1" % sk) == b"OK"
        assert c.request(b"m%x,8" % sk) == before         # no int3 in memory: a code hook
        stop = c.request(b"vCont;c")
        assert stop.startswith(b"T05thread:1;") and b"swbreak:;" in stop
        assert (b"08:%s;" % sk.to_bytes(4, "little").hex().encode()) in stop
        assert c.request(b"z0,%x,1" % sk) == b"OK"
        # hardware breakpoint, reported as such
        target = syms["check"]
        assert c.request(b"Z1,%x,1" % target) == b"OK"
        stop = c.request(b"c")
        assert b"hwbreak:;" in stop
        assert c.request(b"z1,%x,1" % target) == b"OK"
        # single steps: legacy s and vCont with a thread
        pc0 = int.from_bytes(bytes.fromhex(c.request(b"p8").decode()), "little")
        assert c.request(b"s").startswith(b"T05thread:1;")
        pc1 = int.from_bytes(bytes.fromhex(c.request(b"p8").decode()), "little")
        assert pc1 != pc0
        assert c.request(b"vCont;s:1").startswith(b"T05thread:1;")
        # range stepping stays inside check() until it leaves the range
        stop = c.request(b"vCont;r%x,%x:1;c" % (target, target + 0x10))
        assert stop.startswith(b"T05thread:1;")
        # write watchpoint on a variable: stop after the write, with the address
        var = syms["checks_run"]
        assert c.request(b"Z2,%x,4" % var) == b"OK"
        stop = c.request(b"c")
        assert (b"watch:%x;" % var) in stop, stop
        n = int.from_bytes(bytes.fromhex(c.request(b"m%x,4" % var).decode()), "little")
        assert n >= 1
        assert c.request(b"z2,%x,4" % var) == b"OK"
        # access watchpoint
        assert c.request(b"Z4,%x,4" % var) == b"OK"
        assert (b"awatch:%x;" % var) in c.request(b"c")
        assert c.request(b"z4,%x,4" % var) == b"OK"
        # hypercall catchpoints: console_io (18) entry then return
        assert c.request(b"QCatchSyscalls:1;12") == b"OK"
        assert "catch hypercall console_io" in c.monitor("info breakpoints")
        stop = c.request(b"c")
        assert b"syscall_entry:12;" in stop, stop
        regs = bytes.fromhex(c.request(b"g").decode())
        assert int.from_bytes(regs[:4], "little") == 18                   # EAX = hypercall number
        orig_eax = sum(r.size for r in REGISTERS[:41])
        assert int.from_bytes(regs[orig_eax: orig_eax + 4], "little") == 18       # orig_eax as well
        stop = c.request(b"c")
        assert b"syscall_return:12;" in stop, stop
        assert c.request(b"QCatchSyscalls:0") == b"OK"
        # monitor
        text = c.monitor("help")
        assert "info vcpus" in text and "xen version" in text
        assert "vcpu" in c.monitor("info vcpus")
        assert "error" in c.monitor("no such command")
        _run_to_end(c, p)


def test_abrupt_disconnect_leaves_the_guest_running(xenwb):
    syms = _symbols()
    p = xenwb()
    c = p.client()
    c.no_ack()
    assert c.request(b"Z0,%x,1" % syms["start_kernel"]) == b"OK"
    assert c.request(b"Z2,%x,4" % syms["checks_run"]) == b"OK"
    c.send_raw(rsp.frame(b"m%x,4" % syms["checks_run"]))     # cut off mid-conversation
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    # the guest was halted (--wait); gdb is gone: requests dropped, the guest runs on to its end
    rc, out, err = p.finish()
    assert rc == 0, err
    assert re.search(r"pvdemo: all \d+ checks passed", out)


def test_interrupt_and_reconnect(xenwb):
    """Ctrl-C (0x03) stops a running guest; after a disconnect a new client attaches."""
    syms = _symbols()
    p = xenwb()
    with p.client() as c:
        c.no_ack()
        assert c.request(b"Z0,%x,1" % syms["finish"]) == b"OK"
        assert c.request(b"vCont;c").startswith(b"T05")
        assert c.request(b"z0,%x,1" % syms["finish"]) == b"OK"
        spin = syms["early_log"]                   # unused once the console works: room for `jmp .`
        pc = c.request(b"p8")
        assert c.request(b"M%x,2:ebfe" % spin) == b"OK"
        assert c.request(b"P8=%s" % spin.to_bytes(4, "little").hex().encode()) == b"OK"
        c.send_raw(rsp.frame(b"vCont;c"))
        time.sleep(0.3)
        c.send_raw(b"\x03")
        stop = c.read_packet()
        assert stop.startswith(b"T02thread:1;"), stop
        assert c.request(b"p8") == spin.to_bytes(4, "little").hex().encode()
        c.send_raw(rsp.frame(b"vCont;c"))          # running again; then gdb goes away
        time.sleep(0.1)
    time.sleep(0.2)
    with p.client() as c:                          # a new client attaches to the running guest
        c.no_ack()
        stop = c.request(b"?")
        assert stop.startswith(b"T05thread:1;")
        assert c.request(b"p8") == spin.to_bytes(4, "little").hex().encode()
        assert c.request(b"M%x,2:0000" % spin) == b"OK"
        assert c.request(b"P8=%s" % pc) == b"OK"
        _run_to_end(c, p)


def test_crash_is_a_postmortem_stop_then_X_and_kill_ends_the_run(xenwb):
    p = xenwb()
    with p.client() as c:
        c.no_ack()
        assert c.request(b"P8=00100000") == b"OK"               # jump to an unmapped address, no trap table
        c.send_raw(rsp.frame(b"vCont;c"))
        out = c.read_packet()
        assert out.startswith(b"O") and b"domain crashed" in bytes.fromhex(out[1:].decode()), out
        stop = c.read_packet()
        assert stop.startswith(b"T0b"), stop                     # SIGSEGV, like a fatal fault: inspectable
        assert c.request(b"?").startswith(b"T0b")
        regs = bytes.fromhex(c.request(b"g").decode())
        assert regs[32:36] == bytes.fromhex("00100000")           # EIP where it crashed (0x1000)
        assert "domain crashed" in c.monitor("why")
        assert c.request(b"vCont;c") == b"X0b"                   # going on after it ends the domain
    rc, _, err = p.finish()
    assert rc == 1 and "crash" in err, err
    p = xenwb()
    with p.client() as c:
        c.send_raw(rsp.frame(b"k"))
        assert c.read_ack() == b"+"
    rc, _, err = p.finish()
    assert rc == 130 and "killed by gdb" in err, err


def test_cli_options_and_interrupt(xenwb):
    import os
    import signal
    import subprocess
    import sys

    from support.client import REPO
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "xenwb", "run", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=60)

    r = run("pvdemo-pae", "--wait")
    assert r.returncode == 2 and "--wait needs --gdb" in r.stderr
    r = run("--gdb", "pvdemo-pae")
    assert r.returncode == 2 and "write the guest before --gdb" in r.stderr
    # Ctrl-C ends a waiting stub (and the run) at once
    p = xenwb()
    p.proc.send_signal(signal.SIGINT)
    rc, _, err = p.finish(timeout=20)
    assert rc == 130 and "interrupted" in err, err


# ----------------------------------------------------------------------------------- fuzzing
SAFE_CORPUS = [
    b"?", b"g", b"p0", b"p8", b"p29", b"p2d", b"p99", b"m0,4", b"mc0000000,40", b"mffffffff,10", b"m1000,1",
    b"mc0000000,20000", b"qSupported:multiprocess+;swbreak+", b"qXfer:features:read:target.xml:0,400",
    b"qXfer:features:read:target.xml:200,100", b"qXfer:threads:read::0,400", b"qXfer:bogus:read::0,1",
    b"qfThreadInfo", b"qsThreadInfo", b"qC", b"qAttached", b"qAttached:1", b"qOffsets", b"qThreadExtraInfo,1",
    b"qSymbol::", b"qTStatus", b"qRcmd,68656c70", b"qRcmd,696e666f207663707573", b"qRcmd,", b"qRcmd,zz",
    b"Hg0", b"Hg1", b"Hg-1", b"Hc-1", b"Hc1", b"Hgp1.1", b"Hz1", b"T1", b"T2", b"T-1", b"vCont?",
    b"vMustReplyEmpty", b"z0,c00028b0,1", b"z2,c0000000,4", b"z9,0,0", b"qL1200000000000000000",
    b"qGetTLSAddr:1,0,0", b"jThreadsInfo", b"x0,4", b"", b"\x00", b"}]", b"qXfer:features:read:target.xml:zz,1",
    b"qXfer:memory-map:read::0,400", b"qXfer:memory-map:read::300,100", b"qXfer:exec-file:read:a410:0,fff",
    b"qqemu.PhyMemMode", b"qqemu.Supported", b"qSupported:xmlRegisters=i386",
]
DANGEROUS_FIRST = set(b"cCsSkDRrMXGPZiIA!bBtFQ")


def _dangerous(payload: bytes) -> bool:
    """Packets that would resume, kill, detach, write state or change the protocol mode:
    the fuzz run must leave the guest where it was so that it can check the shutdown."""
    if not payload:
        return False
    if payload[0] in DANGEROUS_FIRST:
        return True
    if payload[:1] == b"v":
        return payload not in (b"vCont?", b"vMustReplyEmpty")
    return False


def _mutate(rng: random.Random, p: bytes) -> bytes:
    b = bytearray(p)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        elif op == 2 and b:
            del b[rng.randrange(len(b))]
        elif op == 3:
            b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 40)))
        elif op == 4 and b:
            b = b[: rng.randrange(len(b) + 1)]
        else:
            b += rng.choice(SAFE_CORPUS)
    # '$' and '#' cannot appear raw inside a packet: escape them as a client must
    return bytes(b).replace(b"}", b"}]").replace(b"$", b"}\x04").replace(b"#", b"}\x03")


def test_fuzz_10000_packets_then_normal_shutdown(xenwb):
    rng = random.Random(4)
    p = xenwb()
    answered = rejected = noise = 0
    with p.client() as c:
        for i in range(10_500):
            r = rng.random()
            if r < 0.04:
                # noise between packets (no '$'): the stub must ignore it
                junk = bytes(x for x in (rng.randrange(256) for _ in range(rng.randint(1, 30))) if x not in b"$+-")
                c.send_raw(junk)
                noise += 1
                continue
            payload = rng.choice(SAFE_CORPUS) if r < 0.35 else _mutate(rng, rng.choice(SAFE_CORPUS))
            if _dangerous(payload):
                payload = b"q" + payload
            if r > 0.93:
                # bad checksum: NAK, then a good retransmission of something else
                c.send_raw(b"$" + payload + b"#%02x" % ((rsp.checksum(payload) + 1) & 0xFF))
                assert c.read_ack() == b"-", i
                rejected += 1
                continue
            if r > 0.9985:
                payload = b"q" + bytes(rng.randrange(0x20, 0x7F) for _ in range(PACKET_SIZE + 5)).replace(
                    b"$", b"x").replace(b"#", b"x").replace(b"}", b"x").replace(b"*", b"x")
            c.send_raw(rsp.frame(payload))
            assert c.read_ack() == b"+", (i, payload[:60])
            reply = c.read_packet()
            while reply.startswith(b"O") and reply != b"OK":      # monitor output, then its reply
                reply = c.read_packet()
            answered += 1
        assert answered + rejected >= 10_000 and rejected > 300
        # the stub is intact and the guest untouched: it still boots to its normal end
        assert c.request(b"?").startswith(b"T05thread:1;")
        _run_to_end(c, p)


# ----------------------------------------------------------------------------------- long steps
def test_a_step_that_does_not_end_still_hears_gdb(xenwb, tmp_path):
    """Steps run in the session's thread; one that lasts (here a range step over a `jmp .`,
    which never leaves its range) is watched for Ctrl-C, a dropped connection and SIGTERM."""
    import signal

    from support.harness import build_guest
    spin = build_guest("spin", tmp_path)
    loop = spin.symbols["spin"]
    p = xenwb(guest=str(spin.path))
    endless = b"vCont;r%x,%x:1;c" % (loop, loop + 2)
    with p.client() as c:
        c.no_ack()
        assert c.request(b"Z0,%x,1" % loop) == b"OK"
        assert b"swbreak" in c.request(b"vCont;c")
        assert c.request(b"z0,%x,1" % loop) == b"OK"
        c.send_raw(rsp.frame(endless))
        time.sleep(0.2)
        t0 = time.monotonic()
        c.send_raw(b"\x03")
        assert c.read_packet().startswith(b"T02thread:1;")              # interrupted, not finished
        assert time.monotonic() - t0 < 0.5
        assert c.request(b"p8") == loop.to_bytes(4, "little").hex().encode()
        c.send_raw(rsp.frame(endless))
        time.sleep(0.2)
    t0 = time.monotonic()                                                   # dropped mid-step
    with p.client() as c:                                                   # the next gdb gets in
        c.no_ack()
        assert c.request(b"?").startswith(b"T05thread:1;")
        assert time.monotonic() - t0 < 1.0
        c.send_raw(rsp.frame(endless))
        time.sleep(0.2)
        t0 = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        p.proc.wait(timeout=5)
        assert time.monotonic() - t0 < 1.0
    _, _, err = p.finish()
    assert "Traceback" not in err, err


# ----------------------------------------------------------------------------------- Xen's view
def _pagetable_vas(c: RspClient, symbol: str) -> tuple[int, int, int]:
    """(VA of the L1 entry that maps symbol, VA of the L3 frame, mfn of that L1 frame), from
    `monitor pt walk` and `monitor pt frames`: pvdemo-pae's tables are mapped read-only at
    VIRT_BASE + pfn << 12."""
    walk = {w[0]: w for w in (ln.split() for ln in c.monitor(f"pt walk {symbol}").splitlines()) if w}
    frames = [ln.split() for ln in c.monitor("pt frames").splitlines()]
    l3_pfn = next(int(w[1], 16) for w in frames if len(w) > 2 and w[2] == "l3")
    l1_mfn, l1_pfn = int(walk["L2"][6], 16), int(walk["L2"][7], 16)     # the L2 entry's target
    l1e_va = 0xC0000000 + (l1_pfn << 12) + (int(walk["L1"][3], 16) & 0xFFF)
    return l1e_va, 0xC0000000 + (l3_pfn << 12), l1_mfn


def test_debugger_writes_to_pagetables_are_validated_like_mmu_update(xenwb):
    """gdb's M into a read-only pagetable frame: an entry Xen accepts is written (merged with
    the bytes around it), one mmu_update would refuse is refused with its errno and the
    reason in `monitor why`; the guest still boots to its normal end."""
    p = xenwb()
    with p.client() as c:
        c.no_ack()
        l1e_va, l3_va, l1_mfn = _pagetable_vas(c, "start_kernel")
        old = int.from_bytes(bytes.fromhex(c.request(b"m%x,8" % l1e_va).decode()), "little")
        assert old & 0x21 == 0x21                                     # present, accessed
        assert c.request(b"M%x,1:%02x" % (l1e_va, (old & 0xFF) & ~0x20)) == b"OK"     # clear A
        now = int.from_bytes(bytes.fromhex(c.request(b"m%x,8" % l1e_va).decode()), "little")
        assert now == old & ~0x20
        assert c.request(b"M%x,1:%02x" % (l1e_va, old & 0xFF)) == b"OK"
        # map the L1 frame itself writable: Xen never lets a pagetable frame be mapped RW
        bad = (l1_mfn << 12) | 0x63
        reply = c.request(b"M%x,8:%s" % (l1e_va, bad.to_bytes(8, "little").hex().encode()))
        assert re.fullmatch(rb"E\d\d", reply), reply
        assert int.from_bytes(bytes.fromhex(c.request(b"m%x,8" % l1e_va).decode()), "little") == old
        why = c.monitor("why")
        assert "debugger write refused" in why and "mmu_update" in why, why
        # a PAE L3's slot 3 (Xen's L2) cannot be changed
        reply = c.request(b"M%x,8:%s" % (l3_va + 24, bytes(8).hex().encode()))
        assert reply == b"E22", reply
        assert "cannot be changed" in c.monitor("why")
        _run_to_end(c, p)


def test_debugger_cannot_write_xen_frames() -> None:
    """The Controller refuses stores into Xen's own frames (TSS, per-domain tables, trampoline)
    and frames the domain does not own, before writing anything."""
    from xenwb.control import RefusedWrite
    from xenwb.session import Session
    with Session("pvdemo-pae", plugins=()) as s:
        ctl, dom = s.controller, s.machine.domain
        xen = dom.xen
        for mfn in (xen.vcpu_tss[0], xen.trampoline):
            before = dom.mem.read(mfn << 12, 16)
            with pytest.raises(RefusedWrite, match="is Xen's own") as ei:
                ctl.write_machine(0, [((mfn << 12) + 8, b"\xff" * 8)])
            assert ei.value.errno == 1 and dom.mem.read(mfn << 12, 16) == before
        with pytest.raises(RefusedWrite, match="does not belong to the domain"):
            ctl.write_machine(0, [(0x1000, b"\0")])
