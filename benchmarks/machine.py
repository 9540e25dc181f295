"""What the machine holds right now: process memory, and GPU memory where a GPU is visible."""

from __future__ import annotations

import shutil
import subprocess


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def gpu() -> dict | None:
    """Name and used/total memory of GPU 0 via nvidia-smi, or None without one."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.used,memory.total", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    name, used, total = (part.strip() for part in out.strip().split(","))
    return {"name": name, "memory_used_mib": int(used), "memory_total_mib": int(total)}
