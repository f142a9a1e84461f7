"""Where models run: the one place that turns "auto" into a device, picks the mixed precision of a
device, and sizes a batch for it. CPU everywhere; CUDA when present (one GPU per worker process)."""

from __future__ import annotations

import contextlib

import torch

CPU_BATCH = 32
GPU_BATCH = 128
# photos per forward pass on a CPU: a larger pass's activations leave the caches, and each photo costs more
# (EfficientNet-Lite0 on 2 cores: twice the photos/s in passes of 4 as in passes of 32; bench/embed.py)
CPU_PASS = 4


def resolve_device(configured: str | torch.device = "auto", index: int | None = None) -> torch.device:
    """As configured; "auto" is CUDA when present, else the CPU. `index` (a worker's process number)
    spreads processes over the GPUs: process i runs on GPU i mod n."""
    if str(configured) != "auto":
        return torch.device(configured)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", (index or 0) % torch.cuda.device_count())


def default_batch_size(device: torch.device) -> int:
    return GPU_BATCH if device.type == "cuda" else CPU_BATCH


def pass_size(device: torch.device, batch_size: int) -> int:
    """Photos per forward pass for a batch of `batch_size`: on a CPU at most CPU_PASS, on a GPU the whole batch."""
    return batch_size if device.type == "cuda" else max(1, min(batch_size, CPU_PASS))


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the GPU has it, else float16; None (full precision) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device):
    """Mixed precision on a GPU; a no-op context on the CPU."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def traces(device: torch.device) -> bool:
    """Whether an encoder on `device` may run as a frozen TorchScript graph (models/tracing.py): on the CPU only,
    as a GPU's mixed precision is autocast's, which a trace made outside it would not follow."""
    return device.type == "cpu"
