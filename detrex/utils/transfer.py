"""Tensors built from host data for a GPU without stalling it.

``torch.tensor(values, device="cuda")`` copies from pageable host memory, which makes the host wait until the GPU
has finished everything queued before (a host sync). Built in page-locked memory first, the copy is queued like a
kernel instead (``non_blocking=True``), and the caching host allocator keeps the buffer alive until it is done.
"""
import torch

__all__ = ["host_tensor"]


def host_tensor(data, dtype: torch.dtype, device) -> torch.Tensor:
    """``torch.tensor(data, dtype=dtype)`` on ``device``; on CUDA through pinned memory with a non-blocking copy."""
    device = torch.device(device)
    t = torch.tensor(data, dtype=dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
