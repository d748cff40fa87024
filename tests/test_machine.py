"""nlinit.experiments.machine: the machine line every experiment output records."""

import os
import platform

import torch

from nlinit.experiments.machine import cpu_capability, cpu_name, describe


def test_describe_names_the_cpu_its_kernel_level_and_the_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    line = describe()
    assert cpu_name() in line and platform.machine() in line
    assert f"torch CPU kernels {torch.backends.cpu.get_cpu_capability()}" in line
    assert f"{torch.get_num_threads()} thread(s) (OMP_NUM_THREADS=3)" in line
    assert f"{os.cpu_count()} logical CPUs" in line


def test_cpu_name_falls_back_to_platform_without_proc_cpuinfo(monkeypatch):
    def unreadable(self, *args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr("pathlib.Path.read_text", unreadable)
    assert cpu_name() == (platform.processor() or platform.machine())
    assert cpu_capability() == str(torch.backends.cpu.get_cpu_capability())
