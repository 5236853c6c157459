"""Hypercall names for gdb's `catch syscall`.

gdb names syscalls from an XML table in its data directory, chosen by the architecture and
OS ABI of the target (``syscalls/i386-linux.xml``, ``syscalls/amd64-linux.xml``: the stub's
target description declares GNU/Linux, which gdb also defaults to); there is no remote
protocol packet for it. So the stub keeps a data directory of its own: ``syscalls/`` holds
Xen's hypercall table under both names (the hypercall numbers are the same for both
widths), every other entry links to the system's gdb data directory (python, system-gdbinit,
the other architectures' tables...). With it (`set data-directory DIR` at any time, gdb
re-reads the table when the directory changes, or ``gdb --data-directory DIR``),
``catch syscall mmu_update`` and ``catch syscall group:memory`` work and gdb's stops
show the hypercall's name; Linux syscall names are then unknown, which suits a PV kernel.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from xenwb.abi import constants as C

TABLES = ("i386-linux.xml", "amd64-linux.xml")
GROUPS = {
    "memory": {"mmu_update", "update_va_mapping", "update_va_mapping_otherdomain", "mmuext_op", "memory_op",
               "grant_table_op"},
    "cpu": {"set_trap_table", "set_gdt", "stack_switch", "set_callbacks", "fpu_taskswitch", "set_debugreg",
            "get_debugreg", "update_descriptor", "iret", "set_segment_base", "callback_op", "nmi_op"},
    "event": {"event_channel_op", "event_channel_op_compat"},
    "sched": {"sched_op", "sched_op_compat", "set_timer_op", "vcpu_op"},
}


def syscalls_xml() -> str:
    """Xen's hypercall table in gdb's syscall format (gdb-syscalls.dtd)."""
    out = ['<?xml version="1.0"?>\n<!DOCTYPE syscalls_info SYSTEM "gdb-syscalls.dtd">\n'
           "<!-- Xen hypercalls (xen/include/public/xen.h), written by xenwb's gdb stub -->\n<syscalls_info>\n"]
    for h in C.Hypercall:
        groups = ",".join(["xen", *sorted(g for g, names in GROUPS.items() if h.name in names)])
        out.append(f'  <syscall name="{h.name}" number="{int(h)}" groups="{groups}"/>\n')
    out.append("</syscalls_info>\n")
    return "".join(out)


def system_data_directory(gdb: str = "gdb") -> Path | None:
    """The data directory of the gdb on PATH: PREFIX/share/gdb next to its binary (where gdb
    looks, relocatably), else what `show data-directory` says; None without gdb."""
    exe = shutil.which(gdb)
    if exe is None:
        return None
    guess = Path(exe).resolve().parent.parent / "share" / "gdb"
    if (guess / "syscalls").is_dir():
        return guess
    try:
        out = subprocess.run([exe, "-nx", "-batch", "-ex", "show data-directory"], capture_output=True,
                             text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'data directory is "(.+)"', out)
    return Path(m.group(1)) if m else None


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "xenwb"


def data_directory(system: Path | None = None, root: Path | None = None) -> Path:
    """A gdb data directory with the hypercall tables (built once, then reused: its name
    holds a digest of what it contains)."""
    system = system if system is not None else system_data_directory()
    xml = syscalls_xml()
    digest = hashlib.sha256(f"{system}\n{xml}".encode()).hexdigest()[:12]
    root = root if root is not None else _cache_root()
    final = root / f"gdb-data-{digest}"
    if (final / "syscalls" / TABLES[0]).is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".gdb-data-", dir=root))
    except OSError:                         # no writable cache: a directory for this process
        root = Path(tempfile.mkdtemp(prefix="xenwb-gdb-data-"))
        final = work = root / "data"
        work.mkdir()
    syscalls = work / "syscalls"
    syscalls.mkdir()
    if system is not None and system.is_dir():
        for entry in system.iterdir():
            if entry.name != "syscalls":
                (work / entry.name).symlink_to(entry)
        if (system / "syscalls").is_dir():
            for entry in (system / "syscalls").iterdir():
                if entry.name not in TABLES:
                    (syscalls / entry.name).symlink_to(entry)
    for name in TABLES:
        (syscalls / name).write_text(xml)
    if work != final:
        try:
            work.rename(final)
        except OSError:                     # another process built it first
            shutil.rmtree(work, ignore_errors=True)
    return final
