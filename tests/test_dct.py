"""The banded orthonormal DCT against scipy, and its algebraic identities."""

from __future__ import annotations

import pytest
import scipy.fft
import torch
from bands import size_and_band
from hypothesis import given, settings
from hypothesis import strategies as st

from fsanet.nn import dct
from fsanet.nn.dct import band_bases, dct2, dct_matrix, dense_basis, idct2, lowpass, normalize_band

BANDS = [None, (3, 2), (1, 4, 2, -1), (0, -1, 3, 5), (2, 3, 1, 2)]
SIZES = [(6, 9), (7, 5), (5, 5)]


@pytest.mark.parametrize("band", BANDS)
@pytest.mark.parametrize("size", SIZES)
def test_dct2_matches_scipy(size, band):
    h, w = size
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    u0, u1, v0, v1 = normalize_band(band, h, w)
    expected = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))[..., u0:u1, v0:v1]
    got = dct2(x, band)
    assert got.shape == (2, 3, u1 - u0, v1 - v0)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("band", BANDS)
@pytest.mark.parametrize("size", SIZES)
def test_idct2_matches_scipy_with_zeroed_highs(size, band):
    h, w = size
    u0, u1, v0, v1 = normalize_band(band, h, w)
    y = torch.randn(2, u1 - u0, v1 - v0, dtype=torch.float64)
    full = torch.zeros(2, h, w, dtype=torch.float64)
    full[:, u0:u1, v0:v1] = y
    expected = scipy.fft.idctn(full.numpy(), type=2, norm="ortho", axes=(-2, -1))
    torch.testing.assert_close(idct2(y, (h, w), band), torch.from_numpy(expected), rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 64))
