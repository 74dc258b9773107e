"""One line naming the machine a figure was measured on: CPU model, cores, the ISA flags that decide which kernels
run (AVX2, AVX-512, AVX-512-BF16, AMX), torch/numpy versions and threads, the GPU, the load average and the commit.

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


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "?"
    except OSError:
        return "?"


def describe() -> str:
    """The machine line: call it next to the figures (the load average is read now)."""
    import numpy
    import torch

    model, flags = cpu_model_and_flags()
    gpu = "no GPU"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = f"{p.name} ({p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    return (f"{model}, {os.cpu_count()} cores [{' '.join(flags) or 'no listed ISA flags'}]; torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), numpy {numpy.__version__}; {gpu}; load average {load_average()}; "
            f"commit {_commit()}")


if __name__ == "__main__":
    print(describe())
