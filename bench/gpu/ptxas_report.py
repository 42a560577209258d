"""Registers and spills per MSDA kernel from a build log made with ``NVCC_APPEND_FLAGS="-Xptxas -v"``.

Usage: ``python3 bench/gpu/ptxas_report.py build.log`` prints one row per kernel instantiation (demangled and
shortened: kernel, value dtype, location dtype, accumulation dtype, channels per lane, profiling mode).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from typing import Dict, List

ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\w+)'")
SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")
SHORT = {"c10::Half": "f16", "c10::BFloat16": "bf16", "float": "f32", "double": "f64"}


def demangle(names: List[str]) -> Dict[str, str]:
    tool = shutil.which("cu++filt") or shutil.which("c++filt")
    if tool is None or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def shorten(name: str) -> str:
    m = re.search(r"(msda_\w+_kernel)<(.*)>\(", name)
    if not m:
        return name[:100]
    args = [a.strip() for a in m.group(2).split(",")]
    args = [SHORT.get(a, a) for a in args]
    return f"{m.group(1)}<{', '.join(args)}>"


def parse(text: str):
    rows, current = [], None
    for line in text.splitlines():
        m = ENTRY.search(line)
        if m:
            current = {"mangled": m.group(1), "arch": m.group(2)}
            continue
        if current is None:
            continue
        m = SPILL.search(line)
        if m:
            current["stack"], current["spill_st"], current["spill_ld"] = (int(x) for x in m.groups())
        m = REGS.search(line)
        if m:
            current["regs"] = int(m.group(1))
            rows.append(current)
            current = None
    names = demangle(sorted({r["mangled"] for r in rows}))
    for r in rows:
        r["kernel"] = shorten(names[r["mangled"]])
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    rows = parse(open(argv[0], errors="replace").read())
    if not rows:
        print("no ptxas -v lines found (build with NVCC_APPEND_FLAGS='-Xptxas -v')")
        return 1
    width = max(len(r["kernel"]) for r in rows)
    print(f"| {'kernel':<{width}} | arch | regs | stack B | spill st/ld B |")
    print(f"|{'-' * (width + 2)}|------|------|---------|---------------|")
    for r in sorted(rows, key=lambda r: (r["kernel"], r["arch"])):
        print(f"| {r['kernel']:<{width}} | {r['arch'][3:]} | {r['regs']:>4} | {r.get('stack', 0):>7} | "
              f"{r.get('spill_st', 0)}/{r.get('spill_ld', 0):<11} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
