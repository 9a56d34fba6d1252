"""The timing and memory toolkit of both benchmarks (``fsanet bench attention`` and ``fsanet bench models``).

* :func:`count_flops`: FLOPs of one call under ``torch.utils.flop_counter.FlopCounterMode`` (2 per
  multiply-accumulate; ops it does not count contribute 0).
* :func:`measure_peak_memory`: bytes of tensor storage allocated during one call and alive at once, the
  input excluded (CUDA: ``max_memory_allocated``; CPU: :class:`PeakMemoryTracker`). See
  :mod:`fsanet.bench.attention` for the method and its limits.
* :func:`time_once`, :func:`measure_latency_paired`: wall-clock timing (synchronised on CUDA), alone or
  in alternation with a reference call.
* :func:`time_interleaved`, :func:`round_shares`, :func:`rotated`: interleaved rounds, so that a burst
  of load from other processes hits every timed call alike; :func:`verdict` reads a figure's spread
  over the rounds against a threshold.
* :func:`memory_limit`, :func:`pin_allocator`: an allocation budget around a call, and glibc settings
  that keep freed buffers mapped.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Optional

import psutil
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "OutOfMemory",
    "PeakMemoryTracker",
    "Timeout",
    "count_flops",
    "is_cpu_oom",
    "is_cuda_oom",
    "measure_latency_paired",
    "measure_peak_memory",
    "memory_limit",
    "pin_allocator",
    "rotated",
    "round_shares",
    "sync_device",
    "time_interleaved",
    "time_once",
    "verdict",
]


class Timeout(Exception):
    """A forward ran longer than the configured limit."""


class OutOfMemory(Exception):
    """A forward needed more memory than the configured budget."""


# --------------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------------
class PeakMemoryTracker(TorchDispatchMode):
    """Tracks bytes of live tensor storage created inside the ``with`` block; ``peak`` is the high-water mark.

    Storages that existed before the block (inputs, weights) are not counted, as with CUDA's
    ``max_memory_allocated() - memory_allocated()`` taken before the call.
    """

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key, (ref, nbytes) in list(self._live.items()):
            if ref.expired():
                self.current -= nbytes
                del self._live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self._sweep()
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in self._live:
                    nbytes = storage.nbytes()
                    self._live[key] = (StorageWeakRef(storage), nbytes)
                    self.current += nbytes
        self.peak = max(self.peak, self.current)
        return out


def is_cuda_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError)


# How allocation failures surface on CPU under an address-space limit: ATen's allocator, oneDNN
# (which cannot allocate its primitive's memory), and the C++ runtime.
_CPU_OOM_MESSAGES = ("can't allocate memory", "could not create a primitive", "bad_alloc", "out of memory")


def is_cpu_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err) for m in _CPU_OOM_MESSAGES)


@contextlib.contextmanager
def memory_limit(device: torch.device, budget_bytes: int, release_cache: bool = True) -> Iterator[None]:
    """Turn an allocation past ``budget_bytes`` into :class:`OutOfMemory` instead of an OOM kill.

    On CPU this bounds the process's address space to its current size plus the budget for the
    duration of the block (allocations beyond it fail with a catchable error). On CUDA the device's own
    OOM error is translated.

    Args:
        device: where the block allocates.
        budget_bytes: bytes the block may allocate beyond what the process holds on entry (CPU).
        release_cache: on CUDA, empty the caching allocator on exit. Timing blocks pass ``False``, so
            that the next timed forward does not pay for fresh device allocations.
    """
    old = None
    if device.type == "cpu" and budget_bytes > 0:
        old = resource.getrlimit(resource.RLIMIT_AS)
        limit = psutil.Process().memory_info().vms + budget_bytes
        if old[1] != resource.RLIM_INFINITY:
            limit = min(limit, old[1])
        resource.setrlimit(resource.RLIMIT_AS, (limit, old[1]))
    try:
        yield
    except BaseException as err:
        if is_cuda_oom(err) or is_cpu_oom(err):
            raise OutOfMemory(str(err).splitlines()[0][:200]) from None
        raise
    finally:
        if old is not None:
            resource.setrlimit(resource.RLIMIT_AS, old)
        if device.type == "cuda" and release_cache:
            torch.cuda.empty_cache()


def measure_peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated by one call of ``fn`` beyond what was allocated before it (see the module)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del out
        return int(peak)
    with PeakMemoryTracker() as tracker:
        out = fn()
    del out
    return int(tracker.peak)


# --------------------------------------------------------------------------------------------
# FLOPs and latency
# --------------------------------------------------------------------------------------------
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` as ``FlopCounterMode`` counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds for one call of ``fn`` (synchronised on CUDA)."""
    sync_device(device)
    t0 = time.perf_counter()
    fn()
    sync_device(device)
    return time.perf_counter() - t0


