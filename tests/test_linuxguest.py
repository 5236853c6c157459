"""xenwb.linuxguest: Debian's kernel packages fetched with the real apt-get download and dpkg-deb,
the busybox initramfs built with the real cpio and read back with ``cpio -t``.

The first run downloads linux-image-cloud-amd64 and linux-image-amd64 (27 + 71 MB) into
$XENWB_CACHE/linux; later runs find everything there and run no command at all.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from xenwb import linuxguest
from xenwb.bzimage import compressor_of, parse_setup_header
from xenwb.errors import XenwbError
from xenwb.linuxguest import (
    BANNER,
    FLAVOURS,
    INIT_SCRIPT,
    PROMPT,
    build_initramfs,
    fetch_linux,
    is_placeholder_map,
    read_kernel_config,
)

pytestmark = pytest.mark.skipif(not all(shutil.which(t) for t in ("apt-get", "dpkg-deb", "cpio")),
                                reason="needs Debian's apt-get, dpkg-deb and cpio")


@pytest.fixture(scope="module", params=FLAVOURS)
def guest(request) -> linuxguest.LinuxGuest:
    return fetch_linux(request.param)


def cpio_list(archive: Path) -> list[str]:
    with open(archive, "rb") as fh:
        return subprocess.run(["cpio", "-t", "--quiet"], stdin=fh, capture_output=True, text=True,
                              check=True).stdout.split()


def cpio_file(archive: Path, name: str) -> str:
    with open(archive, "rb") as fh:
        return subprocess.run(["cpio", "-i", "--to-stdout", "--quiet", name], stdin=fh, capture_output=True,
                              text=True, check=True).stdout


def test_fetch_gives_the_package_files(guest: linuxguest.LinuxGuest) -> None:
    release = guest.kernel_release
    assert release.endswith(guest.flavour) and release.startswith("6.")
    assert guest.vmlinuz.name == f"vmlinuz-{release}"
    assert guest.system_map.name == f"System.map-{release}"
    assert guest.config.name == f"config-{release}"
    # the kernel's own version string (boot protocol: setup header kernel_version, at 0x200 + its value)
    # names the same release and Debian package version
    blob = guest.vmlinuz.read_bytes()
    assert blob[0x202:0x206] == b"HdrS"
    at = 0x200 + int.from_bytes(blob[0x20E:0x210], "little")
    banner = blob[at: blob.index(b"\0", at)].decode()
    assert banner.startswith(f"{release} ") and f" Debian {guest.version} " in banner, banner


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_flavour_is_pv_and_its_payload_matches_the_config(flavour: str) -> None:
    """Both Debian flavours are built with CONFIG_XEN_PV=y; the compressor named by the config
    (cloud: lz4, amd64: xz on 6.1) is the one the bzImage payload's magic shows."""
    g = fetch_linux(flavour)
    cfg = read_kernel_config(g.config)
    assert cfg.xen_pv
    blob = g.vmlinuz.read_bytes()
    hdr = parse_setup_header(blob)
    assert compressor_of(blob[hdr.payload_start: hdr.payload_start + hdr.payload_length]) == cfg.compressor
    assert cfg.compressor == {"cloud-amd64": "lz4", "amd64": "xz"}[flavour]


def test_second_fetch_runs_no_command(monkeypatch: pytest.MonkeyPatch) -> None:
    first = fetch_linux()

    def no_commands(*args, **kwargs):
        raise AssertionError(f"a cached fetch ran {args[0]}")

    monkeypatch.setattr(subprocess, "run", no_commands)
    monkeypatch.setattr(subprocess, "Popen", no_commands)
    assert fetch_linux() == first


def test_unknown_flavour_refused() -> None:
    with pytest.raises(XenwbError, match="unknown kernel flavour"):
        fetch_linux("rt-arm64")


def test_system_map_is_debian_placeholder_without_symbols() -> None:
    """linux-image-* ships a one-line System.map; the real one comes from the -dbg package."""
    g = fetch_linux()
    placeholder = g.system_map.with_name("placeholder")
    placeholder.write_text("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n")
    try:
        assert is_placeholder_map(placeholder)
    finally:
        placeholder.unlink()
    if is_placeholder_map(g.system_map):      # not yet replaced by fetch_linux(symbols=True)
        assert g.system_map.stat().st_size < 200
    real = fetch_linux(symbols=True).system_map
    assert real == g.system_map and not is_placeholder_map(real)
    lines = real.read_text().splitlines()
    assert len(lines) > 50_000
    assert any(line.endswith(" T startup_xen") for line in lines)


