"""Numeric precision of a trial (`precision = fp32 | tf32 | bf16`), shared by training alone and
in a population."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def matmul_precision(name: str):
    """For the trial: fp32 and bf16 keep float32 matrix products exact (PyTorch's cuDNN default
    would use TF32); tf32 lets CUDA run them in TF32 (10-bit mantissa). Nothing changes on a CPU."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def autocast(config: dict, device: torch.device):
    """bf16: the forward pass's matrix products in bfloat16; losses, softmax and the LSTM cell state
    stay float32 (`cell.py`). Entered per forward pass, never around an optimizer step: autocast
    caches its bfloat16 copies of the weights until the context exits."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config["precision"] == "bf16")
