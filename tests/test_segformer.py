"""Segformer: MiT encoder + all-MLP head, the efficient attention module, and the checkpoint key mappings."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from fsanet.models.segformer import MIT_SETTINGS, MixVisionTransformer, build_segformer
from fsanet.models.segformer_keys import from_mmseg, from_nvlabs, load_segformer_checkpoint
from fsanet.nn.dct import lowpass
from fsanet.nn.efficient_attention import EfficientSelfAttention
from fsanet.nn.fsa import FrequencySelfAttention

F64 = torch.float64
EPS = 1e-6  # LayerNorm eps of mmseg's Segformer


def _load_fixture():
    path = Path(__file__).parent / "data" / "segformer_b0_keys.py"
    spec = importlib.util.spec_from_file_location("segformer_b0_keys", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KEYS = _load_fixture()


def fake_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, Tensor]:
    """Random weights of the given shapes (positive running variances, integer batch counters)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.2
    return out


def tokens_to_map(t: Tensor, h: int, w: int) -> Tensor:
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


# ------------------------------------------------------------------------------------------ model
@pytest.mark.parametrize("mode", [None, "dot", "linsoftmax"])
def test_b0_forward_backward(mode):
    attention = None if mode is None else FrequencySelfAttention(256, band=(5, 5), mode=mode)
    model = build_segformer("b0", num_classes=5, attention=attention).train()
    images = torch.randn(2, 3, 64, 64)
    feats = model.backbone(images)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 160, 4, 4), (2, 256, 2, 2)]
    assert model.backbone.out_channels == [32, 64, 160, 256] and model.backbone.output_stride == 32
    logits = model.decode_head(feats)
    assert logits.shape == (2, 5, 16, 16)
    assert model(images)["out"].shape == (2, 5, 64, 64)  # resized to the input; no auxiliary head
    logits.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["backbone.stages.0.patch_embed.proj.weight"].abs().sum() > 0
    assert grads["backbone.stages.3.blocks.1.attn.q.weight"].abs().sum() > 0
    if mode is not None:  # the FSA block's BN weight starts at zero, so it learns first
        assert grads["decode_head.attention.bn.weight"].abs().sum() > 0


# Segformer paper, Table 1 (encoder + decoder, ADE20K's 150 classes), millions
PUBLISHED_PARAMS = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


@pytest.mark.parametrize("size", sorted(MIT_SETTINGS))
def test_param_counts_match_paper(size):
    with torch.device("meta"):
        model = build_segformer(size, num_classes=150)
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n / PUBLISHED_PARAMS[size] - 1) < 0.02, f"{size}: {n:.2f} M vs {PUBLISHED_PARAMS[size]} M"


# ------------------------------------------------------------------------------ efficient attention
def make_attention(channels=16, heads=2, sr_ratio=1, **kw) -> EfficientSelfAttention:
    m = EfficientSelfAttention(channels, heads=heads, sr_ratio=sr_ratio, **kw).to(F64)
    with torch.no_grad():  # non-trivial LayerNorms
        for ln in [m.norm] + ([m.sr_norm] if sr_ratio > 1 else []):
            ln.weight.normal_(1.0, 0.3)
            ln.bias.normal_(0.0, 0.3)
    return m.eval()


