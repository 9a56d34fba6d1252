"""What a run records about where it came from: git SHA and dirty flag, versions, device, threads."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["environment", "git_info", "source_hash"]

PACKAGE_ROOT = Path(__file__).resolve().parent


@functools.cache
def git_info(cwd: str | None = None) -> dict[str, Any]:
    """The git SHA of the checkout and whether tracked files differ from it.

    Returns ``{"git_sha": None, "git_dirty": None}`` outside a git checkout.
    """
    where = cwd or str(PACKAGE_ROOT.parent)
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        return {"git_sha": sha, "git_dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}


def source_hash() -> str:
    """SHA-256 over the package's Python sources: a change under ``fsanet/`` changes this value."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, device and thread settings of this process, plus git provenance."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
        ),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "fsanet_source_hash": source_hash(),
    }
    info.update(git_info())
    return info
