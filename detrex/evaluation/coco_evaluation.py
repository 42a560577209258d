"""`COCOEvaluator`: COCO bbox AP for detectron2-style model outputs (follows detectron2's COCOEvaluator).

Predictions ``{"instances": Instances(pred_boxes=Boxes XYXY absolute ORIGINAL-image pixels, scores (N,),
pred_classes (N,) contiguous ids)}`` are converted to COCO results (XYWH, dataset category ids through the
reverse of metadata ``thing_dataset_id_to_contiguous_id``), gathered to rank 0, written to
``<output_dir>/coco_instances_results.json`` and evaluated with COCOeval (faster-coco-eval when installed and
``use_fast_impl``, else pycocotools), maxDets ``[1, 10, 100]`` per image per category.

Results: ``OrderedDict(bbox={"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>", ...})`` in percent (class
names from the metadata's ``thing_classes``, else from the json's ``categories``);
NaN where COCOeval cannot compute a value (e.g. no ground truth of that size/class). No detections at all ->
0.0 (NaN for classes without ground truth) and a warning. A predicted class id outside ``[0, num_classes)``
-> ``ValueError`` naming the dataset, the id and ``num_classes``.
"""

import contextlib
import copy
import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.datasets.coco import _make_coco_api, convert_to_coco_json, read_coco_json
from ..structures import BoxMode
from ..utils import comm
from .evaluator import DatasetEvaluator

__all__ = ["COCOEvaluator", "instances_to_coco_json"]

logger = logging.getLogger(__name__)

_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def _fast_coco_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except Exception:
        return False
    return True


def instances_to_coco_json(instances, img_id) -> List[Dict]:
    """``Instances`` (pred_boxes XYXY, scores, pred_classes) -> COCO result dicts with XYWH boxes (contiguous
    class ids; mapped to dataset ids in :meth:`COCOEvaluator.evaluate`)."""
    num_instance = len(instances)
    if num_instance == 0:
        return []
    boxes = instances.pred_boxes.tensor.detach().cpu().numpy()  # float32, converted in float32 like detectron2
    boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()
    return [
        {"image_id": img_id, "category_id": int(classes[k]), "bbox": boxes[k], "score": float(scores[k])}
        for k in range(num_instance)
    ]


