"""The contract every attention module in ``fsanet.nn`` follows.

* ``Module(channels, **options)``; ``forward`` maps ``(B, C, H, W)`` to ``(B, C, H, W)`` with the
  residual connection inside the module.
* ``flops(h, w, batch=1)`` returns the analytic forward cost in FLOPs (2 per multiply-accumulate),
  counting the operations ``torch.utils.flop_counter`` counts (convolutions, matmul/bmm/einsum,
  SDPA), so the benchmark can cross-check the formula against the counter. The docstring of each
  module gives the formula in MACs.
* ``eval_band``: when set to a band, the module's attention branch sees ``lowpass(x, eval_band)``
  while the residual keeps the full ``x``: the paper's "low-frequency attention without
  retraining" ablation, applicable to any trained model. While ``band_meter`` is set, every
  truncated attention input and its low-passed copy are passed to it (``band_meter(x, kept)``), so an
  evaluation can report how much of the input's energy the band kept
  (:class:`fsanet.engine.band_energy.BandEnergyMeter`).
* Declarations read by the benchmark and the tables: ``name`` (the key in ``bench.modules`` and in
  the benchmark's JSON), ``display`` (the name in table T1) and :meth:`bench_variants` (the
  constructor options of the rows the module gets in ``fsanet bench attention``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Optional

from torch import Tensor, nn

from fsanet.band import fit_band
from fsanet.nn.dct import Band, BandLike, lowpass, normalize_band

__all__ = ["AttentionModule"]


class AttentionModule(nn.Module):
    """Base class: holds ``channels`` and the optional evaluation-time band truncation.

    Args:
        channels: input and output channels C.
    """

    #: key in ``bench.modules`` and in the benchmark's rows
    name: ClassVar[str] = ""
    #: the module's name in table T1
    display: ClassVar[str] = ""
    #: ``eval_band`` larger than the map keeps the whole map (see :meth:`band_on`) instead of failing
    clamp_eval_band: ClassVar[bool] = False

    @classmethod
    def bench_variants(cls, setting: str, bands: Sequence[Band]) -> list[dict[str, Any]]:
        """Constructor options of this module's rows in ``fsanet bench attention``: one row per dict.

        Args:
            setting: ``"paper"`` (the paper-size comparison) or ``"sweep"`` (the map-size sweep).
            bands: the bands the benchmark asks for in that setting (used by modules with a band).
        """
        return [{}]

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be ≥ 1, got {channels}")
        self.channels = channels
        #: called as ``band_meter(x, lowpass(x, band))`` on each truncated attention input; None = off
        self.band_meter: Optional[Callable[[Tensor, Tensor], None]] = None
        self._eval_band: Optional[Band] = None

    @property
    def eval_band(self) -> Optional[Band]:
        return self._eval_band

    @eval_band.setter
    def eval_band(self, band: BandLike) -> None:
        self._eval_band = None if band is None else normalize_band(band)

    def band_on(self, h: int, w: int) -> Optional[Band]:
        """``eval_band`` on an ``h``×``w`` map. A module that sits at several scales (every stage of a
        transformer encoder: ``clamp_eval_band = True``) keeps the whole map where the band is larger
        than the map; elsewhere a band larger than the map is an error (:class:`fsanet.band.BandError`)."""
        if self._eval_band is None:
            return None
        if self.clamp_eval_band:
            return fit_band(self._eval_band, h, w)
        return normalize_band(self._eval_band, h, w)

    def attention_input(self, x: Tensor) -> Tensor:
        """What the attention branch attends over: ``x``, or its low-passed copy if ``eval_band`` is set."""
        band = self.band_on(*x.shape[-2:])
        if band is None:
            return x
        kept = lowpass(x, band)
        if self.band_meter is not None:
            self.band_meter(x, kept)
        return kept

    def eval_band_macs(self, h: int, w: int) -> int:
        """MACs of ``lowpass(x, eval_band)`` on one (C, H, W) input (DCT and inverse); 0 if unset or full."""
        band = self.band_on(h, w)
        if band is None:
            return 0
        u0, u1, v0, v1 = band
        if (u0, u1, v0, v1) == (0, h, 0, w):
            return 0
        kh, kw = u1 - u0, v1 - v0
        # dct2: C_H @ x (kh·H·W), · @ C_Wᵀ (kh·W·kw); idct2: C_Hᵀ @ y (H·kh·kw), · @ C_W (H·kw·W)
        return self.channels * (kh * h * w + kh * w * kw + h * kh * kw + h * kw * w)

    def check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} expects (B, {self.channels}, H, W) input, got {tuple(x.shape)}"
            )

    def flops(self, h: int, w: int, batch: int = 1) -> int:  # pragma: no cover - abstract
        raise NotImplementedError
