"""The benchmark harness: the CPU peak-memory method, failure handling, and the report schema."""

import json
import time

import pytest
import torch
from omegaconf import OmegaConf

from fsanet.bench import (
    OutOfMemory,
    PeakMemoryTracker,
    build_cases,
    count_flops,
    measure_case,
    measure_latency_paired,
    measure_peak_memory,
    memory_limit,
    run_attention_benchmark,
)
from fsanet.config import BenchConfig, load_config
from fsanet.tables import efficiency_frame, efficiency_plot, efficiency_tables

MiB = 2**20
CPU = torch.device("cpu")


def test_tracker_exact_on_known_pattern():
    def f():
        a = torch.empty(MiB)  # 4 MiB
        b = torch.empty(MiB // 2)  # 2 MiB, alive together with a: peak 6 MiB
        del a
        c = torch.empty(MiB // 4)  # 1 MiB
        return b, c

    with PeakMemoryTracker() as tr:
        out = f()
    assert tr.peak == 6 * MiB
    assert tr.current == 3 * MiB
    del out


def test_tracker_excludes_preexisting_and_counts_views_once():
    x = torch.randn(256, 256)  # allocated before: not counted

    def f():
        y = x * 2  # 256 KiB
        z = y.t()  # a view: no new storage
        return y + z.contiguous()  # contiguous copy 256 KiB + result 256 KiB

    assert measure_peak_memory(f, CPU) == 3 * 256 * 256 * 4


def test_tracker_sees_attention_map():
    c, n = 8, 24 * 24
    q = torch.randn(1, c, n)

    def f():
        a = torch.softmax(q.transpose(1, 2) @ q, dim=-1)  # (1, N, N) twice: logits and softmax
        return q @ a

    peak = measure_peak_memory(f, CPU)
    assert peak == 2 * n * n * 4 + c * n * 4


def test_count_flops_counts_matmul_and_conv():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=False)
    x = torch.randn(1, 3, 6, 6)
    assert count_flops(lambda: conv(x)) == 2 * 5 * 6 * 6 * 3 * 9


def test_memory_limit_turns_overbudget_allocation_into_oom():
    with pytest.raises(OutOfMemory):
        with memory_limit(CPU, 64 * MiB):
            torch.empty(2**31, dtype=torch.uint8).fill_(1)  # 2 GiB
    torch.empty(64 * MiB, dtype=torch.uint8).fill_(1)  # limit lifted afterwards


def _tiny_cfg(**over):
    base = {
        "bench.modules": "[fsa,nonlocal,linear]",
        "bench.channels": 16,
        "bench.paper_size": "[12,10]",
        "bench.paper_bands": "[[0,3,0,3]]",
        "bench.sweep_sizes": "[8,12]",
        "bench.sweep_band": "[0,2,0,2]",
        "bench.repeats": 20,
        "bench.warmup": 1,
    }
    base.update(over)
    return load_config([], [f"{k}={v}" for k, v in base.items()]).bench


def test_cases_cover_paper_setting_and_sweep():
    cfg = _tiny_cfg()
    cases = build_cases(cfg)
    paper = [c for c in cases if c.setting == "paper"]
    assert sum(c.module == "fsa" for c in paper) == 4  # 1 band x 2 modes x 2 impls
    assert {c.module for c in paper} == {"floor", "fsa", "nonlocal", "linear"}
    sweep = [c for c in cases if c.setting == "sweep"]
    assert sorted({c.h for c in sweep}) == [8, 12]
    assert sum(c.module == "floor" for c in sweep) == 2
    with pytest.raises(ValueError, match="unknown module 'nope'"):
        build_cases(_tiny_cfg(**{"bench.modules": "[nope]"}))


def test_timeout_is_recorded_not_raised():
    cfg = _tiny_cfg(**{"bench.timeout_s": 0.0})
    row = measure_case(build_cases(cfg)[0], cfg, CPU)
    assert row["status"] == "timeout" and row["latency_ms"] is None


def test_a_slow_first_forward_alone_is_not_a_timeout(monkeypatch):
    import fsanet.bench as bench

    class SlowOnce(torch.nn.Module):  # pays a one-time cost (as a lazy compile would) on its first call
        calls = 0

        def forward(self, x):
            SlowOnce.calls += 1
            if SlowOnce.calls == 1:
                time.sleep(0.3)
            return x + 1

        def flops(self, h, w, b):
            return 0

    cfg = _tiny_cfg(**{"bench.timeout_s": 0.2})
    case = next(c for c in build_cases(cfg) if c.module == "linear" and c.setting == "paper")
    monkeypatch.setattr(bench, "build_module", lambda case, channels: SlowOnce())
    row = measure_case(case, cfg, CPU)
    assert row["status"] == "ok" and SlowOnce.calls > 2

    class AlwaysSlow(SlowOnce):
        def forward(self, x):
            time.sleep(0.25)
            return x + 1

    monkeypatch.setattr(bench, "build_module", lambda case, channels: AlwaysSlow())
    row = measure_case(case, cfg, CPU)
    assert row["status"] == "timeout" and "the first" in row["note"]


def test_oom_is_recorded_not_raised():
    # the 4096×4096 attention map needs 64 MiB; the budget allows 16 MiB
    cfg = _tiny_cfg(**{"bench.memory_budget_gb": 1 / 64, "bench.channels": 16, "bench.paper_size": "[64,64]"})
    case = next(c for c in build_cases(cfg) if c.module == "nonlocal")
    row = measure_case(case, cfg, CPU)
    assert row["status"] == "oom"


def test_end_to_end_report_tables_and_plot(tmp_path):
    cfg = _tiny_cfg()
    out = tmp_path / "bench" / "attention.json"
    report = run_attention_benchmark(cfg, out)
    data = json.loads(out.read_text())
    assert data["env"]["threads"] >= 1 and "git_sha" in data["env"] and "torch" in data["env"]
    keys = {"module", "mode", "impl", "h", "w", "channels", "band", "params", "flops", "peak_memory_bytes",
            "latency_ms", "latency_ms_min", "latency_ms_max", "status"}
    for row in data["results"]:
        assert keys <= row.keys()
        assert row["status"] == "ok", row
        assert row["repeats"] >= 20
        assert row["latency_ms_min"] <= row["latency_ms"] <= row["latency_ms_max"]
        if row["module"] != "floor":
            assert row["flops"] == row["flops_analytic"], row
            # paired floor: timed in alternation with the module, and the ratio of the two medians
            assert row["floor_latency_ms"] > 0
            assert row["x_floor"] == pytest.approx(row["latency_ms"] / row["floor_latency_ms"])
        else:
            assert row["floor_latency_ms"] is None and row["x_floor"] is None
    assert {r["module"] for r in data["results"]} == {"floor", "fsa", "nonlocal", "linear"}
    frame = efficiency_frame(report)
    nl = frame[frame["Module"].str.startswith("Non-local")].iloc[0]
    assert nl["ΔFLOPs (%)"] == 0.0 and nl["ΔLatency (%)"] == 0.0
    paths = efficiency_tables(out, tmp_path / "tables")
    assert [p.name for p in paths] == ["efficiency.md", "efficiency.tex", "efficiency.csv"]
    md = paths[0].read_text()
    assert "random tensors" in md and "Provenance: git" in md and "Scaling sweep" in md
    assert "latency × floor" in md and "paired floor" in md
    assert "\\begin{table}" in paths[1].read_text()
    png = efficiency_plot(out, tmp_path / "plots" / "eff.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reduction_percentages_by_hand():
    def row(module, flops, mem, lat, **kw):
        r = {"setting": "paper", "module": module, "mode": None, "impl": None, "h": 4, "w": 4, "channels": 8,
             "band": None, "params": 10, "flops": flops, "peak_memory_bytes": mem, "latency_ms": lat,
             "latency_ms_min": lat, "latency_ms_max": lat, "status": "ok"}
        r.update(kw)
        return r

    report = {"env": {}, "results": [
        row("floor", 0, 100, 0.5),
        row("nonlocal", 1000, 400, 10.0),
        row("fsa", 20, 40, 0.25, mode="dot", impl="fused", band=[0, 2, 0, 2]),
        row("linear", None, None, None, status="timeout"),
    ]}
    f = efficiency_frame(report).set_index("Module")
    fsa = f.loc["FSA 2×2 dot fused"]
    assert fsa["ΔFLOPs (%)"] == pytest.approx(-98.0)
    assert fsa["ΔMemory (%)"] == pytest.approx(-90.0)
    assert fsa["ΔLatency (%)"] == pytest.approx(-97.5)
    assert fsa["× floor"] == pytest.approx(0.5)  # no paired floor in the row: the floor row's latency
    assert f.loc["floor: torch.add(x, x)", "× floor"] == 1.0
    report["results"][2]["x_floor"] = 0.75  # a paired floor wins over the separate floor row
    assert efficiency_frame(report).set_index("Module").loc["FSA 2×2 dot fused", "× floor"] == 0.75
    assert f.loc["Linear attention", "Status"] == "timeout"


def test_tables_refuse_a_non_report(tmp_path, capsys):
    from fsanet.cli import main

    bad = tmp_path / "x.json"
    bad.write_text('{"a": 1}')
    assert main(["tables", "efficiency", "--bench", str(bad), "--out-dir", str(tmp_path)]) == 2
    assert "not a benchmark report" in capsys.readouterr().err
    assert main(["tables", "efficiency", "--bench", str(tmp_path / "missing.json")]) == 2


def test_default_bench_config_matches_the_paper_setting():
    cfg = OmegaConf.structured(BenchConfig)
    assert list(cfg.paper_size) == [97, 97] and cfg.channels == 512 and cfg.repeats >= 20


def test_paired_timing_alternates_and_can_be_turned_off():
    calls = []
    times, ref_times = measure_latency_paired(lambda: calls.append("f"), lambda: calls.append("r"), CPU, 2, 5)
    assert calls == ["f", "r"] * 7 and len(times) == len(ref_times) == 5
    times, ref_times = measure_latency_paired(lambda: calls.append("f"), None, CPU, 0, 3)
    assert len(times) == 3 and ref_times == []
    cfg = _tiny_cfg(**{"bench.paired_floor": "false"})
    case = next(c for c in build_cases(cfg) if c.module == "fsa")
    row = measure_case(case, cfg, CPU)
    assert row["status"] == "ok" and row["floor_latency_ms"] is None and row["x_floor"] is None
