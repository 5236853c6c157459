"""Debian's Linux kernels as PV guests, with a busybox initramfs to boot them to a shell.

``fetch_linux()`` gets Debian's kernel package with ``apt-get download`` (the only network it uses), takes
vmlinuz, System.map and config out of it with ``dpkg-deb``, checks that the config builds a Xen PV guest,
and builds a small initramfs from busybox-static with Debian's ``cpio``. Everything is cached under
``$XENWB_CACHE/linux`` keyed by package version; a second call runs no command at all.

Debian's System.map is a one-line placeholder: ``symbols=True`` takes the real one out of the
``-dbg`` package (283 MB for cloud-amd64, 859 MB for amd64, neither kept).

The initramfs is uncompressed: it is 2 MB, and inflating it would cost the emulated guest CPU more than
the copy does. The same archive boots on Xen's hvc0 and on QEMU's ttyS0: /init starts the shell with
busybox ``setsid cttyhack``, which opens whatever /sys/class/tty/console/active names.

    python -m xenwb.linuxguest [--flavour amd64] [--symbols] [--field vmlinuz] [--report]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xenwb.bzimage import compressor_of, parse_setup_header
from xenwb.errors import XenwbError
from xenwb.examples import cache_root

FLAVOURS = ("cloud-amd64", "amd64")
DEFAULT_FLAVOUR = "cloud-amd64"
PROMPT = "xenwb-linux# "
BANNER = "xenwb initramfs: up"
APT_LISTS = Path("/var/lib/apt/lists")
PLACEHOLDER_MAP_TEXT = "The real System.map is in"
KERNEL_COMPRESSORS = ("GZIP", "BZIP2", "LZMA", "XZ", "LZO", "LZ4", "ZSTD")

INIT_SCRIPT = f"""#!/bin/sh
# /init of the xenwb initramfs (xenwb/linuxguest.py): pseudo filesystems, a banner, then a shell on
# the console whatever it is (hvc0 on Xen, ttyS0 on QEMU). `poweroff -f` ends the machine.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{BANNER} (Linux $(uname -r), console $(cat /sys/class/tty/console/active))"
export HOME=/ PATH=/bin PS1='{PROMPT}'
while true; do setsid cttyhack sh; done
"""


@dataclass(frozen=True)
class LinuxGuest:
    """A fetched kernel and the initramfs to boot it with."""

    flavour: str            # "cloud-amd64" or "amd64"
    version: str            # Debian package version, e.g. "6.1.192-3"
    kernel_release: str     # uname -r, e.g. "6.1.0-57-cloud-amd64"
    vmlinuz: Path
    system_map: Path        # Debian's placeholder unless fetched with symbols=True
    config: Path
    initrd: Path            # cpio newc, uncompressed


@dataclass(frozen=True)
class KernelConfig:
    xen_pv: bool                # CONFIG_XEN_PV=y: the kernel boots as a Xen PV guest
    compressor: str | None      # CONFIG_KERNEL_<X>=y, lower case: how the bzImage payload is compressed


def linux_cache() -> Path:
    """$XENWB_CACHE/linux (default ~/.cache/xenwb/linux), beside the examples' cache."""
    return cache_root().parent / "linux"


def read_kernel_config(path: Path) -> KernelConfig:
    text = path.read_text(errors="replace")
    compressor = next((c.lower() for c in KERNEL_COMPRESSORS
                       if re.search(rf"^CONFIG_KERNEL_{c}=y$", text, re.M)), None)
    return KernelConfig(bool(re.search(r"^CONFIG_XEN_PV=y$", text, re.M)), compressor)


def is_placeholder_map(path: Path) -> bool:
    """Debian's kernel packages ship a one-line System.map pointing at the -dbg package."""
    with open(path, "rb") as fh:
        return PLACEHOLDER_MAP_TEXT.encode() in fh.read(4096)


def fetch_linux(flavour: str = DEFAULT_FLAVOUR, *, symbols: bool = False) -> LinuxGuest:
    """Debian's current linux-image-FLAVOUR kernel and the busybox initramfs, from the cache or fetched."""
    if flavour not in FLAVOURS:
        raise XenwbError(f"unknown kernel flavour {flavour!r} (choose from {', '.join(FLAVOURS)})")
    meta = f"linux-image-{flavour}"
    cand = _apt_candidates(meta, "busybox-static")
    dep = re.match(r"(linux-image-\S+)\s*(?:\(= ([^)]+)\))?", cand[meta].get("Depends", ""))
    if dep is None:
        raise XenwbError(f"{meta} does not depend on a linux-image package")
    image_pkg, version = dep.group(1), dep.group(2) or cand[meta]["Version"]
    release = image_pkg.removeprefix("linux-image-")
    kdir = _extract(image_pkg, version, [f"boot/vmlinuz-{release}", f"boot/System.map-{release}",
                                         f"boot/config-{release}"])
    guest = LinuxGuest(flavour, version, release, kdir / f"vmlinuz-{release}", kdir / f"System.map-{release}",
                       kdir / f"config-{release}", _initramfs(cand["busybox-static"]["Version"]))
    if not read_kernel_config(guest.config).xen_pv:
        raise XenwbError(f"{image_pkg} {version} is built without CONFIG_XEN_PV: not a Xen PV guest")
    if symbols and is_placeholder_map(guest.system_map):
        _fetch_real_system_map(guest, image_pkg)
    return guest


