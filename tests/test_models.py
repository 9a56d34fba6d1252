"""Segmentation models: factory, shared head skeleton, backbones, receptive field, pretrained key mapping."""

from __future__ import annotations

import hashlib
import http.server
import logging
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fsanet.config import ConfigError, ModelConfig, load_config
from fsanet.models import MODELS, Network, SegmentationModel, build_model
from fsanet.models.heads import DualAttention, position_encoding
from fsanet.models.pretrained import (
    TORCHVISION_URLS,
    PretrainedError,
    convert_state_dict,
    fetch_checkpoint,
    load_pretrained,
    read_state_dict,
)
from fsanet.models.resnet import ResNetV1c
from fsanet.models.small import SMALL_RECEPTIVE_FIELD, SmallBackbone
from fsanet.nn.base import AttentionModule
from fsanet.nn.dct import lowpass

# the decode heads on the shared skeleton that have an attention block; the whole networks apart
ATTENTION_MODELS = [name for name, m in MODELS.items() if name != "fcn" and not issubclass(m, Network)]
NETWORK_MODELS = [
    name
    for name, m in MODELS.items()
    if issubclass(m, Network) and m.attention_classes and m.task == "semantic"
]
PARAMS_DIR = Path(__file__).resolve().parents[1] / "params" / "model"


def randomize_(module: nn.Module, scale: float = 0.3) -> nn.Module:
    """Give every zero-initialised parameter (γ, zero-init BN scales, biases) random values, so that
    attention branches are active and tests of their effect can fail."""
    with torch.no_grad():
        for p in module.parameters():
            if (p == 0).all():
                p.normal_(0.0, scale)
    return module


def random_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict with the module's names and shapes but fresh random values (incl. BN buffers)."""
    out = {}
    for k, v in module.state_dict().items():
        if v.dtype == torch.long:
            out[k] = torch.randint(1, 100, v.shape)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape) + 0.5
        else:
            out[k] = torch.randn(v.shape)
    return out


def tiny_resnet() -> ResNetV1c:
    """ResNet-50 V1c structure (same key names) at 1/8 of the width, to keep files small."""
    return ResNetV1c(depth=50, stem_channels=16, base_channels=8)


# --------------------------------------------------------------------------------------------
# Factory and the SegmentationModel contract
# --------------------------------------------------------------------------------------------
def test_every_method_declares_itself_and_the_registries_follow() -> None:
    from fsanet.models import attention_modules, band_models, bench_modules, display_name
    from fsanet.nn.base import AttentionModule

    for name, head in MODELS.items():
        assert head.name == name and head.display and head.display != name or name in ("isa", "linear")
        assert all(
            issubclass(cls, AttentionModule) and cls.name and cls.display for cls in head.attention_classes
        )
        assert display_name(name) == head.display
        # the model builds the attention it declares (none for the FCN)
        built = build_model({"name": name}, num_classes=3, pretrained=False)
        kinds = {type(m) for m in built.attention_modules()}
        assert kinds == set(head.attention_classes) or name == "danet"  # DANet: PAM and CAM in a wrapper
    # the methods that read model.attention.band
    assert band_models() == {"fsanet", "segformer_fsa", "afformer_fsa", "mask_rcnn_fsa"}
    # FCN and plain Mask R-CNN have no attention; AFFormer's filter is not an fsanet.nn AttentionModule
    # (see AFFormerNet)
    no_attention = ("fcn", "afformer", "mask_rcnn")
    assert all(bool(MODELS[m].attention_classes) == (m not in no_attention) for m in MODELS)
    modules = attention_modules()
    firsts = {m.attention_classes[0].name for m in MODELS.values() if m.attention_classes}
    assert set(bench_modules()) == firsts and len(bench_modules()) == len(firsts)
    assert {"danet_pam", "danet_cam"} <= set(modules) and "danet_cam" not in bench_modules()
    assert display_name("not_a_method") == "not_a_method"


def test_an_attention_option_the_head_does_not_read_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"model.attention.mode=linsoftmax is not read by model.name=nonlocal "
        r"\(it reads: reduction, nonlocal_mode",
    ):
        build_model(
            {"name": "nonlocal", "attention": {"mode": "linsoftmax"}}, num_classes=3, pretrained=False
        )
    with pytest.raises(
        ValueError, match=r"model.attention.band=\[0, 2, 0, 2\] is not read by model.name=fcn"
    ):
        build_model({"name": "fcn", "attention": {"band": [0, 2, 0, 2]}}, num_classes=3, pretrained=False)
    # options at their defaults are fine whatever the head (shared params files set them for every method)
    build_model(
        {"name": "fcn", "attention": {"band": [0, 5, 0, 5], "mode": "dot", "reduction": 2}},
        3,
        pretrained=False,
    )


