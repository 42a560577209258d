"""The focal-loss set criterion of the DETR-family models (detrex's DAB-, Conditional- and Deformable-DETR).

Hungarian matching on a focal classification cost plus L1 and GIoU box costs (2 : 5 : 2); losses: sigmoid focal
classification loss (alpha 0.25, gamma 2), L1 and GIoU, weighted by ``weight_dict`` (class 1, L1 5, GIoU 2).

Use it inside a model config as ``criterion=get_config("common/criterion/focal_set_criterion.py").criterion``
and state what differs, e.g. ``model.criterion.weight_dict.loss_class = 2.0`` (Conditional-DETR) or
``model.criterion._target_ = DeformableCriterion``. The auxiliary-loss copies of the weights (``loss_class_0``,
...) depend on the decoder depth and are added by the model config with
``detrex.config.recipes.with_aux_loss_weights``.
"""

from detrex.config import LazyCall as L
from detrex.modeling.criterion import SetCriterion
from detrex.modeling.matcher import HungarianMatcher

criterion = L(SetCriterion)(
    num_classes=80,
    matcher=L(HungarianMatcher)(
        cost_class=2.0,
        cost_bbox=5.0,
        cost_giou=2.0,
        cost_class_type="focal_loss_cost",
        alpha=0.25,
        gamma=2.0,
    ),
    weight_dict={
        "loss_class": 1,
        "loss_bbox": 5.0,
        "loss_giou": 2.0,
    },
    loss_class_type="focal_loss",
    alpha=0.25,
    gamma=2.0,
)