@pytest.mark.parametrize("sr_ratio", [1, 8])
@pytest.mark.parametrize("heads", [1, 4])
def test_sdpa_matches_reference(sr_ratio, heads):
    m = make_attention(16, heads, sr_ratio)
    x = torch.randn(2, 16, 17, 19, dtype=F64)
    fast = m(x)
    m.impl = "reference"
    torch.testing.assert_close(fast, m(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sr_ratio", [1, 8])
def test_matches_handwritten_segformer_attention(sr_ratio):
    """Against the formula: keys/values from LN_sr(Conv_sr(LN(x))), per-head softmax, output projection."""
    m = make_attention(16, 4, sr_ratio)
    x = torch.randn(2, 16, 16, 16, dtype=F64)
    b, c, h, w = x.shape
    t = x.flatten(2).transpose(1, 2)  # (B, N, C)
    y = m.norm(t)
    s = m.sr_norm(m.sr(tokens_to_map(y, h, w)).flatten(2).transpose(1, 2)) if sr_ratio > 1 else y
    q, kv = m.q(y), m.kv(s)
    k, v = kv[..., :c], kv[..., c:]
    heads = [
        torch.softmax(q[..., i : i + 4] @ k[..., i : i + 4].transpose(1, 2) / 2.0, dim=-1) @ v[..., i : i + 4]
        for i in range(0, c, 4)
    ]
    expected = t + m.proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(m(x), tokens_to_map(expected, h, w), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sr_ratio", [1, 8])
def test_eval_band(sr_ratio):
    m = make_attention(16, 2, sr_ratio)
    x = torch.randn(2, 16, 16, 16, dtype=F64)
    plain = m(x)
    m.eval_band = (0, -1, 0, -1)  # the full band
    torch.testing.assert_close(m(x), plain, rtol=1e-12, atol=1e-12)

    m.eval_band = (3, 3)
    banded = m(x)
    assert not torch.allclose(banded, plain, atol=1e-6)
    # keys/values from lowpass(LN(x)); queries and residual from the full map
    ref = make_attention(16, 2, sr_ratio)
    ref.load_state_dict(m.state_dict())
    t = x.flatten(2).transpose(1, 2)
    y = ref.norm(t)
    y_low = lowpass(tokens_to_map(y, 16, 16), (3, 3))
    s = (
        ref.sr_norm(ref.sr(y_low).flatten(2).transpose(1, 2))
        if sr_ratio > 1
        else y_low.flatten(2).transpose(1, 2)
    )
    q = ref.q(y).view(2, -1, 2, 8).transpose(1, 2)
    kv = ref.kv(s).view(2, s.shape[1], 2, 2, 8).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, kv[0], kv[1]).transpose(1, 2).reshape(2, -1, 16)
    torch.testing.assert_close(banded, tokens_to_map(t + ref.proj(a), 16, 16), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", ["sdpa", "reference"])
@pytest.mark.parametrize("eval_band", [None, (3, 4)])
@pytest.mark.parametrize("sr_ratio", [1, 8])
def test_flops_match_flop_counter(sr_ratio, eval_band, impl):
    m = EfficientSelfAttention(16, heads=2, sr_ratio=sr_ratio, impl=impl)
    m.eval_band = eval_band
    x = torch.randn(3, 16, 17, 19)
    # on CPU the counter sees no FLOPs inside the fused SDPA kernel: count its math backend
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        m(x)
    assert m.flops(17, 19, batch=3) == counter.get_total_flops()


def test_attention_rejects_bad_options():
    with pytest.raises(ValueError, match="heads"):
        EfficientSelfAttention(10, heads=3)
    with pytest.raises(ValueError, match="impl"):
        EfficientSelfAttention(8, impl="flash")
    with pytest.raises(ValueError, match="smaller than"):
        EfficientSelfAttention(8, sr_ratio=8)(torch.randn(1, 8, 4, 4))


# ------------------------------------------------------------------------------------ key mapping
def _mmseg_reference_block(sd: dict[str, Tensor], p: str, x: Tensor, h: int, w: int, heads: int, sr: int):
    """One mmseg TransformerEncoderLayer from the raw checkpoint tensors, with ``nn.MultiheadAttention``."""
    c = x.shape[-1]
    y = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], EPS)
    kv = y
    if sr > 1:
        kv = F.conv2d(tokens_to_map(y, h, w), sd[p + "attn.sr.weight"], sd[p + "attn.sr.bias"], stride=sr)
        kv = F.layer_norm(
            kv.flatten(2).transpose(1, 2), (c,), sd[p + "attn.norm.weight"], sd[p + "attn.norm.bias"], EPS
        )
    mha = nn.MultiheadAttention(c, heads, batch_first=True)
    mha.load_state_dict(
        {
            "in_proj_weight": sd[p + "attn.attn.in_proj_weight"],
            "in_proj_bias": sd[p + "attn.attn.in_proj_bias"],
            "out_proj.weight": sd[p + "attn.attn.out_proj.weight"],
            "out_proj.bias": sd[p + "attn.attn.out_proj.bias"],
        }
    )
    x = x + mha(y, kv, kv, need_weights=False)[0]
    y = tokens_to_map(F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], EPS), h, w)
    y = F.conv2d(y, sd[p + "ffn.layers.0.weight"], sd[p + "ffn.layers.0.bias"])
    y = F.conv2d(y, sd[p + "ffn.layers.1.weight"], sd[p + "ffn.layers.1.bias"], padding=1, groups=y.shape[1])
    y = F.conv2d(F.gelu(y), sd[p + "ffn.layers.4.weight"], sd[p + "ffn.layers.4.bias"])
    return x + y.flatten(2).transpose(1, 2)


