#!/usr/bin/env python3
"""Find the longest window with events masked, per vcpu, during a boot.

    python examples/scripts/masked_windows.py [GUEST] [--vcpus N]
"""

import argparse

from xenwb.session import Session

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("guest", nargs="?", default="pvdemo-pae")
ap.add_argument("--vcpus", type=int, default=1)
a = ap.parse_args()

with Session(a.guest, vcpus=a.vcpus, plugins=("evmask",)) as s:
    s.run()
    windows = s.command("evmask windows --top 1000").data

for vcpu in range(a.vcpus):
    mine = [w for w in windows if w["vcpu"] == vcpu]
    if not mine:
        print(f"vcpu{vcpu}: events were never masked and unmasked again")
        continue
    w = max(mine, key=lambda w: w["duration_ns"])
    masked_at = w["masked_at_symbol"] or w["masked_at"]
    unmasked_at = w["unmasked_at_symbol"] or w["unmasked_at"]
    print(f"vcpu{vcpu}: longest masked window {w['duration_ns']} ns, from {w['start_ns']} ns, "
          f"masked at {masked_at}, unmasked at {unmasked_at}")
