"""Helpers the dataset modules share while they convert a raw download: a process-pool map and the
split-size check.

They live apart from :mod:`fsanet.data.prepare`, which dispatches to the dataset modules, so that the
dataset modules depend on this module only and the imports run one way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

from fsanet.data.errors import DataError

__all__ = ["check_count", "missing_summary", "parallel_map"]

T = TypeVar("T")
R = TypeVar("R")

_LISTED = 5


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], workers: int = 0, desc: str = "", progress: bool = True
) -> list[R]:
    """``[fn(x) for x in items]`` over a process pool, in order, with a progress bar.

    Args:
        fn: a picklable (module-level) function.
        items: its arguments.
        workers: processes; 0 = one per CPU; 1 runs in this process (no pool).
        desc: progress-bar label.
        progress: show the bar.
    """
    workers = workers or os.cpu_count() or 1
    bar = dict(total=len(items), desc=desc, unit="file", disable=not progress)
    if workers == 1 or len(items) <= 1:
        return [fn(x) for x in tqdm(items, **bar)]
    chunk = max(1, min(64, len(items) // (workers * 8)))
    with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(tqdm(pool.map(fn, items, chunksize=chunk), **bar))


def missing_summary(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def check_count(
    what: str, found: int, expected: int | None, missing: Sequence[str] = (), enabled: bool = True
) -> None:
    """Refuse a split whose size differs from the known one, naming what is missing.

    Args:
        what: e.g. ``"cityscapes gtFine/train label maps"``.
        found: how many were found.
        expected: the known size (None: unknown, nothing checked).
        missing: names of expected-but-absent items, when the caller can tell.
        enabled: False for miniatures/subsets (``data.check_split_sizes=false``).

    Raises:
        DataError: the counts differ.
    """
    if not enabled or expected is None or found == expected:
        return
    detail = f"; missing: {missing_summary(list(missing))}" if missing else ""
    raise DataError(
        f"{what}: found {found}, expected {expected}{detail}. The download is incomplete or the folder "
        f"holds another version; for a deliberate subset set data.check_split_sizes=false"
    )