def _nvlabs_reference_block(sd: dict[str, Tensor], p: str, x: Tensor, h: int, w: int, heads: int, sr: int):
    """One NVlabs ``Block`` (Attention with q/kv linears, Mlp with DWConv) from the raw checkpoint."""
    b, n, c = x.shape
    y = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], EPS)
    q = (
        F.linear(y, sd[p + "attn.q.weight"], sd[p + "attn.q.bias"])
        .reshape(b, n, heads, c // heads)
        .permute(0, 2, 1, 3)
    )
    s = y
    if sr > 1:
        s = F.conv2d(tokens_to_map(y, h, w), sd[p + "attn.sr.weight"], sd[p + "attn.sr.bias"], stride=sr)
        s = F.layer_norm(
            s.flatten(2).transpose(1, 2), (c,), sd[p + "attn.norm.weight"], sd[p + "attn.norm.bias"], EPS
        )
    kv = F.linear(s, sd[p + "attn.kv.weight"], sd[p + "attn.kv.bias"])
    kv = kv.reshape(b, -1, 2, heads, c // heads).permute(2, 0, 3, 1, 4)
    attn = ((q @ kv[0].transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
    a = (attn @ kv[1]).transpose(1, 2).reshape(b, n, c)
    x = x + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    y = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], EPS)
    y = F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])
    y = F.conv2d(
        tokens_to_map(y, h, w),
        sd[p + "mlp.dwconv.dwconv.weight"],
        sd[p + "mlp.dwconv.dwconv.bias"],
        padding=1,
        groups=y.shape[-1],
    )
    y = F.linear(F.gelu(y.flatten(2).transpose(1, 2)), sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return x + y


# (stage, block, heads, sr ratio, map size) of B0 blocks checked against the reference formulas
BLOCKS = [(0, 0, 1, 8, 16), (2, 1, 5, 2, 6), (3, 0, 8, 1, 3)]


def test_mmseg_segmentor_loads_and_matches_multihead_attention():
    sd = fake_state(KEYS.MMSEG_SEGFORMER_B0_ADE)
    model = build_segformer("b0", num_classes=150, decoder_channels=256).eval()
    assert load_segformer_checkpoint(model, {"state_dict": sd, "meta": {}}) == "mmseg"
    torch.testing.assert_close(
        model.decode_head.classifier.weight, sd["decode_head.conv_seg.weight"], rtol=0, atol=0
    )
    for stage, j, heads, sr, size in BLOCKS:
        c = model.backbone.out_channels[stage]
        x = torch.randn(2, size * size, c)
        expected = _mmseg_reference_block(sd, f"backbone.layers.{stage}.1.{j}.", x, size, size, heads, sr)
        with torch.no_grad():
            got = model.backbone.stages[stage].blocks[j](x, size, size)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_mmseg_decoder_matches_reference_head():
    sd = fake_state(KEYS.MMSEG_SEGFORMER_B0_ADE, seed=1)
    model = build_segformer("b0", num_classes=150, decoder_channels=256).eval()
    load_segformer_checkpoint(model, sd)
    feats = [torch.randn(1, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate((32, 64, 160, 256))]

    def cbr(x, p):
        x = F.conv2d(x, sd[p + "conv.weight"])
        x = F.batch_norm(
            x, sd[p + "bn.running_mean"], sd[p + "bn.running_var"], sd[p + "bn.weight"], sd[p + "bn.bias"]
        )
        return F.relu(x)

    outs = [
        F.interpolate(cbr(f, f"decode_head.convs.{i}."), size=(8, 8), mode="bilinear", align_corners=False)
        for i, f in enumerate(feats)
    ]
    y = cbr(torch.cat(outs, 1), "decode_head.fusion_conv.")
    expected = F.conv2d(y, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])
    with torch.no_grad():
        torch.testing.assert_close(model.decode_head(feats), expected, rtol=1e-4, atol=1e-5)


def test_nvlabs_segmentor_preserves_eval_function():
    sd = fake_state(KEYS.NVLABS_SEGFORMER_B0_ADE, seed=2)
    model = build_segformer("b0", num_classes=150, stage_act=False).eval()
    assert load_segformer_checkpoint(model, sd) == "nvlabs"
    for stage, j, heads, sr, size in BLOCKS:
        c = model.backbone.out_channels[stage]
        x = torch.randn(2, size * size, c)
        expected = _nvlabs_reference_block(sd, f"backbone.block{stage + 1}.{j}.", x, size, size, heads, sr)
        with torch.no_grad():
            got = model.backbone.stages[stage].blocks[j](x, size, size)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    # the NVlabs head: linear c_k (with bias), resize, cat [c4, c3, c2, c1], ConvModule fuse, linear_pred
    feats = [torch.randn(2, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate((32, 64, 160, 256))]
    c1, c2, c3, c4 = feats
    branches = []
    for k, f in zip((4, 3, 2, 1), (c4, c3, c2, c1)):
        p = f"decode_head.linear_c{k}.proj."
        y = F.linear(f.flatten(2).transpose(1, 2), sd[p + "weight"], sd[p + "bias"])
        y = y.permute(0, 2, 1).reshape(2, -1, f.shape[2], f.shape[3])
        branches.append(F.interpolate(y, size=c1.shape[2:], mode="bilinear", align_corners=False))
    p = "decode_head.linear_fuse."
    y = F.conv2d(torch.cat(branches, dim=1), sd[p + "conv.weight"])
    y = F.relu(
        F.batch_norm(
            y, sd[p + "bn.running_mean"], sd[p + "bn.running_var"], sd[p + "bn.weight"], sd[p + "bn.bias"]
        )
    )
    expected = F.conv2d(y, sd["decode_head.linear_pred.weight"], sd["decode_head.linear_pred.bias"])
    with torch.no_grad():
        torch.testing.assert_close(model.decode_head(feats), expected, rtol=1e-4, atol=1e-5)

    with pytest.raises(ValueError, match="stage_act=False"):
        load_segformer_checkpoint(build_segformer("b0", num_classes=150), sd)


def test_nvlabs_mapping_details():
    sd = fake_state(KEYS.NVLABS_SEGFORMER_B0_ADE, seed=3)
    mapped = from_nvlabs(sd)
    assert not any("conv_seg" in k or k.startswith("head.") for k in mapped)
    bn = "decode_head.convs.0.bn."
    assert torch.equal(mapped[bn + "bias"], sd["decode_head.linear_c1.proj.bias"])
    assert torch.equal(mapped[bn + "running_var"] + 1e-5, torch.ones(256))
    fuse = mapped["decode_head.fusion_conv.conv.weight"]
    assert torch.equal(fuse[:, :256], sd["decode_head.linear_fuse.conv.weight"][:, 768:])  # c1 block first


@pytest.mark.parametrize(
    "fmt, shapes",
    [("mmseg", KEYS.MMSEG_MIT_B0), ("nvlabs", KEYS.NVLABS_MIT_B0_IMAGENET)],
)
def test_encoder_checkpoint_loads_into_encoder(fmt, shapes):
    sd = fake_state(shapes, seed=4)
    encoder = MixVisionTransformer.from_name("b0")
    assert load_segformer_checkpoint(encoder, sd) == fmt
    model = build_segformer("b0", num_classes=19)
    assert load_segformer_checkpoint(model, {"model": sd}) == fmt
    q = "layers.2.1.1.attn.attn.in_proj_weight" if fmt == "mmseg" else "block3.1.attn.q.weight"
    for target in (encoder, model.backbone):
        torch.testing.assert_close(target.stages[2].blocks[1].attn.q.weight, sd[q][:160], rtol=0, atol=0)
    assert load_segformer_checkpoint(encoder, encoder.state_dict()) == "ours"
    with pytest.raises(ValueError, match="whole segmentor"):
        load_segformer_checkpoint(encoder, model.state_dict())


def test_own_state_dict_round_trip():
    model = build_segformer("b0", num_classes=7, attention=FrequencySelfAttention(256, band=(5, 5)))
    other = build_segformer("b0", num_classes=7, attention=FrequencySelfAttention(256, band=(5, 5)))
    assert load_segformer_checkpoint(other, model.state_dict()) == "ours"
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_mapping_errors_name_the_key_and_fix():
    sd = fake_state(KEYS.MMSEG_SEGFORMER_B0_ADE)
    model = build_segformer("b0", num_classes=150, decoder_channels=256)

    bad = {**sd, "decode_head.extra.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match=re.escape("'decode_head.extra.weight'")) as err:
        load_segformer_checkpoint(model, bad)
    assert "\n" not in str(err.value)

    bad = {**sd, "backbone.layers.0.1.0.attn.gamma": torch.zeros(3)}
    with pytest.raises(ValueError, match=re.escape("'backbone.layers.0.1.0.attn.gamma'")):
        load_segformer_checkpoint(model, bad)

    short = {k: v for k, v in sd.items() if k != "backbone.layers.1.2.weight"}
    with pytest.raises(ValueError, match=re.escape("missing key 'backbone.stages.1.norm.weight'")):
        load_segformer_checkpoint(model, short)

    with pytest.raises(ValueError, match="decoder_channels=256 and num_classes=150"):
        load_segformer_checkpoint(build_segformer("b0", num_classes=150, decoder_channels=128), sd)

    with pytest.raises(ValueError, match="attention block"):
        load_segformer_checkpoint(
            build_segformer(
                "b0", num_classes=150, decoder_channels=256, attention=FrequencySelfAttention(256)
            ),
            sd,
        )

    with pytest.raises(ValueError, match="not a Segformer checkpoint"):
        load_segformer_checkpoint(model, {"conv1.weight": torch.zeros(1)})


def test_from_mmseg_splits_in_proj():
    sd = fake_state(KEYS.MMSEG_MIT_B0, seed=5)
    mapped = from_mmseg(sd)
    w = sd["layers.3.1.0.attn.attn.in_proj_weight"]  # (768, 256): q; k; v
    assert torch.equal(mapped["stages.3.blocks.0.attn.q.weight"], w[:256])
    assert torch.equal(mapped["stages.3.blocks.0.attn.kv.weight"], w[256:])
    assert mapped["stages.0.blocks.0.ffn.fc1.weight"].shape == (128, 32)
