"""A method is the unit of extension: a peer defined only here goes through the whole pipeline.

The peer is one attention module and one short head class. Inserted into ``fsanet.models.MODELS``
(a plain dict), it is built, trained for two steps, evaluated, benchmarked and shown as a row of the
method table, with no other file of the package changed.
"""

from __future__ import annotations

import json

import pytest
import torch
from engine_stubs import build_tiny_dataset
from torch import Tensor, nn

from fsanet.config import AttentionConfig, load_config
from fsanet.models import MODELS, attention_modules, band_models, bench_modules, build_model
from fsanet.models.heads import DecodeHead
from fsanet.nn.base import AttentionModule


class GlobalMix(AttentionModule):
    """Every position receives a learned projection of the map's mean: ``x + γ·W·mean(x)``."""

    name = "global_mix"
    display = "Global mix (test peer)"

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((1,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        pooled = self.attention_input(x).mean((2, 3), keepdim=True)  # (B, C, 1, 1)
        return x + self.gamma * self.proj(pooled)  # broadcast over (H, W)

    def flops(self, h: int, w: int, batch: int = 1) -> int:
        return 2 * batch * self.channels * self.channels  # the 1×1 conv on the pooled vector


class GlobalMixHead(DecodeHead):
    """The shared skeleton with :class:`GlobalMix` as its attention."""

    name = "global_mix_net"
    display = "GlobalMixNet"
    attention_classes = (GlobalMix,)
    attention_options = ("recurrence",)

    def build_attention(self, channels: int, opts: AttentionConfig) -> nn.Module:
        return GlobalMix(channels)


@pytest.fixture
def peer(monkeypatch):
    monkeypatch.setitem(MODELS, GlobalMixHead.name, GlobalMixHead)
    return GlobalMixHead.name


def test_a_peer_defined_in_a_test_runs_through_the_pipeline(tmp_path, peer):
    from fsanet.bench.attention import run_attention_benchmark
    from fsanet.engine.evaluate import eval_config, evaluate
    from fsanet.engine.train import train
    from fsanet.report.study_tables import methods_tables
    from fsanet.report.summary import write_summary

    # the registries follow the declaration
    assert attention_modules()["global_mix"] is GlobalMix and "global_mix" in bench_modules()
    assert peer not in band_models()
    # build: the head reads only `recurrence`; any other attention option set for it is refused
    model = build_model({"name": peer}, num_classes=3, pretrained=False)
    assert isinstance(model.decode_head.attention, GlobalMix)
    with pytest.raises(ValueError, match=f"model.attention.mode=linsoftmax is not read by model.name={peer}"):
        build_model({"name": peer, "attention": {"mode": "linsoftmax"}}, num_classes=3, pretrained=False)

    # train two steps, then evaluate the trained model
    cfg = load_config(
        [],
        [
            f"model.name={peer}",
            "tracking.enabled=false",
            "train.progress=false",
            "train.batch_size=2",
            "train.max_iters=2",
            "train.log_interval=1",
            "train.ckpt_interval=2",
            "data.num_workers=0",
            "eval.figures=false",
        ],
    )
    result = train(cfg, tmp_path / "run", build_dataset=build_tiny_dataset)
    state = torch.load(result.model_path, weights_only=True)
    assert any(k.startswith("decode_head.attention.proj") for k in state["model"])
    metrics = evaluate(
        eval_config(result.model_path),
        result.model_path,
        tmp_path / "run" / "eval",
        build_dataset=build_tiny_dataset,
    )
    assert metrics["model"] == peer and 0.0 <= metrics["mIoU"] <= 100.0

    # benchmark: the module's row is measured, and its analytic FLOPs agree with the counter
    overrides = [
        "bench.modules=[global_mix,nonlocal]",
        "bench.channels=16",
        "bench.paper_size=[12,10]",
        "bench.sweep_sizes=[8]",
        "bench.repeats=2",
        "bench.warmup=1",
        "bench.rounds=1",
    ]
    report = run_attention_benchmark(load_config([], overrides).bench, tmp_path / "bench.json")
    rows = [r for r in report["results"] if r["module"] == "global_mix"]
    assert {r["setting"] for r in rows} == {"paper", "sweep"} and all(r["status"] == "ok" for r in rows)
    assert all(r["display"] == GlobalMix.display and r["flops"] == r["flops_analytic"] for r in rows)

    # the method table: the peer's row, under its display name
    summary = tmp_path / "summary.json"
    write_summary([tmp_path / "run" / "eval" / "metrics.json"], summary)
    paths = methods_tables(summary, tmp_path / "tables")
    table = next(p for p in paths if p.suffix == ".md").read_text()
    assert f"| {GlobalMixHead.display} " in table, table
    assert json.loads(summary.read_text())["runs"][0]["model"] == peer
