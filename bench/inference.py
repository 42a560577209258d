"""Eval-mode latency and peak memory: our detectors (KS and baseline) vs the Hugging Face transformers peers.

What is timed, per call:

* **ours**: ``model(batched_inputs)`` of the full detector in eval mode under ``torch.inference_mode()``:
  normalization and padding of the uint8 images, backbone, transformer, top-300 selection over
  queries x classes and rescaling to ``height``/``width`` (``DETRBase.forward``). KS models run the student
  only (no ground truth, no teachers).
* **transformers**: rescale+normalize the same uint8 batch to ``pixel_values`` (torch ops), then
  ``model(pixel_values=..., pixel_mask=...)`` and ``processor.post_process_object_detection(outputs,
  threshold=0, target_sizes=..., top_k=300)``, under ``torch.inference_mode()``.

The images are on the device before the clock starts on both sides. The models of one architecture are timed
in alternating rounds (ours, KS, transformers, ours, ...) so that load drift hits them alike; each row reports
the median. ``--compile`` adds a table of ``torch.compile`` (inductor) vs eager for the non-deformable
detectors. ``--onnx`` instead times onnxruntime (CPU) on each model's ONNX export next to PyTorch eager (CPU),
batch 1 (`run_onnx`). Run ``python bench/inference.py --help`` for the options.
"""

import argparse
import gc
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402


def parse_sizes(text):
    sizes = []
    for item in text.split(","):
        try:
            h, w = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is not HxW (e.g. 800x1333)")
        sizes.append((h, w))
    return sizes


def ours_call(model, images):
    inputs = [{"image": img, "height": img.shape[1], "width": img.shape[2]} for img in images]

    def run():
        with torch.inference_mode():
            return model(inputs)

    return run


def hf_call(model, processor, images):
    target_sizes = [tuple(img.shape[1:]) for img in images]

    def run():
        with torch.inference_mode():
            pixel_values, pixel_mask = C.hf_normalize(images)
            out = model(pixel_values=pixel_values, pixel_mask=pixel_mask)
            return processor.post_process_object_detection(out, threshold=0.0, target_sizes=target_sizes, top_k=300)

    return run