@pytest.mark.parametrize("name", [n for n, m in MODELS.items() if m.task == "semantic"])
def test_every_model_trains_and_predicts(name: str) -> None:
    model = build_model({"name": name}, num_classes=5)
    assert isinstance(model, SegmentationModel) and model.num_classes == 5 and model.name == name
    randomize_(model)
    out = model(torch.randn(2, 3, 64, 64))
    # the skeleton's heads have the auxiliary FCN head; the whole networks (Segformer) have none
    aux = not issubclass(MODELS[name], Network)
    assert set(out) == ({"out", "aux"} if aux else {"out"})
    assert out["out"].shape == (2, 5, 64, 64) and (not aux or out["aux"].shape == (2, 5, 64, 64))
    loss = out["out"].square().mean() + (0.4 * out["aux"].square().mean() if aux else 0.0)
    loss.backward()
    # AFFormer's head builds the official `align` conv but never calls it (kept for strict loading)
    grads = {n: p.grad for n, p in model.named_parameters() if not n.startswith("decode_head.align.")}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # the attention block receives gradient (its parameters are on the path to the loss)
    for m in model.attention_modules():
        assert any(p.grad.abs().sum() > 0 for p in m.parameters())

    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 72, 48))  # non-square, not a multiple of 8·8
    assert set(out) == {"out"} and out["out"].shape == (1, 5, 72, 48)


def test_no_aux_head() -> None:
    model = build_model({"name": "fcn", "aux": False}, num_classes=3)
    assert model.aux_head is None and set(model(torch.randn(1, 3, 32, 32))) == {"out"}


def test_attention_modules() -> None:
    assert build_model({"name": "fcn"}, 4).attention_modules() == []
    danet = build_model({"name": "danet"}, 4)
    assert isinstance(danet.decode_head.attention, DualAttention)
    assert [type(m).__name__ for m in danet.attention_modules()] == ["PositionAttention", "ChannelAttention"]
    for name in ATTENTION_MODELS:
        mods = build_model({"name": name}, 4).attention_modules()
        assert mods and all(isinstance(m, AttentionModule) for m in mods)


@pytest.mark.parametrize("name", ATTENTION_MODELS)
def test_eval_band_changes_output(name: str) -> None:
    model = randomize_(build_model({"name": name}, num_classes=4)).eval()
    with torch.no_grad():  # make the attention branches matter (their init is identity or N(0, 0.01))
        for m in model.attention_modules():
            for p in m.parameters():
                p.normal_(0.0, 0.3)
    branch = []  # what the attention block adds to its input
    model.decode_head.attention.register_forward_hook(lambda mod, inp, out: branch.append(out - inp[0]))
    x = torch.randn(1, 3, 64, 64)  # 8×8 features
    with torch.no_grad():
        full = model(x)["out"]
        for m in model.attention_modules():
            m.eval_band = (0, 2, 0, 2)
        low = model(x)["out"]
        for m in model.attention_modules():
            m.eval_band = None
        again = model(x)["out"]
    # Low-passing keeps the DC term, and near-uniform attention mostly averages, so the change is
    # small for some modules (0.3 % for non-local here) but far above rounding; CPU runs are exact.
    assert (branch[0] - branch[1]).norm() > 1e-3 * branch[0].norm()
    assert not torch.equal(full, low)
    assert torch.equal(again, full)


def test_recurrence_and_shared_weights() -> None:
    calls = []
    cc = build_model({"name": "criss_cross"}, 3)
    assert cc.decode_head.recurrence == 2
    cc.decode_head.attention.register_forward_hook(lambda *a: calls.append(1))
    cc(torch.randn(1, 3, 32, 32))
    assert len(calls) == 2
    fsa = build_model({"name": "fsanet", "attention": {"recurrence": 2}}, 3)
    assert fsa.decode_head.recurrence == 2 and len(fsa.attention_modules()) == 1  # one block, applied twice
    assert build_model({"name": "fsanet"}, 3).decode_head.recurrence == 1


