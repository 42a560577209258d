"""Training criteria."""

from .dn_criterion import DNCriterion
from .loss_dict import LossDict
from .set_criterion import PredictionGroup, SetCriterion

__all__ = ["SetCriterion", "DNCriterion", "LossDict", "PredictionGroup"]
