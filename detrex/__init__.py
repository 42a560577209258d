"""detrex: DETR-family detectors and KS-DETR, with the detectron2 machinery they need built in.

Importing this package is cheap: subpackages (`detrex.config`, `detrex.engine`, `detrex.data`, ...) are
imported on first use, and nothing optional (the CUDA op, TensorBoard) is touched here.
"""
__version__ = "0.1.0"