def test_attention_options_reach_the_modules() -> None:
    fsa = build_model(
        {"name": "fsanet", "attention": {"band": [0, 3, 0, 4], "mode": "linsoftmax", "impl": "reference"}}, 3
    ).attention_modules()[0]
    assert (fsa.mode, fsa.impl) == ("linsoftmax", "reference")
    x = torch.randn(1, 3, 64, 64)
    build_model({"name": "fsanet", "attention": {"band": None}}, 3)(x)  # full band
    nl = build_model({"name": "nonlocal", "attention": {"nonlocal_mode": "dot_product"}}, 3)
    assert nl.attention_modules()[0].mode == "dot_product"
    isa = build_model({"name": "isa", "attention": {"isa_down_factor": [2, 4]}}, 3)
    assert tuple(isa.attention_modules()[0].down_factor) == (2, 4)


# a value different from the default for every AttentionConfig field
_OTHER_OPTION = {
    "band": None,
    "mode": "linsoftmax",
    "impl": "reference",
    "reduction": 4,
    "recurrence": 3,
    "nonlocal_mode": "dot_product",
    "nonlocal_use_scale": False,
    "qk_channels": 4,
    "isa_key_channels": 8,
    "isa_down_factor": [4, 4],
    "aff_heads": 4,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_undeclared_attention_options_are_refused(name: str) -> None:
    """``attention_options`` (what a run logs as params) lists every option a head reads; setting any other
    is an error, so no option can change a model without being logged."""
    from dataclasses import fields

    from fsanet.config import AttentionConfig

    assert set(_OTHER_OPTION) == {f.name for f in fields(AttentionConfig)}
    declared = set(MODELS[name].attention_options)
    assert declared <= set(_OTHER_OPTION)
    x = torch.randn(1, 3, 64, 64)

    def run(overrides: list[str]) -> tuple[dict, torch.Tensor]:
        cfg = load_config([], [f"model.name={name}", "model.pretrained=null", *overrides])
        torch.manual_seed(0)
        model = build_model(cfg.model, 3).eval()
        with torch.no_grad():
            for p in model.parameters():  # no zero-initialised gate can hide a difference
                p.add_(0.1 * torch.randn_like(p))
            # a detector's attention sits in its backbone: compare the backbone's last features
            out = model.backbone(x)[-1] if MODELS[name].task == "instances" else model(x)["out"]
            return {k: v.shape for k, v in model.state_dict().items()}, out

    def value(v) -> str:
        return "null" if v is None else str(v).replace(" ", "").replace("False", "false")

    run([])
    for option, other in _OTHER_OPTION.items():
        if option in declared:
            run([f"model.attention.{option}={value(other)}"])  # a declared option builds and runs
            continue
        with pytest.raises(
            ValueError, match=rf"model.attention.{option}=.* is not read by model.name={name}"
        ):
            run([f"model.attention.{option}={value(other)}"])  # an undeclared one cannot change the model


@pytest.mark.parametrize("name", NETWORK_MODELS)
def test_network_eval_band_truncates_and_the_full_band_is_the_model(name: str) -> None:
    """Every stage's attention takes one eval_band; a band at least the largest map changes nothing."""
    model = randomize_(build_model({"name": name}, num_classes=4)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model(x)["out"]
        for m in model.attention_modules():
            m.eval_band = (0, 16, 0, 16)  # the largest attention map at 64 px: stride 4
        whole = model(x)["out"]
        for m in model.attention_modules():
            m.eval_band = (0, 2, 0, 2)
        low = model(x)["out"]
    torch.testing.assert_close(whole, full, rtol=0, atol=1e-5)
    assert (low - full).abs().max() > 1e-6  # far above rounding (CPU runs are exact); small for FSA


def test_head_skeleton_is_shared() -> None:
    """Only the attention block differs: every other parameter has the same name and shape."""

    def skeleton(name: str) -> dict[str, tuple[int, ...]]:
        head = build_model({"name": name}, 6).decode_head
        return {k: tuple(v.shape) for k, v in head.state_dict().items() if not k.startswith("attention.")}

    ref = skeleton("fcn")
    assert {"conv_in.0.weight", "conv_out.0.weight", "fuse.0.weight", "classifier.weight"} <= set(ref)
    assert ref["fuse.0.weight"] == (64, 128 + 64, 1, 1)
    for name in ATTENTION_MODELS:
        assert skeleton(name) == ref, name


def test_param_groups_cover_every_parameter_once() -> None:
    model = build_model({"name": "fsanet"}, 3)
    groups = model.param_groups()
    assert [g["name"] for g in groups] == ["backbone", "decode_head", "aux_head"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_sync_batchnorm_conversion_runs_on_cpu() -> None:
    model = nn.SyncBatchNorm.convert_sync_batchnorm(build_model({"name": "fsanet"}, 3))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    out = model(torch.randn(2, 3, 48, 48))  # no process group: plain batch statistics
    assert out["out"].shape == (2, 3, 48, 48)


def test_align_corners_is_used() -> None:
    torch.manual_seed(1)
    a = build_model({"name": "fcn", "align_corners": False}, 3).eval()
    b = build_model({"name": "fcn", "align_corners": True}, 3).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert not torch.allclose(a(x)["out"], b(x)["out"])


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def test_bad_model_name_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"model.name='pspnet'.*choose one of: " + ", ".join(MODELS)):
        build_model({"name": "pspnet"}, 3)


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"model\.attention.*reduction"):
        build_model({"name": "fsanet", "head_channels": 63}, 3)  # 63 not divisible by reduction 2
    with pytest.raises(ValueError, match="head_channels"):
        build_model({"name": "fcn", "head_channels": 0}, 3)
    with pytest.raises(ValueError, match="kernel_size"):
        build_model({"name": "fcn", "head_kernel": 2}, 3)
    with pytest.raises(ValueError, match="backbone"):
        build_model({"name": "fcn", "backbone": "resnet18"}, 3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        build_model({"name": "fcn"}, 3)(torch.randn(1, 1, 32, 32))


def test_band_outside_the_feature_map_is_a_clear_error() -> None:
    model = build_model({"name": "fsanet"}, 3)  # band 5×5, 24 px input -> 3×3 features
    with pytest.raises(ValueError, match="band"):
        model(torch.randn(1, 3, 24, 24))


def test_model_config_from_load_config() -> None:
    cfg = load_config([], ["model.name=nonlocal", "model.head_channels=32"])
    model = build_model(cfg.model, num_classes=2)
    assert model.name == "nonlocal" and model.decode_head.classifier.in_channels == 32
    assert ModelConfig().aux_weight == 0.4
    with pytest.raises(ConfigError, match="backbone"):
        load_config([], ["model.backbone=vgg16"])


@pytest.mark.parametrize("path", sorted(PARAMS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_params_files_load(path: Path) -> None:
    cfg = load_config([path])
    assert cfg.model.name in MODELS


def test_paper_profile_builds_resnet101() -> None:
    cfg = load_config([PARAMS_DIR / "paper_r101.yaml"], ["model.pretrained=null"])
    model = build_model(cfg.model, num_classes=19)
    assert model.backbone.depth == 101 and len(model.backbone.layer3) == 23
    assert model.decode_head.conv_in[0].weight.shape == (512, 2048, 3, 3)
    assert model.aux_head.conv[0].weight.shape == (256, 1024, 3, 3)
    fsa = model.attention_modules()[0]
    assert fsa.channels == 512 and fsa.theta.weight.shape[0] == 256


# --------------------------------------------------------------------------------------------
# Backbones
# --------------------------------------------------------------------------------------------
def test_resnet50_v1c_d8_structure_and_output_stride() -> None:
    net = ResNetV1c(depth=50).eval()
    stem = [m for m in net.stem if isinstance(m, nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in stem] == [(32, 3, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3)]
    assert [c.stride for c in stem] == [(2, 2), (1, 1), (1, 1)]
    assert [len(getattr(net, f"layer{i}")) for i in (1, 2, 3, 4)] == [3, 4, 6, 3]
    # strides (1, 2, 1, 1), dilations (1, 1, 2, 4) with contract_dilation
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer3[0].conv2.stride == (1, 1)
    assert [b.conv2.dilation[0] for b in net.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in net.layer4] == [2, 4, 4]
    assert all(b.conv2.padding == b.conv2.dilation for b in net.modules() if hasattr(b, "conv2"))
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 65, 65))
    assert [tuple(f.shape) for f in feats] == [
        (1, 256, 17, 17),
        (1, 512, 9, 9),
        (1, 1024, 9, 9),
        (1, 2048, 9, 9),
    ]
    assert net.output_stride == 8 and net.out_channels == (256, 512, 1024, 2048)
    assert 23.4e6 < sum(p.numel() for p in net.parameters()) < 23.6e6


def test_small_backbone_shapes() -> None:
    net = SmallBackbone((8, 16, 24, 32))
    feats = net(torch.randn(2, 3, 64, 40))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 10), (2, 16, 8, 5), (2, 24, 8, 5), (2, 32, 8, 5)]
    with pytest.raises(ValueError, match="4 positive widths"):
        SmallBackbone((8, 16, 32))


def _receptive_extent(model: SegmentationModel, size: int = 128, at: int = 8) -> tuple[int, int, int, int]:
    """Rows/cols of the input that influence decode-head pixel (at, at) (eval mode: BN is per-pixel)."""
    model.eval()
    randomize_(model, scale=0.5)
    x = torch.randn(1, 3, size, size, requires_grad=True)
    y = model.decode_head(model.backbone(x)[3])
    y[0, :, at, at].sum().backward()
    nz = (x.grad.abs().sum(1)[0] > 0).nonzero()
    return nz[:, 0].min().item(), nz[:, 0].max().item(), nz[:, 1].min().item(), nz[:, 1].max().item()


def test_small_backbone_receptive_field() -> None:
    """The documented 39 px field, centred on the pixel (8·8 = 64); every 3×3 head conv adds 16 px."""
    r = SMALL_RECEPTIVE_FIELD // 2
    local = build_model({"name": "fcn", "head_kernel": 1}, 3)
    assert _receptive_extent(local) == (64 - r, 64 + r, 64 - r, 64 + r)
    paper = build_model({"name": "fcn", "head_kernel": 3}, 3)
    assert _receptive_extent(paper) == (64 - r - 24, 64 + r + 24, 64 - r - 24, 64 + r + 24)


# --------------------------------------------------------------------------------------------
# Pretrained weights
# --------------------------------------------------------------------------------------------
def _assert_state_equal(module: nn.Module, expected: dict[str, torch.Tensor], keys=None) -> None:
    own = module.state_dict()
    for k in keys if keys is not None else own:
        torch.testing.assert_close(own[k], expected[k].to(own[k].dtype), rtol=0, atol=0, msg=k)


def test_mmseg_checkpoint_loads_every_tensor(tmp_path: Path) -> None:
    src = tiny_resnet()
    state = random_state(src)
    ckpt = {
        "meta": {"mmcv_version": "1.7.0", "CLASSES": ("a", "b")},
        "state_dict": {
            **{f"backbone.{k}": v for k, v in state.items()},
            "decode_head.conv_seg.weight": torch.ones(2),
        },
    }
    path = tmp_path / "resnet50_v1c.pth"
    torch.save(ckpt, path)
    target = tiny_resnet()
    report = load_pretrained(target, path)
    assert report.format == "mmseg"
    assert report.complete and not report.unexpected and report.ignored == ["decode_head.conv_seg.weight"]
    assert len(report.loaded) == len(state)  # every parameter and buffer assigned...
    _assert_state_equal(target, state)  # ...with the checkpoint's value


def test_timm_deep_stem_mapping() -> None:
    ours = random_state(tiny_resnet())
    timm = {}
    for k, v in ours.items():
        if k.startswith("stem.7."):
            timm["bn1." + k[len("stem.7.") :]] = v
        elif k.startswith("stem."):
            timm["conv1." + k[len("stem.") :]] = v
        else:
            timm[k] = v
    timm["fc.weight"], timm["fc.bias"] = torch.randn(10, 2048), torch.randn(10)
    target = tiny_resnet()
    report = load_pretrained(target, {f"module.{k}": v for k, v in timm.items()})
    assert report.format == "timm-deep-stem" and report.complete and not report.unexpected
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    _assert_state_equal(target, ours)


def test_torchvision_stem_is_reported_not_loaded(caplog: pytest.LogCaptureFixture) -> None:
    ours = random_state(tiny_resnet())
    tv = {k: v for k, v in ours.items() if not k.startswith("stem.")}
    tv["conv1.weight"] = torch.randn(16, 3, 7, 7)
    tv.update({f"bn1.{n}": torch.rand(16) for n in ("weight", "bias", "running_mean", "running_var")})
    target = tiny_resnet()
    before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith("stem.")}
    with caplog.at_level(logging.WARNING, logger="fsanet.models.pretrained"):
        report = load_pretrained(target, tv)
    assert report.format == "torchvision"
    assert set(report.missing) == {k for k in before if not k.endswith("num_batches_tracked")}
    assert set(report.unexpected) == {
        "stem.conv1.weight",
        "stem.bn1.weight",
        "stem.bn1.bias",
        "stem.bn1.running_mean",
        "stem.bn1.running_var",
    }
    _assert_state_equal(target, ours, keys=[k for k in ours if not k.startswith("stem.")])
    _assert_state_equal(target, before, keys=list(before))  # stem untouched
    assert "missing from checkpoint" in caplog.text and "stem.conv1.weight" in caplog.text


