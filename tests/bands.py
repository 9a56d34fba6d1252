"""Hypothesis strategy shared by the DCT tests: a map size and a band that fits it."""

from __future__ import annotations

from typing import Optional

from hypothesis import strategies as st


@st.composite
def size_and_band(draw, max_size: int = 9, max_kh: Optional[int] = None, max_kw: Optional[int] = None):
    """``(h, w, (u0, u1, v0, v1))`` with ``h, w ≤ max_size``, band heights/widths ≤ ``max_kh``/``max_kw``."""
    h = draw(st.integers(1, max_size))
    w = draw(st.integers(1, max_size))
    u0 = draw(st.integers(0, h - 1))
    v0 = draw(st.integers(0, w - 1))
    u1 = draw(st.integers(u0 + 1, h if max_kh is None else min(h, u0 + max_kh)))
    v1 = draw(st.integers(v0 + 1, w if max_kw is None else min(w, v0 + max_kw)))
    return h, w, (u0, u1, v0, v1)