def fetch_package_file(package: str, member: str) -> Path:
    """One file (``member``, a path inside the package such as ``boot/gnumach-1.8-xen-486.gz``) of the
    candidate version of a Debian package, from the cache or downloaded."""
    version = _apt_candidates(package)[package]["Version"]
    return _extract(package, version, [member]) / Path(member).name


def _deb_stem(package: str, version: str) -> str:
    return f"{package}_{version.replace(':', '%3a')}"


def _run(cmd: Sequence[str | Path], **kw) -> subprocess.CompletedProcess:
    """Run a command, its output captured unless stdout is given; a failure is a one-line XenwbError."""
    kw.setdefault("stdout", subprocess.PIPE)
    try:
        p = subprocess.run([str(c) for c in cmd], stderr=subprocess.PIPE, **kw)
    except FileNotFoundError:
        raise XenwbError(f"{cmd[0]} is missing (Debian: ./scripts/bootstrap installs it)") from None
    if p.returncode:
        err = p.stderr.decode(errors="replace") if isinstance(p.stderr, bytes) else p.stderr
        lines = [ln for ln in err.splitlines() if ln.startswith("E:")] or err.strip().splitlines() or [""]
        raise XenwbError(f"{' '.join(map(str, cmd[:2]))} failed: {lines[-1]}")
    return p


