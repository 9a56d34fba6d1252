"""The poly learning-rate schedule, as a pure function of the iteration (so resuming needs no state).

mmseg ``PolyLR(power=0.9, eta_min=1e-4)`` stepped per iteration, no warm-up:
``lr(it) = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr`` for ``it`` in ``[0, max_iters)``.
"""

from __future__ import annotations

from torch.optim import Optimizer

__all__ = ["poly_lr", "set_lr", "warmup_poly_lr"]


def poly_lr(it: int, max_iters: int, base_lr: float, power: float = 0.9, min_lr: float = 1e-4) -> float:
    """Learning rate of iteration ``it`` (0-based) of ``max_iters``."""
    if max_iters < 1:
        raise ValueError(f"max_iters must be ≥ 1, got {max_iters}")
    if not 0 <= it <= max_iters:
        raise ValueError(f"iteration {it} outside 0..{max_iters}")
    return (base_lr - min_lr) * (1.0 - it / max_iters) ** power + min_lr


def warmup_poly_lr(
    it: int,
    max_iters: int,
    base_lr: float,
    power: float = 0.9,
    min_lr: float = 1e-4,
    warmup_iters: int = 0,
    warmup_ratio: float = 1e-6,
) -> float:
    """:func:`poly_lr` times mmseg's linear warm-up factor.

    Over the first ``warmup_iters`` iterations the factor rises linearly from ``warmup_ratio`` to 1
    (``warmup_ratio + (1 - warmup_ratio) * it / warmup_iters``); afterwards it is 1.
    """
    lr = poly_lr(it, max_iters, base_lr, power, min_lr)
    if warmup_iters <= 0 or it >= warmup_iters:
        return lr
    return lr * (warmup_ratio + (1.0 - warmup_ratio) * it / warmup_iters)


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group, times the group's ``lr_mult`` where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
