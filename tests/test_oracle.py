"""The context oracle's low-pass: an orthonormal DCT band on the pooled feature grid."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.fft import dctn

from fsanet.data.oracle import cue_map, lowpass, oracle_curve, predicted_knee


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_lowpass_is_a_linear_band_projection(seed: int, n: int, a: float, b: float) -> None:
    rng = np.random.default_rng(seed)
    m1, m2 = rng.normal(size=(2, 48, 48))
    assert np.allclose(lowpass(a * m1 + b * m2, n), a * lowpass(m1, n) + b * lowpass(m2, n), atol=1e-9)
    # on the pooled 6×6 grid the band keeps exactly the n×n lowest coefficients (Parseval: no energy added)
    grid = m1.reshape(6, 8, 6, 8).mean((1, 3))
    coeffs = dctn(grid, norm="ortho")
    kept = (coeffs[:n, :n] ** 2).sum()
    assert kept <= (grid**2).sum() + 1e-9
    const = np.full((48, 48), a)
    assert np.allclose(lowpass(const, n), a)  # the DC coefficient alone carries a constant map


def test_cue_map_and_knee() -> None:
    m = cue_map({"cells": ["red", "blue"]}, 16)
    assert m.shape == (16, 16) and (m[:, :8] == 1).all() and (m[:, 8:] == -1).all()
    assert (cue_map({"cue": "blue"}, 8) == -1).all()
    assert predicted_knee({"1": 0.5, "2": 0.99, "3": 1.0}) == [2, 2]
    assert predicted_knee({"1": 0.5}) is None
    curve = oracle_curve(np.array([5, 10]), 10)
    assert curve["accuracy"] == {"1": 0.5, "2": 1.0} and curve["knee"] == [2, 2]


def test_alternating_stripes_need_as_many_coefficients_as_stripes() -> None:
    # +1/-1 alternating over c stripes changes sign c-1 times; n < c DCT functions cannot follow it
    for c in (2, 4):
        info = {"cells": ["red" if j % 2 == 0 else "blue" for j in range(c)]}
        m = cue_map(info, 96)
        w = 96 // c
        inside = np.concatenate([np.arange(j * w + 3, (j + 1) * w - 3) for j in range(c)])
        for n in range(1, 13):
            share = (np.sign(lowpass(m, n)[48, inside]) == m[48, inside]).mean()
            if n < c:
                assert share <= 0.5, (c, n, share)  # whole stripes get the wrong sign
            else:
                assert share >= 0.97, (c, n, share)  # at most the pixels next to a stripe border
