#!/usr/bin/env python
"""Check a detection dataset before a long run: read every annotation, decode every image (in parallel).

    python tools/check_dataset.py --dataset shapes_train shapes_val
    python tools/check_dataset.py --config-file my_config.py            # the config's train/test datasets
    python tools/check_dataset.py --config-file my_config.py --dataset trees_train
    python tools/check_dataset.py --json annotations/train.json --images images/train

Reports, per problem kind, the count and the first offending ids/files: unreadable or truncated images, image
size differing from the json, boxes with NaN or width/height <= 0, boxes outside the image, category ids not in
``categories``, duplicate annotation/image ids, annotations of unknown images (errors) and images without
annotations (info); see ``detrex/data/dataset_check.py``. ``--config-file`` runs the config file first, so
datasets it registers (``register_coco_instances`` at its top) can be named.

Exit code: 0 no errors, 1 errors found, 2 bad command line or unreadable json / unknown dataset.
``--report FILE`` also writes the findings as json.
"""
import argparse
import json
import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", nargs="+", default=None, metavar="NAME", help="registered dataset name(s)")
    p.add_argument("--config-file", default=None, metavar="FILE",
                   help="a LazyConfig whose top registers datasets; without --dataset its "
                        "dataloader.train/test datasets are checked")
    p.add_argument("--json", default=None, metavar="FILE", help="a COCO instances json (with --images)")
    p.add_argument("--images", default=None, metavar="DIR", help="the folder the json's file_name entries are in")
    p.add_argument("--workers", type=int, default=default_workers(),
                   help="processes decoding images (default: the CPUs available, %(default)s here)")
    p.add_argument("--box-tolerance", type=float, default=1.0,
                   help="pixels a box may reach outside the image before it is reported (default 1)")
    p.add_argument("--max-examples", type=int, default=5, help="offending items listed per kind (default 5)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--report", default=None, metavar="FILE", help="also write the findings as json")
    return p


class UsageError(Exception):
    pass


def _names_from_config(path: str, names):
    from detrex.config import LazyConfig, try_get_key

    if not os.path.isfile(path):
        raise UsageError(f"--config-file {path!r} does not exist")
    cfg = LazyConfig.load(path)  # runs the file: its register_coco_instances(...) calls register the datasets
    if names:
        return names
    found = []
    for split in ("train", "test"):
        value = try_get_key(cfg, f"dataloader.{split}.dataset.names")
        for n in ([value] if isinstance(value, str) else list(value or [])):
            if n not in found:
                found.append(n)
    if not found:
        raise UsageError(f"{path!r} has no dataloader.train/test.dataset.names; pass --dataset NAME")
    return found


def collect_reports(args):
    """One :class:`~detrex.data.dataset_check.DatasetReport` per dataset named on the command line."""
    from detrex.data.dataset_check import check_coco_json, check_registered

    if (args.json is None) != (args.images is None):
        raise UsageError("--json and --images go together")
    if args.json is None and not args.dataset and not args.config_file:
        raise UsageError("give --dataset NAME [NAME ...], --config-file FILE, or --json FILE --images DIR")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    opts = dict(workers=args.workers, progress=not args.no_progress, box_tolerance=args.box_tolerance,
                max_examples=args.max_examples)
    reports = []
    if args.json is not None:
        if not os.path.isdir(args.images):
            raise UsageError(f"--images {args.images!r} is not a folder")
        reports.append(check_coco_json(args.json, args.images, **opts))
    names = list(args.dataset or [])
    if args.config_file:
        names = _names_from_config(args.config_file, names)
    for name in names:
        reports.append(check_registered(name, **opts))
    return reports


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    from detrex.config import ConfigFileNotFoundError, ConfigKeyError
    from detrex.data.catalog import DatasetNotRegisteredError

    try:
        reports = collect_reports(args)
    except (UsageError, DatasetNotRegisteredError, ConfigFileNotFoundError, ConfigKeyError, FileNotFoundError,
            ValueError) as e:  # bad command line, unknown dataset, missing or invalid json
        print(f"check_dataset.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2

    errors = 0
    for r in reports:
        print(f"\n## {r.name}: {r.num_images} images, {r.num_annotations} annotations, {r.num_categories} categories")
        print(f"decoded {r.num_images} images in {r.decode_seconds:.1f} s ({r.images_per_second:.0f} images/s, "
              f"{r.workers} worker process(es))")
        print(r.format())
        print(f"{r.name}: {r.num_errors} error(s)" + (" -- fix them before training" if r.num_errors else ", OK"))
        errors += r.num_errors
    if args.report:
        with open(args.report, "w") as f:
            json.dump([r.to_dict() for r in reports], f, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
