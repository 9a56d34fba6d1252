"""Seeding, determinism switches and checkpointable random-number-generator state.

The training loop makes every random draw a function of the run's seed and position, so a run that
is stopped and resumed replays exactly the draws an uninterrupted run makes:

* ``seed_everything(seed)`` seeds Python, NumPy and torch (CPU and CUDA).
* ``sample_seed(seed, position)`` is the seed of the ``position``-th training sample of the run; the
  data pipeline reseeds its generators from it (see ``seeded``) so augmentation does not depend on
  worker processes, ranks or where a run was resumed.
* ``get_rng_state`` / ``set_rng_state`` capture all global generators in a form that
  ``torch.load(..., weights_only=True)`` accepts (tensors, ints, lists).
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = [
    "configure_determinism",
    "deterministic_mode",
    "get_rng_state",
    "sample_seed",
    "seed_everything",
    "seeded",
    "set_rng_state",
]

_MASK63 = (1 << 63) - 1


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sample_seed(seed: int, position: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for item ``position`` of ``stream`` in a run seeded with ``seed``.

    A pure function of its arguments; streams keep unrelated uses (samples, shuffles) apart.
    """
    if position < 0 or stream < 0:
        raise ValueError(f"position and stream must be ≥ 0, got {position}, {stream}")
    state = np.random.SeedSequence([seed % 2**63, stream, position]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 32 | int(state[1])) & _MASK63


def configure_determinism(enabled: bool, warn_only: bool = True) -> None:
    """Ask torch for deterministic kernels.

    Sets ``CUBLAS_WORKSPACE_CONFIG`` (effective only if CUDA has not initialised yet), turns off the
    cuDNN autotuner and calls ``torch.use_deterministic_algorithms``. On CPU every kernel the project
    uses is deterministic already; ``warn_only`` matters on CUDA, where bilinear upsampling's
    backward has no deterministic kernel.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled
    _set_deterministic_algorithms(enabled, warn_only)


def _set_deterministic_algorithms(enabled: bool, warn_only: bool) -> None:
    # The public `torch.use_deterministic_algorithms` also imports torch._inductor to set its config
    # (1.9 s per process here, in every train/eval job); that config only matters to torch.compile,
    # which this project does not use. Set the ATen flag directly unless inductor is loaded anyway.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor" in sys.modules:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    else:
        setter(enabled, warn_only=warn_only)


@contextlib.contextmanager
def deterministic_mode(enabled: bool, warn_only: bool = True) -> Iterator[None]:
    """``configure_determinism`` for the duration of a block; the previous settings come back after."""
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    configure_determinism(enabled, warn_only)
    try:
        yield
    finally:
        _set_deterministic_algorithms(before[0], before[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[2], before[3]


def get_rng_state() -> dict[str, Any]:
    """All global generator states, as tensors/ints/lists (safe for ``weights_only`` loading)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    npst = state["numpy"]
    np.random.set_state(
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and torch-CPU generators for a block, then put the previous states back."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)  # CPU only: CUDA generators are left alone
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
