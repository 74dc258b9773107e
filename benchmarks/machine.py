"""One line naming the machine a figure was measured on: CPU model, cores, the ISA flags that decide which kernels
run (AVX2, AVX-512, AVX-512-BF16, AMX), torch/numpy versions and threads, the GPU, the load average, the share of
CPU time the hypervisor took (steal) since the previous line, and the commit.

Every benchmark prints it beside its figures (benchmarks/conftest.py puts it in the header and the summary).
"""

from __future__ import annotations

import os
import platform
import subprocess

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    have = set(value.split())
                    flags = [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return model, flags


def has_cpu_flag(flag: str) -> bool:
    return flag in cpu_model_and_flags()[1]


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (fields[7], sum(fields)) if len(fields) == 8 else None


_last_times = _cpu_times()


def steal_since_last() -> str:
    """The share of CPU time the hypervisor gave to other guests since the previous call (or since this module was
    imported): on a shared virtual machine, time a benchmark waited without running. A few percent already makes
    its wall times move between runs, so a figure measured under steal is read with that in mind."""
    global _last_times
    now = _cpu_times()
    before, _last_times = _last_times, now
    if now is None or before is None or now[1] <= before[1]:
        return "?"
    return f"{100 * (now[0] - before[0]) / (now[1] - before[1]):.0f}%"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "?"
    except OSError:
        return "?"


def describe() -> str:
    """The machine line: call it next to the figures (the load average is read now; the steal share covers the
    time since the previous machine line, so printed after a figure it covers that figure's measurement)."""
    import numpy
    import torch

    model, flags = cpu_model_and_flags()
    gpu = "no GPU"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = f"{p.name} ({p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    return (f"{model}, {os.cpu_count()} cores [{' '.join(flags) or 'no listed ISA flags'}]; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), numpy {numpy.__version__}; {gpu}; load average {load_average()}; "
            f"CPU stolen {steal_since_last()}; commit {_commit()}")


if __name__ == "__main__":
    print(describe())