def _apt_lists_fingerprint() -> str:
    """Changes whenever apt-get update brings new package lists, so new candidate versions."""
    h = hashlib.sha256()
    for f in sorted(APT_LISTS.iterdir()) if APT_LISTS.is_dir() else []:
        st = f.stat()
        h.update(f"{f.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _apt_candidates(*packages: str) -> dict[str, dict[str, str]]:
    """Version and Depends of the version apt would install now of each package. apt-cache takes
    half a second, so the answers are kept per state of apt's package lists."""
    root = linux_cache()
    root.mkdir(parents=True, exist_ok=True)
    memo = root / "apt-candidates.json"
    lists = _apt_lists_fingerprint()
    try:
        saved = json.loads(memo.read_text())
    except (OSError, ValueError):
        saved = {}
    if saved.get("lists") != lists:
        saved = {"lists": lists, "packages": {}}
    missing = [p for p in packages if p not in saved["packages"]]
    if missing:
        for pkg, fields in _apt_show(*missing).items():
            saved["packages"][pkg] = {k: fields[k] for k in ("Version", "Depends") if k in fields}
        memo.write_text(json.dumps(saved, indent=1))
    return {p: saved["packages"][p] for p in packages}


def _apt_show(*packages: str) -> dict[str, dict[str, str]]:
    """apt-cache show's candidate stanza of each package; runs apt-get update once if one is unknown."""
    for attempt in (1, 2):
        try:
            out = subprocess.run(["apt-cache", "show", "--no-all-versions", *packages], capture_output=True,
                                 text=True).stdout      # exits 100 when a package is unknown
        except FileNotFoundError:
            raise XenwbError("apt-cache is missing: fetching Debian packages needs Debian's apt") from None
        fields: dict[str, dict[str, str]] = {}
        for stanza in out.split("\n\n"):
            kv = dict(re.findall(r"^([\w-]+): (.*)$", stanza, re.M))
            if "Package" in kv:
                fields[kv["Package"]] = kv
        missing = [pkg for pkg in packages if pkg not in fields]
        if not missing:
            return fields
        if attempt == 1 and os.geteuid() == 0:
            _run(["apt-get", "update", "-qq"])
    raise XenwbError(f"apt knows no package {', '.join(missing)} (run apt-get update; is this Debian amd64?)")


def _download(package: str, version: str, into: Path) -> Path:
    _run(["apt-get", "download", "-qq", f"{package}={version}"], cwd=into)
    debs = list(into.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise XenwbError(f"apt-get download {package}={version} left {len(debs)} .deb files")
    return debs[0]


def _extract(package: str, version: str, members: list[str]) -> Path:
    """The cache directory PACKAGE_VERSION holding these files of the package (by base name),
    downloaded and unpacked with dpkg-deb the first time; the .deb is not kept."""
    root = linux_cache()
    out = root / _deb_stem(package, version)
    if all((out / Path(m).name).is_file() for m in members):
        return out
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp)
        deb = _download(package, version, work)
        _run(["dpkg-deb", "-x", deb, work / "pkg"])
        out.mkdir(exist_ok=True)
        for m in members:
            src = work / "pkg" / m
            if not src.is_file():
                raise XenwbError(f"{deb.name} has no {m}")
            os.replace(src, out / src.name)
    return out


def _fetch_real_system_map(guest: LinuxGuest, image_pkg: str) -> None:
    """Take usr/lib/debug/boot/System.map-RELEASE out of the -dbg package, streaming its data archive
    into tar, which stops at the member: the rest (a 590 MB vmlinux, the modules' debug files) is never
    written."""
    member = f"./usr/lib/debug/boot/System.map-{guest.kernel_release}"
    with tempfile.TemporaryDirectory(dir=linux_cache()) as tmp:
        deb = _download(f"{image_pkg}-dbg", guest.version, Path(tmp))
        new = Path(tmp) / "System.map"
        dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
        assert dpkg.stdout is not None
        with open(new, "wb") as fh:
            tar = subprocess.run(["tar", "-xO", "--occurrence=1", "-f", "-", member], stdin=dpkg.stdout,
                                 stdout=fh, stderr=subprocess.PIPE, text=True)
        dpkg.stdout.close()
        dpkg.wait()            # dpkg-deb may die of the closed pipe: tar has what it needed
        if tar.returncode or not new.stat().st_size:
            raise XenwbError(f"{deb.name} has no {member}: {tar.stderr.strip()}")
        new.replace(guest.system_map)


def _initramfs(busybox_version: str) -> Path:
    """The cached initramfs for this busybox-static version and this /init, built when missing."""
    key = hashlib.sha256(INIT_SCRIPT.encode()).hexdigest()[:8]
    out = linux_cache() / f"initramfs-{_deb_stem('busybox-static', busybox_version)}-{key}.cpio"
    if not out.is_file():
        busybox = _extract("busybox-static", busybox_version, ["bin/busybox"]) / "busybox"
        tmp = out.with_suffix(".tmp")
        build_initramfs(busybox, tmp)
        tmp.replace(out)
    return out


def build_initramfs(busybox: Path, out: Path) -> None:
    """A cpio newc archive: /init, /bin/busybox with a link for each of its applets, /dev /proc /sys.
    Owners are 0:0 and times 0, so the same busybox gives the same bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp)
        for d in ("bin", "dev", "proc", "sys"):
            (tree / d).mkdir()
        shutil.copy(busybox, tree / "bin" / "busybox")
        applets = _run([busybox, "--list"], text=True).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (tree / "bin" / applet).symlink_to("busybox")
        init = tree / "init"
        init.write_text(INIT_SCRIPT)
        init.chmod(0o755)
        names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
        for name in names:
            os.utime(tree / name, (0, 0), follow_symlinks=False)
        with open(out, "wb") as fh:
            _run(["cpio", "--create", "--format=newc", "--owner=0:0", "--reproducible", "--quiet"],
                 input="\n".join(names).encode() + b"\n", cwd=tree, stdout=fh)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fetch-linux", description=__doc__.splitlines()[0])
    ap.add_argument("--flavour", choices=FLAVOURS, default=DEFAULT_FLAVOUR)
    ap.add_argument("--symbols", action="store_true", help="also the real System.map from the -dbg package")
    ap.add_argument("--field", choices=("vmlinuz", "system_map", "config", "initrd", "version", "kernel_release"),
                    help="print only this")
    ap.add_argument("--report", action="store_true",
                    help="fetch every flavour; print which are PV and how each bzImage payload is compressed")
    args = ap.parse_args(argv)
    try:
        if args.report:
            report()
            return 0
        guest = fetch_linux(args.flavour, symbols=args.symbols)
    except XenwbError as e:
        print(f"fetch-linux: {e}", file=sys.stderr)
        return 2
    if args.field:
        print(getattr(guest, args.field))
        return 0
    for name in ("flavour", "version", "kernel_release", "vmlinuz", "system_map", "config", "initrd"):
        print(f"{name + ':':16}{getattr(guest, name)}")
    return 0


def report() -> None:

    print(f"{'flavour':12} {'kernel':24} {'XEN_PV':7} {'config':7} {'payload':8} {'vmlinuz':>11}")
    for flavour in FLAVOURS:
        guest = fetch_linux(flavour)
        cfg = read_kernel_config(guest.config)
        blob = guest.vmlinuz.read_bytes()
        hdr = parse_setup_header(blob)
        payload = compressor_of(blob[hdr.payload_start: hdr.payload_start + hdr.payload_length])
        print(f"{flavour:12} {guest.kernel_release:24} {'yes' if cfg.xen_pv else 'no':7} {cfg.compressor or '?':7} "
              f"{payload:8} {len(blob):11,}")


if __name__ == "__main__":
    sys.exit(main())
