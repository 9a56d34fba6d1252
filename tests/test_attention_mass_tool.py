"""tools/attention_mass.py recomputes the non-local block's attention: it must stay equal to the block."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from fsanet.nn.non_local import NonLocal2d

TOOL = Path(__file__).resolve().parents[1] / "tools" / "attention_mass.py"


def _tool():
    spec = importlib.util.spec_from_file_location("attention_mass", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("band", [None, [0, 1, 0, 1], [0, 3, 0, 2]])
def test_attention_output_reproduces_the_block(band: list[int] | None) -> None:
    torch.manual_seed(0)
    block = NonLocal2d(8).eval()
    torch.nn.init.normal_(block.norm.weight)  # the zero-initialised BN would hide y
    block.eval_band = band
    x = torch.randn(2, 8, 5, 6)
    attn, y = _tool().attention_and_output(block, x)
    assert attn.shape == (2, 30, 30)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 30))
    expected = x + block.norm(block.conv_out(y.view(2, block.inter_channels, 5, 6)))
    torch.testing.assert_close(block(x), expected)
    if band == [0, 1, 0, 1]:  # a constant attention input: every row is uniform
        torch.testing.assert_close(attn, torch.full_like(attn, 1 / 30))
