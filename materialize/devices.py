"""Choosing the torch device: CUDA when present, the CPU otherwise."""
from __future__ import annotations

import torch


def select_device(preferred: str | None = None) -> torch.device:
    """Device to run torch models on.

    Args:
        preferred: "cpu", "cuda", "cuda:N", or None for CUDA when available, else CPU.

    Returns:
        The torch device.

    Raises:
        RuntimeError: CUDA was requested but is not available.
    """
    if preferred is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preferred)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {preferred!r} was requested but CUDA is not available "
            f"(torch {torch.__version__}); use 'cpu' or leave the device unset"
        )
    return device
