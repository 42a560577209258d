"""Deployment: ONNX export of the detectors and an onnxruntime predictor.

- `OnnxPredictor` (`detrex.deploy.onnx_predictor`): numpy + onnxruntime + Pillow only; importing it (or this
  package) does not import torch.
- `ExportableDetector`, `export_onnx`, `deploy_metadata` (`detrex.deploy.export`, needs torch and onnx) and
  `check_parity` (`detrex.deploy.parity`, needs torch and onnxruntime).

Names are resolved on first access (module ``__getattr__``), so ``import detrex.deploy`` imports nothing heavy
and does not fail when onnx / onnxruntime are missing.
"""
import importlib

_EXPORTS = {
    "OnnxPredictor": "onnx_predictor",
    "read_metadata": "onnx_predictor",
    "ExportableDetector": "export",
    "export_onnx": "export",
    "deploy_metadata": "export",
    "example_inputs": "export",
    "check_parity": "parity",
    "ParityReport": "parity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'detrex.deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
