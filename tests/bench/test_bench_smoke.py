"""bench/*.py: each script runs with ``--smoke`` and prints its table; the shared helpers measure what they say."""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO, "bench")
HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAVE_FASTER = importlib.util.find_spec("faster_coco_eval") is not None


def _load(name):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(script, *args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    r = subprocess.run([sys.executable, os.path.join("bench", script), "--smoke", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r.stdout


def _table(out, first_header):
    """The markdown table whose header starts with ``first_header``, as a list of {header: cell} dicts."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header}"))
    headers = [c.strip() for c in lines[start].strip("|").split("|")]
    assert set(lines[start + 1]) <= {"|", "-"}
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(headers, (c.strip() for c in line.strip("|").split("|")))))
    return rows


# ------------------------------------------------------------------------------------------ helpers
def test_cpu_peak_memory_counts_the_tensors_of_the_call_only():
    common = _load("common")
    keep = []

    def call():
        keep.append(torch.empty(10_000_000, dtype=torch.uint8))  # survives the call
        tmp = torch.empty(5_000_000, dtype=torch.uint8)  # freed inside it
        del tmp

    # both buffers are alive together at the peak: 15 MB; the tensors kept by earlier calls are not counted
    assert [common.measure_peak_memory(call, "cpu") for _ in range(3)] == [15_000_000] * 3


def test_latency_is_the_median_after_warmup():
    common = _load("common")
    calls = []
    delays = iter([0.0, 0.05, 0.0, 0.2, 0.01])  # the first (0.0) is the warm-up call

    def fn():
        calls.append(1)
        import time

        time.sleep(next(delays))

    med, times = common.measure_latency(fn, "cpu", warmup=1, iters=4)
    assert len(calls) == 5 and len(times) == 4
    assert 0.01 <= med < 0.2  # median of ~[0.05, 0.0, 0.2, 0.01] = ~0.03


def test_table_and_name_parsing():
    common = _load("common")
    table = common.format_table(["a", "long header"], [[1, "x"], ["wide cell", 2.5]])
    lines = table.splitlines()
    assert len(lines) == 4 and len({len(line) for line in lines}) == 1
    assert lines[0].startswith("| a ") and "long header" in lines[0]
    assert common.parse_names("ks-dab-detr,DAB-DETR", list(common.OUR_MODELS), "model") == ["DAB-DETR", "KS-DAB-DETR"]
    with pytest.raises(SystemExit, match="unknown model"):
        common.parse_names("yolo", list(common.OUR_MODELS), "model")


def test_synthetic_coco_results_are_scored_alike_by_both_backends():
    ev = _load("eval")
    gt, results = ev.synthetic_coco(20, dets_per_image=30)
    assert len(gt["images"]) == 20 and len(results) == 20 * 30
    assert {c["id"] for c in gt["categories"]} == set(ev.COCO_CATEGORY_IDS) and len(ev.COCO_CATEGORY_IDS) == 80
    _, ap = ev.run_pycocotools(gt, results)
    assert 0.0 < ap < 1.0  # the jittered ground-truth copies make AP non-trivial
    if HAVE_FASTER:
        _, ap_fast = ev.run_faster(gt, results)
        assert ap_fast == pytest.approx(ap, abs=1e-4)


# ------------------------------------------------------------------------------------------ scripts
@pytest.mark.slow
def test_inference_smoke():
    out = _run("inference.py", "--models", "DAB-DETR,KS-DAB-DETR")
    rows = {r["model"]: r for r in _table(out, "architecture")}
    assert {"DAB-DETR", "KS-DAB-DETR"} <= set(rows)
    for r in rows.values():
        assert r["input"] == "64x96" and float(r["ms/batch"]) > 0 and float(r["peak MiB"]) >= 0
    assert float(rows["KS-DAB-DETR"]["KS/baseline"]) > 0
    if HAVE_TRANSFORMERS:
        assert "transformers" in rows and float(rows["DAB-DETR"]["ours/transformers"]) > 0
    else:
        assert "transformers is not installed" in out


@pytest.mark.slow
def test_inference_onnx_smoke():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = _run("inference.py", "--onnx", "--models", "DAB-DETR")
    rows = _table(out, "model")
    assert [r["model"] for r in rows] == ["DAB-DETR"]
    r = rows[0]
    assert r["input (batch 1)"] == "64x96"
    assert float(r["PyTorch eager ms"]) > 0 and float(r["onnxruntime ms"]) > 0
    assert float(r["max score diff"]) <= 1e-4  # the exported model gives the eager scores


@pytest.mark.slow
def test_train_step_smoke():
    out = _run("train_step.py", "--models", "DAB-DETR,KS-DAB-DETR")
    rows = {r["model"]: r for r in _table(out, "architecture")}
    assert {"DAB-DETR", "KS-DAB-DETR"} <= set(rows)
    for r in rows.values():
        assert r["batch"] == "2" and float(r["ms/iter"]) > 0 and float(r["images/s"]) > 0
        assert float(r["peak MiB"]) > 0  # a backward pass allocates gradients
    assert float(rows["KS-DAB-DETR"]["KS/baseline"]) > 0
    assert ("transformers" in rows) == HAVE_TRANSFORMERS


@pytest.mark.slow
def test_train_step_activation_checkpoint_smoke():
    out = _run("train_step.py", "--models", "KS-Deformable-DETR", "--no-peers", "--activation-checkpoint")
    rows = {r["model"]: r for r in _table(out, "model")}
    assert set(rows) == {"KS-Deformable-DETR"}
    r = rows["KS-Deformable-DETR"]
    plain, ckpt = float(r["peak MiB"]), float(r["peak MiB, act. ckpt"])
    assert 0 < ckpt < plain  # the encoder's and decoder's activations are not kept
    assert abs(float(r["memory saved"].rstrip(" %")) - 100 * (1 - ckpt / plain)) < 0.2  # cells rounded to MiB
    assert float(r["time ckpt/plain"]) > 0


@pytest.mark.slow
def test_data_smoke():
    out = _run("data.py")
    rows = _table(out, "workers")
    assert len(rows) == 1 and rows[0]["workers"] == "0" and float(rows[0]["images/s"]) > 0
    # DETR's augmentation resizes the 640x480 pictures to a short side of 480..800 (crop branch: smaller)
    assert 0.05 < float(rows[0]["mean Mpixel out"]) < 1.1


@pytest.mark.slow
def test_eval_smoke():
    out = _run("eval.py")
    rows = {r["evaluation"]: r for r in _table(out, "evaluation")}
    assert "pycocotools COCOeval" in rows
    aps = {float(r["AP"]) for r in rows.values()}
    assert max(aps) - min(aps) < 1e-3  # every backend scores the same detections alike
    assert ("faster-coco-eval COCOeval_faster" in rows) == HAVE_FASTER
