"""The torch runtime: the device (CUDA when present, the CPU otherwise) and seeding."""
from __future__ import annotations

import os
import random

import numpy as np
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


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) and ask torch for deterministic kernels
    (where one has none it warns instead of failing)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
