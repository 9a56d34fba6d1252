"""Whole networks from the CLI: `fsanet train` and `fsanet eval` for Segformer and AFFormer, each with
and without FSA, on a tiny synthetic set; and the pieces they add to the model contract."""

from __future__ import annotations

import json

import pytest
import torch

from fsanet.band import BandError, fit_band
from fsanet.config import load_config
from fsanet.models import MODELS, build_model
from fsanet.nn.fsa import FrequencySelfAttention
from fsanet.report.summary import SummaryError, band_model

SYN = ["data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.check_split_sizes=false"]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from fsanet.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("data") / "synthetic"
    cfg = load_config([], [f"data.root={root}", *SYN])
    prepare_synthetic(root, cfg.data, processes=1, progress=False)
    return root


@pytest.mark.parametrize("name", ["segformer", "segformer_fsa", "afformer", "afformer_fsa"])
def test_train_and_eval_from_the_cli(name, tmp_path, synthetic_root):
    from fsanet.cli import main

    common = [f"data.root={synthetic_root}", *SYN, "train.progress=false", "tracking.enabled=false"]
    run = tmp_path / "run"
    args = ["-q", "train", *common, "train.max_iters=2", "train.batch_size=2", f"model.name={name}"]
    assert main([*args, "--out-dir", str(run), "--eval-out", str(run / "eval"), "eval.figures=false"]) == 0
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["model"] == name and 0.0 <= metrics["mIoU"] <= 100.0
    assert (metrics["band"] is not None) == name.endswith("_fsa")  # only the FSA variants have a band
    # evaluation with the attention truncated, where the network has AttentionModules (not AFFormer's
    # official filter, which is refused with a message)
    out = tmp_path / "trunc"
    rc = main(
        [
            "-q",
            "eval",
            "--checkpoint",
            str(run / "model.pt"),
            "--out-dir",
            str(out),
            "eval.eval_band=[0,2,0,2]",
        ]
    )
    if name == "afformer":
        assert rc == 2 and not (out / "metrics.json").exists()
    else:
        assert rc == 0 and json.loads((out / "metrics.json").read_text())["eval_band"] == [0, 2, 0, 2]


def test_variant_picks_the_size_and_is_refused_where_unread() -> None:
    b1 = build_model({"name": "segformer", "variant": "b1"}, 4, pretrained=False)
    assert b1.backbone.out_channels[0] == 64  # MiT-B1's first stage
    small = build_model({"name": "afformer", "variant": "small"}, 4, pretrained=False)
    assert small.size == "small"
    with pytest.raises(
        ValueError, match=r"model.variant=b9 is not a size of model.name=segformer; choose one of: b0"
    ):
        build_model({"name": "segformer", "variant": "b9"}, 4, pretrained=False)
    with pytest.raises(ValueError, match=r"model.variant=b0 is not read by model.name=fcn"):
        build_model({"name": "fcn", "variant": "b0"}, 4, pretrained=False)
    with pytest.raises(ValueError, match=r"model.attention.band=.* is not read by model.name=segformer"):
        build_model({"name": "segformer", "attention": {"band": [0, 2, 0, 2]}}, 4, pretrained=False)


def test_drop_path_default_is_each_networks_official_rate() -> None:
    assert MODELS["segformer"].drop_path(load_config([]).model) == 0.1
    assert MODELS["afformer"].drop_path(load_config([]).model) == 0.0
    assert MODELS["afformer"].drop_path(load_config([], ["model.drop_path=0.2"]).model) == 0.2


def test_fit_band_keeps_a_small_map_whole_and_fsa_can_clamp() -> None:
    assert fit_band((0, 5, 0, 5), 3, 8) == (0, 3, 0, 5)
    assert fit_band(None, 3, 4) == (0, 3, 0, 4)
    with pytest.raises(BandError):
        fit_band((4, 5, 0, 5), 3, 3)  # the band starts outside the map
    x = torch.randn(2, 8, 3, 3)
    clamped = FrequencySelfAttention(8, band=(5, 5), clamp_band=True).eval()
    whole = FrequencySelfAttention(8, band=None).eval()
    whole.load_state_dict(clamped.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(clamped(x), whole(x))
    with pytest.raises(ValueError, match="does not fit the 3×3 feature map"):
        FrequencySelfAttention(8, band=(5, 5))(x)


def _run(model, band, seed=0):
    return {"model": model, "band": band, "eval_band": None, "seed": seed}


def test_band_model_is_the_one_with_the_band_sweep() -> None:
    runs = [_run("fsanet", [0, n, 0, n]) for n in (1, 2, 5)] + [_run("segformer_fsa", [0, 5, 0, 5])]
    assert band_model(runs) == "fsanet"
    assert band_model([_run("afformer_fsa", [0, 5, 0, 5]), _run("fcn", None)]) == "afformer_fsa"
    with pytest.raises(SummaryError, match="--retrained-model"):
        band_model([_run("fsanet", [0, 5, 0, 5]), _run("segformer_fsa", [0, 5, 0, 5])])
