#!/usr/bin/env python
"""Run a detector on images (or a video) and write them with boxes, class names and scores.

    python demo/demo.py --config-file CFG --input img.jpg dir/ "imgs/*.png" --output out/ \
        --confidence-threshold 0.5 --opts train.init_checkpoint=output/model_final.pth

* ``--input``: image files, folders (every image inside, sorted) and glob patterns, or one video file
  (needs OpenCV, ``pip install opencv-python``); the video is written to ``--output`` as ``<name>.mp4``.
* ``--output``: a folder (created); each image is written as ``<name>.png``. With one input image it may be a
  file name ending in an image extension.
* Overrides (``key=value``) after ``--opts`` (or at the end of the command line) go through
  ``LazyConfig.apply_overrides``; the checkpoint is ``train.init_checkpoint``.
* ``--onnx model.onnx``: run an exported model (``tools/export_onnx.py``) with onnxruntime instead (no checkpoint;
  the config still gives the test-time resize and the class names), to check an export on your own images.
* Prints the number of detections above the threshold (per class name) and the time per image. Works on CPU.
* Class names come from the config's test dataset (``dataloader.test.dataset.names``): its metadata, or the
  ``categories`` of its COCO json when the dataset was registered but not loaded.
"""
import argparse
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # demo/ (this script's folder)

from predictor import (USER_ERRORS, DefaultPredictor, OnnxDemoPredictor, UserInputError,  # noqa: E402
                       VisualizationDemo, default_device, load_config)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig .py/.yaml of the model")
    p.add_argument("--input", nargs="+", required=True, help="image files, folders, globs, or one video file")
    p.add_argument("--output", required=True, help="output folder (or image file for a single input image)")
    p.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score of drawn boxes")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="run this exported model (tools/export_onnx.py) with onnxruntime instead of the PyTorch "
                        "model; the config gives the test-time resize and class names, no checkpoint is needed")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="key=value config overrides")
    return p


def split_inputs_and_overrides(inputs):
    """Trailing ``key=value`` items given after ``--input`` (not existing paths) are overrides."""
    paths, opts = [], []
    for item in inputs:
        if "=" in item and not os.path.exists(item) and not glob.glob(item):
            opts.append(item)
        else:
            paths.append(item)
    return paths, opts


def expand_inputs(items):
    """Files, folders (images inside, sorted) and globs -> (image paths, video paths)."""
    images, videos = [], []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTS))
            if not found:
                raise UserInputError(f"--input folder {item!r} holds no images ({', '.join(IMAGE_EXTS)})")
            images += found
        elif os.path.isfile(item):
            (videos if item.lower().endswith(VIDEO_EXTS) else images).append(item)
        else:
            matches = sorted(glob.glob(os.path.expanduser(item)))
            if not matches:
                raise UserInputError(f"--input {item!r}: no such file, folder or matching glob pattern")
            for m in matches:
                (videos if m.lower().endswith(VIDEO_EXTS) else images).append(m)
    return images, videos


def output_path(output: str, image_path: str, n_inputs: int) -> str:
    if n_inputs == 1 and output.lower().endswith(IMAGE_EXTS):
        return output
    return os.path.join(output, os.path.splitext(os.path.basename(image_path))[0] + ".png")


def run_video(demo: VisualizationDemo, path: str, output: str) -> None:
    try:
        import cv2
    except ImportError as e:
        raise UserInputError(f"{path!r} is a video; reading videos needs OpenCV: pip install opencv-python") from e
    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise UserInputError(f"OpenCV cannot read the video {path!r}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    os.makedirs(output, exist_ok=True)
    out_file = os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".mp4")
    writer, n = None, 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        t0 = time.perf_counter()
        predictions, vis = demo.run_on_image(frame[:, :, ::-1].copy())  # OpenCV gives BGR
        if writer is None:
            writer = cv2.VideoWriter(out_file, cv2.VideoWriter_fourcc(*"mp4v"), fps, (vis.shape[1], vis.shape[0]))
        writer.write(vis[:, :, ::-1])
        n += 1
        print(f"{path} frame {n}: {_count(predictions, demo.confidence_threshold)} detections "
              f"in {time.perf_counter() - t0:.3f}s", flush=True)
    cap.release()
    if writer is not None:
        writer.release()
    print(f"wrote {out_file} ({n} frames)")


def _count(predictions, threshold: float) -> int:
    return int((predictions["instances"].scores >= threshold).sum())


def _per_class(predictions, threshold: float, metadata) -> str:
    """``"tree: 3, car: 1"``: detections above ``threshold`` per class name (the labels drawn on the image)."""
    from collections import Counter

    from detrex.utils.visualizer import class_names_from_metadata

    inst = predictions["instances"]
    names = class_names_from_metadata(metadata)
    classes = inst.pred_classes[inst.scores >= threshold].tolist()
    counts = Counter(names[c] if names and 0 <= c < len(names) else f"class {c}" for c in classes)
    return ", ".join(f"{k}: {v}" for k, v in counts.most_common())


def main(argv=None) -> int:
    parser = get_parser()
    args, unknown = parser.parse_known_args(argv)
    bad = [u for u in unknown if "=" not in u or u.startswith("-")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    try:
        paths, extra_opts = split_inputs_and_overrides(args.input)
        cfg = load_config(args.config_file, list(args.opts) + extra_opts + unknown)
        images, videos = expand_inputs(paths)
        if videos and (images or len(videos) > 1):
            raise UserInputError("--input: give either images or a single video file, not both")
        from detrex.data.detection_utils import read_image

        if args.onnx:
            predictor = OnnxDemoPredictor(cfg, args.onnx)
        else:
            predictor = DefaultPredictor(cfg, device=default_device(args.device))
        demo = VisualizationDemo(predictor, confidence_threshold=args.confidence_threshold)
        if videos:
            run_video(demo, videos[0], args.output)
            return 0
        for path in images:
            img = read_image(path, format="RGB")
            t0 = time.perf_counter()
            predictions, vis = demo.run_on_image(img)
            dt = time.perf_counter() - t0
            out = output_path(args.output, path, len(images))
            from detrex.utils.visualizer import save_image

            save_image(vis, out)
            n = _count(predictions, args.confidence_threshold)
            labels = f" [{_per_class(predictions, args.confidence_threshold, demo.predictor.metadata)}]" if n else ""
            print(f"{path}: {n} detections (score >= {args.confidence_threshold}){labels} in {dt:.3f}s -> {out}",
                  flush=True)
    except USER_ERRORS as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
