"""findings.md's claims: the cost claims read the benchmark report as it is written, the knee claim
checks both halves."""

import pytest

from fsanet.bench.attention import run_attention_benchmark
from fsanet.config import load_config
from fsanet.report.findings import _cost_findings, _knee_finding


def test_cost_claims_read_the_written_report(tmp_path):
    over = {
        "bench.modules": "[fsa,nonlocal]",
        "bench.channels": 16,
        "bench.paper_size": "[12,10]",
        "bench.paper_bands": "[[0,5,0,5]]",
        "bench.sweep_sizes": "[8]",
        "bench.sweep_band": "[0,2,0,2]",
        "bench.repeats": 2,
        "bench.rounds": 2,
        "bench.warmup": 1,
    }
    cfg = load_config([], [f"{k}={v}" for k, v in over.items()]).bench
    report = run_attention_benchmark(cfg, tmp_path / "attention.json")
    found = _cost_findings(report)
    claims = " | ".join(f["claim"] for f in found)
    assert all(f["verdict"] != "untestable" for f in found), found
    assert "FLOPs" in claims and "peak memory" in claims and "latency" in claims
    assert "12×10" in claims
    # no report rows: untestable, not a pass
    assert [f["verdict"] for f in _cost_findings({"results": []})] == ["untestable"]


def _points(deltas, full=90.0):
    pts = [{"series": "retrained", "label": "full", "K": 144, "mean": full}]
    for n, d in deltas.items():
        pts.append({"series": "retrained", "label": f"{n}x{n}", "K": n * n, "mean": full + d})
    return pts


@pytest.mark.parametrize(
    "deltas, verdict",
    [
        ({1: -20.0, 2: -0.5, 4: 0.2}, "pass"),  # knee at 2×2: below drops, above holds
        ({1: -3.0, 2: -0.5, 4: 0.2}, "fail"),  # below the knee drops too little
        ({1: -20.0, 2: -1.5, 4: 0.2}, "fail"),  # at the knee loses too much
    ],
)
def test_knee_claim_checks_both_halves(deltas, verdict):
    f = _knee_finding(_points(deltas), "retrained", [2, 2], "retrained curve")
    assert f["verdict"] == verdict, f
    assert "no band below the knee" not in f["detail"]


@pytest.mark.parametrize(
    "deltas, measured",
    [
        ({1: -20.0, 2: -0.5, 4: 0.2, 8: -0.1}, "2×2"),
        ({1: -20.0, 2: -14.0, 4: -0.9, 8: -0.1}, "4×4"),
        ({1: -0.5, 2: -3.0, 4: 0.2, 8: -0.1}, "4×4"),  # a band within reach below a gap does not count
        ({1: -20.0, 2: -14.0, 4: -6.0, 8: -1.2}, "full"),
    ],
)
def test_knee_claim_names_the_measured_knee(deltas, measured):
    f = _knee_finding(_points(deltas), "retrained", [2, 2], "retrained curve")
    assert f["detail"].endswith(f"measured knee {measured}"), f["detail"]


def test_knee_claim_says_when_no_band_lies_below_the_knee():
    f = _knee_finding(_points({1: -0.2, 2: 0.1}), "retrained", [1, 1], "retrained curve")
    assert f["verdict"] == "pass" and "only the upper half of the claim is tested" in f["detail"]


def test_truncated_band_rows_get_a_spread_claim_at_or_above_the_knee():
    from fsanet.report.findings import _truncated_spread_findings

    pts = [
        {"series": "truncated", "label": "1x1", "K": 1, "std": 4.0, "n": 3, "min": 70.0, "max": 78.0},
        {"series": "truncated", "label": "2x2", "K": 4, "std": 0.3, "n": 3, "min": 89.0, "max": 89.6},
        {"series": "truncated", "label": "full", "K": 144, "std": 0.2, "n": 3, "min": 90.0, "max": 90.4},
    ]
    found = _truncated_spread_findings(pts, [1, 1], "nonlocal")
    assert [f["verdict"] for f in found] == ["fail", "pass"]
    assert "truncated to 1x1" in found[0]["claim"] and "std 4.00" in found[0]["detail"]
    assert [f["verdict"] for f in _truncated_spread_findings(pts, [2, 2], "nonlocal")] == ["pass"]


def test_only_the_declared_baseline_is_the_fcn_reference():
    """AFFormer has no fsanet.nn attention module, but it is not the attention-free baseline."""
    from fsanet.report.findings import _method_findings

    runs = [
        {"model": m, "mode": None, "band": None, "eval_band": None, "seed": s, "mIoU": v}
        for m, vals in (("fcn", (72.0, 72.5, 73.0)), ("afformer", (20.0, 80.0, 81.0)))
        for s, v in enumerate(vals)
    ]
    found = {f["claim"]: f for f in _method_findings(runs, "5x5")}
    claim = next(c for c in found if c.startswith("afformer ≥ FCN mean + 10 = 82.50"))
    assert found[claim]["verdict"] == "fail" and "n=3" in found[claim]["detail"]


def test_knee_claim_reports_the_energy_the_knee_band_keeps():
    pts = _points({1: -20.0, 2: -14.0, 8: -0.3})
    knee_point = next(p for p in pts if p["label"] == "2x2")
    knee_point.update(band=[0, 2, 0, 2], energy_kept=0.2, energy_kept_min=0.19, energy_kept_max=0.22)
    f = _knee_finding(pts, "retrained", [2, 2], "truncated curve")
    assert f["verdict"] == "fail"
    assert "the 2×2 band keeps 20.0 % of the attention inputs' energy (19.0–22.0 %)" in f["detail"]
    plain = _knee_finding(_points({1: -20.0, 2: -14.0}), "retrained", [2, 2], "truncated curve")
    assert "energy" not in plain["detail"]  # nothing recorded, nothing claimed
