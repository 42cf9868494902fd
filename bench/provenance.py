"""What every results file records about the code and machine that produced it, without torch.

Benchmarks that never touch a model (``bench.audit_report``) should neither import torch nor break
when the model code changes; so this holds the parts of provenance that need neither.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def git_commit() -> str:
    """The commit checked out, marked when tracked files differ from it."""
    here = Path(__file__).parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=here
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, cwd=here,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+uncommitted changes" if dirty else "")


def provenance() -> dict[str, str]:
    """Which code and machine produced the numbers."""
    return {
        "commit": git_commit(),
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform(terse=True)}",
    }


def timed(action: Callable[[], T]) -> tuple[T, float]:
    """``action()`` and the seconds it took."""
    started = time.perf_counter()
    result = action()
    return result, round(time.perf_counter() - started, 4)
