"""Peak resident memory of this process, for the benchmarks that compare sizes in fresh child processes."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mib() -> float:
    """VmHWM: kept per address space, so a child's peak is its own. (`ru_maxrss` carries the parent's peak across
    fork and exec: a child of a parent that once held 1.5 GB reports 1.5 GB whatever it uses.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
