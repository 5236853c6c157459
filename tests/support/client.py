"""A minimal RSP client and a launcher for ``xenwb run --gdb``: for tests, benchmarks and
scripts that talk to the stub without gdb (tests/support: not part of the package)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from gdbstub import rsp

REPO = Path(__file__).resolve().parents[2]
_LISTEN = re.compile(r"gdb stub listening on \[?([^\]\s]+?)\]?:(\d+)")


class RspError(Exception):
    pass


class RspClient:
    """Speaks the protocol over one socket, in ack mode unless no_ack() was called."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.ack = True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RspClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer from the stub")
        self.sock.settimeout(left)
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the stub closed the connection")
        self.buf += data

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_ack(self, timeout: float = 10.0) -> bytes:
        """The next '+' or '-'."""
        deadline = time.monotonic() + timeout
        while True:
            for i, b in enumerate(self.buf):
                if b in (0x2B, 0x2D):
                    del self.buf[: i + 1]
                    return bytes([b])
                if b == 0x24:
                    raise RspError(f"packet where an ack was expected: {bytes(self.buf[:60])!r}")
            self.buf.clear()
            self._fill(deadline)

    def read_packet(self, timeout: float = 10.0) -> bytes:
        """The next packet's payload (checksum verified, acked in ack mode, RLE expanded)."""
        deadline = time.monotonic() + timeout
        while True:
            start = self.buf.find(b"$")
            if start >= 0:
                end = self.buf.find(b"#", start)
                if end >= 0 and len(self.buf) >= end + 3:
                    payload = bytes(self.buf[start + 1: end])
                    cks = int(self.buf[end + 1: end + 3], 16)
                    del self.buf[: end + 3]
                    if cks != rsp.checksum(payload):
                        raise RspError(f"bad checksum from the stub on {payload[:60]!r}")
                    if self.ack:
                        self.sock.sendall(b"+")
                    return payload
            self._fill(deadline)

    def request(self, payload: bytes, timeout: float = 10.0) -> bytes:
        """Send a packet, check its ack, return the reply (console O packets skipped)."""
        self.sock.sendall(rsp.frame(payload))
        if self.ack:
            a = self.read_ack(timeout)
            if a != b"+":
                raise RspError(f"stub refused {payload[:60]!r} ({a!r})")
        while True:
            reply = self.read_packet(timeout)
            if not (reply.startswith(b"O") and reply != b"OK" and _is_hex(reply[1:])):
                return reply

    def no_ack(self) -> None:
        if self.request(b"QStartNoAckMode") != b"OK":
            raise RspError("QStartNoAckMode refused")
        self.ack = False

    def monitor(self, line: str, timeout: float = 10.0) -> str:
        self.sock.sendall(rsp.frame(b"qRcmd," + line.encode().hex().encode()))
        if self.ack and self.read_ack(timeout) != b"+":
            raise RspError("qRcmd refused")
        out = []
        while True:
            reply = self.read_packet(timeout)
            if reply.startswith(b"O") and reply != b"OK":
                out.append(bytes.fromhex(reply[1:].decode()).decode())
                continue
            if reply != b"OK":
                raise RspError(f"qRcmd: {reply!r}")
            return "".join(out)


def _is_hex(b: bytes) -> bool:
    try:
        bytes.fromhex(b.decode())
        return True
    except ValueError:
        return False


class XenwbProcess:
    """``xenwb run GUEST --gdb HOST:0 --merge-consoles`` in a subprocess (both consoles on
    stdout); .port is where it listens."""

    def __init__(self, guest: str = "pvdemo-pae", *, wait: bool = True, vcpus: int = 1,
                 extra: list[str] | None = None, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        cmd = [sys.executable, "-m", "xenwb", "run", guest, f"--gdb={host}:0", "--vcpus", str(vcpus),
               "--merge-consoles", *(["--wait"] if wait else []), *(extra or [])]
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.host = host
        self.stderr_lines: list[str] = []
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        while True:
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError("xenwb did not start listening")
            line = self.proc.stderr.readline().decode(errors="replace")
            if not line:
                self.proc.wait(5)
                raise RuntimeError(f"xenwb exited ({self.proc.returncode}): {''.join(self.stderr_lines)}")
            self.stderr_lines.append(line)
            m = _LISTEN.search(line)
            if m:
                self.port = int(m.group(2))
                return

    def client(self) -> RspClient:
        return RspClient(self.host, self.port)

    def finish(self, timeout: float = 30.0) -> tuple[int, str, str]:
        """Wait for the exit: (return code, stdout, stderr)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.proc.communicate()
            raise
        return self.proc.returncode, out.decode(errors="replace"), "".join(self.stderr_lines) + err.decode(
            errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
