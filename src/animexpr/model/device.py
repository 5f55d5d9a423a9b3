"""The one place where a `--device` value becomes a torch device, checked to exist on this machine.

torch accepts `cuda` or `mps` on a machine without them and fails later, deep inside the first `.to()`, with
a traceback; `train`, `transform` and `evaluate` resolve their device here first, before writing anything.
"""

from __future__ import annotations

import torch

from animexpr.errors import AnimexprError
from animexpr.model.config import DEVICE_CHOICES


class DeviceError(AnimexprError):
    pass


def resolve_device(spec: str | torch.device, cuda_index: int | None = None) -> torch.device:
    """The device named by `spec`; `auto` is CUDA when there is one, else the CPU.

    `cuda_index` picks the GPU of a bare `cuda` (each torchrun process passes its local rank).
    Raises DeviceError, naming `spec`, for a malformed name or a device this machine does not have.
    """
    if str(spec) == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DeviceError(f"--device {spec}: not a device name; expected {DEVICE_CHOICES}") from exc
    if device.type == "cuda":
        return _checked_cuda(spec, device, cuda_index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {spec}: no Apple MPS device is available on this machine")
    if device.type not in ("cpu", "mps"):
        raise DeviceError(f"--device {spec}: {device.type} devices are not supported; use {DEVICE_CHOICES}")
    return device


def _checked_cuda(spec: str | torch.device, device: torch.device, cuda_index: int | None) -> torch.device:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceError(f"--device {spec}: no CUDA device is available on this machine")
    index = device.index if device.index is not None else (cuda_index or 0)
    if index >= count:
        raise DeviceError(f"--device {spec}: this machine has CUDA devices cuda:0 to cuda:{count - 1} only")
    return torch.device("cuda", index)
