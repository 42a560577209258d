"""What the single-scale and the deformable attention views share.

* :class:`UnsupportedModelError`: the model lacks the layers a view needs (the tool prints it as one line);
* :func:`teacher_path` / :func:`forward_once`: one forward pass in eval mode, with KS-DETR's teacher path on
  for a KS model (so the detector builds the GT-enhanced teacher tokens from the targets);
* :func:`choose_queries`: query tokens on the GT foreground of one token grid.

Conventions: GT boxes are absolute ``xyxy`` pixels of the padded (batched) image of size ``(H, W)``; a token
grid ``(h, w)`` covers that padded image uniformly (token ``i`` is row ``i // w``, column ``i % w``, its stride
cell spans ``H / h`` x ``W / w`` pixels).
"""
import contextlib
from typing import Dict, List

import numpy as np


class UnsupportedModelError(ValueError):
    """The model does not have the encoder layout a visualization reads (e.g. no last encoder attention)."""


@contextlib.contextmanager
def teacher_path(model):
    """Eval-mode submodules (no dropout, frozen statistics) but the detector's own ``training`` flag on, so
    ``transformer_inputs`` builds the teacher tokens from the targets. Restored afterwards."""
    was = model.training
    model.eval()
    model.training = True
    try:
        yield
    finally:
        model.training = was
        model.train(was)


def forward_once(model, batched_inputs: List[Dict], is_ks: bool):
    """Run ``model.forward_raw`` once on ``batched_inputs`` (mapped dicts with ``instances``), for the hooks
    the caller registered; a KS model runs with its targets under :func:`teacher_path`, a baseline model in
    eval mode without targets. Call it under ``torch.no_grad()``.

    Returns ``(images, targets)``: the model's ``ImageList`` (``images.tensor`` (B, 3, H, W) padded,
    ``images.image_sizes`` [(h, w)] unpadded) and ``prepare_targets``' list of dicts (``boxes_xyxy`` absolute
    pixels, ``labels``).
    """
    images = model.preprocess_image(batched_inputs)
    targets = model.prepare_targets(batched_inputs)
    if is_ks:
        with teacher_path(model):
            model.forward_raw(images, targets)
    else:
        model.eval()
        model.forward_raw(images, None)
    return images, targets


def choose_queries(fg: np.ndarray, valid: np.ndarray, boxes: np.ndarray, padded_size, k: int) -> List[int]:
    """Up to ``k`` foreground token indices: the token at each GT box centre first, then others spread evenly.

    ``fg``: (h, w) bool token mask; ``valid``: (h*w,) bool (not padding); ``boxes``: (n, 4) absolute xyxy in
    the padded image of size ``padded_size`` (H, W). Returns row-major indices into the h*w tokens.
    """
    h, w = fg.shape
    H, W = padded_size
    chosen = []
    for x1, y1, x2, y2 in boxes:
        r = min(h - 1, int(((y1 + y2) / 2) / H * h))
        c = min(w - 1, int(((x1 + x2) / 2) / W * w))
        idx = r * w + c
        if fg[r, c] and idx not in chosen:
            chosen.append(idx)
    pool = [i for i in np.flatnonzero(fg.reshape(-1) & valid) if i not in chosen]
    if not pool and not chosen:  # no foreground token at all: fall back to valid tokens
        pool = list(np.flatnonzero(valid))
    if len(chosen) < k and pool:
        extra = np.linspace(0, len(pool) - 1, num=min(k - len(chosen), len(pool))).round().astype(int)
        chosen += [int(pool[i]) for i in extra]
    return [int(i) for i in chosen[:k]]
