"""Several passes of one module over inputs that differ in one tensor, run as one call with the batch stacked.

KS-DETR decodes the student memory and each teacher memory with the same decoder and otherwise identical inputs
(queries, anchors, positional embedding, masks). Run one after the other, each pass launches every decoder kernel
again; run as one pass over a batch of ``n * B`` (memories concatenated, the shared inputs repeated), the kernel
count is that of one pass and the results are the same (every decoder operation treats batch entries
independently). These helpers do the stacking and the splitting.
"""

from typing import Optional

import torch

__all__ = ["repeat_batch", "student_and_teacher_layers"]


def repeat_batch(x: Optional[torch.Tensor], n: int, dim: int) -> Optional[torch.Tensor]:
    """``x`` repeated ``n`` times along its batch dimension ``dim`` (pass-major: copy i holds pass i's batch);
    None stays None."""
    if x is None or n == 1:
        return x
    reps = [1] * x.dim()
    reps[dim] = n
    return x.repeat(*reps)


def student_and_teacher_layers(x: torch.Tensor, n: int) -> torch.Tensor:
    """Per-layer outputs [L, n * B, ...] of a stacked pass (pass 0 = the student, 1 .. n-1 the teachers) ->
    [L + n - 1, B, ...]: the student's L layers, then the final layer of each teacher."""
    layers, nb = x.shape[:2]
    if nb % n:
        raise ValueError(f"student_and_teacher_layers: batch {nb} is not a multiple of {n} passes")
    b = nb // n
    return torch.cat([x[:, :b], x[-1, b:].unflatten(0, (n - 1, b))], 0)
