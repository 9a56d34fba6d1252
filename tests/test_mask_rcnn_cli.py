"""Mask R-CNN as a method of the study: the instance data, the declarations, `fsanet train` and
`fsanet eval` from the CLI on the synthetic instances (COCO AP), and the step schedule."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fsanet.config import load_config
from fsanet.data.instances import SyntheticInstances, build_instance_dataset, collate_instances
from fsanet.engine.schedule import warmup_step_lr
from fsanet.models import MODELS, build_model
from fsanet.models.mask_rcnn import MaskRCNN
from fsanet.nn.fsa import FrequencySelfAttention
from fsanet.nn.non_local import NonLocal2d

TINY = ["data.synthetic.num_train=6", "data.synthetic.num_val=3", "data.num_classes=4"]


def test_synthetic_instances_and_their_flip():
    cfg = load_config([], TINY)
    raw = SyntheticInstances(cfg.data, "val")
    assert raw.CLASSES == ("disc_red_cue", "disc_blue_cue", "triangle", "bar")
    assert raw.CONTEXT_CLASSES == ("disc_red_cue", "disc_blue_cue")
    item = raw[0]
    n = len(item["labels"])
    assert n >= 3 and item["boxes"].shape == (n, 4) and item["masks"].shape == (n, 96, 96)
    # every box is the tight box of its mask (x2, y2: pixel edges)
    for box, mask in zip(item["boxes"], item["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    # flipped items keep boxes and masks together; which items flip is fixed by (seed, stream, index)
    train = build_instance_dataset(cfg.data, "val", True, seed=0)
    flips = 0
    for stream in range(8):
        a = train[(0, stream)]
        assert torch.equal(a["labels"], item["labels"])
        flipped = not torch.equal(a["masks"], item["masks"])
        flips += flipped
        if flipped:
            assert torch.equal(a["masks"], item["masks"].flip(-1))
            assert torch.equal(a["boxes"][:, 0], 96 - item["boxes"][:, 2])
        assert torch.equal(a["image"], train[(0, stream)]["image"])  # pure function of the key
    assert 0 < flips < 8
    images, targets = collate_instances([train[(0, 0)], train[(1, 0)]])
    assert images.shape == (2, 3, 96, 96) and [t["image_id"] for t in targets] == [1, 2]


def test_instance_data_refusals():
    with pytest.raises(KeyError, match="data.name='voc' has no instance annotations"):
        build_instance_dataset(load_config([], ["data.name=voc"]).data, "val", False)
    with pytest.raises(ValueError, match="data.num_classes=7 but the synthetic instance set has 4"):
        build_instance_dataset(load_config([], TINY[:2]).data, "val", False)


@pytest.mark.parametrize(
    ("name", "block"),
    [("mask_rcnn", None), ("mask_rcnn_fsa", FrequencySelfAttention), ("mask_rcnn_nonlocal", NonLocal2d)],
)
def test_declarations_build_the_detector_with_its_res4_block(name, block):
    method = MODELS[name]
    assert method.task == "instances"
    model = build_model({"name": name}, num_classes=4, pretrained=False)
    assert isinstance(model, MaskRCNN) and model.name == name and model.num_classes == 4
    kinds = [type(m) for m in model.attention_modules()]
    assert kinds == ([] if block is None else [block])
    # the small backbone gets the CPU settings; model.mask_rcnn overrides single ones
    assert model.settings.strides == (4, 8) and model.settings.fpn_kernel == 1
    tuned = build_model({"name": name, "mask_rcnn": {"roi_num": 32}}, num_classes=4, pretrained=False)
    assert tuned.settings.roi_num == 32
    with pytest.raises(ValueError, match="model.mask_rcnn.roi_count is not a Mask R-CNN setting"):
        build_model({"name": name, "mask_rcnn": {"roi_count": 32}}, num_classes=4, pretrained=False)


@pytest.mark.parametrize("backbone", ["resnet50_v1c", "resnet50"])
def test_resnet_fpn_takes_imagenet_weights_into_the_backbone(tmp_path, backbone):
    from fsanet.models.resnet import ResNetV1c

    deep = backbone.endswith("_v1c")
    source = ResNetV1c(depth=50, strides=(1, 2, 2, 2), dilations=(1, 1, 1, 1), deep_stem=deep)
    with torch.no_grad():
        for p in source.parameters():
            p.normal_()
    state = source.state_dict()
    if not deep:  # torchvision's names for the 7×7 stem (conv1, bn1), and its classifier
        state = {k.removeprefix("stem."): v for k, v in state.items()}
        state |= {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "r50.pth"
    torch.save({"state_dict": state}, path)
    cfg = {"name": "mask_rcnn_nonlocal", "backbone": backbone, "pretrained": str(path)}
    model = build_model(cfg, num_classes=80)
    stem = "stem.0.weight" if deep else "stem.conv1.weight"
    assert torch.equal(model.backbone.state_dict()[stem], source.state_dict()[stem])
    assert model.settings.strides == (4, 8, 16, 32) and model.settings.fpn_channels == 256
    own = model.backbone.state_dict()
    assert torch.equal(own["layer3.5.conv1.weight"], source.state_dict()["layer3.5.conv1.weight"])
    assert any(k.startswith("layer3.res4_attention.") for k in own)  # placed before the last res4 block


def test_step_schedule():
    assert warmup_step_lr(0, 0.02, [60, 80], 0.1, 10, 0.001) == pytest.approx(0.02 * 0.001)
    assert warmup_step_lr(10, 0.02, [60, 80]) == pytest.approx(0.02)
    assert warmup_step_lr(60, 0.02, [60, 80]) == pytest.approx(0.002)
    assert warmup_step_lr(85, 0.02, [60, 80]) == pytest.approx(0.0002)
    with pytest.raises(ValueError, match="train.steps must be increasing"):
        from fsanet.engine.train import _validate

        _validate(load_config([], ["train.schedule=step", "train.steps=[80,60]", "train.max_iters=100"]))


@pytest.mark.parametrize("name", ["mask_rcnn", "mask_rcnn_fsa"])
def test_train_and_eval_from_the_cli(name, tmp_path):
    from fsanet.cli import main

    common = [*TINY, "train.progress=false", "tracking.enabled=false", "data.check_split_sizes=false"]
    run = tmp_path / "run"
    args = ["-q", "train", *common, "train.max_iters=3", "train.batch_size=2", f"model.name={name}"]
    assert main([*args, "--out-dir", str(run), "--eval-out", str(run / "eval")]) == 0
    log = json.loads((run / "train_log.json").read_text())
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"} <= set(log[-1])
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["task"] == "instances" and metrics["model"] == name and metrics["num_images"] == 3
    for key in ("box", "mask"):
        assert set(metrics[key]["per_class"]) == set(SyntheticInstances.CLASSES)
        assert 0.0 <= metrics[f"{key}_AP"] <= 100.0
    assert metrics["context_classes"] == ["disc_red_cue", "disc_blue_cue"]
    assert (run / "eval" / "per_class.md").is_file()
    out = tmp_path / "trunc"
    rc = main(["-q", "eval", "--checkpoint", str(run / "model.pt"), "--out-dir", str(out), "--band", "1"])
    if name == "mask_rcnn":  # nothing to truncate: refused with a message, nothing written
        assert rc == 2 and not (out / "metrics.json").exists()
    else:
        assert rc == 0 and json.loads((out / "metrics.json").read_text())["eval_band"] == [0, 1, 0, 1]


def _detector_metrics(path, model, seed, disc, local=90.0):
    per_class = {"disc_red_cue": disc, "disc_blue_cue": disc, "triangle": local, "bar": local}
    block = {"AP": (2 * disc + 2 * local) / 4, "per_class": per_class}
    band = [0, 5, 0, 5] if model.endswith("_fsa") else None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "task": "instances",
                "dataset": "synthetic",
                "model": model,
                "band": band,
                "attention_mode": "dot",
                "eval_band": None,
                "seed": seed,
                "box": block,
                "mask": block,
                "box_AP": block["AP"],
                "mask_AP": block["AP"],
                "context_classes": ["disc_red_cue", "disc_blue_cue"],
                "context_box_AP": disc,
                "context_mask_AP": disc,
                "num_images": 10,
            }
        )
    )
    return path


def test_coco_table_and_its_claim(tmp_path):
    from fsanet.report.coco_tables import coco_tables

    paths = [_detector_metrics(tmp_path / f"p{s}.json", "mask_rcnn", s, 50.0 + s) for s in range(3)]
    paths += [
        _detector_metrics(tmp_path / f"f{s}.json", "mask_rcnn_fsa", s, d)
        for s, d in enumerate((99, 98, 55.5))
    ]
    written = coco_tables(paths, tmp_path / "tables", tmp_path / "coco.json")
    md = (tmp_path / "tables" / "coco_synthetic.md").read_text()
    assert "synthetic set" in md and "51.00 ± 1.00 (n=3; 50.00–52.00)" in md
    findings = (tmp_path / "tables" / "coco_findings.md").read_text()
    # the bar is the plain mean (51) + 5 = 56 in every seed: seed 2 (55.5) misses it
    assert "**FAIL**" in findings and "= 56.00 in every seed" in findings and "s2 55.50" in findings
    summary = json.loads((tmp_path / "coco.json").read_text())
    assert [c["verdict"] for c in summary["claims"]] == ["FAIL"] and len(summary["runs"]) == 6
    assert len(written) == 5
    paths[-1] = _detector_metrics(tmp_path / "f2.json", "mask_rcnn_fsa", 2, 56.5)
    coco_tables(paths, tmp_path / "tables")
    assert "**PASS**" in (tmp_path / "tables" / "coco_findings.md").read_text()
    seg = tmp_path / "seg.json"
    seg.write_text(json.dumps({"mIoU": 50.0}))
    with pytest.raises(ValueError, match="seg.json: not a detector evaluation"):
        coco_tables([seg], tmp_path / "tables")


@pytest.mark.slow
def test_detector_trains_in_two_ddp_processes(tmp_path):
    """torchrun with 2 processes (gloo on CPU) trains Mask R-CNN + FSA through DDP; rank 0 evaluates.
    An unused parameter or a mismatched gradient reduction would stop the run with an error."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "fsanet.cli",
        "-q",
        "train",
        *TINY,
        "train.progress=false",
        "tracking.enabled=false",
        "data.check_split_sizes=false",
        "train.max_iters=4",
        "train.batch_size=4",
        "model.name=mask_rcnn_fsa",
        "--out-dir",
        str(run),
        "--eval-out",
        str(run / "eval"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    info = json.loads((run / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "finished"
    log = json.loads((run / "train_log.json").read_text())
    assert log[-1]["iteration"] == 4 and {"loss_mask", "loss_rpn_cls"} <= set(log[-1])
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["model"] == "mask_rcnn_fsa" and metrics["num_images"] == 3
