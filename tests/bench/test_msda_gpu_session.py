"""The CPU-checkable parts of the MSDA GPU session (bench/gpu/msda_session.sh): the shell script parses, the byte floors
of ``bench/msda.py`` (dry run), and the parsers of ptxas, Nsight Compute and session output on hand-written inputs."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU = os.path.join(REPO, "bench", "gpu")


def _run(*cmd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    r = subprocess.run(list(cmd), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


def test_session_script_parses():
    _run("bash", "-n", os.path.join(GPU, "msda_session.sh"))


def test_bench_dry_run_floors_and_variant_rows():
    out = _run(sys.executable, "bench/msda.py", "--dry-run", "--small", "--device", "cpu", "--settings", "encoder",
               "--dtypes", "float32,bfloat16", "--impls", "cuda", "--variants", "default,no_scatter,native")
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:3]): line
            for line in out.splitlines() if line.startswith("| encoder")}
    # small maps, batch 1: S = Q = 680 + 170 + 45 + 15 = 910, M = 8, D = 32, L = P = 4. float32: value, locations and
    # output 0.932 MB each, weights 0.466 MB -> forward floor 3.26 MB; backward: grad_output + 2 x (value + locations
    # + weights) = 5.59 MB. Gathers: 4 corners x 910 x 8 x 4 x 4 = 465,920 lines x 32 channels x 4 B = 59.6 MB; the
    # backward adds its float32 scatter (119 MB); bfloat16 value: 29.8 MB read, + 59.6 MB float32 scatter = 89 MB, or
    # + 29.8 MB in the native variant = 60 MB.
    assert "3.3/5.6" in rows[("encoder", "float32", "cuda")] and "60/119" in rows[("encoder", "float32", "cuda")]
    assert "30/89" in rows[("encoder", "bfloat16", "cuda")]
    assert "30/60" in rows[("encoder", "bfloat16", "cuda:native")]
    assert ("encoder", "float32", "cuda:no_scatter*") in rows  # profiling variants are starred
    assert "wrong gradients by design" in out


def test_ptxas_report_parses_registers_and_spills(tmp_path):
    log = tmp_path / "build.log"
    log.write_text(
        "ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z3fooPf\n"
        "    8 bytes stack frame, 8 bytes spill stores, 16 bytes spill loads\n"
        "ptxas info    : Used 64 registers, used 1 barriers, 24 bytes smem\n")
    out = _run(sys.executable, os.path.join(GPU, "ptxas_report.py"), str(log))
    row = next(line for line in out.splitlines() if "foo" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["90", "64", "8", "8/16"]


def test_ncu_plan_and_summary(tmp_path):
    order = tmp_path / "order.json"
    _run(sys.executable, os.path.join(GPU, "msda_ncu.py"), "run", "--order", str(order), "--dry-run")
    plan = json.loads(order.read_text())
    assert len(plan) == 16 and plan[0] == {"setting": "encoder", "dtype": "float32", "kernel": "forward",
                                           "variant": "-"}
    raw = tmp_path / "raw.csv"
    raw.write_text(
        '"ID","Kernel Name","gpu__time_duration.sum","dram__bytes_read.sum","dram__bytes_write.sum",'
        '"launch__registers_per_thread","sm__warps_active.avg.pct_of_peak_sustained_active"\n'
        '"","","nsecond","byte","byte","register/thread","%"\n'
        '"0","msda_forward_kernel","400000","1000000000","200000000","40","55.5"\n'
        '"1","msda_backward_kernel","1000000","3000000000","1000000000","74","31.25"\n')
    out = _run(sys.executable, os.path.join(GPU, "msda_ncu.py"), "summarize", str(raw), "--order", str(order))
    lines = [line for line in out.splitlines() if "msda_" in line]
    fwd = [c.strip() for c in lines[0].strip("|").split("|")]
    bwd = [c.strip() for c in lines[1].strip("|").split("|")]
    assert fwd[0] == "encoder float32 forward" and bwd[0] == "encoder float32 backward default"
    # 1.2 GB in 400 us = 3000 GB/s; 4 GB in 1 ms = 4000 GB/s; missing metrics print as "-"
    assert fwd[2] == "400.0" and fwd[-1] == "3000" and bwd[-1] == "4000" and bwd[11] == "31.2" and bwd[13] == "74"
    assert fwd[5] == "-"


def test_session_summary_selects_columns(tmp_path):
    (tmp_path / "steps.txt").write_text("build rc=0 30s\n")
    (tmp_path / "pytest.log").write_text("..F\nFAILED tests/layers/test_msda_cuda.py::test_x - boom\n"
                                         "1 failed, 2 passed in 3.0s\n")
    (tmp_path / "bench.log").write_text(
        "# header\n| setting | dtype | impl | fwd ms | bwd ms | fwd+bwd ms | peak MB |\n|---|---|---|---|---|---|---|\n"
        "| encoder | bfloat16 | cuda:vec4 | 0.300 | 0.900 | 1.200 | 10 |\nfooter\n")
    out = _run(sys.executable, os.path.join(GPU, "session_summary.py"), str(tmp_path))
    assert "FAILED tests/layers/test_msda_cuda.py::test_x" in out and "1 failed, 2 passed" in out
    row = next(line for line in out.splitlines() if "cuda:vec4" in line).split()
    assert row == ["enc", "bf16", "cuda:vec4", "0.300", "0.900", "1.200"]


def test_session_summary_of_a_test_run_cut_short(tmp_path):
    (tmp_path / "pytest.log").write_text(
        "tests/layers/test_msda_cuda.py::test_a PASSED [ 10%]\n"
        "tests/layers/test_msda_cuda.py::test_b[x] FAILED [ 20%]\n"
        "tests/layers/test_msda_cuda.py::test_c PASSED [ 30%]\n")
    out = _run(sys.executable, os.path.join(GPU, "session_summary.py"), str(tmp_path))
    assert "pytest did not finish (time limit?): {'FAILED': 1, 'PASSED': 2}" in out
    assert "tests/layers/test_msda_cuda.py::test_b[x]" in out
