"""What a system costs to run: model size, load time, memory and CPU per prediction.

Read from ``/proc`` (Linux); elsewhere the numbers are missing (None), never made up.
``pid=None`` is this process (in-process systems); an LSP system passes its server's pid.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def _status_mb(field: str, pid: int | None) -> float | None:
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mb(pid: int | None = None) -> float | None:
    """Resident memory now (VmRSS), MB."""
    return _status_mb("VmRSS", pid)


def peak_rss_mb(pid: int | None = None) -> float | None:
    """Peak resident memory so far (VmHWM), MB."""
    return _status_mb("VmHWM", pid)


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system, all threads) the process has used so far."""
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def model_size(path: Path) -> dict[str, float | int]:
    """Disk size (MB) of a model directory's files and, for safetensors weights, the parameter count."""
    out: dict[str, float | int] = {}
    if not path.is_dir():
        return out
    files = [p for p in path.iterdir() if p.is_file()]
    out["disk_mb"] = round(sum(p.stat().st_size for p in files) / 2**20, 3)
    weights = [p for p in files if p.suffix == ".safetensors"]
    if weights:
        from safetensors import safe_open

        n = 0
        for w in weights:
            with safe_open(str(w), framework="numpy") as f:
                for name in f.keys():
                    count = 1
                    for dim in f.get_slice(name).get_shape():
                        count *= dim
                    n += count
        out["params"] = n
    return out