def timed_rounds(calls, device, warmup, iters, amp, memory=False):
    """``warmup`` untimed calls of each model (the last one under the memory profiler when ``memory``; one
    extra call if ``warmup`` is 0), then ``iters`` rounds calling every model once.

    Returns ({name: median seconds}, {name: peak bytes or None})."""
    times = {name: [] for name in calls}
    peaks = {name: None for name in calls}
    with C.autocast(device, amp):
        for name, fn in calls.items():
            n = max(warmup, 1 if memory else 0)
            for i in range(n):
                if memory and i == n - 1:
                    peaks[name] = C.measure_peak_memory(fn, device)
                else:
                    fn()
        for _ in range(max(iters, 1)):
            for name, fn in calls.items():
                C.sync(device)
                t0 = time.perf_counter()
                fn()
                C.sync(device)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}, peaks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser, iters=3, warmup=1)
    parser.add_argument("--models", default=None, help="comma-separated subset of: " + ", ".join(C.OUR_MODELS))
    parser.add_argument("--sizes", default="800x1333,512x512", help="input sizes HxW (default 800x1333,512x512)")
    parser.add_argument("--batch-sizes", default="1,2", help="batch sizes (default 1,2)")
    parser.add_argument("--no-peers", action="store_true", help="skip the transformers models")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory call")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="autocast dtype (GPU)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the eval model")
    parser.add_argument("--compile-models", default="DAB-DETR,Conditional-DETR", help="models for --compile")
    parser.add_argument("--compile-sizes", default="512x512", help="sizes for --compile, batch 1 (default 512x512)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler top ops of each model")
    parser.add_argument("--onnx", action="store_true",
                        help="instead: export each model to ONNX (dynamic batch/size) and time onnxruntime (CPU) next "
                             "to PyTorch eager (CPU) at batch 1")
    args = parser.parse_args(argv)
    C.resolve_common_args(args, iters=3, warmup=1)
    if args.smoke:
        args.sizes, args.batch_sizes, args.compile_sizes = "64x96", "1", "64x96"
    if args.onnx:
        return run_onnx(args)
    sizes = parse_sizes(args.sizes)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    names, peers, notes = C.select_models(args)
    device = torch.device(args.device)

    print(f"# bench/inference.py on {C.machine_info(device)}")
    print(f"# {' '.join(sys.argv)}")
    print(f"# median of {args.iters} after {args.warmup} warm-up call(s); amp={args.amp}")
    results = {}  # (arch, label, (h, w), batch) -> (seconds, peak bytes)
    params = {}
    profiles = []
    for arch in C.ARCHS:
        ours = [n for n in names if C.OUR_MODELS[n][0] == arch]
        if not ours:
            continue
        models = {}
        for n in ours:
            models[n] = C.build_ours(n).to(device).eval()
        if peers:
            models["transformers"] = C.build_hf(arch).to(device).eval()
            processor = C.hf_processor(arch)
        for label, m in models.items():
            params[(arch, label)] = C.num_params(m)
        for h, w in sizes:
            for b in batches:
                images = C.random_images(b, h, w, device)
                calls = {
                    label: (hf_call(m, processor, images) if label == "transformers" else ours_call(m, images))
                    for label, m in models.items()
                }
                med, peaks = timed_rounds(calls, device, args.warmup, args.iters, args.amp, not args.no_memory)
                for label in calls:
                    results[(arch, label, (h, w), b)] = (med[label], peaks[label])
                    print(f"  {arch:<11} {label:<20} {h}x{w} b{b}: {med[label] * 1e3:9.1f} ms", flush=True)
                if args.profile and (h, w) == sizes[0] and b == batches[0]:
                    for label, fn in calls.items():
                        with C.autocast(device, args.amp):
                            profiles.append((f"{label} ({arch}) {h}x{w} b{b}", C.profile_top_ops(fn, device)))
        del models, calls
        gc.collect()

    headers = ["architecture", "model", "params M", "input", "batch", "ms/batch", "ms/img", "peak MiB", "MiB/img",
               "KS/baseline", "ours/transformers"]
    rows = []
    for (arch, label, (h, w), b), (sec, mem) in results.items():
        base = next((n for n in names if C.OUR_MODELS[n][0] == arch and not C.OUR_MODELS[n][1]), None)
        ks_ratio = hf_ratio = "-"
        if label in C.OUR_MODELS and C.OUR_MODELS[label][1] and (arch, base, (h, w), b) in results:
            ks_ratio = f"{sec / results[(arch, base, (h, w), b)][0]:.2f}"
        if label in C.OUR_MODELS and (arch, "transformers", (h, w), b) in results:
            hf_ratio = f"{sec / results[(arch, 'transformers', (h, w), b)][0]:.2f}"
        mib = None if mem is None else mem / 2**20
        rows.append([
            C.ARCH_TITLES[arch], label, C.fmt(params[(arch, label)]), f"{h}x{w}", b, C.fmt(sec * 1e3),
            C.fmt(sec * 1e3 / b), C.fmt(mib, 0), C.fmt(None if mib is None else mib / b, 0), ks_ratio, hf_ratio,
        ])
    print()
    print(C.format_table(headers, rows))
    for note in notes:
        print(f"note: {note}")

    if args.compile:
        run_compile(args, names, device)
    for title, table in profiles:
        print(f"\n## torch.profiler top ops: {title}\n{table}")
    return 0


