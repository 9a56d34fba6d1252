"""Module-level efficiency benchmark: parameters, FLOPs, peak memory and latency of every attention module.

The measuring itself (FLOPs, peak memory, timing, rounds, verdicts) is :mod:`fsanet.bench.timing`.

Protocol (``fsanet bench attention``):

* **Cases.** The paper setting (B×C×97×97, C=512; FSA with each configured band, both modes, fused and
  reference) and a scaling sweep over square maps (FSA fused in both modes and FSA reference with the
  sweep band, every peer at its default options). At every size a *floor* row times one read-and-write
  pass over the input, ``torch.add(x, x)``: no module can beat it, so it anchors the numbers to the
  machine's memory bandwidth.
* **FLOPs** come from ``torch.utils.flop_counter.FlopCounterMode`` over one forward (2 FLOPs per
  multiply-accumulate; convolutions, matmul/bmm/addmm/baddbmm/einsum are counted). Each module's analytic
  ``flops(h, w)`` formula is recorded beside it as ``flops_analytic``, and a mismatch is logged.
* **Peak memory.** On CUDA, ``max_memory_allocated`` during one forward minus what was allocated before
  it (the input and the weights). On CPU, :class:`PeakMemoryTracker`: a ``TorchDispatchMode`` that sees
  every ATen op, adds the bytes of each new output storage, and subtracts a storage's bytes as soon as a
  weak reference to it reports it freed. Peak = the maximum of the running total, observed after each op.
  This is the CUDA definition transposed to CPU: bytes of tensor storage allocated during the forward
  and alive at the same time, the input excluded. It does not see scratch memory that a kernel
  allocates outside ATen (e.g. inside MKL, or the few-KiB per-map rows of the numba DCT kernels), which
  CUDA's counter would also miss unless it came from the caching allocator. ``tests/test_bench.py`` checks it
  to the byte on known allocation patterns and
  against the N² attention map of a non-local block.
* **Latency.** The median (and min/max) of ``repeats`` ≥ 20 timed forwards after ``warmup`` untimed ones,
  under ``torch.inference_mode``, fp32, with the thread count recorded (CUDA: synchronised).
* **Interleaved rounds.** A user's machine is never idle, so the cases of one setting group (the paper
  setting; each sweep size) are timed together: their timed forwards are split over ``rounds`` rounds,
  and in each round every case still alive gets its share (at least one forward) in turn, the visiting
  order rotating by one case each round. A burst of load then hits every case alike instead of one case
  alone. Each case is first prepared on its own (build, time-out probe, FLOPs, peak memory, warm-up);
  the cases of a group share one input tensor. ``latency_ms`` is the median over all rounds;
  ``latency_round_ms`` holds the median of each round and ``latency_spread_ms`` their [min, max], and
  ``x_floor_round``/``x_floor_spread`` the same for the ratio to the paired floor. A finding whose spread
  crosses its threshold is unstable (:func:`verdict`). With ``rounds=1`` each case's timed forwards run in
  one block, in case order.
* **Paired floor.** On a shared machine the floor itself moves by ±30 % between minutes (other tenants'
  memory traffic), so a module's ratio to a floor timed at another moment moves with it. With
  ``paired_floor`` (default) each module's timed runs alternate with runs of the floor on the same input
  (module, floor, module, …): the row records that floor's median as ``floor_latency_ms``, per round the
  ratio of the module's and the floor's round medians as ``x_floor_round``, and their median as
  ``x_floor``. Ratios are taken within a round only, so ``x_floor`` lies inside ``x_floor_spread``; the
  ratio of the pooled medians, ``latency_ms / floor_latency_ms``, pairs a slow round of the module with a
  quick one of the floor and can fall outside it. With ``rounds=1`` the two are the same. The
  alternation evicts the module's data from the caches between its runs, which can only make the module
  slower, so the ratio is not flattered. The separate ``floor`` rows are still timed on their own.
* **Allocator.** glibc returns every buffer of 32 MiB or more to the OS on free and page-faults it in
  again on the next allocation (one page fault per 4 KiB page), so at 128² and above *every* module, the floor
  included, would mostly measure page faults, and the result would swing with glibc's dynamic
  threshold. With ``pin_allocator`` (default) the benchmark process raises glibc's mmap and trim
  thresholds so freed buffers are reused, as CUDA's caching allocator does; this is recorded in
  ``env.allocator``. It applies to every row alike, and it is the conservative choice for
  floor-relative figures (page faults would inflate the floor more than any module's overhead).
* **Failures are data.** A forward slower than ``timeout_s`` is recorded as ``timeout`` (a first forward
  over the limit is timed once more, and only a second one over it counts, so that a one-time cost such
  as a lazy initialisation does not read as slowness; the CPU DCT kernels are compiled before any case,
  the seconds that took recorded as ``env.dct_kernels_warmup_s``); an allocation past
  ``memory_budget_gb`` (CPU: an address-space limit around the call; CUDA: the OOM error) as ``oom``. The
  run carries on, and larger sizes of a module that failed are recorded as ``skipped``. A case that fails
  during the rounds keeps that status and is left out of the later rounds.
"""

