"""Bundled example guests: sources in examples/guests/<dir>/, built on demand with gcc/ld.

Each guest directory has a variants.json naming its sources, flags and variants.
Builds go to a cache directory keyed by a hash of the sources, flags and tools and of
the source directory's resolved path (a build embeds that path: DWARF file names), so
a change to any source rebuilds, two checkouts never share a build, and nothing
prebuilt lives in the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from xenwb.errors import XenwbError

DEFAULT_EXAMPLE = "pvdemo-pae"


def examples_root() -> Path:
    env = os.environ.get("XENWB_EXAMPLES")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parent.parent / "examples" / "guests"


def cache_root() -> Path:
    base = os.environ.get("XENWB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xenwb")
    return Path(base).resolve() / "examples"


@dataclass(frozen=True)
class Example:
    name: str
    guest_dir: Path
    spec: dict
    variant: dict

    @property
    def description(self) -> str:
        return self.variant.get("description", "")

    def _key(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps(self.spec, sort_keys=True).encode())
        h.update(self.name.encode())
        h.update(str(self.guest_dir.resolve()).encode())    # the build embeds this path
        for f in sorted(self.guest_dir.iterdir()):
            if f.is_file():
                h.update(f.name.encode())
                h.update(f.read_bytes())
        return h.hexdigest()[:16]

    @property
    def path(self) -> Path:
        return cache_root() / f"{self.name}-{self._key()}" / self.name

    def build(self) -> Path:
        out = self.path
        if out.exists():
            return out
        for tool in (self.spec.get("cc", "gcc"), self.spec.get("ld", "ld")):
            if shutil.which(tool) is None:
                raise XenwbError(f"building {self.name} needs {tool!r} (Debian: apt-get install gcc binutils)")
        out.parent.mkdir(parents=True, exist_ok=True)
        # objects in a directory of this build's own: a concurrent build of the same key
        # never links a half-written object; the finished ELF is renamed into place
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=out.parent))
        try:
            self._build_in(work, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return out

    def _build_in(self, work: Path, out: Path) -> None:
        src_dir = self.guest_dir.resolve()
        defines = [f"-D{d}" for d in self.variant.get("defines", [])]
        objs = []
        for src in self.spec["sources"]:
            obj = work / (Path(src).stem + ".o")
            cmd = [self.spec.get("cc", "gcc"), *self.spec["cflags"], *defines, "-c", str(src_dir / src),
                   "-o", str(obj)]
            _run(cmd, self.name, src_dir)
            objs.append(str(obj))
        ldflags = [str(src_dir / a) if a == self.spec.get("linker_script") else a
                   for a in self.spec.get("ldflags", [])]
        tmp = work / self.name
        _run([self.spec.get("ld", "ld"), *ldflags, "-o", str(tmp), *objs], self.name, src_dir)
        tmp.replace(out)


def _run(cmd: list[str], name: str, cwd: Path) -> None:
    """Run a build tool in the source directory (so DW_AT_comp_dir names it too)."""
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if r.returncode:
        first = (r.stderr or r.stdout).strip().splitlines()
        raise XenwbError(f"building {name} failed: {' '.join(cmd[:2])}...: {first[0] if first else r.returncode}")


def list_examples() -> list[Example]:
    out = []
    root = examples_root()
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        spec_file = d / "variants.json"
        if not spec_file.is_file():
            continue
        spec = json.loads(spec_file.read_text())
        for name, variant in spec.get("variants", {}).items():
            out.append(Example(name, d, spec, variant))
    return out


def find_example(name: str) -> Example | None:
    for e in list_examples():
        if e.name == name:
            return e
    return None


def resolve_guest(arg: str | None) -> Path:
    """A guest argument: a path to an ELF, or the name of a bundled example."""
    if arg is None:
        arg = DEFAULT_EXAMPLE
    p = Path(arg)
    if p.exists():
        return p
    ex = find_example(arg)
    if ex is not None:
        return ex.build()
    names = ", ".join(e.name for e in list_examples())
    raise XenwbError(f"{arg}: no such file, and not a bundled example (examples: {names})")
