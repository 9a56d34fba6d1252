"""How much of the attention inputs' energy an evaluation-time band truncation keeps.

Truncation without retraining (``eval.eval_band``) feeds every attention branch ``lowpass(x, band)``
instead of ``x``. Whether a trained model survives that depends on how much of what its attention
reads lies inside the band, which the context oracle (the information the band *could* carry) does not
say. :class:`BandEnergyMeter` measures it during an evaluation:

    share = Σ ‖lowpass(x, band)‖² / Σ ‖x‖²

summed over every truncated attention input ``x`` (B, C, H, W) of every attention module and every
image. The DCT is orthonormal, so ``‖lowpass(x, band)‖²`` is the energy of the DCT coefficients inside
the band (Parseval) and the share lies in [0, 1]; it is 1 when the band covers the map.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from torch import Tensor

from fsanet.nn.base import AttentionModule

__all__ = ["BandEnergyMeter"]


class BandEnergyMeter:
    """Accumulates the kept and the total energy of truncated attention inputs.

    Use as a context manager around the evaluation loop; modules without ``eval_band`` report nothing::

        with BandEnergyMeter(model.attention_modules()) as meter:
            ...  # forward passes
        meter.share()  # None if no truncated input was seen

    Args:
        modules: the attention modules to watch (their ``band_meter`` is set while the meter is open).
    """

    def __init__(self, modules: Iterable[AttentionModule]) -> None:
        self.modules = list(modules)
        self.kept: Optional[Tensor] = None  # float64 scalars on the inputs' device: no sync per batch
        self.total: Optional[Tensor] = None
        self.inputs = 0

    def __call__(self, x: Tensor, kept: Tensor) -> None:
        k = kept.detach().double().square().sum()
        t = x.detach().double().square().sum()
        self.kept = k if self.kept is None else self.kept + k
        self.total = t if self.total is None else self.total + t
        self.inputs += 1

    def __enter__(self) -> BandEnergyMeter:
        for module in self.modules:
            if module.band_meter is not None:
                raise RuntimeError(f"{type(module).__name__}: another band meter is already attached")
            module.band_meter = self
        return self

    def __exit__(self, *exc: object) -> None:
        for module in self.modules:
            if module.band_meter is self:
                module.band_meter = None

    def share(self) -> Optional[float]:
        """Kept over total energy, or None if no truncated input was seen (or all inputs were zero)."""
        if self.kept is None or self.total is None:
            return None
        total = float(self.total)
        return float(self.kept) / total if total > 0 else None