from __future__ import annotations

import gc
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from fsanet.band import band_label, normalize_band
from fsanet.bench.timing import (
    OutOfMemory,
    Timeout,
    count_flops,
    measure_peak_memory,
    memory_limit,
    pin_allocator,
    rotated,
    round_shares,
    time_once,
)
from fsanet.config import ConfigError, to_container
from fsanet.engine.distributed import resolve_device
from fsanet.io import write_json
from fsanet.models import attention_modules, bench_modules
from fsanet.nn import dct_ops
from fsanet.provenance import environment

log = logging.getLogger(__name__)

__all__ = [
    "FLOOR_DISPLAY",
    "Case",
    "build_cases",
    "measure_case",
    "measure_group",
    "run_attention_benchmark",
]

#: the floor row's name in table T1: the cheapest possible module, one elementwise add
FLOOR_DISPLAY = "floor: torch.add(x, x)"


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One row of the benchmark: a module configuration at one input size."""

    setting: str  # "paper" or "sweep"
    module: str  # a name of fsanet.models.attention_modules(), or "floor"
    h: int
    w: int
    mode: Optional[str] = None
    impl: Optional[str] = None
    band: Optional[tuple[int, int, int, int]] = None
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def series(self) -> str:
        """The module configuration, independent of size: one line in the scaling plot."""
        parts = [self.module]
        if "band" in self.options:
            parts += [band_label(self.band) if self.band else "full", self.mode or "", self.impl or ""]
        return "/".join(p for p in parts if p)


def _case(setting: str, name: str, h: int, w: int, options: dict[str, Any]) -> Case:
    """A case of module ``name`` with constructor ``options`` (a band is resolved against the map)."""
    opts = dict(options)
    band = None
    if "band" in opts:
        band = normalize_band(opts["band"], h, w)
        opts["band"] = band
    return Case(setting, name, h, w, mode=opts.get("mode"), impl=opts.get("impl"), band=band, options=opts)


def build_cases(cfg: DictConfig) -> list[Case]:
    """All benchmark rows for a :class:`~fsanet.config.BenchConfig`, in run order (small sizes first).

    ``bench.modules`` null means every method's module (:func:`fsanet.models.bench_modules`); each
    module's rows come from its ``bench_variants`` (e.g. FSA: bands × modes × implementations).
    """
    known = attention_modules()
    names = list(cfg.modules) if cfg.modules is not None else bench_modules()
    unknown = [m for m in names if m not in known]
    if unknown:
        raise ValueError(f"bench.modules: unknown module {unknown[0]!r}; choose from {', '.join(known)}")
    h, w = cfg.paper_size
    cases = [Case("paper", "floor", h, w)]
    for name in names:
        for opts in known[name].bench_variants("paper", [tuple(b) for b in cfg.paper_bands]):
            cases.append(_case("paper", name, h, w, opts))
    for s in sorted(cfg.sweep_sizes):
        cases.append(Case("sweep", "floor", s, s))
        for name in names:
            for opts in known[name].bench_variants("sweep", [tuple(cfg.sweep_band)]):
                cases.append(_case("sweep", name, s, s, opts))
    return cases


def build_module(case: Case, channels: int) -> nn.Module:
    """The module a case measures, with the case's options on top of its defaults (mmseg's)."""
    return attention_modules()[case.module](channels, **case.options)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
def _row(case: Case, cfg: DictConfig) -> dict[str, Any]:
    return {
        "setting": case.setting,
        "module": case.module,
        "display": FLOOR_DISPLAY if case.module == "floor" else attention_modules()[case.module].display,
        "series": case.series,
        "mode": case.mode,
        "impl": case.impl,
        "h": case.h,
        "w": case.w,
        "channels": cfg.channels,
        "batch": cfg.batch,
        "band": list(case.band) if case.band else None,
        "params": None,
        "flops": None,
        "flops_analytic": None,
        "peak_memory_bytes": None,
        "latency_ms": None,  # median over every timed forward of every round
        "latency_ms_min": None,
        "latency_ms_max": None,
        "latency_round_ms": None,  # the median of each round
        "latency_spread_ms": None,  # [min, max] of latency_round_ms
        "floor_latency_ms": None,  # the floor timed in alternation with this row (paired_floor)
        "x_floor": None,  # median of x_floor_round
        "x_floor_round": None,  # per round: the module's round median / the paired floor's round median
        "x_floor_spread": None,  # [min, max] of x_floor_round
        "repeats": 0,
        "rounds": 0,
        "status": "ok",
        "note": None,
    }


def _time_limit(case: Case, cfg: DictConfig) -> float:
    if case.setting == "sweep" and cfg.sweep_timeout_s is not None:
        return cfg.sweep_timeout_s
    return cfg.timeout_s


@dataclass
class _Timed:
    """A prepared case waiting for its rounds: the calls to time and the timings so far (ms, per round)."""

    case: Case
    row: dict[str, Any]
    fn: Callable[[], Any]
    ref: Optional[Callable[[], Any]]  # the paired floor, or None
    times: list[list[float]] = field(default_factory=list)
    ref_times: list[list[float]] = field(default_factory=list)


def _prepare_case(
    case: Case, cfg: DictConfig, device: torch.device, x: torch.Tensor, rng: torch.Tensor
) -> tuple[dict[str, Any], Optional[_Timed]]:
    """Build one case and measure what is measured once: time-out probe, FLOPs, peak memory; then warm up.

    Args:
        case: the case.
        cfg: the BenchConfig section.
        device: where the case runs.
        x: the group's input tensor.
        rng: the CPU generator state right after ``x`` was drawn, restored before the module is built,
            so that every case gets the weights it would get alone.

    Returns:
        ``(row, timed)``: ``timed`` is ``None`` when the case failed (its status is in ``row``).
    """
    row = _row(case, cfg)
    budget = int(cfg.memory_budget_gb * 2**30)
    floor: Callable[[], Any] = lambda: torch.add(x, x)  # noqa: E731
    paired: Optional[Callable[[], Any]] = None
    try:
        if case.module == "floor":
            fn: Callable[[], Any] = floor
            row["params"] = 0
        else:
            torch.set_rng_state(rng)
            module = build_module(case, cfg.channels).to(device).eval()
            fn = lambda: module(x)  # noqa: E731
            paired = floor if cfg.paired_floor else None
            row["params"] = sum(p.numel() for p in module.parameters())
            row["flops_analytic"] = int(module.flops(case.h, case.w, cfg.batch))
        with memory_limit(device, budget):
            limit = _time_limit(case, cfg)
            probe = time_once(fn, device)  # the first call doubles as the time-out probe
            if probe > limit:  # a one-time cost (lazy init, a compile) must not read as slowness
                first, probe = probe, time_once(fn, device)
                if probe > limit:
                    raise Timeout(
                        f"a forward took {probe:.2f} s (the first {first:.2f} s) > the {limit} s limit"
                    )
            row["flops"] = count_flops(fn)
            row["peak_memory_bytes"] = measure_peak_memory(fn, device)
            for _ in range(max(cfg.warmup - 1, 0)):  # the probe was the first warm-up call
                fn()
                if paired is not None:
                    paired()
        if row["flops_analytic"] is not None and row["flops_analytic"] != row["flops"]:
            log.warning(
                "%s at %dx%d: analytic FLOPs %d differ from the counter's %d",
                case.series,
                case.h,
                case.w,
                row["flops_analytic"],
                row["flops"],
            )
    except Timeout as err:
        row.update(status="timeout", note=str(err))
    except OutOfMemory as err:
        row.update(status="oom", note=f"beyond memory_budget_gb={cfg.memory_budget_gb}: {err}")
    finally:
        gc.collect()
    if row["status"] != "ok":
        return row, None
    return row, _Timed(case, row, fn, paired)


def _time_share(timed: _Timed, share: int, device: torch.device) -> tuple[list[float], list[float]]:
    """One case's turn in a round: ``share`` timed forwards (ms), each followed by its paired floor."""
    times: list[float] = []
    ref_times: list[float] = []
    for _ in range(share):
        times.append(time_once(timed.fn, device) * 1e3)
        if timed.ref is not None:
            ref_times.append(time_once(timed.ref, device) * 1e3)
    return times, ref_times