#: torchvision ``resnet50().state_dict()``: 320 entries (53 convs, 53 BNs of 5 tensors, fc weight and bias)
def _torchvision_resnet_names(blocks: tuple[int, ...] = (3, 4, 6, 3)) -> list[str]:
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = ["conv1.weight", *(f"bn1.{t}" for t in bn)]
    for stage, count in enumerate(blocks, start=1):
        for block in range(count):
            pre = f"layer{stage}.{block}."
            for i in (1, 2, 3):
                names += [f"{pre}conv{i}.weight", *(f"{pre}bn{i}.{t}" for t in bn)]
            if block == 0:
                names += [f"{pre}downsample.0.weight", *(f"{pre}downsample.1.{t}" for t in bn)]
    return [*names, "fc.weight", "fc.bias"]


def test_torchvision_resnet50_loads_whole_into_the_7x7_stem_backbone() -> None:
    """mmdet's Mask R-CNN backbone: ``model.backbone=resnet50`` takes torchvision's checkpoint strictly."""
    names = _torchvision_resnet_names()
    assert len(names) == 320
    ours = ResNetV1c(depth=50, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1), deep_stem=False)
    own = ours.state_dict()
    assert len(own) == 318 and own["stem.conv1.weight"].shape == (64, 3, 7, 7)
    tv = {"fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)}
    for name in names[:-2]:
        mapped = f"stem.{name}" if name.startswith(("conv1.", "bn1.")) else name
        tv[name] = torch.rand_like(own[mapped].float())
    report = load_pretrained(ours, tv, strict=True)
    assert report.format == "torchvision" and report.complete and not report.unexpected
    assert sorted(report.ignored) == ["fc.bias", "fc.weight"]
    assert torch.equal(ours.state_dict()["stem.bn1.running_var"], tv["bn1.running_var"])
    assert ours(torch.randn(1, 3, 64, 64))[0].shape == (1, 256, 16, 16)


def test_mismatches_are_reported_clearly() -> None:
    state = random_state(tiny_resnet())
    state["layer1.0.conv1.weight"] = torch.randn(3, 3, 1, 1)  # wrong shape
    del state["layer4.2.bn3.running_var"]  # missing
    state["layer5.0.conv1.weight"] = torch.randn(1)  # unexpected
    target = tiny_resnet()
    report = load_pretrained(target, state)
    assert report.mismatched == [("layer1.0.conv1.weight", (3, 3, 1, 1), (8, 16, 1, 1))]
    assert report.missing == ["layer4.2.bn3.running_var"] and report.unexpected == ["layer5.0.conv1.weight"]
    text = report.summary()
    assert "layer1.0.conv1.weight checkpoint (3, 3, 1, 1) vs model (8, 16, 1, 1)" in text
    assert "layer4.2.bn3.running_var" in text and "layer5.0.conv1.weight" in text
    with pytest.raises(PretrainedError, match="exactly"):
        load_pretrained(tiny_resnet(), state, strict=True)
    with pytest.raises(PretrainedError, match="none of the checkpoint"):
        load_pretrained(tiny_resnet(), {"foo.weight": torch.randn(3)})


def test_reading_uses_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.pth"
    torch.save({"model": {"a": torch.ones(1)}}, path)
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert list(read_state_dict(path)) == ["a"]
    assert seen["weights_only"] is True and str(seen["map_location"]) == "cpu"
    monkeypatch.undo()
    # a pickle holding arbitrary objects is refused, not executed
    torch.save({"state_dict": {"a": torch.ones(1)}, "obj": threading.Lock}, tmp_path / "unsafe.pth")
    with pytest.raises(PretrainedError, match="weights-only"):
        read_state_dict(tmp_path / "unsafe.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedError, match="junk.pth"):
        read_state_dict(tmp_path / "junk.pth")


def test_convert_keeps_only_the_backbone_of_a_segmentor() -> None:
    conv, fmt, ignored = convert_state_dict(
        {
            "backbone.stem.0.weight": torch.ones(1),
            "backbone.layer1.0.conv1.weight": torch.ones(1),
            "auxiliary_head.conv_seg.weight": torch.ones(1),
        }
    )
    assert fmt == "mmseg" and set(conv) == {"stem.0.weight", "layer1.0.conv1.weight"}
    assert ignored == ["auxiliary_head.conv_seg.weight"]


def test_build_model_loads_pretrained_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = SmallBackbone((16, 32, 64, 128))
    state = random_state(src)
    path = tmp_path / "small.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    model = build_model({"name": "fcn", "pretrained": str(path), "pretrained_sha256": digest}, 3)
    _assert_state_equal(model.backbone, state)
    assert load_pretrained(SmallBackbone(), path).format == "native"
    with pytest.raises(PretrainedError, match="checksum mismatch"):
        build_model({"name": "fcn", "pretrained": str(path), "pretrained_sha256": "0" * 64}, 3)
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        build_model({"name": "fcn", "pretrained": str(tmp_path / "nope.pth")}, 3)
    with caplog.at_level(logging.INFO, logger="fsanet.models"):
        build_model({"name": "fcn"}, 3)
    assert "random initialisation" in caplog.text


class _Server:
    """A 127.0.0.1 HTTP server for one folder, counting GET requests."""

    def __init__(self, root: Path) -> None:
        counter = self.hits = []

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def do_GET(self):  # noqa: N802
                counter.append(self.path)
                super().do_GET()

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_fetch_from_url_with_checksum(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"w": torch.arange(4.0)}, served / "weights.pth")
    digest = hashlib.sha256((served / "weights.pth").read_bytes()).hexdigest()
    (served / f"named-{digest[:8]}.pth").write_bytes((served / "weights.pth").read_bytes())
    (served / "named-deadbeef.pth").write_bytes((served / "weights.pth").read_bytes())
    server = _Server(served)
    cache = tmp_path / "cache"
    try:
        path = fetch_checkpoint(f"{server.url}/weights.pth", cache, sha256=digest)
        assert (
            path.is_file() and cache in path.parents and read_state_dict(path)["w"].tolist() == [0, 1, 2, 3]
        )
        assert fetch_checkpoint(f"{server.url}/weights.pth", cache, sha256=digest) == path
        assert len(server.hits) == 1  # cached
        assert not [p for p in cache.rglob("*") if p.name.startswith(".")]  # no temp files left
        # a wrong checksum is an error and the download is not kept
        with pytest.raises(PretrainedError, match="checksum mismatch"):
            fetch_checkpoint(f"{server.url}/weights.pth?v=2", cache, sha256="f" * 64)
        assert len(list(cache.rglob("*.pth"))) == 1
        # the sha256 prefix in the file name (torch.hub / OpenMMLab convention) is checked
        fetch_checkpoint(f"{server.url}/named-{digest[:8]}.pth", cache)
        with pytest.raises(PretrainedError, match="checksum mismatch"):
            fetch_checkpoint(f"{server.url}/named-deadbeef.pth", cache)
        with pytest.raises(PretrainedError, match="could not download"):
            fetch_checkpoint(f"{server.url}/missing.pth", cache)
    finally:
        server.close()
    with pytest.raises(PretrainedError, match="64 hex"):
        fetch_checkpoint("x.pth", cache, sha256="abc")
    with pytest.raises(PretrainedError, match="open-mmlab://resnet50_v1c"):
        fetch_checkpoint("open-mmlab://resnet18_v1c", cache)
    with pytest.raises(
        PretrainedError, match="unknown shortcut 'torchvision://resnet18'.*torchvision://resnet50"
    ):
        fetch_checkpoint("torchvision://resnet18", cache)


def test_torchvision_shortcut_downloads_and_checks_the_name_hash(tmp_path: Path, monkeypatch) -> None:
    """``torchvision://resnet50`` resolves to its URL (here a file on 127.0.0.1 named like torchvision's)."""
    assert TORCHVISION_URLS["resnet50"].endswith("/resnet50-0676ba61.pth")
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"conv1.weight": torch.ones(2)}, served / "tmp.pth")
    digest = hashlib.sha256((served / "tmp.pth").read_bytes()).hexdigest()
    (served / "tmp.pth").rename(served / f"resnet50-{digest[:8]}.pth")
    (served / "resnet101-0badbeef.pth").write_bytes((served / f"resnet50-{digest[:8]}.pth").read_bytes())
    server = _Server(served)
    try:
        monkeypatch.setitem(TORCHVISION_URLS, "resnet50", f"{server.url}/resnet50-{digest[:8]}.pth")
        monkeypatch.setitem(TORCHVISION_URLS, "resnet101", f"{server.url}/resnet101-0badbeef.pth")
        path = fetch_checkpoint("torchvision://resnet50", tmp_path / "cache")
        assert read_state_dict(path)["conv1.weight"].tolist() == [1.0, 1.0]
        with pytest.raises(PretrainedError, match="checksum mismatch"):
            fetch_checkpoint("torchvision://resnet101", tmp_path / "cache")
    finally:
        server.close()


