# LR schedules for COCO, as multipliers of the base LR evaluated at iter / train.max_iter.
#
# Two families:
# * default_X_scheduler(num_X): detectron2's R-CNN "1x" = 90k iterations at batch 16, steps at
#   60k/80k ([1, 0.1, 0.01]), linear warm-up over 1000 iterations from 0.001.
# * default_coco_scheduler(epochs, decay_epochs, warmup_epochs): DETR style, 7500 iterations per
#   epoch at batch 16, one x0.1 step at decay_epochs.
# Because the multiplier is a function of iter / max_iter, changing train.max_iter alone
# rescales the milestones (50 ep always decays at 80 %).
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detrex.config import LazyCall as L
from detrex.solver import WarmupParamScheduler


def default_X_scheduler(num_X):
    """Warm-up + multi-step multiplier for an "N x" R-CNN schedule.

    One "x" is 90k iterations at batch 16 (about 12 COCO epochs). Up to 2x the steps sit at
    2/3 and 8/9 of training; longer schedules step 60k and 20k iterations before the end.
    Values are [1, 0.1, 0.01]; the warm-up lasts 1000 iterations starting at 0.001.

    Args:
        num_X: schedule length in "x" units (a positive number).
    Returns:
        a lazy ``WarmupParamScheduler`` config (instantiate it for the multiplier).
    """
    total = num_X * 90000  # iterations at batch 16
    if num_X <= 2:
        # scale-invariant: the same as milestones=[6, 8, 9]
        milestones = [60000, 80000, 90000]
    else:
        milestones = [total - 60000, total - 20000, total]
    scheduler = L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=milestones)
    return L(WarmupParamScheduler)(
        scheduler=scheduler,
        warmup_length=1000 / total,
        warmup_method="linear",
        warmup_factor=0.001,
    )


def default_coco_scheduler(epochs=50, decay_epochs=40, warmup_epochs=0):
    """Multiplier 1.0 until ``decay_epochs``, then 0.1, with an optional linear warm-up.

    Epochs are converted with 7500 iterations per epoch (COCO train2017 at batch 16).

    Args:
        epochs: total length of training in epochs.
        decay_epochs: epoch at which the LR drops to 0.1x.
        warmup_epochs: warm-up length in epochs (0 = none), starting at 0.001x.
    Returns:
        a lazy ``WarmupParamScheduler`` config.
    """
    total = epochs * 7500
    scheduler = L(MultiStepParamScheduler)(
        values=[1.0, 0.1],
        milestones=[decay_epochs * 7500, total],
    )
    return L(WarmupParamScheduler)(
        scheduler=scheduler,
        warmup_length=warmup_epochs * 7500 / total,
        warmup_method="linear",
        warmup_factor=0.001,
    )


# default scheduler for detr
lr_multiplier_50ep = default_coco_scheduler(50, 40, 0)
lr_multiplier_36ep = default_coco_scheduler(36, 30, 0)
lr_multiplier_24ep = default_coco_scheduler(24, 20, 0)
lr_multiplier_12ep = default_coco_scheduler(12, 11, 0)

# warmup scheduler for detr
lr_multiplier_50ep_warmup = default_coco_scheduler(50, 40, 1e-3)
lr_multiplier_12ep_warmup = default_coco_scheduler(12, 11, 1e-3)

lr_multiplier_1x = default_X_scheduler(1)
lr_multiplier_2x = default_X_scheduler(2)
lr_multiplier_3x = default_X_scheduler(3)
lr_multiplier_6x = default_X_scheduler(6)
lr_multiplier_9x = default_X_scheduler(9)
