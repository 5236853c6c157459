"""Issue 16 item 5 (plugins): one declared parser per command, load errors reported, the
core's walker; issue 12 item 1: `--history N`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugins.api import Arg, Opt, command
from plugins.pagetable import leaf_mappings
from xenwb.hypervisor.paging import walk
from xenwb.registry import CommandError, Result
from xenwb.session import ALL_PLUGINS, Session

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def booted() -> Session:
    s = Session("pvdemo-pae", plugins=ALL_PLUGINS, console=lambda b: None)
    s.run(until="finish")
    return s


def test_declared_parser() -> None:
    seen = []
    spec = command("demo", lambda m, a: seen.append(a) or Result(None, ""), "a demo",
                   Arg("va", "VA", "an address", int), Arg("which", "WHICH", "optional", default="x"),
                   Opt("--vcpu", "N", "a vcpu", int), Opt("--all", help="everything"),
                   Opt("--name", "N[,N]", "names", default="any"))
    assert spec.usage == "VA [WHICH] [--vcpu N] [--all] [--name N[,N]]"
    assert "--vcpu N" in spec.details and "everything" in spec.details and "(default any)" in spec.details
    a = spec.parse(["--vcpu", "0x1", "0x10", "--all"])
    assert (a.va, a.which, a.vcpu, a.all, a.name) == (16, "x", 1, True, "any")
    for argv, msg in ((["--bogus"], "unknown option --bogus"), (["1", "--vcpu"], "--vcpu needs a value"),
                      ([], "usage: demo VA"), (["1", "2", "3"], "unexpected argument '3'"),
                      (["zz"], "not a number")):
        with pytest.raises(CommandError, match=msg):
            spec.parse(argv)


def test_plugin_commands_keep_their_usage(booted: Session) -> None:
    reg = booted.machine.commands.commands
    assert reg["hypercalls"].usage == "[--name N[,N]] [--vcpu V] [--failed] [--range LO-HI] [--last K]"
    assert reg["hypercalls show"].usage == "SEQ"
    assert reg["multicall show"].usage == "[BATCH|largest|last]"
    assert reg["evmask"].usage == "[VCPU]" and reg["evmask windows"].usage == "[--vcpu V] [--top K]"
    assert reg["pt walk"].usage == "VA [--vcpu N] [--user] [--cr3 MFN]"
    assert reg["pt dump"].usage == "[--vcpu N] [--user] [--cr3 MFN] [--all]"
    assert reg["plugin enable"].usage == "NAME"
    text = booted.command("help hypercalls").text
    assert "--failed" in text and "only failed calls" in text
    with pytest.raises(CommandError, match="unknown option --lats"):
        booted.command("hypercalls --lats 3")
    with pytest.raises(CommandError, match="usage: pt walk VA"):
        booted.command("pt walk")
    assert booted.command("evmask 0").data[0]["vcpu"] == 0
    with pytest.raises(CommandError, match="no vcpu 7"):
        booted.command("evmask 7")


def test_pagetable_plugin_uses_the_core_walker(booted: Session) -> None:
    src = (ROOT / "plugins" / "pagetable.py").read_text()
    assert "iter_unpack" not in src and "struct" not in src and "mappings(" in src
    m = booted.machine
    dom = m.domain
    v = m.vcpus[0]
    maps = list(leaf_mappings(m, v.cr3_mfn))
    assert len(maps) > 100
    for mp in maps[:: max(1, len(maps) // 300)]:
        w = walk(dom.mem, dom.mode, v.cr3_mfn, mp.va)
        assert w.mapped and w.mfn == mp.mfn and w.steps[-1].entry_maddr == mp.entry_maddr
        assert (w.writable, w.user, w.nx) == (mp.writable, mp.user, mp.nx)


def _broken_plugin_dir(tmp: Path) -> Path:
    d = tmp / "site"
    dist = d / "xenwb_broken-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xenwb-broken\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[xenwb.plugins]\nbroken = xenwb_broken_plugin:Plugin\n"
                                           "notaplugin = os:path\n")
    (d / "xenwb_broken_plugin.py").write_text("raise RuntimeError('this plugin is broken')\n")
    return d


def test_plugin_load_errors_are_reported(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=f"{_broken_plugin_dir(tmp_path)}{os.pathsep}{ROOT}")
    p = subprocess.run([sys.executable, "-m", "xenwb", "run", "pvdemo-pae", "--plugin", "all", "--quiet",
                        "--exec", "hypercalls summary"], capture_output=True, text=True, timeout=120, env=env,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    errs = [ln for ln in p.stderr.splitlines() if ln.startswith("xenwb: plugin ")]
    assert len(errs) == 2, p.stderr
    assert "'broken'" in errs[0] and "RuntimeError: this plugin is broken" in errs[0]
    assert "'notaplugin'" in errs[1] and "not a plugins.api.Plugin subclass" in errs[1]
    assert "Traceback" not in p.stderr and "total" in p.stdout
    quiet = subprocess.run([sys.executable, "-m", "xenwb", "run", "pvdemo-pae", "--plugin", "hypercalls", "--quiet"],
                           capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert quiet.returncode == 0 and "plugin" not in quiet.stderr      # only when every plugin is asked for


def test_history_option() -> None:
    p = subprocess.run([sys.executable, "-m", "xenwb", "run", "pvdemo-pae", "--history", "25", "--quiet", "--json",
                        "--exec", "hypercalls --last 0", "--exec", "evmask history --last 0"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count('"seq"') == 25
    for bad in ("0", "x", "-3"):
        q = subprocess.run([sys.executable, "-m", "xenwb", "trace", "pvdemo-pae", "-o", os.devnull,
                            "--history", bad], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert q.returncode == 2 and "--history" in q.stderr and "Traceback" not in q.stderr, q.stderr