def test_dct_matrix_is_orthonormal(n):
    c = dct_matrix(n, dtype=torch.float64)
    eye = torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(c @ c.T, eye, rtol=0, atol=1e-12)
    torch.testing.assert_close(c.T @ c, eye, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(sb=size_and_band())
def test_band_basis_rows_are_orthonormal(sb):
    h, w, band = sb
    p = dense_basis(h, w, band, dtype=torch.float64)  # (K, N)
    torch.testing.assert_close(p @ p.T, torch.eye(p.shape[0], dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", SIZES + [(1, 4), (3, 1)])
def test_full_band_round_trip_is_identity(size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(idct2(dct2(x), size), x, rtol=0, atol=1e-12)
    assert lowpass(x, None) is x
    assert lowpass(x, (0, -1, 0, -1)) is x


@settings(max_examples=30, deadline=None)
@given(sb=size_and_band())
def test_coefficient_round_trip_is_identity(sb):
    h, w, band = sb
    u0, u1, v0, v1 = band
    y = torch.randn(3, u1 - u0, v1 - v0, dtype=torch.float64)
    torch.testing.assert_close(dct2(idct2(y, (h, w), band), band), y, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(sb=size_and_band())
def test_lowpass_is_an_orthogonal_projection(sb):
    h, w, band = sb
    x = torch.randn(2, h, w, dtype=torch.float64)
    z = torch.randn(2, h, w, dtype=torch.float64)
    lx = lowpass(x, band)
    torch.testing.assert_close(lowpass(lx, band), lx, rtol=0, atol=1e-12)  # idempotent
    inner_a = (lx * z).sum()
    inner_b = (x * lowpass(z, band)).sum()
    torch.testing.assert_close(inner_a, inner_b, rtol=0, atol=1e-10)  # self-adjoint
    assert (lx.square().sum() <= x.square().sum() + 1e-12).item()


def test_lowpass_removes_outside_band_and_keeps_inside():
    h, w = 8, 6
    y = torch.zeros(h, w, dtype=torch.float64)
    y[1, 2] = 1.0  # inside (0, 3, 0, 3)
    y[5, 1] = 1.0  # outside
    x = idct2(y, (h, w))
    kept = dct2(lowpass(x, (3, 3)))
    expected = torch.zeros(h, w, dtype=torch.float64)
    expected[1, 2] = 1.0
    torch.testing.assert_close(kept, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("band", BANDS)
@pytest.mark.parametrize("size", SIZES)
def test_dense_basis_consistent_with_separable_transform(size, band):
    h, w = size
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    p = dense_basis(h, w, band, dtype=torch.float64)  # (K, N), row u·kw + v
    y = dct2(x, band)
    torch.testing.assert_close(x.flatten(-2) @ p.T, y.flatten(-2), rtol=0, atol=1e-12)
    torch.testing.assert_close((y.flatten(-2) @ p).view(2, 3, h, w), idct2(y, size, band), rtol=0, atol=1e-12)
    ch, cw = band_bases(h, w, band, dtype=torch.float64)
    u, v = 1 % ch.shape[0], 1 % cw.shape[0]
    torch.testing.assert_close(p[u * cw.shape[0] + v].view(h, w), torch.outer(ch[u], cw[v]))


def test_normalize_band_accepts_all_forms():
    assert normalize_band(None) == (0, -1, 0, -1)
    assert normalize_band(None, 4, 7) == (0, 4, 0, 7)
    assert normalize_band((3, 4)) == (0, 3, 0, 4)
    assert normalize_band([1, -1, 2, None], 5, 6) == (1, 5, 2, 6)
    assert normalize_band((1, -1, 2, None)) == (1, -1, 2, -1)
    assert normalize_band((0, 5, 0, 5), 5, 5) == (0, 5, 0, 5)


@pytest.mark.parametrize(
    "band, size, match",
    [
        ((1, 2, 3), None, "must be None"),
        ((1,), None, "must be None"),
        ((3, 1, 0, 2), None, "empty along u"),
        ((0, 2, 4, 4), None, "empty along v"),
        ((0, 0), None, "empty along u"),
        ((-1, 3, 0, 2), None, "lower bounds must be"),
        ((None, 3, 0, 2), None, "lower bounds u0 and v0"),
        ((0, 10, 0, 2), (8, 8), "outside the map along u .*10 > map size 8"),
        ((0, 2, 0, 9), (8, 8), "outside the map along v .*9 > map size 8"),
        ((8, -1, 0, 2), (8, 8), "empty along u"),
    ],
)
def test_normalize_band_errors(band, size, match):
    with pytest.raises(ValueError, match=match):
        normalize_band(band, *(size or (None, None)))


def test_transform_errors():
    with pytest.raises(ValueError, match="DCT size"):
        dct_matrix(0)
    with pytest.raises(ValueError, match="do not match band"):
        idct2(torch.zeros(3, 3), (8, 8), (2, 2))
    with pytest.raises(ValueError, match="outside the map"):
        dct2(torch.zeros(4, 4), (5, 5))


def test_band_bases_are_cached_per_key():
    a = band_bases(10, 12, (3, 4), dtype=torch.float32)
    b = band_bases(10, 12, (0, 3, 0, 4), dtype=torch.float32)
    assert a[0] is b[0] and a[1] is b[1]
    c = band_bases(10, 12, (3, 4), dtype=torch.float64)
    assert c[0] is not a[0] and c[0].dtype == torch.float64
    assert band_bases(10, 12, (3, 5))[1].shape == (5, 12)


def test_cache_filled_under_inference_mode_serves_autograd():
    dct._bases.cache_clear()
    dct._dct_matrix_cpu64.cache_clear()
    h, w, band = 11, 13, (2, 3)
    with torch.inference_mode():
        y0 = dct2(torch.randn(h, w, dtype=torch.float64), band)
    assert y0.is_inference()
    ch, cw = band_bases(h, w, band, dtype=torch.float64)
    assert not ch.is_inference() and not cw.is_inference() and not ch.requires_grad
    x = torch.randn(h, w, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, dtype=torch.float64)
    (dct2(x, band) * g).sum().backward()
    # d/dx Σ g ⊙ (C_H x C_Wᵀ) = C_Hᵀ g C_W = idct2(g)
    torch.testing.assert_close(x.grad, idct2(g, (h, w), band), rtol=0, atol=1e-12)
