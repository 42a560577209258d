"""Training criteria."""

from .dn_criterion import DNCriterion
from .set_criterion import SetCriterion

__all__ = ["SetCriterion", "DNCriterion"]
