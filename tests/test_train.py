"""Training: schedule, losses, data stream, bit-identical resume, NaN stop, provenance, CLI end to end."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from engine_stubs import TinySegDataset, build_tiny_dataset, build_tiny_model

from fsanet.config import load_config
from fsanet.engine.checkpoint import list_checkpoints, load_checkpoint
from fsanet.engine.loader import IterationBatchSampler, SeededDataset
from fsanet.engine.losses import cross_entropy, make_loss, ohem_cross_entropy
from fsanet.engine.schedule import poly_lr
from fsanet.engine.train import NonFiniteLossError, train

FAST = ["tracking.enabled=false", "train.progress=false", "train.batch_size=4", "data.num_workers=0"]


def _cfg(*overrides):
    given = {o.partition("=")[0] for o in overrides}  # a test's own value replaces the FAST default
    return load_config([], [*(o for o in FAST if o.partition("=")[0] not in given), *overrides])


def _run(tmp, *overrides, **kw):
    return train(_cfg(*overrides), tmp, build_model=build_tiny_model, build_dataset=build_tiny_dataset, **kw)


# --------------------------------------------------------------------------------------------
# schedule and losses
# --------------------------------------------------------------------------------------------
def test_poly_schedule_matches_mmseg_formula():
    assert poly_lr(0, 100, 0.01) == pytest.approx(0.01)
    assert poly_lr(100, 100, 0.01) == pytest.approx(1e-4)
    assert poly_lr(50, 100, 0.01) == pytest.approx((0.01 - 1e-4) * 0.5**0.9 + 1e-4)
    lrs = [poly_lr(i, 80, 0.01) for i in range(81)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    with pytest.raises(ValueError):
        poly_lr(101, 100, 0.01)


def test_cross_entropy_is_mean_over_all_pixels_including_ignored():
    logits = torch.randn(2, 4, 5, 6)
    label = torch.randint(0, 4, (2, 5, 6))
    label[0, :2] = 255
    per_pixel = -logits.log_softmax(1).gather(1, label.clamp(max=3)[:, None])[:, 0]
    expect = per_pixel[label != 255].sum() / label.numel()  # mmseg avg_non_ignore=False
    torch.testing.assert_close(cross_entropy(logits, label), expect)
    # logits at a lower resolution are resized to the label first
    small = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(
        cross_entropy(small, label), cross_entropy(F.interpolate(small, (5, 6), mode="bilinear"), label)
    )


def test_ohem_keeps_hard_pixels_with_min_kept_floor():
    k = 3
    label = torch.tensor([[[0, 1, 2, 0, 255]]])  # (1, 1, 5)
    # probability of the true class per pixel: 0.9, 0.6, 0.2, 0.95, (ignored)
    p_true = torch.tensor([0.9, 0.6, 0.2, 0.95, 0.5])
    probs = torch.full((1, k, 1, 5), 0.0)
    for i, (c, p) in enumerate(zip([0, 1, 2, 0, 0], p_true)):
        probs[0, :, 0, i] = (1 - p) / (k - 1)
        probs[0, c, 0, i] = p
    logits = probs.log()
    nll = -p_true.log()
    # thresh 0.7, min_kept 1: pixels with p ≤ 0.7 are kept → mean over {0.6, 0.2}
    torch.testing.assert_close(ohem_cross_entropy(logits, label, 0.7, 1), nll[[1, 2]].mean())
    # min_kept 3 raises the threshold to the 3rd smallest probability (0.9)
    torch.testing.assert_close(ohem_cross_entropy(logits, label, 0.7, 3), nll[[0, 1, 2]].mean())
    # fewer labelled pixels than min_kept: all labelled pixels, plain CE (mean over labelled)
    torch.testing.assert_close(ohem_cross_entropy(logits, label, 0.7, 100), nll[:4].mean())
    assert make_loss("ohem", 0.7, 1)(logits, label) == ohem_cross_entropy(logits, label, 0.7, 1)
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("focal")
    all_ignored = torch.full_like(label, 255)
    assert ohem_cross_entropy(logits, all_ignored, 0.7, 1).item() == 0.0


# --------------------------------------------------------------------------------------------
# data stream
# --------------------------------------------------------------------------------------------
def test_data_order_is_a_pure_function_of_seed_and_iteration():
    full = IterationBatchSampler(10, 4, seed=3, start=0, max_iters=8)
    batches = list(full)
    assert len(batches) == 8
    resumed = list(IterationBatchSampler(10, 4, seed=3, start=5, max_iters=8))
    assert resumed == batches[5:]
    positions = [p for b in batches for _, p, _ in b]
    assert positions == list(range(32))
    # each pass over the data is a permutation; passes differ
    idx = [i for b in batches for i, _, _ in b]
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10))
    assert idx[:10] != idx[10:20]
    # two ranks split every global batch; together they see exactly the single-process batch
    r0 = list(IterationBatchSampler(10, 4, 3, 0, 8, rank=0, world_size=2))
    r1 = list(IterationBatchSampler(10, 4, 3, 0, 8, rank=1, world_size=2))
    assert [a + b for a, b in zip(r0, r1)] == batches
    assert list(IterationBatchSampler(10, 4, seed=4, start=0, max_iters=8)) != batches
    with pytest.raises(ValueError, match="not divisible"):
        IterationBatchSampler(10, 3, 0, 0, 1, rank=0, world_size=2)


def test_augmentation_depends_only_on_the_sample_position():
    ds = SeededDataset(TinySegDataset())
    a = ds[(2, 17, 12345)]
    torch.manual_seed(99)  # global state must not matter, and must not be changed
    before = torch.get_rng_state()
    b = ds[(2, 17, 12345)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    c = ds[(2, 18, 999)]
    assert not torch.equal(a["image"], c["image"])


# --------------------------------------------------------------------------------------------
# training runs
# --------------------------------------------------------------------------------------------
def _state(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_train_writes_outputs_and_provenance(tmp_path):
    r = _run(
        tmp_path, "train.max_iters=6", "train.log_interval=2", "train.ckpt_interval=4", "train.keep_ckpts=1"
    )
    assert r.iterations == 6 and r.model_path == tmp_path / "model.pt"
    for name in ("model.pt", "config.yaml", "run_info.json", "train_log.json"):
        assert (tmp_path / name).is_file()
    assert [i for i, _ in list_checkpoints(tmp_path)] == [6]  # keep_ckpts=1 pruned iteration 4
    log = json.loads((tmp_path / "train_log.json").read_text())
    assert [e["iteration"] for e in log] == [2, 4, 6]
    assert log[0]["lr"] == pytest.approx(poly_lr(1, 6, 0.01))
    for e in log:  # aux weight 0.4 from the model config
        assert e["loss"] == pytest.approx(e["loss_main"] + 0.4 * e["loss_aux"])
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["status"] == "finished" and info["iterations"] == 6
    assert {"git_sha", "git_dirty", "torch", "device", "threads"} <= set(info["environment"])
    assert info["config"]["train"]["max_iters"] == 6 and info["seeds"]["seed"] == 0
    assert "mlflow_run_id" in info
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["classes"] == ["a", "b", "c"] and ckpt["iteration"] == 6
    # rerunning a finished run is a no-op
    mtime = (tmp_path / "model.pt").stat().st_mtime_ns
    assert (
        _run(
            tmp_path,
            "train.max_iters=6",
            "train.log_interval=2",
            "train.ckpt_interval=4",
            "train.keep_ckpts=1",
        ).iterations
        == 6
    )
    assert (tmp_path / "model.pt").stat().st_mtime_ns == mtime


class Crash(RuntimeError):
    pass


def _crash_at(k):
    def callback(it):
        if it == k:
            raise Crash(f"injected crash after iteration {k}")

    return callback


def test_killed_and_resumed_run_is_bit_identical(tmp_path):
    args = ("train.max_iters=12", "train.log_interval=2", "train.ckpt_interval=4")
    _run(tmp_path / "ref", *args)
    with pytest.raises(Crash):
        _run(tmp_path / "resumed", *args, callback=_crash_at(7))
    assert [i for i, _ in list_checkpoints(tmp_path / "resumed")] == [4]
    assert json.loads((tmp_path / "resumed" / "run_info.json").read_text())["status"] == "failed"
    # resume with a DataLoader worker process: the data stream must not depend on workers
    r = _run(tmp_path / "resumed", *args, "data.num_workers=1")
    assert r.resumed_from == 4 and r.iterations == 12
    ref, got = _state(tmp_path / "ref" / "model.pt"), _state(tmp_path / "resumed" / "model.pt")
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    assert (tmp_path / "ref" / "train_log.json").read_text() == (
        tmp_path / "resumed" / "train_log.json"
    ).read_text()
    # and the test can fail: a different seed gives different weights
    _run(tmp_path / "other", *args, "train.seed=1")
    other = _state(tmp_path / "other" / "model.pt")
    assert not all(torch.equal(ref[k], other[k]) for k in ref)


def test_resume_refuses_a_different_config(tmp_path):
    with pytest.raises(Crash):
        _run(
            tmp_path,
            "train.max_iters=6",
            "train.log_interval=2",
            "train.ckpt_interval=2",
            callback=_crash_at(3),
        )
    with pytest.raises(ValueError, match="train.lr"):
        _run(tmp_path, "train.max_iters=6", "train.log_interval=2", "train.ckpt_interval=2", "train.lr=0.1")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def poison(it):
        if it == 5:  # after iteration 5 the weights turn NaN: iteration 6's loss is NaN
            model_params = poison.model.parameters()
            with torch.no_grad():
                next(model_params).fill_(float("nan"))

    def build(cfg, k):
        poison.model = build_tiny_model(cfg, k)
        return poison.model

    cfg = _cfg("train.max_iters=12", "train.log_interval=2", "train.ckpt_interval=4")
    with pytest.raises(NonFiniteLossError, match="iteration 6") as err:
        train(cfg, tmp_path, build_model=build, build_dataset=build_tiny_dataset, callback=poison)
    assert "iter_000004.pt" in str(err.value)
    assert [i for i, _ in list_checkpoints(tmp_path)] == [4]
    assert not (tmp_path / "model.pt").exists()
    state = load_checkpoint(tmp_path / "checkpoints" / "iter_000004.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["status"] == "failed" and "NonFiniteLossError" in info["error"]


def test_bad_settings_are_reported(tmp_path):
    with pytest.raises(ValueError, match="multiple of train.log_interval"):
        _run(tmp_path, "train.ckpt_interval=5", "train.log_interval=2")
    with pytest.raises(ValueError, match="max_iters"):
        _run(tmp_path, "train.max_iters=0")


# --------------------------------------------------------------------------------------------
# CLI with the real synthetic data and model
# --------------------------------------------------------------------------------------------
SYN = ["data.synthetic.num_train=8", "data.synthetic.num_val=2", "data.check_split_sizes=false"]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from fsanet.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("data") / "synthetic"
    cfg = load_config([], [f"data.root={root}", *SYN])
    prepare_synthetic(root, cfg.data, processes=1, progress=False)
    return root


def test_cli_train_then_eval_with_mlflow(tmp_path, synthetic_root, monkeypatch, capsys):
    from mlflow import MlflowClient

    from fsanet.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    common = [f"data.root={synthetic_root}", *SYN, "train.progress=false", "tracking.experiment=fsanet/test"]
    run = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "train",
                *common,
                "train.max_iters=4",
                "--out-dir",
                str(run),
                "train.batch_size=2",
                "train.log_interval=2",
                "train.ckpt_interval=2",
                "model.name=fsanet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "-q",
                "eval",
                "--checkpoint",
                str(run / "model.pt"),
                "eval.eval_band=[0,2,0,2]",
                "eval.flip=true",
            ]
        )
        == 0
    )
    out = run / "eval" / "val_band0-2-0-2_flip"
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["model"] == "fsanet" and metrics["dataset"] == "synthetic" and metrics["band"] == [0, 5, 0, 5]
    )
    assert metrics["eval_band"] == [0, 2, 0, 2] and metrics["num_images"] == 2
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fsanet/test")
    runs = {r.data.tags["fsanet.kind"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"train", "eval"}
    train_run, eval_run = runs["train"], runs["eval"]
    assert train_run.info.run_id == json.loads((run / "run_info.json").read_text())["mlflow_run_id"]
    assert eval_run.info.run_id == metrics["mlflow_run_id"]
    assert train_run.data.params["train.max_iters"] == "4" and len(train_run.data.params) > 100
    assert {"mlflow.source.git.commit", "git.dirty", "dataset", "model", "band", "seed", "device"} <= set(
        train_run.data.tags
    )
    assert [m.step for m in client.get_metric_history(train_run.info.run_id, "train/loss")] == [2, 4]
    assert eval_run.data.metrics["test/mIoU"] == pytest.approx(metrics["mIoU"])
    assert {"cost/params_M", "cost/gflops", "cost/latency_ms", "cost/fps"} <= set(eval_run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(eval_run.info.run_id, "eval")}
    assert {
        "eval/metrics.json",
        "eval/confusion.png",
        "eval/qualitative.png",
        "eval/per_class.md",
    } <= artifacts
    assert exp.artifact_location == (tmp_path / "mlruns").as_uri() + "/fsanet/test"  # beside the db
    assert (tmp_path / "mlruns" / "fsanet" / "test").is_dir()
    # a bad override is one line on stderr, exit status 2
    capsys.readouterr()
    assert main(["-q", "train", *common, "train.nonsense=1"]) == 2
    assert "train.nonsense" in capsys.readouterr().err


def test_cli_train_eval_out_equals_a_separate_eval(tmp_path, synthetic_root, capsys):
    """`train --eval-out` scores the final model exactly as a later `fsanet eval` process would;
    `eval --band` evaluates several truncation bands in one process with the numbers of one band each."""
    from fsanet.cli import main

    common = [f"data.root={synthetic_root}", *SYN, "train.progress=false", "tracking.enabled=false"]
    run = tmp_path / "run"
    assert (
        main(
            [
                "-q",
                "train",
                *common,
                "train.max_iters=4",
                "--out-dir",
                str(run),
                "train.batch_size=2",
                "model.name=nonlocal",
                "--eval-out",
                str(run / "eval" / "none"),
                "eval.figures=false",
            ]
        )
        == 0
    )
    inline = json.loads((run / "eval" / "none" / "metrics.json").read_text())
    assert not (run / "eval" / "none" / "confusion.png").exists()
    assert (run / "eval" / "none" / "confusion.csv").is_file()
    assert (
        main(
            [
                "-q",
                "eval",
                "--checkpoint",
                str(run / "model.pt"),
                "--out-dir",
                str(tmp_path / "sep"),
                "eval.figures=true",
            ]
        )
        == 0
    )
    separate = json.loads((tmp_path / "sep" / "metrics.json").read_text())
    assert (tmp_path / "sep" / "confusion.png").is_file()
    assert inline["IoU"] == separate["IoU"] and inline["mIoU"] == separate["mIoU"]

    pattern = str(tmp_path / "trunc" / "{band}")
    assert (
        main(
            [
                "-q",
                "eval",
                "--checkpoint",
                str(run / "model.pt"),
                "--band",
                "1",
                "--band",
                "none",
                "--out-dir",
                pattern,
            ]
        )
        == 0
    )
    one = json.loads((tmp_path / "trunc" / "1" / "metrics.json").read_text())
    untruncated = json.loads((tmp_path / "trunc" / "none" / "metrics.json").read_text())
    assert one["eval_band"] == [0, 1, 0, 1] and untruncated["eval_band"] is None
    assert untruncated["IoU"] == separate["IoU"]
    assert (
        main(
            [
                "-q",
                "eval",
                "--checkpoint",
                str(run / "model.pt"),
                "eval.eval_band=[0,1,0,1]",
                "--out-dir",
                str(tmp_path / "one"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "one" / "metrics.json").read_text())["IoU"] == one["IoU"]

    capsys.readouterr()
    assert (
        main(
            [
                "-q",
                "eval",
                "--checkpoint",
                str(run / "model.pt"),
                "--band",
                "1",
                "--band",
                "2",
                "--out-dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "{band}" in capsys.readouterr().err
    assert main(["-q", "eval", "--checkpoint", str(run / "model.pt"), "--band", "0"]) == 2
    assert "--band '0'" in capsys.readouterr().err
    assert main(["-q", "eval", "--checkpoint", str(run / "model.pt"), "--band", "2", "--band", "2"]) == 2
    assert "each band once" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_then_rerun_is_bit_identical(tmp_path, synthetic_root):
    """A real `fsanet train` process killed with SIGKILL and rerun ends with the same weights."""
    base = [
        sys.executable,
        "-m",
        "fsanet.cli",
        "-q",
        "train",
        f"data.root={synthetic_root}",
        *SYN,
        "tracking.enabled=false",
        "train.progress=false",
        "train.max_iters=30",
        "train.batch_size=2",
        "train.log_interval=2",
        "train.ckpt_interval=2",
        "model.name=linear",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    subprocess.run([*base, "--out-dir", str(tmp_path / "ref")], check=True, env=env)
    proc = subprocess.Popen([*base, "--out-dir", str(tmp_path / "killed")], env=env)
    deadline = time.time() + 120
    while not list_checkpoints(tmp_path / "killed") and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [i for i, _ in list_checkpoints(tmp_path / "killed")]
    assert done and done[-1] < 30, "the process finished before it could be killed"
    subprocess.run([*base, "--out-dir", str(tmp_path / "killed")], check=True, env=env)
    ref, got = _state(tmp_path / "ref" / "model.pt"), _state(tmp_path / "killed" / "model.pt")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
