"""The band-energy meter: the share of the attention inputs' energy an eval band keeps."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fsanet.engine.band_energy import BandEnergyMeter
from fsanet.nn.dct import dct2
from fsanet.nn.non_local import NonLocal2d


@st.composite
def map_and_band(draw):
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    u0 = draw(st.integers(0, h - 1))
    v0 = draw(st.integers(0, w - 1))
    band = [u0, draw(st.integers(u0 + 1, h)), v0, draw(st.integers(v0 + 1, w))]
    seed = draw(st.integers(0, 2**16))
    return h, w, band, seed


def _block(band):
    torch.manual_seed(0)
    block = NonLocal2d(4).eval()
    block.eval_band = band
    return block


@settings(max_examples=40, deadline=None)
@given(mb=map_and_band())
def test_share_is_the_band_coefficients_energy_over_the_input_energy(mb):
    """Parseval: ‖lowpass(x)‖² is the energy of the DCT coefficients inside the band."""
    h, w, band, seed = mb
    x = torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    block = _block(band).double()
    with BandEnergyMeter([block]) as meter, torch.no_grad():
        block(x)
    coeffs = dct2(x, band)  # (B, C, kh, kw)
    expect = float(coeffs.square().sum() / x.square().sum())
    assert meter.inputs == 1
    assert meter.share() == pytest.approx(expect, rel=1e-9, abs=1e-12)
    assert 0.0 <= meter.share() <= 1.0 + 1e-12


def test_full_band_keeps_everything_and_a_constant_map_lives_in_the_dc():
    x = torch.randn(1, 4, 6, 5)
    block = _block([0, 6, 0, 5])
    with BandEnergyMeter([block]) as meter, torch.no_grad():
        block(x)
    assert meter.share() == pytest.approx(1.0, abs=1e-6)
    const = torch.full((1, 4, 6, 5), 3.0)
    block = _block([0, 1, 0, 1])
    with BandEnergyMeter([block]) as meter, torch.no_grad():
        block(const)
    assert meter.share() == pytest.approx(1.0, abs=1e-6)
    checker = torch.ones(6, 5)
    checker[1::2] *= -1  # the highest vertical frequency: nothing of it in the DC
    with BandEnergyMeter([block]) as meter, torch.no_grad():
        block(checker.expand(1, 4, 6, 5).contiguous())
    assert meter.share() == pytest.approx(0.0, abs=1e-6)


def test_meter_pools_inputs_and_detaches():
    block = _block([0, 2, 0, 2])
    xs = [torch.randn(1, 4, 6, 6) for _ in range(3)]
    with BandEnergyMeter([block]) as meter, torch.no_grad():
        for x in xs:
            block(x)
    kept = sum(float(dct2(x, [0, 2, 0, 2]).square().sum()) for x in xs)
    total = sum(float(x.square().sum()) for x in xs)
    assert meter.inputs == 3 and meter.share() == pytest.approx(kept / total, rel=1e-5)
    assert block.band_meter is None  # detached on exit
    with torch.no_grad():
        block(xs[0])
    assert meter.inputs == 3


def test_no_truncation_reports_nothing_and_double_attach_is_refused():
    block = _block(None)
    with BandEnergyMeter([block]) as meter, torch.no_grad():
        block(torch.randn(1, 4, 6, 6))
    assert meter.inputs == 0 and meter.share() is None
    with BandEnergyMeter([block]):
        with pytest.raises(RuntimeError, match="already attached"):
            BandEnergyMeter([block]).__enter__()
    assert block.band_meter is None