def run_onnx(args):
    """onnxruntime (CPU) vs PyTorch eager (CPU) at batch 1: each model is exported once with dynamic batch and size
    (``detrex.deploy.export_onnx``, uint8 images) and timed at every ``--sizes`` in alternating rounds.

    Both sides do the same work: normalization, padding mask, backbone, transformer, top-300 selection and boxes
    at the input size (eager: ``model(batched_inputs)``, which also rescales to ``height``/``width`` -- the input
    size here, a no-op multiply). The images are uint8 (3, H, W) / (1, 3, H, W) arrays in memory before the clock
    starts. onnxruntime uses ``--threads`` intra-op threads (default: its own choice), as torch does."""
    import tempfile

    import numpy as np
    import onnxruntime as ort

    from detrex.deploy.export import export_onnx

    names = C.parse_names(args.models, list(C.OUR_MODELS), "model")
    sizes = parse_sizes(args.sizes)
    device = torch.device("cpu")
    print(f"# bench/inference.py --onnx on {C.machine_info(device)}; onnxruntime {ort.__version__} (CPU)")
    print(f"# {' '.join(sys.argv)}")
    print(f"# batch 1, median of {args.iters} after {args.warmup} warm-up call(s); threads={args.threads or 'default'}")
    opts = ort.SessionOptions()
    if args.threads:
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            model = C.build_ours(name).eval()
            path = os.path.join(tmp, f"{name}.onnx")
            h0, w0 = sizes[0]
            t0 = time.perf_counter()
            export_onnx(model, path, h0, w0, batch=1, dynamic=True)
            export_s = time.perf_counter() - t0
            mb = os.path.getsize(path) / 2**20
            sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
            for h, w in sizes:
                images = C.random_images(1, h, w, device)
                feed = {"images": images[0][None].numpy(), "image_sizes": np.array([[h, w]], dtype=np.int64)}

                def ort_run(feed=feed):
                    return sess.run(None, feed)

                eager = ours_call(model, images)
                med, _ = timed_rounds({"eager": eager, "onnxruntime": ort_run}, device, args.warmup, args.iters, "none")
                ref = eager()[0]["instances"].scores.numpy()
                diff = float(np.abs(np.sort(ort_run()[1][0])[::-1] - ref).max())
                rows.append([name, f"{h}x{w}", C.fmt(med["eager"] * 1e3), C.fmt(med["onnxruntime"] * 1e3),
                             f"{med['onnxruntime'] / med['eager']:.2f}", C.fmt(export_s), C.fmt(mb, 0),
                             f"{diff:.1e}"])
                print(f"  {name:<20} {h}x{w}: eager {med['eager'] * 1e3:9.1f} ms, onnxruntime "
                      f"{med['onnxruntime'] * 1e3:9.1f} ms", flush=True)
            del model, sess
            gc.collect()
    print()
    print(C.format_table(["model", "input (batch 1)", "PyTorch eager ms", "onnxruntime ms", "ort/eager",
                          "export s", "onnx MB", "max score diff"], rows))
    return 0


def graph_breaks(model, images) -> str:
    """``"graphs / breaks"`` that TorchDynamo makes of one eval call (``torch._dynamo.explain``)."""
    try:
        with torch.inference_mode():
            ex = torch._dynamo.explain(model)(
                [{"image": img, "height": img.shape[1], "width": img.shape[2]} for img in images]
            )
        return f"{ex.graph_count} / {ex.graph_break_count}"
    except Exception as e:  # informational column only
        return f"n/a ({type(e).__name__})"


def run_compile(args, names, device):
    """Eager vs ``torch.compile(model)`` (inductor, static shapes) at batch 1; checks the scores agree."""
    wanted = C.parse_names(args.compile_models, list(C.OUR_MODELS), "model")
    rows = []
    for name in [n for n in names if n in wanted]:
        if C.OUR_MODELS[name][0] == "deformable":
            print(f"note: --compile skips {name} (deformable attention is not a compile target)")
            continue
        model = C.build_ours(name).to(device).eval()
        compiled = torch.compile(model, dynamic=False)
        for h, w in parse_sizes(args.compile_sizes):
            images = C.random_images(1, h, w, device)
            eager_fn, comp_fn = ours_call(model, images), ours_call(compiled, images)
            with C.autocast(device, args.amp):
                t0 = time.perf_counter()
                try:
                    out_c = comp_fn()
                except Exception as e:  # report, do not hide: the table says it failed
                    rows.append([name, f"{h}x{w}", "-", "-", "-", "-", f"FAILED: {type(e).__name__}: {e}"[:120], "-"])
                    continue
                C.sync(device)
                compile_s = time.perf_counter() - t0
                out_e = eager_fn()
            diff = (out_c[0]["instances"].scores.float() - out_e[0]["instances"].scores.float()).abs().max().item()
            med, _ = timed_rounds({"eager": eager_fn, "compiled": comp_fn}, device, args.warmup, args.iters, args.amp)
            graphs = graph_breaks(model, images)
            rows.append([name, f"{h}x{w}", C.fmt(med["eager"] * 1e3), C.fmt(med["compiled"] * 1e3),
                         f"{med['eager'] / med['compiled']:.2f}x", C.fmt(compile_s), f"{diff:.1e}", graphs])
            print(f"  compile {name} {h}x{w}: eager {med['eager'] * 1e3:.1f} ms, "
                  f"compiled {med['compiled'] * 1e3:.1f} ms", flush=True)
        del model, compiled
        gc.collect()
    print()
    print(C.format_table(
        ["model", "input (batch 1)", "eager ms", "compiled ms", "speedup", "first call s", "max score diff",
         "graphs / breaks"], rows))


if __name__ == "__main__":
    sys.exit(main())
