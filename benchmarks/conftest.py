"""Benchmark session setup: the machine line (machine.py: CPU, ISA flags, versions, load average, commit) and a
ratio table per benchmark group at the end.

Each group times echo's implementations next to the baselines in the same run; the summary divides every
median by the group's baseline (the member whose name starts with ``baseline``) so RESULTS.md can quote ratios.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # machine.py and roofline.py sit beside the benchmarks

from machine import describe  # noqa: E402


def _machine() -> str:
    return describe()


def pytest_report_header(config):
    return f"echo benchmarks on: {_machine()}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list] = {}
    for bench in session.benchmarks:
        groups.setdefault(bench.group or "", []).append(bench)
    tr = terminalreporter
    tr.section("ratios (median time of the group's baseline / median time)")
    tr.write_line(f"machine: {_machine()}")
    for name, benches in groups.items():
        base = next((b for b in benches if b.name.split("[")[0].split("test_")[-1].startswith("baseline")), None)
        tr.write_line(f"[{name}]")
        for b in sorted(benches, key=lambda b: b.stats.median):
            extra = b.extra_info or {}
            rate = f"  {extra['audio_s'] / b.stats.median:10.1f} audio-s/s" if "audio_s" in extra else ""
            ratio = f"  {base.stats.median / b.stats.median:6.1f}x vs baseline" if base else ""
            tr.write_line(f"  {b.name:60s} {b.stats.median * 1e3:9.3f} ms{rate}{ratio}")