class COCOEvaluator(DatasetEvaluator):
    """COCO bbox evaluation (see module docstring).

    Args:
        dataset_name: a registered dataset; its metadata needs ``json_file`` (else the dataset dicts are
            converted to ``<output_dir>/<name>_coco_format.json``) and ``thing_dataset_id_to_contiguous_id``.
        tasks: only ``("bbox",)`` is supported (default).
        distributed: gather predictions from all processes to rank 0 (other ranks return ``{}``).
        output_dir: where ``coco_instances_results.json`` and ``instances_predictions.pth`` are written.
        max_dets_per_image: last maxDets value (default 100).
        use_fast_impl: use faster-coco-eval when it is installed.
        allow_cached_coco: reuse a previously converted json in ``output_dir``.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks=None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
        use_fast_impl: bool = True,
        kpt_oks_sigmas=(),
        allow_cached_coco: bool = True,
    ):
        self._distributed = distributed
        self._output_dir = output_dir
        self._dataset_name = dataset_name
        tasks = tuple(tasks) if tasks is not None else ("bbox",)
        unsupported = [t for t in tasks if t != "bbox"]
        if unsupported:
            raise NotImplementedError(f"COCOEvaluator supports only the 'bbox' task, got {unsupported}")
        self._tasks = tasks
        self._use_fast_impl = bool(use_fast_impl) and _fast_coco_available()
        self._max_dets_per_image = [1, 10, 100] if max_dets_per_image is None else [1, 10, int(max_dets_per_image)]
        self._cpu_device = torch.device("cpu")

        self._metadata = MetadataCatalog.get(dataset_name)
        if not hasattr(self._metadata, "json_file"):
            if output_dir is None:
                raise ValueError(
                    f"COCOEvaluator: dataset '{dataset_name}' has no 'json_file' in its metadata, so its dicts must be "
                    "converted to a COCO json; pass output_dir=... to say where."
                )
            cache_path = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
            logger.info(f"Trying to convert '{dataset_name}' to COCO format ...")
            convert_to_coco_json(dataset_name, cache_path, allow_cached=allow_cached_coco)
            self._metadata.json_file = cache_path
        json_file = self._metadata.json_file
        if not os.path.isfile(json_file):
            # datasets generated on first load (e.g. shapes) create their json here; others raise a clear error
            DatasetCatalog.get(dataset_name)
            if not os.path.isfile(json_file):
                raise FileNotFoundError(
                    f"COCOEvaluator: the json_file of dataset '{dataset_name}' does not exist: '{json_file}'"
                )
        self._coco_api = _make_coco_api(read_coco_json(json_file))
        self._do_evaluation = "annotations" in self._coco_api.dataset
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is None:  # only possible for a json never loaded through load_coco_json
            id_map = {cid: i for i, cid in enumerate(sorted(self._coco_api.getCatIds()))}
        self._id_map = dict(id_map)
        self._num_classes = len(self._id_map)
        if sorted(self._id_map.values()) != list(range(self._num_classes)):
            raise ValueError(
                f"Dataset '{dataset_name}': thing_dataset_id_to_contiguous_id values must be 0..K-1, got {self._id_map}"
            )
        self._reverse_id_map = {v: k for k, v in self._id_map.items()}
        self._class_names = self._metadata.get("thing_classes")
        if self._class_names is None:  # metadata of a dataset never loaded in this process: the json's names
            cats = {c["id"]: c.get("name", str(c["id"])) for c in self._coco_api.dataset.get("categories", [])}
            self._class_names = [cats.get(self._reverse_id_map[i], f"class {i}") for i in range(self._num_classes)]
        self.reset()

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        """Convert each output's ``instances`` (moved to CPU) to COCO result dicts."""
        for input, output in zip(inputs, outputs):
            prediction = {"image_id": input["image_id"]}
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                if len(instances):
                    bad = instances.pred_classes[
                        (instances.pred_classes < 0) | (instances.pred_classes >= self._num_classes)
                    ]
                    if bad.numel():
                        raise ValueError(
                            f"COCOEvaluator('{self._dataset_name}'): a prediction has class id {int(bad[0])}, but the dataset "
                            f"has num_classes={self._num_classes} (valid ids 0..{self._num_classes - 1}). Set the model's "
                            f"num_classes to {self._num_classes} (from MetadataCatalog.get('{self._dataset_name}').thing_classes)."
                        )
                prediction["instances"] = instances_to_coco_json(instances, input["image_id"])
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def evaluate(self, img_ids=None):
        """Gather, write the results json, run COCOeval. Returns ``{}`` on non-main processes."""
        if self._distributed:
            comm.synchronize()
            predictions = comm.gather(self._predictions, dst=0)
            predictions = list(itertools.chain(*predictions))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions

        if len(predictions) == 0:
            logger.warning("[COCOEvaluator] Did not receive valid predictions (no image was processed).")
            return {}

        if self._output_dir:
            os.makedirs(self._output_dir, exist_ok=True)
            torch.save(predictions, os.path.join(self._output_dir, "instances_predictions.pth"))

        self._results = OrderedDict()
        self._eval_predictions(predictions, img_ids=img_ids)
        return copy.deepcopy(self._results)

    def _eval_predictions(self, predictions, img_ids=None):
        coco_results = list(itertools.chain(*[x.get("instances", []) for x in predictions]))
        unknown = sorted({p["image_id"] for p in predictions} - set(self._coco_api.getImgIds()), key=str)
        if unknown:
            raise ValueError(
                f"COCOEvaluator('{self._dataset_name}'): {len(unknown)} evaluated image id(s) are not in the dataset's "
                f"json '{self._metadata.json_file}' (first: {unknown[:5]}). Evaluate on the same dataset as the loader."
            )
        for result in coco_results:
            result["category_id"] = self._reverse_id_map[result["category_id"]]

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            logger.info(f"Saving results to {file_path}")
            with open(file_path, "w") as f:
                f.write(json.dumps(coco_results))

        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return
        logger.info(
            "Evaluating predictions with {} COCO API...".format(
                "faster-coco-eval" if self._use_fast_impl else "official (pycocotools)"
            )
        )
        for task in sorted(self._tasks):
            if len(coco_results) == 0:
                logger.warning(f"[COCOEvaluator] No predictions from the model on '{self._dataset_name}': AP is 0.")
                self._results[task] = self._zero_results()
                continue
            coco_eval = self._run_cocoeval(coco_results, task, img_ids)
            self._results[task] = self._derive_coco_results(coco_eval, task, self._class_names)

    def _zero_results(self) -> Dict[str, float]:
        res = {m: 0.0 for m in _METRICS}
        class_names = self._class_names
        if class_names and len(class_names) > 1:
            for idx, name in enumerate(class_names):
                has_gt = len(self._coco_api.getAnnIds(catIds=[self._reverse_id_map[idx]])) > 0
                res["AP-" + name] = 0.0 if has_gt else float("nan")
        return res

    def _run_cocoeval(self, coco_results, iou_type, img_ids):
        if self._use_fast_impl:
            try:
                return self._run_fast(coco_results, iou_type, img_ids)
            except Exception as e:  # an optional accelerator must never change the outcome
                logger.warning(f"faster-coco-eval failed ({e!r}); falling back to pycocotools")
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = self._coco_api.loadRes(coco_results)
        coco_eval = COCOeval(self._coco_api, coco_dt, iou_type)
        return self._evaluate(coco_eval, img_ids)

    def _run_fast(self, coco_results, iou_type, img_ids):
        from faster_coco_eval import COCO as FastCOCO
        from faster_coco_eval import COCOeval_faster

        gt = FastCOCO(copy.deepcopy(self._coco_api.dataset))
        dt = gt.loadRes([dict(r) for r in coco_results])  # loadRes only adds keys: a shallow copy suffices
        coco_eval = COCOeval_faster(gt, dt, iou_type, print_function=logger.debug)
        return self._evaluate(coco_eval, img_ids)

    def _evaluate(self, coco_eval, img_ids):
        coco_eval.params.maxDets = list(self._max_dets_per_image)
        if img_ids is not None:
            coco_eval.params.imgIds = img_ids
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            coco_eval.evaluate()
            coco_eval.accumulate()
            if self._max_dets_per_image[-1] == 100:
                coco_eval.summarize()
        if buf.getvalue().strip():
            logger.info("COCOeval output:\n" + buf.getvalue())
        return coco_eval

    @staticmethod
    def _ap_from_precision(coco_eval, iou: Optional[float] = None, area: str = "all") -> float:
        """Mean precision at the last maxDets (like COCOeval.summarize), -1 if undefined."""
        p = coco_eval.params
        s = coco_eval.eval["precision"][:, :, :, list(p.areaRngLbl).index(area), -1]
        if iou is not None:
            s = s[np.isclose(np.asarray(p.iouThrs), iou)]
        s = s[s > -1]
        return float(np.mean(s)) if s.size else -1.0

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None) -> Dict[str, float]:
        if self._max_dets_per_image[-1] == 100:
            stats = [float(x) for x in coco_eval.stats[:6]]
        else:
            stats = [
                self._ap_from_precision(coco_eval),
                self._ap_from_precision(coco_eval, 0.5),
                self._ap_from_precision(coco_eval, 0.75),
                self._ap_from_precision(coco_eval, area="small"),
                self._ap_from_precision(coco_eval, area="medium"),
                self._ap_from_precision(coco_eval, area="large"),
            ]
        results = {m: (s * 100 if s >= 0 else float("nan")) for m, s in zip(_METRICS, stats)}
        logger.info(f"Evaluation results for {iou_type}: " + ", ".join(f"{k}={v:.3f}" for k, v in results.items()))
        if not np.isfinite(sum(results.values())):
            logger.info("Some metrics cannot be computed and are shown as NaN.")
        if not class_names or len(class_names) <= 1:
            return results
        precisions = coco_eval.eval["precision"]  # (iou, recall, cls, area range, max dets)
        cat_ids = list(coco_eval.params.catIds)
        per_class = []
        for idx, name in enumerate(class_names):
            dataset_id = self._reverse_id_map.get(idx)
            if dataset_id not in cat_ids:
                ap = float("nan")
            else:
                precision = precisions[:, :, cat_ids.index(dataset_id), 0, -1]
                precision = precision[precision > -1]
                ap = float(np.mean(precision)) * 100 if precision.size else float("nan")
            per_class.append((name, ap))
            results["AP-" + name] = ap
        logger.info(f"Per-category {iou_type} AP: " + ", ".join(f"{n}: {a:.3f}" for n, a in per_class))
        return results