def time_rounds(
    timed: list[_Timed],
    cfg: DictConfig,
    device: torch.device,
    progress: Optional[Callable[[int], None]] = None,
) -> None:
    """Time prepared cases in interleaved rounds, appending each round's timings to each case.

    In round ``r`` the cases still ``ok`` are visited in their given order rotated left by ``r``, each
    taking its share of timed forwards (:func:`round_shares`). GC is paused during a round. A case that
    runs out of memory gets status ``oom`` and sits out the later rounds.

    Args:
        timed: the prepared cases of one setting group.
        cfg: the BenchConfig section (``repeats``, ``rounds``, ``memory_budget_gb``).
        device: where the cases run.
        progress: called with 1 after each case's turn.
    """
    budget = int(cfg.memory_budget_gb * 2**30)
    for r, share in enumerate(round_shares(cfg.repeats, cfg.rounds)):
        alive = [t for t in timed if t.row["status"] == "ok"]
        gc.collect()
        gc.disable()
        try:
            for t in rotated(alive, r):
                try:
                    with memory_limit(device, budget, release_cache=False):
                        times, ref_times = _time_share(t, share, device)
                except OutOfMemory as err:
                    t.row.update(
                        status="oom",
                        note=f"beyond memory_budget_gb={cfg.memory_budget_gb} in round {r + 1}: {err}",
                    )
                else:
                    t.times.append(times)
                    t.ref_times.append(ref_times)
                if progress is not None:
                    progress(1)
        finally:
            gc.enable()
        if progress is not None:
            progress(len(timed) - len(alive))  # the turns of the cases that failed earlier


