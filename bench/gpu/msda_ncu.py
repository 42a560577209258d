"""Nsight Compute profile of the MSDA kernels (issue 16): the workload to run under ``ncu``, and its summary.

``run``: for each setting, dtype and backward variant, one forward and one backward call of the CUDA op, nothing
else on the GPU that matches ``regex:msda_``; the order of the profiled kernels goes to ``--order`` (JSON), so the
summary can name each kernel launch. Use it as::

    ncu --clock-control none --kernel-name regex:msda_ --launch-count 24 \\
        --section SpeedOfLight --section LaunchStats --section Occupancy --section MemoryWorkloadAnalysis \\
        -o OUT/msda python3 bench/gpu/msda_ncu.py run --order OUT/ncu_order.json
    ncu --import OUT/msda.ncu-rep --csv --page raw --print-units base > OUT/ncu_raw.csv
    python3 bench/gpu/msda_ncu.py summarize OUT/ncu_raw.csv --order OUT/ncu_order.json

``summarize``: one row per profiled launch: duration, DRAM bytes and throughput, L2 and L1 throughput and hit rates,
SM throughput, achieved and theoretical occupancy, registers per thread, grid and block size. Metrics missing from
the report (another ncu version) print as "-".

``run --dry-run`` lists the launches without a GPU.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import Dict, List, Optional

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))

#: (setting, dtype, backward variants): float32 vs bfloat16 (the issue's comparison), the default kernel and the
#: candidates that change the grid, the lanes or the accumulation buffer.
PLAN = [
    ("encoder", "float32", ["default", "point_parallel"]),
    ("encoder", "bfloat16", ["default", "vec4", "native", "point_parallel"]),
    ("decoder", "float32", ["default", "point_parallel"]),
    ("decoder", "bfloat16", ["default", "vec4", "native", "point_parallel"]),
]

#: column -> ncu metric names tried in order (raw page of the four sections)
METRICS = {
    "us": ["gpu__time_duration.sum"],
    "dram rd MB": ["dram__bytes_read.sum"],
    "dram wr MB": ["dram__bytes_write.sum"],
    "dram %": ["dram__throughput.avg.pct_of_peak_sustained_elapsed",
               "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"],
    "L2 %": ["lts__throughput.avg.pct_of_peak_sustained_elapsed"],
    "L2 hit %": ["lts__t_sector_hit_rate.pct"],
    "L1 %": ["l1tex__throughput.avg.pct_of_peak_sustained_active",
             "l1tex__throughput.avg.pct_of_peak_sustained_elapsed"],
    "L1 hit %": ["l1tex__t_sector_hit_rate.pct"],
    "SM %": ["sm__throughput.avg.pct_of_peak_sustained_elapsed"],
    "occ %": ["sm__warps_active.avg.pct_of_peak_sustained_active"],
    "theo occ %": ["sm__maximum_warps_per_active_cycle_pct"],
    "regs": ["launch__registers_per_thread"],
    "grid": ["launch__grid_size"],
    "block": ["launch__block_size"],
}


def launches() -> List[Dict[str, str]]:
    """The profiled kernel launches, in order."""
    out = []
    for setting, dtype, variants in PLAN:
        out.append({"setting": setting, "dtype": dtype, "kernel": "forward", "variant": "-"})
        for v in variants:
            out.append({"setting": setting, "dtype": dtype, "kernel": "backward", "variant": v})
    return out


def run(order_path: str, dry_run: bool) -> int:
    plan = launches()
    with open(order_path, "w") as f:
        json.dump(plan, f, indent=1)
    if dry_run:
        for i, launch in enumerate(plan):
            print(i, launch)
        return 0
    sys.path.insert(0, REPO)
    sys.path.insert(0, os.path.join(REPO, "bench"))
    import torch

    import msda as bench
    from detrex.layers import msda_op

    op = msda_op.load_extension()
    if op is None or not torch.cuda.is_available():
        print(f"msda_ncu: the CUDA op is not available ({msda_op.extension_error()})", file=sys.stderr)
        return 1
    backward = torch.ops.detrex.ms_deform_attn_backward
    for setting, dtype, variants in PLAN:
        value, ss, lsi, loc, w = bench.make_setting(setting, False, bench.DTYPES[dtype], "cuda")
        out = op(value, ss, lsi, loc, w, 64)
        grad = torch.randn_like(out)
        for v in variants:
            backward(grad, value, ss, lsi, loc, w, 64, msda_op.BACKWARD_VARIANTS[v])
        torch.cuda.synchronize()
        del value, loc, w, out, grad
        torch.cuda.empty_cache()
    print(f"msda_ncu: {len(plan)} kernel launches", flush=True)
    return 0


def _number(text: str) -> Optional[float]:
    try:
        return float(text.replace(",", ""))
    except (ValueError, AttributeError):
        return None


def read_raw_csv(path: str) -> List[Dict[str, str]]:
    """Rows of ``ncu --csv --page raw`` (a header row, a units row, then one row per kernel launch)."""
    with open(path, newline="", errors="replace") as f:
        lines = [ln for ln in f if ln.startswith('"')]  # drop ==PROF== / warning lines
    rows = list(csv.reader(lines))
    if not rows:
        return []
    header = rows[0]
    body = rows[1:]
    units = {}
    if body and not body[0][0].strip().isdigit():  # units row
        units = dict(zip(header, body[0]))
        body = body[1:]
    out = []
    for r in body:
        row = dict(zip(header, r))
        row["__units__"] = units
        out.append(row)
    return out


def _metric(row: Dict[str, str], names: List[str]) -> Optional[float]:
    units = row.get("__units__", {})
    for name in names:
        if name in row:
            value = _number(row[name])
            if value is None:
                return None
            unit = units.get(name, "")
            if name == "gpu__time_duration.sum":  # -> microseconds
                value *= {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(unit, 1e-3)
            elif name.startswith("dram__bytes"):  # -> MB
                value *= {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3, "KB": 1e-3, "MB": 1.0,
                          "GB": 1e3}.get(unit, 1e-6)
            return value
    return None


def summarize(csv_path: str, order_path: Optional[str]) -> int:
    rows = read_raw_csv(csv_path)
    if not rows:
        print(f"msda_ncu: no kernel rows in {csv_path}")
        return 1
    plan = json.load(open(order_path)) if order_path and os.path.exists(order_path) else []
    columns = ["launch", "kernel"] + list(METRICS) + ["DRAM GB/s"]
    table = [columns]
    for i, row in enumerate(rows):
        who = plan[i] if i < len(plan) else {}
        label = (f"{who.get('setting', '?')} {who.get('dtype', '?')} {who.get('kernel', '?')}"
                 + (f" {who['variant']}" if who.get("variant", "-") != "-" else ""))
        name = row.get("Kernel Name", row.get("Function Name", "?"))
        short = name.split("<")[0].split("(")[0].replace("detrex::msda::", "").replace("(anonymous namespace)::", "")
        values = {col: _metric(row, names) for col, names in METRICS.items()}
        dram_mb = (values["dram rd MB"] or 0) + (values["dram wr MB"] or 0)
        gbs = dram_mb / values["us"] * 1e3 if values["us"] and dram_mb else None  # 1 MB/us = 1000 GB/s
        cells = [label, short]
        for col in METRICS:
            v = values[col]
            cells.append("-" if v is None else (f"{v:.0f}" if col in ("regs", "grid", "block") else
                                                f"{v:.1f}"))
        cells.append("-" if gbs is None else f"{gbs:.0f}")
        table.append(cells)
    widths = [max(len(str(r[c])) for r in table) for c in range(len(columns))]
    for k, r in enumerate(table):
        print("| " + " | ".join(str(x).rjust(wd) for x, wd in zip(r, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (wd + 2) for wd in widths) + "|")
    if plan and len(plan) != len(rows):
        print(f"note: {len(rows)} profiled launches but {len(plan)} planned; labels may be shifted")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="the workload to profile")
    p_run.add_argument("--order", required=True, help="JSON file for the launch order")
    p_run.add_argument("--dry-run", action="store_true", help="write and print the launch order only")
    p_sum = sub.add_parser("summarize", help="table from `ncu --csv --page raw` output")
    p_sum.add_argument("csv")
    p_sum.add_argument("--order", default=None)
    args = parser.parse_args(argv)
    if args.cmd == "run":
        return run(args.order, args.dry_run)
    return summarize(args.csv, args.order)


if __name__ == "__main__":
    sys.exit(main())
