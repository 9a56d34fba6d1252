"""Inference (whole/slide/multi-scale+flip), band truncation and the `fsanet eval` reports."""

import json

import pytest
import torch
import torch.nn.functional as F
from engine_stubs import TinyNet, TinySegDataset, build_tiny_dataset, build_tiny_model
from torch import nn

from fsanet.config import ConfigError, load_config, to_container
from fsanet.engine.checkpoint import save_checkpoint
from fsanet.engine.evaluate import apply_eval_band, default_eval_dir, eval_config, eval_tag, evaluate
from fsanet.engine.inference import predict, slide_inference, slide_windows, whole_inference
from fsanet.engine.metrics import SegmentationMetric
from fsanet.models import build_model


class Pointwise(nn.Module):
    """A 1×1 convolution: its logits at a pixel do not depend on the window or the image around it."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, k, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


class Asymmetric(nn.Module):
    """Context- and direction-dependent: a 1×3 kernel plus the window's mean."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, k, (1, 3), padding=(0, 1))

    def forward(self, x):
        y = self.conv(x)
        return {"out": y + y.mean(dim=(2, 3), keepdim=True)}


def test_slide_windows_follow_mmseg_grid():
    # rows: max(10 - 4 + 3 - 1, 0) // 3 + 1 = 3 → [0,4) [3,7) [6,10); row-major order
    assert slide_windows(10, 4, (4, 4), (3, 3)) == [(0, 4, 0, 4), (3, 7, 0, 4), (6, 10, 0, 4)]
    rows = sorted({w[:2] for w in slide_windows(10, 10, (4, 4), (3, 3))})
    assert rows == [(0, 4), (3, 7), (6, 10)]
    # 11: max(11 - 4 + 2, 0) // 3 + 1 = 4 windows, the last one shifted back to end at the border
    rows = sorted({w[:2] for w in slide_windows(11, 11, (4, 4), (3, 3))})
    assert rows == [(0, 4), (3, 7), (6, 10), (7, 11)]
    # crop larger than the image: one window, clipped
    assert slide_windows(3, 5, (4, 8), (2, 2)) == [(0, 3, 0, 5)]
    with pytest.raises(ValueError, match="positive"):
        slide_windows(3, 3, (0, 2), (1, 1))


def test_slide_equals_whole_for_pointwise_model_and_averages_overlaps():
    model = Pointwise().eval()
    x = torch.randn(1, 3, 13, 17)
    with torch.no_grad():
        whole = whole_inference(model, x)
        slide = slide_inference(model, x, 3, (6, 7), (4, 5))  # overlapping windows everywhere
    torch.testing.assert_close(slide, whole)


def test_slide_averages_window_logits_by_overlap_count():
    model = Asymmetric().eval()
    x = torch.randn(1, 3, 9, 9)
    crop, stride = (5, 5), (4, 4)
    with torch.no_grad():
        got = slide_inference(model, x, 3, crop, stride)
        total, count = torch.zeros(1, 3, 9, 9), torch.zeros(1, 1, 9, 9)
        for y1, y2, x1, x2 in [(0, 5, 0, 5), (0, 5, 4, 9), (4, 9, 0, 5), (4, 9, 4, 9)]:
            total[..., y1:y2, x1:x2] += model(x[..., y1:y2, x1:x2])["out"]
            count[..., y1:y2, x1:x2] += 1
    assert count.max() == 4  # the centre pixel is in all four windows
    torch.testing.assert_close(got, total / count)


def test_predict_resizes_to_label_size_and_merges_softmax_over_scales_and_flips():
    model = Asymmetric().eval()
    image = torch.randn(3, 8, 10)
    out_size = (16, 20)
    with torch.no_grad():
        probs = predict(model, image, out_size, 3, scales=[0.5, 1.0], flip=True)
        views = []
        for r in (0.5, 1.0):
            x = (
                F.interpolate(
                    image[None],
                    size=(int(8 * r + 0.5), int(10 * r + 0.5)),
                    mode="bilinear",
                    align_corners=False,
                )
                if r != 1.0
                else image[None]
            )
            for flip in (False, True):
                logits = model(x.flip(-1) if flip else x)["out"]
                p = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False).softmax(1)
                views.append(p.flip(-1) if flip else p)
        expect = torch.stack(views).mean(0)[0]
    assert probs.shape == (3, *out_size)
    torch.testing.assert_close(probs, expect)
    torch.testing.assert_close(probs.sum(0), torch.ones(out_size))
    # a direction-dependent model: flipping changes the answer, so the test above can fail
    with torch.no_grad():
        assert not torch.allclose(
            predict(model, image, out_size, 3, flip=True), predict(model, image, out_size, 3)
        )


