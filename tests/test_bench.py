"""The benchmark harness: the CPU peak-memory method, failure handling, and the report schema."""

import json
import re
import statistics
import time

import pytest
import torch
from omegaconf import OmegaConf

import fsanet.bench.attention as bench
from fsanet.bench.attention import (
    _finish_row,
    _Timed,
    build_cases,
    measure_case,
    measure_group,
    run_attention_benchmark,
)
from fsanet.bench.timing import (
    OutOfMemory,
    PeakMemoryTracker,
    count_flops,
    measure_latency_paired,
    measure_peak_memory,
    memory_limit,
    round_shares,
    time_interleaved,
    verdict,
)
from fsanet.config import BenchConfig, ConfigError, load_config
from fsanet.report.efficiency import efficiency_frame, efficiency_plot, efficiency_tables

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
    keys = {
        "module",
        "mode",
        "impl",
        "h",
        "w",
        "channels",
        "band",
        "params",
        "flops",
        "peak_memory_bytes",
        "latency_ms",
        "latency_ms_min",
        "latency_ms_max",
        "status",
    }
    assert data["config"]["rounds"] == 5 and "interleaved rounds: 5" in data["env"]["timing"]
    for row in data["results"]:
        assert keys <= row.keys()
        assert row["status"] == "ok", row
        assert row["repeats"] >= 20 and row["rounds"] == 5
        assert row["latency_ms_min"] <= row["latency_ms"] <= row["latency_ms_max"]
        _check_spreads(row)
        if row["module"] != "floor":
            assert row["flops"] == row["flops_analytic"], row
            # paired floor: timed in alternation with the module; per round the ratio of the two medians
            assert row["floor_latency_ms"] > 0
            assert row["x_floor"] == pytest.approx(statistics.median(row["x_floor_round"]))
        else:
            assert row["floor_latency_ms"] is None and row["x_floor"] is None
            assert row["x_floor_round"] is None and row["x_floor_spread"] is None
    assert {r["module"] for r in data["results"]} == {"floor", "fsa", "nonlocal", "linear"}
    frame = efficiency_frame(report)
    nl = frame[frame["Module"].str.startswith("Non-local")].iloc[0]
    assert nl["ΔFLOPs (%)"] == 0.0 and nl["ΔLatency (%)"] == 0.0
    paths = efficiency_tables(out, tmp_path / "tables")
    assert [p.name for p in paths] == ["efficiency.md", "efficiency.tex", "efficiency.csv"]
    md = paths[0].read_text()
    assert "random tensors" in md and "Provenance: git" in md and "Scaling sweep" in md
    assert "latency × floor" in md and "paired floor" in md and "5 interleaved rounds" in md
    nl_line = next(line for line in md.splitlines() if line.startswith("| Non-local"))
    assert len(re.findall(r"\| [\d.,e+-]+ \([\d.,e+-]+–[\d.,e+-]+\) +\|", nl_line)) == 2  # latency, × floor
    csv = paths[2].read_text().splitlines()[0]
    assert "Latency (ms),Latency round min (ms),Latency round max (ms)" in csv
    assert "\\begin{table}" in paths[1].read_text()
    png = efficiency_plot(out, tmp_path / "plots" / "eff.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reduction_percentages_by_hand():
    def row(module, flops, mem, lat, **kw):
        r = {
            "setting": "paper",
            "module": module,
            "mode": None,
            "impl": None,
            "h": 4,
            "w": 4,
            "channels": 8,
            "band": None,
            "params": 10,
            "flops": flops,
            "peak_memory_bytes": mem,
            "latency_ms": lat,
            "latency_ms_min": lat,
            "latency_ms_max": lat,
            "status": "ok",
        }
        r.update(kw)
        return r

    report = {
        "env": {},
        "results": [
            row("floor", 0, 100, 0.5),
            row("nonlocal", 1000, 400, 10.0),
            row("fsa", 20, 40, 0.25, mode="dot", impl="fused", band=[0, 2, 0, 2]),
            row("linear", None, None, None, status="timeout"),
        ],
    }
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


# --------------------------------------------------------------------------------------------
# Interleaved rounds and verdicts
# --------------------------------------------------------------------------------------------
def _check_spreads(row):
    """Per-round medians are bracketed by their spread, and so is the median over all rounds."""
    rounds = row["latency_round_ms"]
    assert len(rounds) == row["rounds"]
    lo, hi = row["latency_spread_ms"]
    assert lo == min(rounds) and hi == max(rounds)
    assert lo <= row["latency_ms"] + 1e-12 and row["latency_ms"] <= hi + 1e-12
    if row["x_floor"] is not None:
        assert len(row["x_floor_round"]) == row["rounds"]
        x_lo, x_hi = row["x_floor_spread"]
        assert x_lo == min(row["x_floor_round"]) and x_hi == max(row["x_floor_round"])
        assert x_lo <= row["x_floor"] <= x_hi
        assert all(x > 0 for x in row["x_floor_round"])


def test_x_floor_is_paired_within_rounds_and_inside_its_spread():
    """The pooled medians (3.5 ms over 1.0 ms) would make the module 3.5× its floor, although within
    every round it is at most 2.5×: the headline ratio is the median of the rounds' ratios."""
    row = {"status": "ok"}
    timed = _Timed(case=None, row=row, fn=lambda: None, ref=lambda: None)
    timed.times = [[4.0, 4.0], [1.0, 4.0], [3.0, 2.0]]  # the module's forwards, ms, per round
    timed.ref_times = [[1.0, 3.0], [1.0, 1.0], [1.0, 1.0]]  # its paired floor's
    _finish_row(timed)
    assert row["latency_ms"] / row["floor_latency_ms"] == 3.5
    assert row["x_floor_round"] == [2.0, 2.5, 2.5]
    assert row["x_floor_spread"] == [2.0, 2.5]
    assert row["x_floor"] == 2.5


def _paper_cases(cfg):
    return [c for c in build_cases(cfg) if c.setting == "paper"]


def _record_turns(monkeypatch):
    """Record the series of each case's turn in a round (one entry per turn, in visiting order)."""
    turns = []
    original = bench._time_share

    def recording(timed, share, device):
        turns.append((timed.case.series, share))
        return original(timed, share, device)

    monkeypatch.setattr(bench, "_time_share", recording)
    return turns


def test_round_shares():
    assert round_shares(20, 5) == [4] * 5
    assert round_shares(20, 3) == [7, 7, 6]
    assert round_shares(3, 5) == [1] * 5  # at least one forward each round
    assert round_shares(20, 1) == [20]
    with pytest.raises(ValueError, match="bench.rounds"):
        round_shares(20, 0)


def test_rounds_interleave_with_a_rotating_order(monkeypatch):
    cfg = _tiny_cfg(
        **{
            "bench.modules": "[nonlocal,linear]",
            "bench.sweep_sizes": "[]",
            "bench.repeats": 5,
            "bench.rounds": 3,
        }
    )
    cases = _paper_cases(cfg)
    names = [c.series for c in cases]
    assert names == ["floor", "nonlocal", "linear"]
    turns = _record_turns(monkeypatch)
    rows = measure_group(cases, cfg, CPU)
    order = [series for series, _ in turns]
    assert order == names + names[1:] + names[:1] + names[2:] + names[:2]  # rotated by one each round
    assert [share for _, share in turns] == [2] * 3 + [2] * 3 + [1] * 3
    for row in rows:
        assert row["status"] == "ok" and row["repeats"] == 5 and row["rounds"] == 3
        _check_spreads(row)
    assert rows[0]["x_floor"] is None and rows[1]["x_floor"] > 0


def test_one_round_times_each_case_in_one_block(monkeypatch):
    cfg = _tiny_cfg(
        **{
            "bench.modules": "[nonlocal,linear]",
            "bench.sweep_sizes": "[]",
            "bench.repeats": 6,
            "bench.rounds": 1,
        }
    )
    cases = _paper_cases(cfg)
    turns = _record_turns(monkeypatch)
    rows = measure_group(cases, cfg, CPU)
    assert turns == [(c.series, 6) for c in cases]
    for row in rows:
        assert row["repeats"] == 6 and row["rounds"] == 1
        assert row["latency_round_ms"] == [row["latency_ms"]]
        assert row["latency_spread_ms"] == [row["latency_ms"]] * 2
        if row["module"] != "floor":
            assert row["x_floor_round"] == [pytest.approx(row["x_floor"])]
    # a case measured alone is a group of one, timed as before
    alone = measure_case(cases[1], cfg, CPU)
    assert alone["status"] == "ok" and alone["repeats"] == 6 and alone["floor_latency_ms"] > 0


def test_a_case_failing_in_a_round_sits_out_the_rest(monkeypatch):
    cfg = _tiny_cfg(
        **{
            "bench.modules": "[nonlocal,linear]",
            "bench.sweep_sizes": "[]",
            "bench.repeats": 4,
            "bench.rounds": 4,
        }
    )
    cases = _paper_cases(cfg)
    turns = []
    original = bench._time_share

    def failing(timed, share, device):
        turns.append(timed.case.series)
        if timed.case.series == "nonlocal" and turns.count("nonlocal") == 2:
            raise OutOfMemory("simulated")
        return original(timed, share, device)

    monkeypatch.setattr(bench, "_time_share", failing)
    rows = {r["series"]: r for r in measure_group(cases, cfg, CPU)}
    assert turns.count("nonlocal") == 2 and turns.count("linear") == 4 and turns.count("floor") == 4
    assert rows["nonlocal"]["status"] == "oom" and "round 2" in rows["nonlocal"]["note"]
    assert rows["nonlocal"]["latency_ms"] is None and rows["nonlocal"]["latency_spread_ms"] is None
    assert rows["linear"]["status"] == "ok" and rows["linear"]["repeats"] == 4


def test_rounds_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="bench.rounds=0 is out of range"):  # refused when the config loads
        _tiny_cfg(**{"bench.rounds": 0})
    assert OmegaConf.structured(BenchConfig).rounds == 5


