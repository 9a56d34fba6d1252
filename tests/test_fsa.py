"""FrequencySelfAttention: fused vs reference parity, equivalence with spatial attention, gradients, cost."""

from __future__ import annotations

import copy
import os
import socket

import numpy as np
import pytest
import scipy.fft
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fsanet.nn.dct import lowpass
from fsanet.nn.dct_ops import use_kernels
from fsanet.nn.fsa import IMPLS, MODES, FrequencySelfAttention

F64 = torch.float64


def randomise(m: FrequencySelfAttention, nbt: int = 3) -> FrequencySelfAttention:
    """Random weights, BN affine and running stats: zero-initialised BN would hide every bug."""
    with torch.no_grad():
        for conv in (m.theta, m.phi, m.g, m.out_conv):
            conv.weight.normal_(0.0, 0.5)
        if m.bn.weight is not None:
            m.bn.weight.normal_(1.0, 0.5)
            m.bn.bias.normal_(0.0, 0.5)
        if m.bn.running_mean is not None:
            m.bn.running_mean.normal_(0.0, 0.5)
            m.bn.running_var.uniform_(0.5, 2.0)
            m.bn.num_batches_tracked.fill_(nbt)
    return m


def make(channels=8, dtype=F64, **kw) -> FrequencySelfAttention:
    return randomise(FrequencySelfAttention(channels, **kw).to(dtype))


def flipped(m: FrequencySelfAttention) -> FrequencySelfAttention:
    other = copy.deepcopy(m)
    other.impl = "reference" if m.impl == "fused" else "fused"
    return other


