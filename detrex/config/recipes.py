"""Small helpers that model configs call at load time (they return plain values, never lazy calls).

    from detrex.config.recipes import with_aux_loss_weights

    # one copy of the weights per intermediate decoder layer (suffixes _0 .. _4)
    model.criterion.weight_dict = with_aux_loss_weights(
        model.criterion.weight_dict, num_aux=model.transformer.decoder.num_layers - 1
    )

The result is an ordinary dict, so the loaded config holds the same values as a hand-written one and no helper
name appears in it (saved ``config.yaml`` files do not depend on this module).
"""

import re
from collections import abc
from typing import Any, Dict, Mapping

__all__ = ["with_aux_loss_weights"]

# keys of the copies made by with_aux_loss_weights: "<base>_<i>" and "<base>_enc"
_COPY_SUFFIX = re.compile(r"_(\d+|enc)$")


def with_aux_loss_weights(weight_dict: Mapping[str, Any], num_aux: int, enc: bool = False) -> Dict[str, Any]:
    """The loss weights of the final prediction set plus one copy per auxiliary prediction set.

    DETR-family criteria report the losses of auxiliary prediction set ``i`` (an intermediate decoder layer;
    in KS-DETR also a teacher pass) as ``<loss>_<i>``, and Deformable-DETR's two-stage encoder proposals as
    ``<loss>_enc``; the detector keeps only the losses named in ``weight_dict``. This builds the dict that
    detrex's model configs write with a loop (follows detrex, ``projects/*/configs/models/*.py``).

    Args:
        weight_dict: loss name -> weight (a ``dict`` or ``DictConfig``). Keys that already end in ``_<i>`` or
            ``_enc`` are dropped first: the base weights are the other keys, so calling this again (e.g.
            after changing the number of decoder layers) replaces the copies instead of adding to them.
        num_aux: the number of auxiliary sets, giving suffixes ``_0`` .. ``_{num_aux - 1}`` (the number of
            decoder layers minus one for DETR models).
        enc: also add one ``_enc`` copy (Deformable-DETR's two-stage proposals).

    Returns:
        A new dict in this order: the base weights, all base keys with ``_0``, then with ``_1``, ..., then
        with ``_enc``. Values are passed through unchanged (an int stays an int).

    Raises:
        TypeError: ``weight_dict`` is not a mapping or ``num_aux`` is not an int.
        ValueError: ``num_aux`` is negative, or ``weight_dict`` has no base (unsuffixed) key.
    """
    if not isinstance(weight_dict, abc.Mapping):
        raise TypeError(
            f"with_aux_loss_weights: weight_dict must be a mapping of loss name -> weight, "
            f"got {type(weight_dict).__name__}: {weight_dict!r}"
        )
    if isinstance(num_aux, bool) or not isinstance(num_aux, int):
        raise TypeError(f"with_aux_loss_weights: num_aux must be an int, got {type(num_aux).__name__}: {num_aux!r}")
    if num_aux < 0:
        raise ValueError(f"with_aux_loss_weights: num_aux must be >= 0, got {num_aux}")
    base = {str(k): v for k, v in weight_dict.items() if not _COPY_SUFFIX.search(str(k))}
    if not base:
        raise ValueError(
            f"with_aux_loss_weights: weight_dict has no base loss key (all end in _<i> or _enc): {sorted(weight_dict)}"
        )
    suffixes = [str(i) for i in range(num_aux)] + (["enc"] if enc else [])
    return {**base, **{f"{k}_{s}": v for s in suffixes for k, v in base.items()}}
