"""Evaluator interface and the inference loop (detectron2 ``evaluation.evaluator`` semantics)."""

import datetime
import logging
import time
from collections import OrderedDict, abc
from contextlib import ExitStack, contextmanager
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import nn

from ..utils import comm
from ..utils.logger import log_every_n_seconds

__all__ = ["DatasetEvaluator", "DatasetEvaluators", "inference_on_dataset", "inference_context"]

logger = logging.getLogger(__name__)


class DatasetEvaluator:
    """Accumulates (inputs, outputs) pairs with :meth:`process` and computes metrics in :meth:`evaluate`.

    ``evaluate`` returns ``{task: {metric: value}}`` on the main process and may return ``{}``/None elsewhere.
    """

    def reset(self) -> None:
        pass

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        pass

    def evaluate(self) -> Optional[Dict]:
        pass


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators run together; results are merged (duplicate keys are an error)."""

    def __init__(self, evaluators: Sequence[DatasetEvaluator]):
        super().__init__()
        self._evaluators = list(evaluators)

    def reset(self):
        for e in self._evaluators:
            e.reset()

    def process(self, inputs, outputs):
        for e in self._evaluators:
            e.process(inputs, outputs)

    def evaluate(self):
        results = OrderedDict()
        for e in self._evaluators:
            result = e.evaluate()
            if comm.is_main_process() and result is not None:
                for k, v in result.items():
                    if k in results:
                        raise KeyError(f"Different evaluators produce results with the same key {k}")
                    results[k] = v
        return results


@contextmanager
def inference_context(model: nn.Module):
    """Put ``model`` in eval mode for the duration, then restore its previous training flag."""
    training_mode = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training_mode)


def inference_on_dataset(
    model, data_loader, evaluator: Union[DatasetEvaluator, List[DatasetEvaluator], None], callbacks=None
) -> Dict:
    """Run ``model`` on every batch of ``data_loader`` and evaluate with ``evaluator``.

    The model is in eval mode (restored afterwards) under ``torch.no_grad()``. Progress (per-image data, compute
    and eval time, ETA) is logged at most every 5 s; the first ``min(5, N - 1)`` batches are excluded from the
    timing. At the end: total and pure-compute time per batch. ``evaluator=None`` only runs the model.

    Returns:
        ``evaluator.evaluate()`` (``{}`` on non-main processes or without an evaluator).
    """
    num_devices = comm.get_world_size()
    try:
        total = len(data_loader)
    except TypeError:
        total = None
    logger.info(f"Start inference on {total if total is not None else 'an unknown number of'} batches")
    if evaluator is None:
        evaluator = DatasetEvaluators([])
    if isinstance(evaluator, abc.MutableSequence):
        evaluator = DatasetEvaluators(evaluator)
    evaluator.reset()

    num_warmup = min(5, total - 1) if total else 0
    num_warmup = max(num_warmup, 0)
    start_time = time.perf_counter()
    total_data_time = total_compute_time = total_eval_time = 0.0
    num_done = 0
    callbacks = callbacks or {}
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        start_data_time = time.perf_counter()
        for idx, inputs in enumerate(data_loader):
            total_data_time += time.perf_counter() - start_data_time
            if idx == num_warmup:
                start_time = time.perf_counter()
                total_data_time = total_compute_time = total_eval_time = 0.0
            callbacks.get("before_inference", lambda: None)()
            start_compute_time = time.perf_counter()
            outputs = model(inputs)
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
            total_compute_time += time.perf_counter() - start_compute_time
            callbacks.get("after_inference", lambda: None)()
            start_eval_time = time.perf_counter()
            evaluator.process(inputs, outputs)
            total_eval_time += time.perf_counter() - start_eval_time
            num_done = idx + 1

            iters_after_start = idx + 1 - num_warmup * int(idx >= num_warmup)
            data_s = total_data_time / iters_after_start
            compute_s = total_compute_time / iters_after_start
            eval_s = total_eval_time / iters_after_start
            total_s = (time.perf_counter() - start_time) / iters_after_start
            if idx >= num_warmup * 2 or compute_s > 5:
                eta = str(datetime.timedelta(seconds=int(total_s * (total - idx - 1)))) if total is not None else "?"
                log_every_n_seconds(
                    logging.INFO,
                    f"Inference done {idx + 1}/{total}. Dataloading: {data_s:.4f} s/iter. Inference: {compute_s:.4f} s/iter. "
                    f"Eval: {eval_s:.4f} s/iter. Total: {total_s:.4f} s/iter. ETA={eta}",
                    n=5,
                    name=__name__,
                )
            start_data_time = time.perf_counter()

    total_time = time.perf_counter() - start_time
    timed = max(num_done - num_warmup, 1)
    logger.info(
        "Total inference time: {} ({:.6f} s / iter per device, on {} devices)".format(
            str(datetime.timedelta(seconds=total_time)), total_time / timed, num_devices
        )
    )
    logger.info(
        "Total inference pure compute time: {} ({:.6f} s / iter per device, on {} devices)".format(
            str(datetime.timedelta(seconds=int(total_compute_time))), total_compute_time / timed, num_devices
        )
    )
    results = evaluator.evaluate()
    # an evaluator may return None; normalize to {} so callers can iterate
    if results is None:
        results = {}
    return results
