"""The house's shape (issue 16): imports point down the layers, at module level, and no
guest-visible offset or size is written anywhere but xenwb/abi/.

Layers, lowest first: the ABI; the engine, memory and paging (and the trace bus and command
registry, which everything above may use); the hypervisor's subsystems; the domain; the
toolstack (loader, builder, backends); the machine; the control API; the commands; plugins
and front ends. A module may import its own layer and the ones below.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("xenwb", "gdbstub", "plugins")

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("abi", ("xenwb.abi", "xenwb.errors", "xenwb._vclock", "xenwb")),
    ("engine", ("xenwb.vclock", "xenwb.trace", "xenwb.registry", "xenwb.disasm", "xenwb.hypervisor.memory",
                "xenwb.hypervisor.paging", "xenwb.hypervisor.cpu", "xenwb.hypervisor.xenarea",
                "xenwb.hypervisor.state", "xenwb.hypervisor.hypercall", "xenwb.hypervisor")),
    ("subsystems", ("xenwb.hypervisor.",)),
    ("domain", ("xenwb.hypervisor.domain",)),
    ("toolstack", ("xenwb.loader", "xenwb.bzimage", "xenwb.layout", "xenwb.builder", "xenwb.backends",
                   "xenwb.xenstore", "xenwb.examples", "xenwb.linuxguest", "xenwb.inputlog")),
    ("machine", ("xenwb.machine", "xenwb.snapshot")),
    ("control", ("xenwb.control", "xenwb.timetravel")),
    ("commands", ("xenwb.commands", "xenwb.debug_commands", "xenwb.tracefile")),
    ("front ends", ("plugins", "gdbstub", "xenwb.session", "xenwb.tui", "xenwb.cli", "xenwb.info",
                    "xenwb.__main__")),
]


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            exact = not p.endswith(".") and module == p
            if exact or (p.endswith(".") and module.startswith(p)) or module.startswith(p + "."):
                n = len(p) + (1000 if exact else 0)
                if n > best_len:
                    best, best_len = i, n
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            out[".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = f
    return out


def _imports(path: Path, module: str) -> list[tuple[int, str, bool]]:
    """(line, imported module, inside a function) for every project import, TYPE_CHECKING ones aside."""
    tree = ast.parse(path.read_text())
    typing_only = {id(x) for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
                   for b in n.body for x in ast.walk(b)}
    in_func = {id(x) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
               for x in ast.walk(fn)}
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level + (1 if path.name == "__init__.py" else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [stem] + [f"{stem}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n.split(".")[0] in PACKAGES:
                out.append((node.lineno, n, id(node) in in_func))
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    mine = _layer(module)
    bad = []
    for line, target, _ in _imports(MODULES[module], module):
        t = _resolve(target)
        if t is None or t == module:
            continue
        if _layer(t) > mine:
            bad.append(f"line {line}: {t} ({LAYERS[_layer(t)][0]}) is above {LAYERS[mine][0]}")
    assert not bad, f"{module} imports a higher layer:\n  " + "\n  ".join(bad)


def test_imports_are_at_module_level() -> None:
    """A project import inside a function dodges a cycle; allowed only with a comment on its
    line saying which optional dependency it keeps out of module import."""
    inner = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for line, _target, in_func in _imports(path, module):
            if in_func and "optional" not in lines[line - 1]:
                inner.append(f"{path.relative_to(ROOT)}:{line}")
    inner = sorted(set(inner))
    assert len(inner) <= 3, "imports inside functions:\n  " + "\n  ".join(inner)


# A guest-visible field at a hand-written offset: `vcpu_info_maddr + 4`, `(shared_info_mfn << 12)
# + 0x800`, or a struct format of several field types (a layout) in the hypervisor and toolstack.
HAND_OFFSET = re.compile(r"(vcpu_info_maddr|shared_info_mfn\s*<<\s*12\)?)\s*\+\s*(0x[0-9a-fA-F]+|\d+)\b")
LAYOUT_FORMAT = re.compile(r"struct\.(?:pack|unpack)(?:_from|_into)?\(f?\"<([^\"]*)\"")
HARDWARE_FORMATS: dict[tuple[str, str], str] = {}   # formats of hardware structures, not of the Xen ABI


def _guest_facing_sources() -> list[Path]:
    files = [*(ROOT / "xenwb" / "hypervisor").glob("*.py"), *(ROOT / "plugins").glob("*.py")]
    files += [ROOT / "xenwb" / f for f in ("builder.py", "backends.py", "xenstore.py", "machine.py", "control.py",
                                           "debug_commands.py", "tui.py")]
    return sorted(files)


def test_no_guest_visible_offsets_outside_abi() -> None:
    found = []
    for f in _guest_facing_sources():
        rel = str(f.relative_to(ROOT))
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if HAND_OFFSET.search(line):
                found.append(f"{rel}:{n}: {line.strip()}")
            for m in LAYOUT_FORMAT.finditer(line):
                fmt = re.sub(r"\{[^}]*\}|\d", "", m.group(1))      # counts: `{n}I`, `3I`
                if len(set(fmt)) > 1 and (rel, m.group(1)) not in HARDWARE_FORMATS:
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "guest-visible layouts written by hand (use xenwb/abi/structs.py):\n  " + "\n  ".join(found)