def test_checkpoint_of_another_model_is_one_line_naming_both():
    from fsanet.models import load_trained_weights

    cfg = load_config([], ["model.name=fsanet"]).model
    state = {
        "model": build_model(cfg, 3, pretrained=False).state_dict(),
        "config": {"model": {"name": "fsanet", "backbone": "small"}},
    }
    other = build_model(load_config([], ["model.name=nonlocal"]).model, 3, pretrained=False)
    with pytest.raises(ValueError) as err:
        load_trained_weights(other, state, "run/model.pt")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("run/model.pt: the checkpoint's weights do not fit the model (")
    assert "trained as model.name=fsanet, but model.name=nonlocal was asked for" in msg
    fewer = build_model(load_config([], ["model.name=fsanet"]).model, 5, pretrained=False)
    with pytest.raises(ValueError, match="with another shape"):
        load_trained_weights(fewer, state, "run/model.pt")
    same = build_model(cfg, 3, pretrained=False)
    load_trained_weights(same, state, "run/model.pt")
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), state["model"].values()))


# --------------------------------------------------------------------------------------------
# The skeleton's positional code (model.head_position)
# --------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(freqs=st.integers(1, 6), n=st.integers(1, 8), h=st.integers(7, 13), w=st.integers(7, 13))
def test_position_code_is_dct_basis_so_a_band_keeps_exactly_its_low_channels(freqs, n, h, w) -> None:
    """lowpass(code, n×n) keeps the channels of frequencies k < n unchanged and zeroes the others."""
    code = position_encoding(freqs, 2 * freqs + 3, h, w).double()  # (1, C, h, w)
    n = min(n, h, w)
    low = lowpass(code, (n, n))
    for k in range(1, freqs + 1):
        for ch, size in ((k - 1, w), (freqs + k - 1, h)):
            want = code[0, ch] if k < n and k < size else torch.zeros(h, w, dtype=torch.float64)
            torch.testing.assert_close(low[0, ch], want, atol=1e-6, rtol=0)  # float32 code
    assert low[0, 2 * freqs :].abs().max() == 0  # the channels without a code stay 0


