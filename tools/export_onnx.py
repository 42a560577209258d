#!/usr/bin/env python
"""Export the eval-mode detector of a config to ONNX and check the file with onnxruntime.

    python tools/export_onnx.py --config-file CFG --output model.onnx [--size HxW] [--batch N] [--dynamic]
        [--opset 17] [--input-dtype uint8|float32] [--check-size HxW] [--no-check] [--box-tol 1e-3]
        [--score-tol 1e-4] [key=value ...]

``key=value`` overrides as for ``tools/train_net.py`` (e.g. ``train.init_checkpoint=output/x/model_final.pth``;
without a checkpoint the model keeps its random init, with a warning). A KS-DETR config exports its student (the
eval graph). Deformable attention is exported through its pure-PyTorch ``grid_sample`` path.

Graph inputs/outputs (see `detrex.deploy.export`): ``images`` (B, 3, H, W) uint8 (or float32), 0-255, the config's
channel order, resized like the test mapper and padded bottom/right; ``image_sizes`` (B, 2) int64 unpadded (h, w);
-> ``boxes`` (B, k, 4) absolute xyxy at the input size, ``scores`` (B, k), ``classes`` (B, k) int64.

``--size`` defaults to the config's test-time resize (short side x max size, e.g. 800x1333). Without
``--dynamic`` batch and size are fixed; with it both are dynamic axes.

The check (skipped with ``--no-check``) runs the file with onnxruntime (CPU) and the PyTorch model on the export
inputs and, with ``--dynamic``, on a second size (``--check-size``, default 3/4 of H x 5/4 of W) with one more image
whose lower/right part is padding, and prints max |diff| of boxes (relative to the larger input side, and in
pixels), scores and class disagreements.

Exit status: 0 exported (and checked); 1 the check failed (the file is kept; the message names the worst output);
2 bad arguments, config, override or checkpoint (one ``error:`` line, no traceback).
"""
import argparse
import logging
import os
import sys
import time

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

PROG = "export_onnx.py"


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 800x1333), got {text!r}")
    if h <= 0 or w <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, usage="%(prog)s --config-file CFG --output FILE [options] [key=value ...]",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig .py of the detector")
    p.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--size", type=_size, default=None, metavar="HxW",
                   help="export input size (default: the config's test resize, short x max side)")
    p.add_argument("--batch", type=int, default=1, help="export batch size (default 1)")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch and image size")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17, at least 16)")
    p.add_argument("--input-dtype", choices=("uint8", "float32"), default="uint8", help="dtype of `images`")
    p.add_argument("--check-size", type=_size, default=None, metavar="HxW",
                   help="second size checked with --dynamic (default 3/4 H x 5/4 W)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--box-tol", type=float, default=None, help="box tolerance, relative to the image size (1e-3)")
    p.add_argument("--score-tol", type=float, default=None, help="score tolerance, absolute (1e-4)")
    # key=value config overrides go anywhere on the line (collected by parse_known_args)
    return p


def _error(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    parser = get_parser()
    args, unknown = parser.parse_known_args(argv)
    opts = [o for o in unknown if o != "--"]
    bad = [o for o in opts if "=" not in o or o.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if args.batch < 1:
        return _error(f"--batch must be >= 1, got {args.batch}")
    if args.opset < 16:
        return _error(f"--opset {args.opset}: grid_sample (deformable attention) needs opset 16 or later")

    from demo.predictor import USER_ERRORS, build_model, load_config
    from detrex.deploy.export import _resize_settings, example_inputs, export_onnx
    from detrex.deploy.parity import BOX_TOL, SCORE_TOL, check_parity

    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        import onnx  # noqa: F401
        if not args.no_check:
            import onnxruntime  # noqa: F401
    except ImportError as e:
        return _error(f"{e.name} is not installed: pip install -e \".[export]\" (onnx, onnxruntime)")

    # -------------------------------------------------------- config, model, checkpoint: failures exit 2
    try:
        cfg = load_config(args.config_file, opts)
        resize = _resize_settings(cfg)
        model = build_model(cfg, device="cpu")
    except USER_ERRORS as e:
        return _error(str(e))
    except Exception as e:  # a config that does not load or instantiate, an unreadable checkpoint
        return _error(f"could not build the model of {args.config_file}: {type(e).__name__}: {e}")
    if not hasattr(model, "select_topk"):
        return _error(f"{type(model).__name__} is not a DETR-family detector (DETRBase); nothing to export")
    height, width = args.size or (resize["min_size"], resize["max_size"] or resize["min_size"])

    # ---------------------------------------------------------------------------------------- export
    t0 = time.perf_counter()
    try:
        export_onnx(model, args.output, height, width, batch=args.batch, dynamic=args.dynamic, opset=args.opset,
                    input_dtype=args.input_dtype, cfg=cfg)
    except OSError as e:
        return _error(f"cannot write {args.output}: {e}")
    mb = os.path.getsize(args.output) / 2**20
    kind = "dynamic batch and size" if args.dynamic else f"fixed batch {args.batch}, {height}x{width}"
    print(f"{PROG}: wrote {args.output} ({mb:.1f} MB, opset {args.opset}, {kind}, {args.input_dtype} images) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    if args.no_check:
        return 0

    # ----------------------------------------------------------------------------------------- check
    box_tol = BOX_TOL if args.box_tol is None else args.box_tol
    score_tol = SCORE_TOL if args.score_tol is None else args.score_tol
    inputs = [example_inputs(args.batch, height, width, args.input_dtype)]
    if args.dynamic:
        h2, w2 = args.check_size or (max(32, height * 3 // 4), max(32, width * 5 // 4))
        sizes = [(h2, w2)] * args.batch + [(h2 - h2 // 8, w2 - w2 // 8)]  # one more image, partly padding
        inputs.append(example_inputs(args.batch + 1, h2, w2, args.input_dtype, seed=1, image_sizes=sizes))
    reports = check_parity(args.output, model, inputs, box_tol=box_tol, score_tol=score_tol)
    for r in reports:
        print(f"{PROG}: onnxruntime vs PyTorch, {r.line()}", flush=True)
    failed = [r for r in reports if not r.ok]
    if failed:
        worst = failed[0]
        value = {"boxes": f"{worst.box_diff:.2e} > {box_tol:g} (relative)",
                 "scores": f"{worst.score_diff:.2e} > {score_tol:g}",
                 "classes": f"{worst.class_mismatches} detections without a matching class"}[worst.worst]
        b, _, h, w = worst.shape
        print(f"{PROG}: check FAILED: worst output '{worst.worst}' ({value}) at batch {b} x {h}x{w}; "
              f"the file is kept: {args.output}", file=sys.stderr)
        return 1
    print(f"{PROG}: check passed (tolerances: boxes {box_tol:g} of the image size, scores {score_tol:g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