def _spread(values: list[float]) -> list[float]:
    return [min(values), max(values)]


def _finish_row(timed: _Timed) -> None:
    """Fill a timed case's latency fields from its per-round timings (failed cases keep theirs empty)."""
    row = timed.row
    if row["status"] != "ok":
        return
    times = [v for round_times in timed.times for v in round_times]
    row["latency_ms"] = statistics.median(times)
    row["latency_ms_min"] = min(times)
    row["latency_ms_max"] = max(times)
    row["latency_round_ms"] = [statistics.median(ts) for ts in timed.times]
    row["latency_spread_ms"] = _spread(row["latency_round_ms"])
    if timed.ref is not None:
        row["floor_latency_ms"] = statistics.median([v for ts in timed.ref_times for v in ts])
        row["x_floor_round"] = [
            statistics.median(ts) / statistics.median(fs) for ts, fs in zip(timed.times, timed.ref_times)
        ]
        # the median of the rounds' paired ratios: a module and its floor are compared only within a
        # round, so the figure lies inside its spread (the pooled medians' ratio need not)
        row["x_floor"] = statistics.median(row["x_floor_round"])
        row["x_floor_spread"] = _spread(row["x_floor_round"])
    row["repeats"] = len(times)
    row["rounds"] = len(timed.times)


