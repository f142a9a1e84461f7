"""What every encoder shares: batched inference, the file hash that names its weights, and the error that says
how to get what is missing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from geoloc.models.device import autocast, pass_size


class EncoderUnavailable(ValueError):
    """An encoder whose weights or library are not on this machine; the message says how to get them."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_batches(items: Sequence, batch_size: int, to_input: Callable[[Sequence], torch.Tensor],
                forward: Callable[[torch.Tensor], torch.Tensor], width: int, device: torch.device) -> np.ndarray:
    """(n, width) float32: `forward` over `to_input` of each batch of at most `batch_size` items (images,
    prompts; on a CPU at most models.device.CPU_PASS), without gradients and in the device's mixed precision."""
    outs, size = [], pass_size(device, batch_size)
    with torch.inference_mode():
        for i in range(0, len(items), size):
            x = to_input(items[i:i + size])
            with autocast(device):
                y = forward(x)
            outs.append(y.float().cpu().numpy())
    if not outs:
        return np.zeros((0, width), np.float32)
    return np.concatenate(outs).astype(np.float32, copy=False)
