"""`LossDict`: a criterion's losses as a dict of 0-d tensors that are views of one vector, plus their sum.

A DETR criterion produces dozens of losses (3 per prediction set: 24 for KS-DAB-DETR, 48 with denoising). Summing
them one by one, weighting them one by one and reading them back one ``.item()`` at a time costs an operator (and on
a GPU a kernel launch or a host sync) per key. A `LossDict` keeps them in one vector instead: ``total`` is their
sum (one operator) and ``vector`` what a trainer logs (one tensor to copy to the host per log period). It is still a
plain ``dict`` of differentiable 0-d tensors, so ``sum(loss_dict.values())`` gives the same loss.
"""

from typing import Optional, Sequence

import torch

__all__ = ["LossDict"]


class LossDict(dict):
    """``{key: vector[i]}`` with ``vector`` (N,) and ``total`` (its sum, 0-d).

    ``order`` (a permutation of ``range(N)``, default: as given) is only the order of the dict's keys, which is the
    order the trainer logs them in; ``vector`` keeps the keys' given order, ``vector_keys``."""

    def __init__(self, keys: Sequence[str], vector: torch.Tensor, order: Optional[Sequence[int]] = None):
        keys = list(keys)
        if vector.shape != (len(keys),):
            raise ValueError(f"LossDict: {len(keys)} keys for a vector of shape {tuple(vector.shape)}")
        self.vector_keys = tuple(keys)
        values = vector.unbind() if keys else ()
        if order is not None:
            if sorted(order) != list(range(len(keys))):
                raise ValueError(f"LossDict: order {list(order)} is not a permutation of range({len(keys)})")
            keys, values = [keys[i] for i in order], [values[i] for i in order]
        super().__init__(zip(keys, values))
        self.vector = vector
        self.total = vector.sum()
