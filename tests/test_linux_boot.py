"""Issue 14: Debian's Linux 6.1 (linux-image-cloud-amd64, unchanged) boots as a 64-bit PV domU
to the busybox shell of the project's initramfs, runs commands typed at hvc0 and powers off
with exit 0, on 1 and on 2 vcpus, with no workaround on its command line; two boots of the
same configuration give the same console bytes and the same trace.

One boot per (configuration, run) for the whole module (each takes some 10 s of CPU), shared
by the tests that look at it. The kernel and busybox come from Debian's packages through
scripts/fetch-linux (xenwb.linuxguest), cached after the first download.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass

import pytest

from xenwb.abi.constants import Errno
from xenwb.backends import ScriptedInput
from xenwb.linuxguest import PROMPT, fetch_linux
from xenwb.machine import Machine, StopReason

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("apt-get", "dpkg-deb", "cpio")),
                                reason="needs Debian's apt-get, dpkg-deb and cpio")

COMMANDS = (b"echo xenwb-ok-$((6 * 7))\n"
            b"nproc\n"
            b"grep -c ^processor /proc/cpuinfo\n"
            b"ls /sys/bus/xen/devices; echo devices-listed\n"
            b"poweroff -f\n")
# What real Xen 4.17 answers a domU with -ENOSYS: VCPUOP_is_up past the last vcpu is
# -ENOENT, not -ENOSYS; nothing Linux calls at boot is missing from Xen.
VIRTUAL_LIMIT_NS = 120 * 10**9


@dataclass
class Boot:
    console: bytes
    trace_digest: str
    result: object
    enosys: list[tuple[str, str]]
    hypercalls: int
    events: int


def _boot(vcpus: int) -> Boot:
    g = fetch_linux("cloud-amd64")
    m = Machine(g.vmlinuz, memory_mib=256, cmdline="console=hvc0", module=g.initrd.read_bytes(), vcpus=vcpus)
    out: list[bytes] = []
    m.domain.console_sink = out.append
    h = hashlib.sha256()
    enosys: list[tuple[str, str]] = []
    count = [0]

    def on_event(e: dict) -> None:
        count[0] += 1
        h.update(json.dumps(e, sort_keys=True, default=str).encode())
        if e.get("kind") == "hypercall" and e.get("ret") == -Errno.ENOSYS:
            args = e.get("args")
            sub = args.get("cmd") if isinstance(args, dict) else None
            enosys.append((e["name"], str(sub)))

    m.domain.trace.subscribe(on_event)
    m.input_source = ScriptedInput(COMMANDS)
    m.set_limits(timeout_ns=VIRTUAL_LIMIT_NS)
    r = m.run()
    return Boot(b"".join(out), h.hexdigest(), r, enosys, m.domain.stats["hypercalls"], count[0])


_BOOTS: dict[tuple[int, int], Boot] = {}


def boot(vcpus: int, run: int = 0) -> Boot:
    key = (vcpus, run)
    if key not in _BOOTS:
        _BOOTS[key] = _boot(vcpus)
    return _BOOTS[key]


@pytest.mark.parametrize("vcpus", [1, 2])
def test_boots_to_the_shell_runs_commands_and_powers_off(vcpus: int) -> None:
    b = boot(vcpus)
    text = b.console.decode("latin-1")
    assert b.result.reason is StopReason.shutdown and b.result.detail == "poweroff", (b.result, text[-2000:])
    assert PROMPT in text
    assert "xenwb-ok-42" in text                       # the shell evaluated what was typed
    assert re.search(rf"# nproc\r?\n{vcpus}\r?\n", text), text[-1500:]
    assert re.search(rf"processor /proc/cpuinfo\r?\n{vcpus}\r?\n", text)
    assert "devices-listed" in text
    assert "xen:events: Using FIFO-based ABI" in text  # Xen 4.17 offers FIFO event channels
    if vcpus == 2:
        assert "smp: Brought up 1 node, 2 CPUs" in text
    for bad in ("Oops", "BUG:", "Kernel panic", "unchecked MSR access", "WARNING:"):
        assert bad not in text, (bad, text[text.find(bad) - 500: text.find(bad) + 1500])


@pytest.mark.parametrize("vcpus", [1, 2])
def test_no_enosys_a_real_xen_would_not_return(vcpus: int) -> None:
    assert boot(vcpus).enosys == []


@pytest.mark.parametrize("vcpus", [1, 2])
def test_two_boots_give_the_same_console_and_trace(vcpus: int) -> None:
    a, b = boot(vcpus, 0), boot(vcpus, 1)
    assert a.console == b.console
    assert (a.events, a.trace_digest) == (b.events, b.trace_digest)
    assert a.hypercalls == b.hypercalls > 10_000
