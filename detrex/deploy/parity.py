"""onnxruntime vs PyTorch: the exported detector's outputs compared with the eager `ExportableDetector`.

Measures, per input batch (``images`` (B, 3, H, W), ``image_sizes`` (B, 2)):

- ``boxes``: max |difference| of corresponding boxes, in pixels and relative to the larger input side max(H, W)
  (the documented tolerance, ``BOX_TOL`` = 1e-3, is on the relative value);
- ``scores``: max |difference| of the score lists (both sorted decreasingly), absolute (``SCORE_TOL`` = 1e-4);
- ``classes``: the number of detections whose class has no counterpart.

Top-k ties: two (query, class) pairs whose scores differ by less than the rounding of either backend may come out
in either order. A detection whose box or class differs from the one at the same rank is therefore matched with
any PyTorch detection of the same image and class whose score is within ``score_tol``; only when none matches does
it count as a difference.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["BOX_TOL", "SCORE_TOL", "ParityReport", "compare_outputs", "check_parity"]

BOX_TOL = 1e-3
SCORE_TOL = 1e-4


@dataclass
class ParityReport:
    """One input batch: shape ``(B, 3, H, W)``, the differences described in the module docstring, and ``ok``
    (all within tolerance) / ``worst`` (the output furthest above, or closest to, its tolerance)."""

    shape: Tuple[int, ...]
    box_diff: float
    box_diff_px: float
    score_diff: float
    class_mismatches: int
    box_tol: float = BOX_TOL
    score_tol: float = SCORE_TOL
    ok: bool = field(init=False)
    worst: str = field(init=False)

    def __post_init__(self):
        ratios = {"boxes": self.box_diff / self.box_tol, "scores": self.score_diff / self.score_tol}
        if self.class_mismatches:
            ratios["classes"] = float("inf")
        self.worst = max(ratios, key=ratios.get)
        self.ok = all(r <= 1.0 for r in ratios.values())

    def line(self) -> str:
        b, _, h, w = self.shape
        status = "ok" if self.ok else f"FAILED (worst: {self.worst})"
        return (f"batch {b} x {h}x{w}: max |diff| boxes {self.box_diff:.2e} of the image size ({self.box_diff_px:.2e} px;"
                f" tol {self.box_tol:g}), scores {self.score_diff:.2e} (tol {self.score_tol:g}), classes "
                f"{self.class_mismatches} differing: {status}")


def _compare_image(boxes_o, scores_o, classes_o, boxes_t, scores_t, classes_t, score_tol) -> Tuple[float, float, int]:
    """One image's (box diff px, score diff, class mismatches); arrays (k, 4), (k,), (k,)."""
    score_diff = float(np.abs(np.sort(scores_o)[::-1] - np.sort(scores_t)[::-1]).max()) if len(scores_o) else 0.0
    direct = np.abs(boxes_o - boxes_t).max(-1) if len(boxes_o) else np.zeros(0)
    box_diff, mismatches = 0.0, 0
    for i in range(len(scores_o)):
        d = float(direct[i])
        if classes_o[i] != classes_t[i] or d > 0.0:
            # a near-tie may have swapped ranks: best counterpart among same-class, same-score torch detections
            cand = np.nonzero((classes_t == classes_o[i]) & (np.abs(scores_t - scores_o[i]) <= score_tol))[0]
            if len(cand):
                d = min(d if classes_o[i] == classes_t[i] else np.inf,
                        float(np.abs(boxes_t[cand] - boxes_o[i]).max(-1).min()))
            elif classes_o[i] != classes_t[i]:
                mismatches += 1
                continue
        box_diff = max(box_diff, d)
    return box_diff, score_diff, mismatches


def compare_outputs(onnx_outputs: Sequence[np.ndarray], torch_outputs: Sequence[np.ndarray], shape: Sequence[int],
                    box_tol: float = BOX_TOL, score_tol: float = SCORE_TOL) -> ParityReport:
    """`ParityReport` of (boxes (B, k, 4), scores (B, k), classes (B, k)) from both backends for inputs of
    ``shape`` (B, 3, H, W)."""
    (bo, so, co), (bt, st, ct) = [[np.asarray(a) for a in outs] for outs in (onnx_outputs, torch_outputs)]
    if bo.shape != bt.shape or so.shape != st.shape or co.shape != ct.shape:
        raise ValueError(f"output shapes differ: onnxruntime {bo.shape, so.shape, co.shape}, "
                         f"PyTorch {bt.shape, st.shape, ct.shape}")
    box_px, score, mism = 0.0, 0.0, 0
    for i in range(bo.shape[0]):
        b, s, m = _compare_image(bo[i], so[i], co[i], bt[i], st[i], ct[i], score_tol)
        box_px, score, mism = max(box_px, b), max(score, s), mism + m
    size = float(max(shape[2], shape[3]))
    return ParityReport(tuple(int(v) for v in shape), box_px / size, box_px, score, mism, box_tol, score_tol)


def check_parity(onnx_path: str, model, inputs: Sequence[Tuple], box_tol: float = BOX_TOL,
                 score_tol: float = SCORE_TOL, session=None) -> List[ParityReport]:
    """Run the ``.onnx`` with onnxruntime (CPU) and the eager detector on each ``(images, image_sizes)`` torch pair
    of ``inputs``; one `ParityReport` per pair.

    Args:
        model: a `DETRBase` detector or an `ExportableDetector` wrapping one.
        session: an existing ``onnxruntime.InferenceSession`` of ``onnx_path`` (default: a new CPU one).
    """
    import onnxruntime as ort
    import torch

    from .export import ExportableDetector

    wrapper = model if isinstance(model, ExportableDetector) else ExportableDetector(model)
    wrapper.eval()
    if session is None:
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    reports = []
    for images, sizes in inputs:
        with torch.no_grad():
            ref = [t.cpu().numpy() for t in wrapper(images, sizes)]
        out = session.run(None, {"images": images.cpu().numpy(), "image_sizes": sizes.cpu().numpy()})
        reports.append(compare_outputs(out, ref, tuple(images.shape), box_tol, score_tol))
    return reports
