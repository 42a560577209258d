"""Harder variants of the synthetic shapes dataset for the KS-vs-baseline study (``tools/ks_study.py``).

The built-in ``shapes_train``/``shapes_val`` set (1-3 objects of 32-64 px on a lightly noisy background, nothing
overlapping) is learned almost perfectly by a tiny DETR, which leaves no room for a difference between two
training methods. These variants turn the knobs of :class:`detrex.data.datasets.shapes.ShapesConfig` that
make localization hard, which is where KS-DETR's GT-informed teacher attention is supposed to help:

=============  ==========================================================================================
variant        what changes w.r.t. the default set
=============  ==========================================================================================
``small``      2-6 objects of 12-32 px (mostly COCO "small", area < 32^2), i.e. about 1-2 tokens at stride 16
``clutter``    default objects on a background with 12 random line strokes and stronger noise (std 14)
``occlusion``  2-6 objects of 24-56 px that may overlap (objects < 40 % visible are drawn but not annotated)
``hard``       all three: 2-6 objects of 12-40 px, 8 strokes, noise std 12, occlusion allowed
=============  ==========================================================================================

All variants keep 128-160 px images and 3 classes with class colours (so that a small randomly initialised
model can learn them on CPU in minutes). They have 2000 training images (as the demos' ``shapes_demo_train``, so
that a short schedule sees each image only a few times) and 200 validation images (twice the default, for a less
noisy AP).

Use in a config (registration is cheap; images are generated on first use into ``$DETREX_CACHE``)::

    from projects.ks_detr.study.shapes_variants import register_shapes_variant
    train_name, val_name = register_shapes_variant("hard")   # "shapes_hard_train", "shapes_hard_val"
"""
from typing import Dict, Tuple

__all__ = ["SHAPES_VARIANTS", "register_shapes_variant"]

#: ``ShapesConfig`` keyword arguments per variant (the rest stays at its defaults)
_SIZES = dict(num_train=2000, num_val=200)
SHAPES_VARIANTS: Dict[str, Dict] = {
    "small": dict(**_SIZES, min_objects=2, max_objects=6, min_object_size=12, max_object_size=32),
    "clutter": dict(**_SIZES, clutter=12, noise_std=14.0),
    "occlusion": dict(**_SIZES, min_objects=2, max_objects=6, min_object_size=24, max_object_size=56,
                      allow_occlusion=True),
    "hard": dict(**_SIZES, min_objects=2, max_objects=6, min_object_size=12, max_object_size=40, clutter=8,
                 noise_std=12.0, allow_occlusion=True),
}


def register_shapes_variant(variant: str) -> Tuple[str, str]:
    """Register ``shapes_<variant>_train`` and ``shapes_<variant>_val`` (once per process; a second call is a
    no-op) and return the two names."""
    from detrex.data import DatasetCatalog
    from detrex.data.datasets.shapes import register_shapes

    if variant not in SHAPES_VARIANTS:
        raise ValueError(f"register_shapes_variant: unknown variant {variant!r}; choose one of "
                         f"{sorted(SHAPES_VARIANTS)} (projects/ks_detr/study/shapes_variants.py).")
    names = (f"shapes_{variant}_train", f"shapes_{variant}_val")
    for name, split in zip(names, ("train", "val")):
        if name not in DatasetCatalog:
            register_shapes(name, split, **SHAPES_VARIANTS[variant])
    return names
