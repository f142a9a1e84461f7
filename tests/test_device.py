"""Where models run, decided in one place (models/device.py), exercised on the CPU this machine has: the
"auto" choice, the per-process GPU spread, the batch size and the photos per forward pass, mixed precision that is a no-op off a GPU, and
tracing on the CPU only."""

from __future__ import annotations

import torch

from geoloc.models.device import (CPU_BATCH, CPU_PASS, GPU_BATCH, autocast, autocast_dtype, default_batch_size,
                                  pass_size, resolve_device, traces)
from geoloc.models.encoding import run_batches
from geoloc.runtime import for_process
from geoloc.settings import Settings


def test_auto_is_the_cpu_without_cuda_and_explicit_choices_are_kept():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("auto", index=3).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # named, not opened


def test_batch_size_and_precision_follow_the_device():
    assert default_batch_size(torch.device("cpu")) == CPU_BATCH
    assert default_batch_size(torch.device("cuda", 0)) == GPU_BATCH
    assert autocast_dtype(torch.device("cpu")) is None
    layer = torch.nn.Linear(4, 2)
    with autocast(torch.device("cpu")):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    assert traces(torch.device("cpu")) and not traces(torch.device("cuda", 0))  # a GPU keeps autocast's precision


def test_a_cpu_runs_a_batch_in_passes_of_at_most_cpu_pass_and_a_gpu_in_one():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert pass_size(cpu, CPU_BATCH) == CPU_PASS < CPU_BATCH and pass_size(cpu, 2) == 2
    assert pass_size(gpu, GPU_BATCH) == GPU_BATCH
    seen = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return x * 2

    out = run_batches(list(range(11)), 32, lambda items: torch.tensor(items, dtype=torch.float32)[:, None], forward,
                      1, cpu)
    assert out[:, 0].tolist() == [2.0 * i for i in range(11)]  # in order, whole
    assert max(seen) == CPU_PASS and sum(seen) == 11


def test_a_worker_process_resolves_auto_once_and_keeps_an_explicit_batch(tmp_path):
    settings = for_process(Settings(home=tmp_path, device="auto"), process_index=2)
    if torch.cuda.is_available():
        assert settings.device == f"cuda:{2 % torch.cuda.device_count()}" and settings.batch_size == GPU_BATCH
    else:
        assert settings.device == "cpu" and settings.batch_size == CPU_BATCH
    assert for_process(Settings(home=tmp_path, batch_size=7), 0).batch_size == 7
