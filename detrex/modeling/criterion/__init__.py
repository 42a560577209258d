"""Training criteria."""

from .set_criterion import SetCriterion

__all__ = ["SetCriterion"]
