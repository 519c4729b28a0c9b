"""bench.timing's GPU timing (CUDA events from a flushed L2, launch overhead hidden) and how the kernel section
reports it. The CUDA tests run in `make gpu-check`'s pytest step."""

import time

import pytest
import torch

from bench import kernels as bench_kernels
from bench.timing import cache_state, gpu_seconds, measure


def test_gpu_seconds_refuses_a_cpu_device():
    with pytest.raises(ValueError, match="gpu_seconds: device must be a CUDA device"):
        gpu_seconds(lambda: None, torch.device("cpu"))


def test_cache_state_names_the_method_per_device():
    assert cache_state(torch.device("cpu")).startswith("warm")
    assert cache_state(torch.device("cuda")).startswith("cold L2, GPU time")


def _section(rows):
    return {"bandwidth": {"read_gbps": 100.0, "copy_gbps": 150.0}, "cache_state": "x", "rows": rows, "targets": []}


def test_markdown_shows_host_time_for_gpu_rows_and_alone_time_for_cpu_rows():
    row = {"op": "entropy", "backend": "triton", "B": 64, "V": 151936, "seconds": 2e-5, "gbps": 2000.0,
           "pct_read_bandwidth": 80.0}
    gpu = bench_kernels.markdown(_section([{**row, "host_seconds": 6e-5}]))
    assert "| host ms |" in gpu and "| 0.060 |" in gpu and "alone ms" not in gpu
    cpu = bench_kernels.markdown(_section([{**row, "backend": "cpp", "alone_seconds": 3e-5}]))
    assert "| alone ms |" in cpu and "| 0.030 |" in cpu and "host ms" not in cpu


@pytest.mark.cuda
def test_gpu_seconds_hides_the_hosts_launch_time():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    y = torch.zeros(1024, device=device)

    def slow_launch():  # 3 ms of host work before a microsecond kernel, as a Python-heavy launcher would have
        time.sleep(3e-3)
        y.add_(1.0)

    assert measure(slow_launch, device, best=True) >= 3e-3
    assert gpu_seconds(slow_launch, device) < 1e-3


@pytest.mark.cuda
def test_gpu_seconds_times_the_gpu_work():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    device = torch.device("cuda")
    cycles = 2_000_000  # ~1 ms of spinning at 2 GHz: the GPU time must be of that order, whatever the host did
    spin = gpu_seconds(lambda: torch.cuda._sleep(cycles), device)
    twice = gpu_seconds(lambda: (torch.cuda._sleep(cycles), torch.cuda._sleep(cycles)), device)
    assert 2e-4 < spin < 5e-3
    assert 1.7 < twice / spin < 2.3