def rel(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    s = (b if scale is None else scale).norm()
    return ((a - b).norm() / s).item()


BANDS = [(0, 5, 0, 5), (2, 6, 1, 4), None]
SIZES = [(8, 8), (7, 9)]


# ---------------------------------------------------------------- fused vs reference
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("band", BANDS, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernels", [False, True], ids=["blas", "numba"])
def test_fused_matches_reference(mode, band, size, train, kernels):
    fused = make(band=band, mode=mode, impl="fused").train(train)
    ref = flipped(fused)
    x = torch.randn(2, 8, *size, dtype=F64, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    with use_kernels(kernels):  # the fused path's transforms: numba kernels or BLAS (dct_ops)
        y = fused(x)
    yr = ref(xr)
    assert rel(y, yr, yr - xr) <= 1e-9  # relative to the attention branch, not to the residual
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (yr * g).sum().backward()
    assert rel(x.grad, xr.grad) <= 1e-9
    for (name, p), pr in zip(fused.named_parameters(), ref.parameters()):
        assert rel(p.grad, pr.grad) <= 1e-9, name
    for name in ("running_mean", "running_var"):
        assert rel(getattr(fused.bn, name), getattr(ref.bn, name)) <= 1e-9, name
    assert fused.bn.num_batches_tracked.item() == ref.bn.num_batches_tracked.item() == (4 if train else 3)
    if train:  # the stats really moved
        assert not torch.allclose(fused.bn.running_mean, randomise(copy.deepcopy(fused)).bn.running_mean)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "bn_kw", [dict(momentum=None), dict(track_running_stats=False), dict(affine=False)], ids=str
)
def test_fused_matches_reference_bn_variants(mode, bn_kw):
    fused = FrequencySelfAttention(8, band=(0, 4, 0, 3), mode=mode).to(F64)
    fused.bn = nn.BatchNorm2d(8, **bn_kw).to(F64)
    randomise(fused, nbt=5)
    ref = flipped(fused)
    for train in (True, True, False):  # two cumulative-average steps, then eval
        fused.train(train)
        ref.train(train)
        x = torch.randn(3, 8, 6, 5, dtype=F64)
        y, yr = fused(x), ref(x)
        assert rel(y, yr, yr - x) <= 1e-9
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            a, b = getattr(fused.bn, name), getattr(ref.bn, name)
            assert (a is None and b is None) or rel(a.double(), b.double()) <= 1e-9


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kernels", [False, True], ids=["blas", "numba"])
def test_float32_fused_close_to_float64_reference(mode, kernels):
    m = make(channels=32, band=(5, 5), mode=mode, dtype=torch.float32).eval()
    x = torch.randn(2, 32, 24, 20)
    ref = flipped(m).double()
    y64 = ref(x.double())
    with use_kernels(kernels):
        y = m(x)
    assert rel(y.double(), y64, y64 - x.double()) <= 1e-4


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("mode", MODES)
def test_autocast_keeps_residual_dtype(mode, train):
    m = make(channels=16, band=(1, 5, 0, 4), mode=mode, dtype=torch.float32).train(train)
    x = torch.randn(2, 16, 12, 11)
    ref = flipped(m).double()
    y64 = ref(x.double())
    x.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.float32
    assert rel(y.double(), y64, y64 - x.double()) <= 3e-2  # bfloat16 attention branch
    y.square().mean().backward()  # the backward runs outside autocast, on bf16 gradients
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)


def test_train_mode_needs_more_than_one_value():
    for impl in IMPLS:
        m = make(band=(1, 1), impl=impl).train()
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            m(torch.randn(1, 8, 1, 1, dtype=F64))


# ---------------------------------------------------------------- equivalence with spatial attention
def np_lowpass(x: np.ndarray, band: tuple[int, int, int, int]) -> np.ndarray:
    """Independent low-pass: scipy DCT, zero outside the band, inverse."""
    u0, u1, v0, v1 = band
    y = scipy.fft.dctn(x, type=2, norm="ortho", axes=(-2, -1))
    mask = np.zeros(y.shape[-2:])
    mask[u0:u1, v0:v1] = 1.0
    return scipy.fft.idctn(y * mask, type=2, norm="ortho", axes=(-2, -1))


def spatial_attention_block(m: FrequencySelfAttention, x: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
    """x + BN_eval(W_out · attention(xa)) with a dense N×N kernel and 1×1 q/k/v in space."""
    B, C, H, W = x.shape
    X = xa.reshape(B, C, H * W)
    q = torch.einsum("oc,bcn->bon", m.theta.weight[:, :, 0], X)
    k = torch.einsum("oc,bcn->bon", m.phi.weight[:, :, 0], X)
    v = torch.einsum("oc,bcn->bon", m.g.weight[:, :, 0], X)
    if m.mode == "dot":
        att = torch.einsum("bcj,bci->bji", k, q) / (H * W)  # att[b, j, i] weights v_j for output i
    else:
        qn = q / (q.norm(dim=1, keepdim=True) + m.eps)
        kn = k / (k.norm(dim=1, keepdim=True) + m.eps)
        s = 1.0 + torch.einsum("bcj,bci->bji", kn, qn)
        att = s / (s.sum(dim=1, keepdim=True) + m.eps)
    y = torch.einsum("bcj,bji->bci", v, att)
    z = torch.einsum("oc,bcn->bon", m.out_conv.weight[:, :, 0, 0], y)
    bn = m.bn
    z = (z - bn.running_mean[:, None]) / torch.sqrt(bn.running_var[:, None] + bn.eps)
    z = z * bn.weight[:, None] + bn.bias[:, None]
    return x + z.view(B, C, H, W)


@st.composite
def fsa_case(draw):
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    u0, v0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
    band = (u0, draw(st.integers(u0 + 1, h)), v0, draw(st.integers(v0 + 1, w)))
    return dict(
        b=draw(st.integers(1, 2)),
        # C' ≥ 2: with one channel every cosine is ±1 and (1+s)/Σ(1+s) can be 0/0 (ill-conditioned)
        c=draw(st.sampled_from([4, 6])),
        h=h,
        w=w,
        band=band,
        mode=draw(st.sampled_from(MODES)),
        impl=draw(st.sampled_from(IMPLS)),
    )


@settings(max_examples=40, deadline=None)
@given(case=fsa_case())
def test_equals_spatial_attention_on_lowpassed_input(case):
    m = make(channels=case["c"], band=case["band"], mode=case["mode"], impl=case["impl"]).eval()
    x = torch.randn(case["b"], case["c"], case["h"], case["w"], dtype=F64)
    xl = torch.from_numpy(np_lowpass(x.numpy(), case["band"]))
    if case["mode"] == "linsoftmax":
        # Where a band's basis images all vanish at a position (e.g. a single cosine with a node
        # there) the low-passed feature is rounding noise and its cosine direction is arbitrary.
        assume(xl.flatten(2).norm(dim=1).min() > 1e-6)
    expected = spatial_attention_block(m, x, xl)
    assert rel(m(x), expected, expected - x) <= 1e-9


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_full_band_equals_spatial_attention_on_x(mode, impl):
    m = make(channels=6, band=None, mode=mode, impl=impl).eval()
    x = torch.randn(2, 6, 5, 7, dtype=F64)
    expected = spatial_attention_block(m, x, x)
    assert rel(m(x), expected, expected - x) <= 1e-9


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("band", [(0, 3, 0, 2), (1, 3, 1, 4)], ids=["dc", "no_dc"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode, impl, band, train):
    m = make(channels=4, band=band, mode=mode, impl=impl).train(train)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    x = torch.randn(2, 4, 4, 5, dtype=F64, requires_grad=True)

    def f(x, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)


# ---------------------------------------------------------------- API
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(reduction=0), "reduction must be an integer ≥ 1"),
        (dict(reduction=3), "channels=8 is not divisible by reduction=3"),
        (dict(mode="softmax"), "unknown mode 'softmax'; allowed: dot, linsoftmax"),
        (dict(impl="cuda"), "unknown impl 'cuda'; allowed: fused, reference"),
        (dict(band=(0, 0, 0, 3)), "bad band.*empty along u"),
        (dict(band=(1, 2, 3)), "bad band"),
        (dict(eps=-1.0), "eps must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrequencySelfAttention(8, **kwargs)


def test_bad_inputs_and_switches():
    m = FrequencySelfAttention(8, band=(5, 5))
    with pytest.raises(ValueError, match=r"band \(0, 5, 0, 5\) does not fit the 4×9 feature map"):
        m(torch.randn(1, 8, 4, 9))
    with pytest.raises(ValueError, match=r"expects \(B, 8, H, W\)"):
        m(torch.randn(1, 6, 8, 8))
    with pytest.raises(ValueError, match="unknown impl"):
        m.impl = "fast"
    with pytest.raises(ValueError, match="unknown mode"):
        m.mode = "dot_product"
    assert m.impl == "fused" and m.mode == "dot"


def test_open_band_resolves_per_input():
    m = make(band=(1, -1, 0, 3)).eval()
    ref = flipped(m)
    for size in [(4, 5), (9, 3)]:
        x = torch.randn(1, 8, *size, dtype=F64)
        assert rel(m(x), ref(x), ref(x) - x) <= 1e-9
    assert m.band == (1, -1, 0, 3)


def test_identity_at_initialisation():
    for mode in MODES:
        for impl in IMPLS:
            m = FrequencySelfAttention(8, mode=mode, impl=impl)
            x = torch.randn(2, 8, 7, 6)
            assert torch.equal(m(x), x)
            assert torch.count_nonzero(m.bn.weight) == 0


def test_impl_switch_on_one_instance_and_shared_state_dict():
    m = make(band=(2, 6, 1, 4), mode="linsoftmax").eval()
    x = torch.randn(2, 8, 7, 9, dtype=F64)
    y_fused = m(x)
    m.impl = "reference"
    y_ref = m(x)
    assert rel(y_fused, y_ref, y_ref - x) <= 1e-9
    other = FrequencySelfAttention(8, band=(2, 6, 1, 4), mode="linsoftmax", impl="fused").to(F64).eval()
    other.load_state_dict(m.state_dict())
    assert rel(other(x), y_ref, y_ref - x) <= 1e-9
    assert "impl='reference'" in repr(m)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_eval_band_truncates_only_the_attention_input(mode, impl):
    m = make(band=(0, 4, 0, 4), mode=mode, impl=impl).eval()
    x = torch.randn(2, 8, 8, 7, dtype=F64)
    y_full = m(x)
    m.eval_band = (2, 3)
    y = m(x)
    m.eval_band = None
    xl = lowpass(x, (2, 3))
    expected = x + (m(xl) - xl)  # attention over lowpass(x), residual with the full x
    assert rel(y, expected, expected - x) <= 1e-9
    assert rel(y, y_full, y_full - x) > 1e-3


def test_channels_last_and_inference_mode():
    m = make(band=(3, 3), mode="dot").train()
    x = torch.randn(2, 8, 6, 5, dtype=F64)
    ref = copy.deepcopy(m)
    with torch.inference_mode():
        y = m(x.to(memory_format=torch.channels_last))
    assert rel(y, ref(x), ref(x) - x) <= 1e-9
    assert m.bn.num_batches_tracked.item() == 4


def test_reproducible_given_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        m = randomise(FrequencySelfAttention(8, mode="linsoftmax")).train()
        outs.append(m(torch.randn(2, 8, 6, 6)))
    assert torch.equal(outs[0], outs[1])


# ---------------------------------------------------------------- cost
@pytest.mark.parametrize("eval_band", [None, (2, 2)], ids=["no_eval_band", "eval_band"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("band", [(0, 3, 0, 4), (1, 4, 2, 5), None], ids=["dc", "no_dc", "full"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_flops_match_flop_counter(mode, impl, band, train, eval_band):
    m = FrequencySelfAttention(8, band=band, mode=mode, impl=impl).train(train)
    m.eval_band = eval_band
    x = torch.randn(3, 8, 6, 7)
    with FlopCounterMode(display=False) as counter:
        m(x)
    assert m.flops(6, 7, batch=3) == counter.get_total_flops()


# ---------------------------------------------------------------- DDP (2 processes, gloo)
def _ddp_worker(rank: int, world: int, port: int, out_dir: str, mode: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        m = make(band=(0, 3, 0, 4), mode=mode).train()
        x = torch.randn(4, 8, 6, 5, dtype=F64)
        g = torch.randn(4, 8, 6, 5, dtype=F64)
        xr = x[2 * rank : 2 * rank + 2].clone().requires_grad_()
        y = m(xr)
        (y * g[2 * rank : 2 * rank + 2]).sum().backward()
        torch.save(
            dict(
                y=y.detach(),
                x_grad=xr.grad,
                grads={n: p.grad for n, p in m.named_parameters()},
                buffers={n: b.clone() for n, b in m.named_buffers()},
            ),
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_sync_stats_across_two_processes(mode, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path), mode), nprocs=2)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    torch.manual_seed(0)  # the same module and data, on one process, with the plain nn.BatchNorm2d
    ref = make(band=(0, 3, 0, 4), mode=mode, impl="reference").train()
    x = torch.randn(4, 8, 6, 5, dtype=F64, requires_grad=True)
    g = torch.randn(4, 8, 6, 5, dtype=F64)
    y = ref(x)
    (y * g).sum().backward()
    assert rel(torch.cat([r["y"] for r in res]), y.detach(), (y - x).detach()) <= 1e-9
    assert rel(torch.cat([r["x_grad"] for r in res]), x.grad) <= 1e-9
    for n, p in ref.named_parameters():  # DDP sums (then averages) the per-process gradients
        assert rel(res[0]["grads"][n] + res[1]["grads"][n], p.grad) <= 1e-9, n
    for n, b in ref.named_buffers():
        for r in res:
            assert rel(r["buffers"][n].double(), b.double()) <= 1e-9, n
