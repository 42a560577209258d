"""Matchers assigning predictions to ground truth."""

from .hungarian_matcher import HungarianMatcher

__all__ = ["HungarianMatcher"]
