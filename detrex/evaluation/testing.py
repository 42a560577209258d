"""Result printing helpers (detectron2 ``evaluation.testing`` names)."""

import logging
from collections import abc
from typing import Dict

__all__ = ["print_csv_format", "flatten_results_dict", "verify_results"]

logger = logging.getLogger(__name__)


def print_csv_format(results: Dict) -> None:
    """Log ``{task: {metric: value}}`` as ``copypaste:`` lines (metric names, then values with 4 decimals);
    per-class entries (names containing "-") are left out."""
    if not (isinstance(results, abc.Mapping) or not len(results)):
        raise TypeError(f"print_csv_format expects a dict of results, got {type(results)}")
    for task, res in results.items():
        if isinstance(res, abc.Mapping):
            important_res = [(k, v) for k, v in res.items() if "-" not in k]
            logger.info("copypaste: Task: {}".format(task))
            logger.info("copypaste: " + ",".join([k[0] for k in important_res]))
            logger.info("copypaste: " + ",".join(["{0:.4f}".format(k[1]) for k in important_res]))
        else:
            logger.info(f"copypaste: {task}={res}")


def flatten_results_dict(results: Dict) -> Dict:
    """``{"bbox": {"AP": 1}}`` -> ``{"bbox/AP": 1}`` (nested dicts joined with "/")."""
    r = {}
    for k, v in results.items():
        if isinstance(v, abc.Mapping):
            for kk, vv in flatten_results_dict(v).items():
                r[k + "/" + kk] = vv
        else:
            r[k] = v
    return r


def verify_results(expected_results, results: Dict) -> bool:
    """Check ``results`` against ``[(task, metric, expected, tolerance), ...]``; logs and returns success."""
    if not expected_results:
        return True
    import numpy as np

    ok = True
    for task, metric, expected, tolerance in expected_results:
        actual = results[task].get(metric, None)
        if actual is None or not np.isfinite(actual) or abs(actual - expected) > tolerance:
            ok = False
            logger.error(
                f"Result verification failed for {task}/{metric}: expected {expected} +- {tolerance}, got {actual}"
            )
    logger.info("Results verification " + ("passed" if ok else "failed"))
    return ok
