"""The learning-rate schedules, as pure functions of the iteration (so resuming needs no state).

Poly (mmseg's segmentation default) and step (mmdet's 1x detection schedule), each with mmseg/mmdet's
linear warm-up.

mmseg ``PolyLR(power=0.9, eta_min=1e-4)`` stepped per iteration, no warm-up:
``lr(it) = (base_lr - min_lr) * (1 - it / max_iters) ** power + min_lr`` for ``it`` in ``[0, max_iters)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer

__all__ = ["poly_lr", "set_lr", "warmup_factor", "warmup_poly_lr", "warmup_step_lr"]


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
    return poly_lr(it, max_iters, base_lr, power, min_lr) * warmup_factor(it, warmup_iters, warmup_ratio)


def warmup_factor(it: int, warmup_iters: int, warmup_ratio: float) -> float:
    """The linear warm-up factor: ``warmup_ratio`` at iteration 0, rising to 1 at ``warmup_iters``."""
    if warmup_iters <= 0 or it >= warmup_iters:
        return 1.0
    return warmup_ratio + (1.0 - warmup_ratio) * it / warmup_iters


def warmup_step_lr(
    it: int,
    base_lr: float,
    steps: Sequence[int],
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_ratio: float = 1e-3,
) -> float:
    """mmdet's step schedule (``MultiStepLR`` by iteration): ``base_lr × gamma^(number of steps ≤ it)``,
    times the linear warm-up factor. mmdet's 1x: 12 epochs at batch 16 (about 7,330 iterations per epoch
    on COCO train2017, about 88k in all), the lr divided by 10 after epochs 8 and 11, a 500-iteration
    warm-up from ratio 0.001."""
    if it < 0:
        raise ValueError(f"iteration {it} is negative")
    drops = sum(1 for s in steps if it >= s)
    return base_lr * gamma**drops * warmup_factor(it, warmup_iters, warmup_ratio)


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group, times the group's ``lr_mult`` where it has one."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
