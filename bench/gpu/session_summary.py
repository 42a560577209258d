"""Compact summary of a bench/gpu/msda_session.sh run (fits a 12,000-character log tail): environment, steps,
pytest outcome, the benchmark table (selected columns), the ncu table (selected columns), registers of the main kernels.

Usage: ``python3 bench/gpu/session_summary.py OUT`` (the session's output folder).
"""
from __future__ import annotations

import os
import re
import sys
from typing import List, Optional, Sequence

SHORT = {"encoder": "enc", "decoder": "dec", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}
BENCH_COLUMNS = [("setting", "set"), ("dtype", "dt"), ("impl", "impl"), ("fwd ms", "fwd"), ("bwd ms", "bwd"),
                 ("fwd+bwd ms", "f+b"), ("fwd+bwd x orig", "x orig"), ("bwd x default", "x def"),
                 ("grad err", "err"), ("bwd GB/s", "bwd HBM GB/s"), ("bwd L2 GB/s", "bwd L2 GB/s"),
                 ("fwd L2 GB/s", "fwd L2 GB/s")]
NCU_COLUMNS = [("launch", "launch"), ("us", "us"), ("DRAM GB/s", "DRAM GB/s"), ("dram %", "dram%"), ("L2 %", "L2%"),
               ("L2 hit %", "L2hit"), ("L1 hit %", "L1hit"), ("SM %", "SM%"), ("occ %", "occ"),
               ("theo occ %", "theo"), ("regs", "regs")]


def read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def markdown_table(text: str) -> List[List[str]]:
    """The first markdown table in ``text`` (header first, separator dropped)."""
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|") and line.endswith("|"):
            cells = [c.strip() for c in line[1:-1].split("|")]
            if all(set(c) <= set("-: ") for c in cells):
                continue
            rows.append(cells)
        elif rows:
            break
    return rows


def select(rows: List[List[str]], columns: Sequence[tuple]) -> List[List[str]]:
    if not rows:
        return []
    header = rows[0]
    idx = [(header.index(src), dst) for src, dst in columns if src in header]
    out = [[dst for _, dst in idx]]
    for r in rows[1:]:
        out.append([SHORT.get(r[i], r[i]) if i < len(r) else "" for i, _ in idx])
    return out


def render(rows: List[List[str]]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return "\n".join(" ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def pytest_outcome(text: str, limit: int = 30) -> str:
    """The short summary (failures, xfail/xpass, the closing count); for a run cut short (no closing count), the
    per-test outcomes of ``-v`` counted, and the tests that failed."""
    lines = text.splitlines()
    keep = [ln for ln in lines
            if re.match(r"^(FAILED|ERROR|XPASS|XFAIL)\b", ln) or re.search(r"\b(passed|failed|error)\b.* in ", ln)]
    if any(re.search(r"\b(passed|failed|error)\b.* in ", ln) for ln in keep):
        return "\n".join(keep[-limit:])
    outcomes = re.findall(r"::\S+ (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)", text)
    counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    bad = [ln.split(" ")[0] for ln in lines if re.search(r"::\S+ (FAILED|ERROR)", ln)]
    return "\n".join([f"pytest did not finish (time limit?): {counts}"] + bad[:limit] + lines[-3:])


def ptxas_rows(text: str) -> str:
    keep = [ln for ln in text.splitlines()
            if re.search(r"msda_\w+_kernel<(f32|f16|bf16), f32", ln) or ln.startswith("| kernel")]
    return "\n".join(keep) or text[-1500:]


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    out = argv[0]
    p = lambda name: os.path.join(out, name)  # noqa: E731
    print("=== environment\n" + read(p("env.txt")).strip())
    print("=== steps\n" + read(p("steps.txt")).strip())
    print("=== pytest tests/layers/test_msda_cuda.py\n" + pytest_outcome(read(p("pytest.log"))))
    bench = markdown_table(read(p("bench.log")))
    print("=== bench/msda.py --variants all (ms; * = stage left out, timing only; full table: bench.log)")
    print(render(select(bench, BENCH_COLUMNS)) if bench else read(p("bench.log"))[-1500:])
    ncu = markdown_table(read(p("ncu.md")))
    print("=== ncu (full: ncu.md, ncu_raw.csv, msda.ncu-rep)")
    print(render(select(ncu, NCU_COLUMNS)) if ncu else (read(p("ncu.md")) or read(p("ncu.log")))[-1500:])
    print("=== ptxas (registers, spills; full: ptxas.md)\n" + ptxas_rows(read(p("ptxas.md"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
