"""What machine an experiment ran on, in the words its outputs record.

Float results of training and compression depend on more than the code and the seed: torch dispatches its
CPU kernels by the instruction set it finds (``torch.backends.cpu.get_cpu_capability()``: ``"AVX2"``,
``"AVX512"``, ...), and a different kernel rounds differently. One such difference early in training grows
into a different network (measured: ResNet-20's first epoch on Fashion-MNIST, same command and seed, 81.57 %
on one machine and 83.66 % on an AVX512 one; results/compress/fmnist-resnet20/base/RECIPE.md). So every
experiment output names the CPU and the kernel level beside the thread count.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["cpu_capability", "cpu_name", "describe", "short"]


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows (e.g. ``"x86_64"``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str:
    """The instruction-set level torch's CPU kernels dispatch to (``"AVX512"``, ``"AVX2"``, ``"DEFAULT"``)."""
    return str(torch.backends.cpu.get_cpu_capability())


def describe() -> str:
    """One line: CPU, kernel level, logical CPUs, torch and its threads (and OMP_NUM_THREADS), Python, OS."""
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return (
        f"{cpu_name()} ({platform.machine()}, torch CPU kernels {cpu_capability()}), "
        f"{os.cpu_count()} logical CPUs, torch {torch.__version__} with {torch.get_num_threads()} "
        f"thread(s) (OMP_NUM_THREADS={threads}), Python {platform.python_version()}, {platform.system()}"
    )


def short() -> str:
    """What a results row records of its machine: CPU, kernel level and torch threads, e.g.
    ``"Intel(R) Xeon(R) Processor, AVX512, 1 thread(s)"``."""
    return f"{cpu_name()}, {cpu_capability()}, {torch.get_num_threads()} thread(s)"
