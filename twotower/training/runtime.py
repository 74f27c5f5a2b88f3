"""Where and in what precision to run: device choice, autocast, seeding.

Introduced in chapter 6 (*Training on a GPU (or not)*).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random

import numpy as np
import torch

from twotower.config import PRECISIONS
from twotower.errors import TwotowerError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if present, else Apple MPS, else CPU; other names are
    checked."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise TwotowerError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N "
                            "or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TwotowerError("device cuda asked for but no CUDA GPU is visible; use "
                            "--device auto or cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32).

    ``"auto"``: bf16 on CPUs with native bf16 matmuls (AVX512-BF16 or AMX; on other
    CPUs bf16 is emulated and hundreds of times slower than fp32, so fp32 there) and on
    GPUs that support it, fp16 (with a grad scaler) on older GPUs, fp32 on MPS.
    """
    if precision not in PRECISIONS:
        raise TwotowerError(f"unknown precision {precision!r}; choose one of "
                            f"{', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if device.type == "cuda":
        # Without including_emulation=False a T4/V100 reports bf16 (emulated, slow).
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    return None


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX).

    Read from the kernel's CPU flags; ``TWOTOWER_CPU_BF16=0/1`` overrides.
    """
    override = os.environ.get("TWOTOWER_CPU_BF16")
    if override in ("0", "1"):
        return override == "1"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a do-nothing context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def sum_dtype(device: torch.device) -> torch.dtype:
    """Sums of losses kept on the device: fp64 (as Python floats), fp32 on MPS (which
    has no fp64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