def test_verdict_outcomes():
    # "x_floor <= 3": the whole spread must be at or below the threshold to pass
    assert verdict(2.1, 2.9, 3.0) == "pass"
    assert verdict(2.5, 3.0, 3.0) == "pass"  # equal to the bound is within it
    assert verdict(3.2, 4.0, 3.0) == "fail"
    assert verdict(2.8, 3.4, 3.0) == "unstable"
    # "speed-up >= 2"
    assert verdict(2.0, 2.5, 2.0, better="higher") == "pass"
    assert verdict(1.2, 1.9, 2.0, better="higher") == "fail"
    assert verdict(1.8, 2.2, 2.0, better="higher") == "unstable"
    with pytest.raises(ValueError, match="low"):
        verdict(3.0, 2.0, 2.5)
    with pytest.raises(ValueError, match="better"):
        verdict(1.0, 2.0, 1.5, better="smaller")
    with pytest.raises(ValueError, match="NaN"):
        verdict(float("nan"), 2.0, 1.5)


def test_tables_show_the_spread_beside_latency_and_x_floor(tmp_path):
    def row(module, lat, rounds, x=None, x_rounds=None, **kw):
        r = {
            "setting": "paper",
            "module": module,
            "mode": None,
            "impl": None,
            "h": 4,
            "w": 4,
            "channels": 8,
            "band": None,
            "params": 10,
            "flops": 100,
            "peak_memory_bytes": 1000,
            "latency_ms": lat,
            "latency_ms_min": lat,
            "latency_ms_max": lat,
            "status": "ok",
            "latency_round_ms": rounds,
            "latency_spread_ms": [min(rounds), max(rounds)],
            "x_floor": x,
            "x_floor_round": x_rounds,
            "x_floor_spread": [min(x_rounds), max(x_rounds)] if x_rounds else None,
        }
        r.update(kw)
        return r

    report = {
        "env": {},
        "config": {"rounds": 3},
        "results": [
            row("floor", 0.5, [0.45, 0.5, 0.6]),
            row("nonlocal", 4.7, [4.4, 4.7, 5.3], x=9.4, x_rounds=[8.8, 9.4, 10.6]),
            row("fsa", 1.5, [1.5], x=3.0, x_rounds=[3.0], mode="dot", impl="fused", band=[0, 2, 0, 2]),
            row("linear", None, [1.0], status="oom"),
        ],
    }
    bench_json = tmp_path / "b.json"
    bench_json.write_text(json.dumps(report))
    md_path, tex_path, csv_path = efficiency_tables(bench_json, tmp_path / "t")
    md = md_path.read_text()
    assert "4.70 (4.40–5.30)" in md and "9.40 (8.80–10.60)" in md  # latency and × floor with their spreads
    assert "0.5 (0.45–0.6)" in md  # the floor row's latency spread; its × floor is 1 by definition
    assert "3 interleaved rounds" in md
    assert "| 1.50 " in md and "(1.50–" not in md  # one round: no spread shown
    assert "4.70 (4.40--5.30)" in tex_path.read_text()  # the en dash in LaTeX
    frame = efficiency_frame(report).set_index("Module")
    nl = frame.loc["Non-local (emb. Gaussian)"]
    assert nl["Latency (ms)"] == 4.7 and nl["× floor"] == 9.4  # the medians stay numbers
    assert (nl["Latency round min (ms)"], nl["Latency round max (ms)"]) == (4.4, 5.3)
    assert (nl["× floor round min"], nl["× floor round max"]) == (8.8, 10.6)
    assert "Latency round max (ms)" in csv_path.read_text().splitlines()[0]


def test_time_interleaved_rotates_the_order_and_splits_the_repeats():
    """The model benchmark's timing: warm-up first, then each round visits every call, order rotated."""
    seen: list[str] = []
    calls = [lambda n=n: seen.append(n) for n in "abc"]
    rows = time_interleaved(calls, CPU, warmup=1, repeats=4, rounds=2)
    assert seen[:3] == ["a", "b", "c"]  # warm-up
    # round 0: a a b b c c; round 1 (rotated by one): b b c c a a
    assert "".join(seen[3:]) == "aabbcc" + "bbccaa"
    assert [len(r["latency_round_ms"]) for r in rows] == [2, 2, 2]
    for r in rows:
        assert r["latency_ms_min"] <= r["latency_ms"] <= r["latency_ms_max"]
        assert r["fps"] == pytest.approx(1000.0 / r["latency_ms"])