def measure_group(
    cases: list[Case], cfg: DictConfig, device: torch.device, progress: Optional[Callable[[int], None]] = None
) -> list[dict[str, Any]]:
    """Measure the cases of one setting group (one input size) together; failures become a status.

    Each case is prepared on its own (:func:`_prepare_case`), then all that succeeded are timed in
    interleaved rounds (:func:`time_rounds`).

    Args:
        cases: cases of one input size, in their visiting order.
        cfg: the BenchConfig section.
        device: where the cases run.
        progress: called with the number of steps done (one per preparation, one per turn in a round).

    Returns:
        One result row per case, in the order of ``cases``.
    """
    if not cases:
        return []
    sizes = {(c.h, c.w) for c in cases}
    if len(sizes) != 1:
        raise ValueError(f"measure_group: cases of one group share one input size, got {sorted(sizes)}")
    try:
        return _measure_group(cases, cfg, device, progress)
    finally:  # the group's modules and input are released by now
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _measure_group(
    cases: list[Case], cfg: DictConfig, device: torch.device, progress: Optional[Callable[[int], None]]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    timed: list[_Timed] = []
    with torch.inference_mode():
        torch.manual_seed(cfg.seed)
        x = torch.randn(cfg.batch, cfg.channels, cases[0].h, cases[0].w, device=device)
        rng = torch.get_rng_state()
        for case in cases:
            row, t = _prepare_case(case, cfg, device, x, rng)
            rows.append(row)
            if t is not None:
                timed.append(t)
            elif progress is not None:
                progress(cfg.rounds)  # the turns it will not take
            if progress is not None:
                progress(1)
        time_rounds(timed, cfg, device, progress)
    for t in timed:
        _finish_row(t)
    return rows


def measure_case(case: Case, cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    """Measure one case on its own (a group of one); failures become a status, never an exception."""
    return measure_group([case], cfg, device)[0]


def check_config(cfg: DictConfig) -> None:
    """Refuse settings the protocol cannot run with, naming the key.

    Raises:
        ConfigError: e.g. ``bench.rounds`` below 1.
    """
    if cfg.rounds < 1:
        raise ConfigError(f"bench.rounds must be >= 1 (rounds of interleaved timing), got {cfg.rounds}")


def setting_groups(cases: list[Case]) -> list[list[Case]]:
    """The cases timed together: those of one setting and input size, in run order."""
    groups: dict[tuple[str, int, int], list[Case]] = {}
    for case in cases:
        groups.setdefault((case.setting, case.h, case.w), []).append(case)
    return list(groups.values())


def _fmt_spread(spread: Optional[list[float]], fmt: str = ".3f") -> str:
    return f" ({spread[0]:{fmt}}-{spread[1]:{fmt}})" if spread else ""


def run_attention_benchmark(cfg: DictConfig, out: str | Path) -> dict[str, Any]:
    """Run every case of ``cfg`` (a BenchConfig section) and write the JSON report to ``out`` atomically.

    The cases of each setting group are timed together in interleaved rounds (see the module docstring).

    Args:
        cfg: the BenchConfig section.
        out: path of the JSON report.

    Returns:
        ``{"env": {...}, "config": {...}, "results": [row, ...]}``.
    """
    check_config(cfg)
    if cfg.repeats < 20:
        log.warning("bench.repeats=%d: the protocol asks for at least 20 timed runs", cfg.repeats)
    device = resolve_device(getattr(cfg.device, "value", str(cfg.device)), key="bench.device")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    allocator = pin_allocator() if cfg.pin_allocator and device.type == "cpu" else "default"
    cases = build_cases(cfg)
    kernels_warmup_s = dct_ops.warm_up((torch.float32,)) if device.type == "cpu" else 0.0  # cases run in fp32
    if kernels_warmup_s:
        log.info("dct kernels compiled or loaded in %.1f s, before any timing", kernels_warmup_s)
    failed: dict[str, str] = {}  # series -> status of the size that failed
    results = []
    with tqdm(total=len(cases) * (1 + cfg.rounds), desc="bench attention", unit="step") as bar:
        for group in setting_groups(cases):
            skip = [c.setting == "sweep" and c.series in failed for c in group]
            measured = iter(measure_group([c for c, s in zip(group, skip) if not s], cfg, device, bar.update))
            for case, skipped in zip(group, skip):
                if skipped:
                    row = _row(case, cfg)
                    row.update(status="skipped", note=f"a smaller size ended in {failed[case.series]}")
                    bar.update(1 + cfg.rounds)
                else:
                    row = next(measured)
                    if row["status"] != "ok" and case.setting == "sweep":
                        failed[case.series] = row["status"]
                log.info(
                    "%-28s %4dx%-4d %-8s %s ms%s",
                    case.series,
                    case.h,
                    case.w,
                    row["status"],
                    f"{row['latency_ms']:.3f}" if row["latency_ms"] is not None else "-",
                    _fmt_spread(row["latency_spread_ms"]),
                )
                results.append(row)
    report = {
        "env": {
            **environment(device),
            "threads": torch.get_num_threads(),
            "allocator": allocator,
            "dct_kernels": dct_ops.describe(),
            "dct_kernels_warmup_s": round(kernels_warmup_s, 3),
            "timing": f"interleaved rounds: {cfg.rounds} (visiting order rotating by one case each round)",
        },
        "config": to_container(cfg),
        "results": results,
    }
    write_json(out, report)
    log.info("wrote %s (%d rows)", out, len(results))
    return report