def test_predict_rejects_bad_settings():
    model = Pointwise().eval()
    with pytest.raises(ValueError, match="unknown inference mode"):
        predict(model, torch.randn(3, 4, 4), (4, 4), 3, mode="tiles")
    with pytest.raises(ValueError, match="eval.scales"):
        predict(model, torch.randn(3, 4, 4), (4, 4), 3, scales=[])


def _checkpoint(tmp_path, overrides=()):
    cfg = load_config([], ["tracking.enabled=false", "train.progress=false", *overrides])
    model = TinyNet(3, dropout=0.1)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    path = tmp_path / "run" / "model.pt"
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "config": to_container(cfg),
            "classes": ["a", "b", "c"],
            "num_classes": 3,
            "iteration": 7,
            "mlflow_run_id": None,
        },
    )
    return path, model


def test_evaluate_writes_reports_and_matches_manual_metric(tmp_path):
    ckpt, model = _checkpoint(tmp_path)
    cfg = eval_config(ckpt, overrides=["eval.num_qualitative=2"])
    out = default_eval_dir(ckpt, cfg)
    assert out == tmp_path / "run" / "eval" / "val"
    m = evaluate(cfg, ckpt, out, build_model=build_tiny_model, build_dataset=build_tiny_dataset)
    for name in (
        "metrics.json",
        "per_class.csv",
        "per_class.md",
        "confusion.csv",
        "confusion.png",
        "qualitative.png",
        "config.yaml",
    ):
        assert (out / name).is_file(), name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(m))
    assert {
        "mIoU",
        "mAcc",
        "aAcc",
        "IoU",
        "Acc",
        "dataset",
        "model",
        "band",
        "eval_band",
        "seed",
        "checkpoint",
        "mlflow_run_id",
    } <= set(saved)
    assert saved["eval_band"] is None and saved["num_images"] == 8 and saved["iteration"] == 7
    assert saved["band_energy_kept"] is None  # nothing truncated, nothing measured
    cost = saved["cost"]  # params, GFLOPs of one forward and the evaluation's own per-image latency
    assert cost["params_M"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert cost["gflops"] > 0 and cost["fps"] > 0 and cost["timed_images"] == 8
    assert cost["fps"] == pytest.approx(1000.0 / cost["latency_ms"])
    # the same numbers by hand: whole-image argmax at the label size, areas summed over the set
    model.eval()
    ref = SegmentationMetric(3)
    with torch.no_grad():
        ds = TinySegDataset(train=False)
        for item in (ds[i] for i in range(len(ds))):
            ref.update(model(item["image"][None])["out"][0].argmax(0), item["label"])
    expect = ref.compute(["a", "b", "c"])
    assert m["mIoU"] == pytest.approx(expect["mIoU"]) and m["aAcc"] == pytest.approx(expect["aAcc"])
    rows = (out / "confusion.csv").read_text().splitlines()
    assert rows[0] == "true\\pred,a,b,c" and len(rows) == 4
    assert sum(int(v) for r in rows[1:] for v in r.split(",")[1:]) == sum(expect["area_label"].values())
    assert "| **mean** |" in (out / "per_class.md").read_text()


def test_eval_band_override_truncates_attention(tmp_path):
    ckpt, _ = _checkpoint(tmp_path)
    cfg = eval_config(ckpt, overrides=["eval.eval_band=[0,2,0,2]"])
    assert eval_tag(cfg) == "val_band0-2-0-2"
    out = tmp_path / "banded"
    m = evaluate(cfg, ckpt, out, build_model=build_tiny_model, build_dataset=build_tiny_dataset)
    full = evaluate(
        eval_config(ckpt),
        ckpt,
        tmp_path / "full",
        build_model=build_tiny_model,
        build_dataset=build_tiny_dataset,
    )
    assert m["eval_band"] == [0, 2, 0, 2]
    assert m["IoU"] != full["IoU"] or m["aAcc"] != full["aAcc"]  # the truncation changed predictions
    # the share of the attention inputs' energy inside the 2×2 band, measured over the 8 val images
    assert 0.0 < m["band_energy_kept"] < 1.0 and full["band_energy_kept"] is None
    assert json.loads((out / "metrics.json").read_text())["band_energy_kept"] == m["band_energy_kept"]


def test_eval_tag_names_every_setting(tmp_path):
    """Two evaluations with different windows, strides or scales never share a report folder."""
    ckpt, _ = _checkpoint(tmp_path)
    tags = {
        eval_tag(eval_config(ckpt, overrides=o))
        for o in (
            [],
            ["eval.mode=slide"],
            ["eval.mode=slide", "eval.crop_size=[8,8]"],
            ["eval.mode=slide", "eval.stride=[4,4]"],
            ["eval.scales=[0.5,1.0]"],
            ["eval.scales=[0.75,1.0]"],
            ["eval.flip=true"],
            ["eval.eval_band=[0,2,0,2]"],
        )
    }
    assert len(tags) == 8
    cfg = eval_config(
        ckpt,
        overrides=[
            "eval.mode=slide",
            "eval.crop_size=[769,769]",
            "eval.stride=[513,513]",
            "eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75]",
            "eval.flip=true",
        ],
    )
    assert eval_tag(cfg) == "val_slide769x769s513x513_ms0.5-0.75-1-1.25-1.5-1.75_flip"


def test_eval_config_errors_name_the_checkpoint(tmp_path):
    ckpt, _ = _checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="eval.nonsense"):
        eval_config(ckpt, overrides=["eval.nonsense=1"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        eval_config(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        eval_config(bad)


@pytest.mark.parametrize("name", ["fsanet", "nonlocal"])
def test_eval_band_applies_to_real_attention_models(name):
    from fsanet.models import build_model

    cfg = load_config([], [f"model.name={name}"])
    model = build_model(cfg.model, 3).eval()
    for p in model.parameters():  # no zero-initialised branch can hide the band
        with torch.no_grad():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model(x)["out"]
        assert apply_eval_band(model, [0, 2, 0, 2]) >= 1
        assert all(m.eval_band is not None for m in model.attention_modules())
        banded = model(x)["out"]
        apply_eval_band(model, None)
        again = model(x)["out"]
    assert not torch.allclose(full, banded)
    torch.testing.assert_close(again, full)


def test_eval_band_on_model_without_attention_is_an_error():
    from fsanet.models import build_model

    model = build_model(load_config([], ["model.name=fcn"]).model, 3)
    with pytest.raises(ValueError, match="no attention modules"):
        apply_eval_band(model, [0, 8, 0, 8])
    assert apply_eval_band(model, None) == 0


def test_checkpoint_of_another_model_is_one_line_naming_both(tmp_path):
    """Evaluating an FCN checkpoint as DANet: one line naming the checkpoint and both model names."""
    cfg = load_config([], ["tracking.enabled=false", "train.progress=false", "model.name=fcn"])
    model = build_model(cfg.model, 3)
    ckpt = tmp_path / "run" / "model.pt"
    save_checkpoint(
        ckpt,
        {
            "model": model.state_dict(),
            "config": to_container(cfg),
            "classes": ["a", "b", "c"],
            "num_classes": 3,
            "iteration": 7,
            "mlflow_run_id": None,
        },
    )
    wrong = eval_config(ckpt, overrides=["model.name=danet"])
    with pytest.raises(ValueError) as err:
        evaluate(wrong, ckpt, tmp_path / "out", build_dataset=build_tiny_dataset)
    msg = str(err.value)
    assert "\n" not in msg and str(ckpt) in msg
    assert "model.name=fcn" in msg and "model.name=danet" in msg and "drop the model.* overrides" in msg
    assert not (tmp_path / "out" / "metrics.json").exists()