def test_position_code_reaches_the_attention_input_and_travels_with_the_weights() -> None:
    torch.manual_seed(0)
    plain = build_model({"name": "nonlocal", "aux": False}, 3)
    coded = build_model({"name": "nonlocal", "aux": False, "head_position": 4, "head_position_scale": 2.5}, 3)
    code_buffers = {
        "decode_head.position_freqs": torch.tensor(4),
        "decode_head.position_scale": torch.tensor(2.5),
    }
    coded.load_state_dict({**plain.state_dict(), **code_buffers})
    plain.eval(), coded.eval()
    seen = []
    coded.decode_head.attention.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    plain.decode_head.attention.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(1, 3, 64, 64)
    coded(x), plain(x)
    code = position_encoding(4, seen[0].shape[1], *seen[0].shape[2:])
    torch.testing.assert_close(seen[0] - seen[1], 2.5 * code.expand_as(seen[0]))
    # a checkpoint trained with the code does not load into a head without it, nor the reverse
    with pytest.raises(RuntimeError, match="position_freqs"):
        plain.load_state_dict(coded.state_dict())
    with pytest.raises(RuntimeError, match="position_freqs"):
        coded.load_state_dict(plain.state_dict())


def test_position_code_bad_values_name_the_key() -> None:
    with pytest.raises(ValueError, match="position must be in 0..channels/2 = 32"):
        build_model({"name": "fcn", "head_position": 33}, 3)
    with pytest.raises(ValueError, match="model.head_position=2.*whole network"):
        build_model({"name": "segformer", "head_position": 2}, 3)
    with pytest.raises(ConfigError, match="model.head_position"):
        load_config(overrides=["model.head_position=-1"])