# ------------------------------------------------------------------------------ kernel config
@pytest.mark.parametrize(("text", "pv", "compressor"), [
    ("CONFIG_XEN=y\nCONFIG_XEN_PV=y\nCONFIG_KERNEL_XZ=y\n", True, "xz"),
    ("CONFIG_XEN=y\n# CONFIG_XEN_PV is not set\nCONFIG_KERNEL_GZIP=y\n", False, "gzip"),
    ("CONFIG_XEN_PVH=y\nCONFIG_XEN_PV_DOM0=y\nCONFIG_KERNEL_ZSTD=y\n", False, "zstd"),   # no XEN_PV=y line
    ("CONFIG_XEN_PV=m\n", False, None),
    ("#CONFIG_XEN_PV=y\n", False, None),
])
def test_kernel_config_check(tmp_path: Path, text: str, pv: bool, compressor: str | None) -> None:
    cfg = tmp_path / "config"
    cfg.write_text("# Linux/x86 6.1 Kernel Configuration\nCONFIG_64BIT=y\n" + text)
    got = read_kernel_config(cfg)
    assert (got.xen_pv, got.compressor) == (pv, compressor)


def test_debian_config_of_each_flavour(guest: linuxguest.LinuxGuest) -> None:
    text = guest.config.read_text()
    assert "CONFIG_XEN_PV=y" in text.splitlines()
    assert read_kernel_config(guest.config).xen_pv


# ------------------------------------------------------------------------------ initramfs
def test_initramfs_contents() -> None:
    initrd = fetch_linux().initrd
    assert initrd.read_bytes()[:6] == b"070701"                 # cpio newc, not compressed
    names = set(cpio_list(initrd))
    assert {"init", "bin", "bin/busybox", "dev", "proc", "sys"} <= names
    for applet in ("sh", "mount", "setsid", "cttyhack", "poweroff", "uname", "cat"):
        assert f"bin/{applet}" in names, applet
    init = cpio_file(initrd, "init")
    assert init == INIT_SCRIPT and init.startswith("#!/bin/sh\n")
    for needed in ("mount -t proc proc /proc", "mount -t sysfs sysfs /sys", "mount -t devtmpfs devtmpfs /dev",
                   f"PS1='{PROMPT}'", BANNER, "setsid cttyhack sh"):
        assert needed in init, needed


def test_initramfs_entries_are_root_owned_and_dated_zero() -> None:
    with open(fetch_linux().initrd, "rb") as fh:
        listing = subprocess.run(["cpio", "-tv", "--quiet", "--numeric-uid-gid"], stdin=fh, capture_output=True,
                                 text=True, check=True).stdout.splitlines()
    by_name = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in listing}
    assert by_name["init"].startswith("-rwxr-xr-x") and by_name["bin/sh"].startswith("lrwxrwxrwx")
    for line in listing:
        fields = line.split()
        assert fields[2:4] == ["0", "0"], line
        assert "1970" in fields, line


def test_initramfs_is_reproducible(tmp_path: Path) -> None:
    busybox = next(linuxguest.linux_cache().glob("busybox-static_*/busybox"))
    build_initramfs(busybox, tmp_path / "a.cpio")
    build_initramfs(busybox, tmp_path / "b.cpio")
    assert (tmp_path / "a.cpio").read_bytes() == (tmp_path / "b.cpio").read_bytes()


@pytest.mark.skipif(not shutil.which("qemu-system-x86_64"), reason="qemu-system-x86 is not installed")
def test_kernel_and_initramfs_boot_to_the_shell_under_qemu() -> None:
    """The same kernel and initramfs natively under QEMU TCG on ttyS0: banner, prompt, a command typed
    at the prompt, and `poweroff -f` ending QEMU with status 0 (about 2 s)."""
    g = fetch_linux()
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nodefaults", "-no-user-config", "-display", "none",
           "-serial", "stdio", "-no-reboot", "-kernel", str(g.vmlinuz), "-initrd", str(g.initrd),
           "-append", "console=ttyS0 quiet panic=-1"]
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as q:
        assert q.stdin is not None and q.stdout is not None
        watchdog = threading.Timer(120, q.kill)          # a hung boot ends the reads below
        watchdog.start()
        out = bytearray()
        while PROMPT.encode() not in out:
            chunk = q.stdout.read1(4096)
            assert chunk, out.decode(errors="replace")[-500:]
            out += chunk
        q.stdin.write(b"echo kernel=$(uname -r); poweroff -f\n")
        q.stdin.flush()
        out += q.stdout.read()
        watchdog.cancel()
        assert q.wait() == 0
    text = out.decode(errors="replace")
    assert f"{BANNER} (Linux {g.kernel_release}, console ttyS0)" in text
    assert f"kernel={g.kernel_release}" in text
    assert "reboot: Power down" in text
