"""Training checkpoints: written atomically, found by iteration, loaded with ``weights_only=True``.

A run folder holds ``checkpoints/iter_000050.pt`` … (model, optimizer, AMP scaler, iteration,
every rank's RNG state, the training log and the resolved config) and, once finished,
``model.pt`` (weights, config and class names only) which ``fsanet eval`` reads.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fsanet.config import flatten
from fsanet.io import atomic_path

__all__ = [
    "CHECKPOINT_DIR",
    "checkpoint_path",
    "config_diff",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^iter_(\d+)\.pt$")
# the temporary name of an atomic write (``fsanet.io.atomic_path``): ``.<final name>.tmp-<random><suffix>``
_TEMPORARY = re.compile(r"^\..+\.tmp-")


def checkpoint_path(run_dir: str | Path, iteration: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"iter_{iteration:06d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of every checkpoint in ``run_dir``, oldest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """``torch.save`` to a temporary name beside ``path``, then rename: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by this package (``weights_only=True``), naming the file on failure."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path}: not an fsanet checkpoint (expected keys 'model' and 'config')")
    return state


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0`` keeps all)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(run_dir)[:-keep]:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(
    run_dir: str | Path, subfolders: Sequence[str] = (CHECKPOINT_DIR,)
) -> list[Path]:
    """Delete the temporary files that atomic writes interrupted by a kill left behind.

    Call it when a run starts, before anything writes to the folder: a process killed while saving a
    checkpoint leaves a ``.iter_N.pt.tmp-*`` file as large as a checkpoint, which nothing else removes.

    Args:
        run_dir: the run folder; the files directly in it are checked.
        subfolders: folders below ``run_dir`` that are checked with everything inside them (other
            folders, e.g. ``eval/`` where another process may be writing, are left alone).

    Returns:
        The removed files (one log line lists them).
    """
    run_dir = Path(run_dir)
    candidates = [p for p in run_dir.iterdir() if p.is_file()] if run_dir.is_dir() else []
    for name in subfolders:
        if (run_dir / name).is_dir():
            candidates += [p for p in (run_dir / name).rglob("*") if p.is_file()]
    removed, size = [], 0
    for path in candidates:
        if _TEMPORARY.match(path.name):
            try:
                size += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            removed.append(path)
    if removed:
        names = ", ".join(str(p.relative_to(run_dir)) for p in removed[:5]) + (
            " …" if len(removed) > 5 else ""
        )
        log.info(
            "removed %d stale temporary file(s) (%.1f MB) left in %s by an interrupted write: %s",
            len(removed),
            size / 1e6,
            run_dir,
            names,
        )
    return removed


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, skipping keys under ``ignore``."""
    fa, fb = flatten(a), flatten(b)
    prefixes = tuple(ignore)
    keys = sorted(set(fa) | set(fb))
    return [
        k
        for k in keys
        if not any(k == p or k.startswith(p + ".") for p in prefixes) and fa.get(k) != fb.get(k)
    ]
