"""Necks between backbone and transformer (multi-scale detectors)."""
from .channel_mapper import ChannelMapper

__all__ = ["ChannelMapper"]
