"""Mixed precision and memory format: the one place that turns the ``precision`` and
``channels_last`` config keys into ``torch.amp`` and ``torch.channels_last``.

``precision`` is ``fp32`` (no autocast), ``bf16`` (autocast to bfloat16: CPU, or a CUDA device
that supports it) or ``fp16`` (autocast to float16 with a gradient scaler; CUDA only). The
rules follow PyTorch's automatic mixed precision (``torch.autocast``, ``torch.amp.GradScaler``;
https://pytorch.org/docs/stable/amp.html) and its channels-last memory format
(https://pytorch.org/tutorials/intermediate/memory_format_tutorial.html).
"""

from __future__ import annotations

import os
from typing import TypeVar

import torch
from torch import nn

from wsss.config import PRECISIONS
from wsss.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# "1": every process of the job computes with kernels whose float results do not depend on the
# CPU model (see :func:`portable_numerics`); set by the quality guard (tests/quality/guard.py).
PORTABLE_ENV = "WSSS_PORTABLE_NUMERICS"

Movable = TypeVar("Movable", nn.Module, torch.Tensor)


def check_precision(device: str | torch.device, precision: str, key: str) -> None:
    """Refuse a precision that ``device`` cannot compute.

    Args:
        device: the torch device the work runs on (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
        precision: one of :data:`PRECISIONS`.
        key: the config key that set it (``train.precision``), named in the error.

    Raises:
        ConfigError: an unknown precision; ``fp16`` on a device other than CUDA; ``bf16`` on a
            CUDA device without bfloat16 support (``torch.cuda.is_bf16_supported``); any
            precision but ``fp32`` on a device type other than CPU and CUDA.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"config value {key}={precision!r} is not valid; choose one of: "
                          f"{', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "fp32":
        return
    if kind not in ("cpu", "cuda"):
        raise ConfigError(f"{key}={precision} needs a CPU or CUDA device, not {kind}; "
                          f"use {key}=fp32")
    if precision == "fp16" and kind != "cuda":
        raise ConfigError(f"{key}=fp16 needs a CUDA device (this run is on {kind}); "
                          f"use {key}=bf16 or fp32")
    if precision == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"{key}=bf16 needs a CUDA device with bfloat16 support "
                          f"({torch.cuda.get_device_name(device)} has none); use {key}=fp16 "
                          f"or fp32")


def autocast(device: str | torch.device, precision: str) -> torch.autocast:
    """The ``torch.autocast`` context of ``precision`` on ``device``'s type (disabled for
    ``fp32``). Call :func:`check_precision` first: this does not refuse anything."""
    kind = torch.device(device).type
    dtype = AUTOCAST_DTYPES.get(precision)
    return torch.autocast(kind, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: str | torch.device, precision: str) -> torch.amp.GradScaler:
    """A ``torch.amp.GradScaler`` that scales the loss for ``fp16`` and passes everything
    through unchanged (``enabled=False``) for ``fp32`` and ``bf16``, so one training step
    serves every precision: ``scaler.scale(loss).backward(); scaler.step(opt);
    scaler.update()``."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def to_memory_format(obj: Movable, channels_last: bool) -> Movable:
    """``obj`` in the channels-last memory format when ``channels_last`` (a module's 4-D
    parameters and buffers in place, a 4-D tensor [B, C, H, W] as a new view of its data);
    unchanged otherwise, and a tensor of another rank always unchanged. Values are not
    changed, only the order of the data in memory (NHWC), which tensor-core convolutions
    prefer."""
    if not channels_last or (isinstance(obj, torch.Tensor) and obj.ndim != 4):
        return obj
    return obj.to(memory_format=torch.channels_last)


def portable_numerics() -> bool:
    """With ``$WSSS_PORTABLE_NUMERICS=1``, turn oneDNN (mkldnn) off in this process and return
    True; else change nothing and return False.

    oneDNN chooses its convolution kernels and their blocking by the CPU's instruction set and
    cache sizes, so the same training run sums in another order on another CPU model, and
    training amplifies the rounding difference into different numbers. Without it, torch's own
    convolutions run on MKL's GEMM, which ``MKL_CBWR`` pins to one code path, and ATen's
    kernels, which ``ATEN_CPU_CAPABILITY`` pins to one instruction set (PyTorch's
    reproducibility notes; Intel MKL "Conditional Numerical Reproducibility"). Applied when
    this module is imported, which every process that computes with torch does.
    """
    if os.environ.get(PORTABLE_ENV, "") != "1":
        return False
    torch.backends.mkldnn.enabled = False
    return True


portable_numerics()
