"""The banded-DCT custom ops: numba kernels against the torch path and scipy, autograd, FLOPs, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch
from bands import size_and_band
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from fsanet.nn import dct_ops
from fsanet.nn.dct import band_bases, normalize_band
from fsanet.nn.dct_ops import band_dct2, band_idct2, use_kernels


def test_kernels_available():
    assert dct_ops.kernels_available(), "numba is a dependency: the CPU kernels must compile here"


def _case(h: int, w: int, band, dtype=torch.float64, lead=(2, 3), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ch, cw = band_bases(h, w, band, dtype=dtype)
    x = torch.randn(*lead, h, w, generator=g, dtype=dtype)
    y = torch.randn(*lead, ch.shape[0], cw.shape[0], generator=g, dtype=dtype)
    shift = torch.randn(*lead, generator=g, dtype=dtype)
    return x, y, shift, ch, cw


@settings(max_examples=40, deadline=None)
@given(
    hwb=size_and_band(max_size=24, max_kh=12, max_kw=dct_ops.MAX_KERNEL_BAND),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_kernels_match_torch_path(hwb, dtype):
    h, w, band = hwb
    x, y, shift, ch, cw = _case(h, w, band, dtype)
    with use_kernels(True):
        fast = band_dct2(x, ch, cw), band_idct2(y, ch, cw, x, shift), band_idct2(y, ch, cw)
    with use_kernels(False):
        ref = band_dct2(x, ch, cw), band_idct2(y, ch, cw, x, shift), band_idct2(y, ch, cw)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for a, b in zip(fast, ref):
        assert a.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, **tol)


@pytest.fixture(autouse=True)
def _kernels_on_small_inputs(request):
    """Tests use tiny maps: force the kernels (by default they start at MIN_KERNEL_ELEMENTS)."""
    if "no_force" in request.keywords:
        yield
        return
    with use_kernels(True):
        yield


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("band", [(0, 5, 0, 5), (0, 8, 0, 8), (2, 6, 1, 12), (0, 1, 0, 1)])
def test_kernels_match_scipy(band, kernels):
    with use_kernels(kernels):
        _scipy_check(band)


def _scipy_check(band):
    h, w = 19, 23
    x, y, shift, ch, cw = _case(h, w, band)
    u0, u1, v0, v1 = normalize_band(band, h, w)
    expected = scipy.fft.dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))[..., u0:u1, v0:v1]
    torch.testing.assert_close(band_dct2(x, ch, cw), torch.from_numpy(expected), rtol=0, atol=1e-12)
    full = np.zeros(x.shape)
    full[..., u0:u1, v0:v1] = y.numpy()
    inv = scipy.fft.idctn(full, type=2, norm="ortho", axes=(-2, -1))
    got = band_idct2(y, ch, cw, residual=x, shift=shift)
    torch.testing.assert_close(got, x + torch.from_numpy(inv) + shift[..., None, None], rtol=0, atol=1e-12)


@pytest.mark.no_force
def test_kernels_are_used_and_can_be_turned_off(monkeypatch):
    calls = []
    real = dct_ops._kernels

    def spy():
        calls.append(1)
        return real()

    monkeypatch.setattr(dct_ops, "_kernels", spy)
    x, y, shift, ch, cw = _case(9, 9, (0, 5, 0, 5), torch.float32)
    band_dct2(x, ch, cw)
    assert not calls, "a map below MIN_KERNEL_ELEMENTS takes the torch path by default"
    with use_kernels(True):
        band_dct2(x, ch, cw)
    assert calls
    calls.clear()
    big, _, _, chb, cwb = _case(128, 128, (0, 5, 0, 5), torch.float32, lead=(1, 64))
    assert big.numel() >= dct_ops.MIN_KERNEL_ELEMENTS
    band_dct2(big, chb, cwb)
    assert calls, "a float32 CPU map past the size threshold with a 5-wide band takes the numba kernel"
    calls.clear()
    with use_kernels(False):
        band_dct2(big, chb, cwb)
    assert not calls
    # wider than the kernels take, or a dtype they do not: the torch path
    xw, _, _, chw, cww = _case(20, 20, (0, 3, 0, dct_ops.MAX_KERNEL_BAND + 1), torch.float32)
    with use_kernels(True):
        band_dct2(xw, chw, cww)
        band_dct2(x.half(), ch.half(), cw.half())
    assert not calls


def test_results_do_not_depend_on_thread_count():
    x, y, shift, ch, cw = _case(31, 17, (0, 5, 0, 5), torch.float32, lead=(3, 8))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = band_dct2(x, ch, cw), band_idct2(y, ch, cw, x, shift)
        torch.set_num_threads(2)
        two = band_dct2(x, ch, cw), band_idct2(y, ch, cw, x, shift)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_non_contiguous_and_no_leading_dims():
    x, y, shift, ch, cw = _case(12, 10, (0, 4, 0, 3))
    xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, non-contiguous
    assert not xt.is_contiguous()
    torch.testing.assert_close(band_dct2(xt, ch, cw), band_dct2(x, ch, cw), rtol=0, atol=0)
    one = band_idct2(y[0, 0], ch, cw, residual=x[0, 0])
    assert one.shape == (12, 10)
    torch.testing.assert_close(one, band_idct2(y, ch, cw, residual=x)[0, 0], rtol=0, atol=0)


@pytest.mark.parametrize("kernels", [True, False])
def test_gradcheck(kernels):
    x, y, shift, ch, cw = _case(7, 6, (1, 4, 0, 3), lead=(2,))
    with use_kernels(kernels):
        assert torch.autograd.gradcheck(lambda t: band_dct2(t, ch, cw), (x.requires_grad_(),))
        y.requires_grad_()
        shift.requires_grad_()
        assert torch.autograd.gradcheck(
            lambda a, r, s: band_idct2(a, ch, cw, residual=r, shift=s), (y, x, shift)
        )
        assert torch.autograd.gradcheck(lambda a: band_idct2(a, ch, cw), (y,))


def test_transforms_are_adjoint():
    # <dct2(x), y> == <x, idct2(y)>: the backward of each is the other
    x, y, _, ch, cw = _case(11, 13, (0, 5, 2, 7))
    lhs = (band_dct2(x, ch, cw) * y).sum()
    rhs = (x * band_idct2(y, ch, cw)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_flop_formula_equals_the_matrix_products():
    x, y, shift, ch, cw = _case(9, 11, (0, 4, 0, 3), torch.float32)
    m, (kh, h), (kw, w) = 6, ch.shape, cw.shape
    with FlopCounterMode(display=False) as fwd:
        band_dct2(x, ch, cw)
    with FlopCounterMode(display=False) as ref:
        with use_kernels(False):
            t = ch @ x.reshape(m, h, w)  # the H axis first
            _ = t @ cw.T
    assert fwd.get_total_flops() == ref.get_total_flops() == 2 * m * kh * w * (h + kw)
    with FlopCounterMode(display=False) as inv:
        band_idct2(y, ch, cw, residual=x, shift=shift)
    assert inv.get_total_flops() == 2 * m * h * kw * (kh + w)


def test_fake_tensor_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, y, shift, ch, cw = _case(9, 11, (0, 4, 0, 3), torch.float32)
    with FakeTensorMode(allow_non_fake_inputs=True):
        assert band_dct2(x, ch, cw).shape == (2, 3, 4, 3)
        assert band_idct2(y, ch, cw, residual=x, shift=shift).shape == (2, 3, 9, 11)


def test_bad_arguments_name_the_problem():
    x, y, shift, ch, cw = _case(9, 11, (0, 4, 0, 3))
    with pytest.raises(ValueError, match="does not match bases"):
        band_dct2(x[..., :8, :], ch, cw)
    with pytest.raises(ValueError, match="do not match bases"):
        band_idct2(y[..., :3, :], ch, cw)
    with pytest.raises(ValueError, match="residual"):
        band_idct2(y, ch, cw, residual=x[:1])
    with pytest.raises(ValueError, match="shift"):
        band_idct2(y, ch, cw, shift=shift[:, :1])
    with pytest.raises(ValueError, match="constants"):
        band_dct2(x, ch.clone().requires_grad_(), cw)


def test_plain_eager_calls_skip_the_op_and_match_it(monkeypatch):
    x, y, shift, ch, cw = _case(9, 11, (0, 4, 0, 3))
    via_op = dct_ops._band_dct2_op(x, ch, cw), dct_ops._band_idct2_op(y, ch, cw, x, shift)
    calls = []
    for name in ("_band_dct2_op", "_band_idct2_op"):
        real = getattr(dct_ops, name)
        monkeypatch.setattr(dct_ops, name, lambda *a, _real=real, _n=name: calls.append(_n) or _real(*a))
    with torch.inference_mode():
        direct = band_dct2(x, ch, cw), band_idct2(y, ch, cw, residual=x, shift=shift)
    assert calls == []  # nothing to record: the implementations ran directly
    for a, b in zip(direct, via_op):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    band_dct2(x.requires_grad_(), ch, cw)  # a gradient to record: through the op (its autograd)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:  # a dispatch mode: the op
        band_idct2(y, ch, cw)
    assert calls == ["_band_dct2_op", "_band_idct2_op"]
    assert counter.get_total_flops() == 2 * 6 * 9 * 3 * (4 + 11)


def test_warm_up_compiles_both_dtypes_before_any_real_call():
    assert dct_ops.warm_up() > 0.0
    _, dct2_kernel, idct2_kernel = dct_ops._kernels()
    for kernel in (dct2_kernel, idct2_kernel):  # one compiled specialisation per dtype
        dtypes = {sig[0].dtype.name for sig in kernel.signatures}
        assert {"float32", "float64"} <= dtypes, kernel.signatures
    with use_kernels(False):
        assert dct_ops.warm_up() == 0.0
    with pytest.raises(ValueError, match="float32 and float64, not"):
        dct_ops.warm_up((torch.float16,))