def measure_latency_paired(
    fn: Callable[[], Any], ref: Optional[Callable[[], Any]], device: torch.device, warmup: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Milliseconds of ``repeats`` calls of ``fn`` and, in alternation with them, of ``ref``.

    Args:
        fn: the call to time.
        ref: timed right after each timed call of ``fn`` (``fn, ref, fn, ref, …``), so that both see the
            same machine state; ``None`` times ``fn`` alone.
        device: synchronised around each call on CUDA.
        warmup: untimed calls of each first.
        repeats: timed calls of each.

    Returns:
        ``(times of fn, times of ref)``; the second list is empty when ``ref`` is ``None``.
    """
    for _ in range(warmup):
        fn()
        if ref is not None:
            ref()
    times: list[float] = []
    ref_times: list[float] = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            times.append(time_once(fn, device) * 1e3)
            if ref is not None:
                ref_times.append(time_once(ref, device) * 1e3)
    finally:
        gc.enable()
    return times, ref_times


def round_shares(repeats: int, rounds: int) -> list[int]:
    """Timed forwards of one case in each round: ``repeats`` split as evenly as possible, at least 1 each.

    Args:
        repeats: timed forwards a case needs in all; the shares add up to ``max(repeats, rounds)``.
        rounds: number of rounds (>= 1).

    Returns:
        One share per round, the larger ones first.
    """
    if rounds < 1:
        raise ValueError(f"bench.rounds must be >= 1, got {rounds}")
    base, extra = divmod(max(repeats, rounds), rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def rotated(items: list[Any], r: int) -> list[Any]:
    """``items`` rotated left by ``r`` places: the visiting order of round ``r``."""
    if not items:
        return []
    k = r % len(items)
    return items[k:] + items[:k]


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------
def verdict(low: float, high: float, threshold: float, better: str = "lower") -> str:
    """Judge a measured spread against a threshold: ``"pass"``, ``"fail"`` or ``"unstable"``.

    A finding such as "x_floor <= 3" passes only if the whole spread ``[low, high]`` is on the good side
    of the threshold, fails only if the whole spread is on the bad side, and is unstable when the spread
    straddles it (the machine's load, not the module, decides which side a single run lands on).

    Args:
        low: the smallest figure of the spread (e.g. ``x_floor_spread[0]``).
        high: the largest figure of the spread.
        threshold: the bound of the finding; a figure equal to it is on the good side.
        better: ``"lower"`` for findings of the form ``figure <= threshold``, ``"higher"`` for
            ``figure >= threshold``.

    Returns:
        ``"pass"``, ``"fail"`` or ``"unstable"``.
    """
    if better not in ("lower", "higher"):
        raise ValueError(f"verdict: better must be 'lower' or 'higher', got {better!r}")
    if any(math.isnan(v) for v in (low, high, threshold)):
        raise ValueError(f"verdict: NaN in low={low}, high={high}, threshold={threshold}")
    if low > high:
        raise ValueError(f"verdict: low={low} > high={high}")
    if better == "lower":
        good, bad = high <= threshold, low > threshold
    else:
        good, bad = low >= threshold, high < threshold
    return "pass" if good else "fail" if bad else "unstable"


def pin_allocator() -> str:
    """Make glibc keep freed large buffers for reuse (see the module docstring); returns what was set."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "default (not glibc)"
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    ok = libc.mallopt(m_mmap_threshold, 1 << 30) == 1 and libc.mallopt(m_trim_threshold, (1 << 31) - 1) == 1
    return (
        "glibc mallopt(M_MMAP_THRESHOLD=1GiB, M_TRIM_THRESHOLD=2GiB)" if ok else "default (mallopt refused)"
    )


def time_interleaved(
    calls: Sequence[Callable[[], Any]], device: torch.device, warmup: int, repeats: int, rounds: int
) -> list[dict[str, Any]]:
    """Latency of each call, timed in ``rounds`` interleaved rounds.

    Each call first runs ``warmup`` times untimed; then in round ``r`` every call runs its share of the
    ``repeats`` timed runs (:func:`round_shares`) in turn, the order rotated by ``r`` (:func:`rotated`),
    with the garbage collector paused inside a round.

    Returns:
        Per call: ``latency_ms`` (median over all rounds), ``latency_ms_min``/``_max``,
        ``latency_round_ms`` (each round's median) and ``fps`` (1000 / median).
    """
    times: list[list[float]] = [[] for _ in calls]
    round_medians: list[list[float]] = [[] for _ in calls]
    for call in calls:
        for _ in range(warmup):
            call()
    for r, share in enumerate(round_shares(repeats, rounds)):
        gc.collect()
        gc.disable()  # no collector pauses inside a round
        try:
            for i in rotated(list(range(len(calls))), r):
                this_round = [time_once(calls[i], device) * 1e3 for _ in range(share)]
                times[i] += this_round
                round_medians[i].append(statistics.median(this_round))
        finally:
            gc.enable()
    out = []
    for ts, rm in zip(times, round_medians):
        median = statistics.median(ts)
        out.append(
            {
                "latency_ms": median,
                "latency_ms_min": min(ts),
                "latency_ms_max": max(ts),
                "latency_round_ms": rm,
                "fps": 1000.0 / median if median > 0 else None,
            }
        )
    return out
