"""Whole-model costs for the method table (T3): parameters, GFLOPs and CPU frames per second.

``fsanet bench models --config params/model/cpu.yaml --out results/bench/models.json`` builds every
model of :data:`fsanet.models.MODELS` (and every FsaNet band asked for) with the given config, then
measures on one ``(1, 3, H, W)`` input in eval mode:

* ``params``: all parameters, auxiliary head included (it is part of the trained model);
* ``flops``: one forward under ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-accumulate;
  ops it does not count, such as FFTs or SDPA on CPU, contribute 0);
* ``latency_ms``: median wall-clock time of ``repeats`` forwards after ``warmup`` (inference mode,
  batch 1, one torch thread unless ``--threads`` says otherwise), and ``fps = 1000 / latency_ms``.
  On a shared CPU these are rough; the report records the threads and the min/max latency.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from fsanet.band import BandError, band_label
from fsanet.band import parse_band as _parse_band
from fsanet.bench.timing import count_flops, time_interleaved
from fsanet.config import AttentionConfig, config_hash, to_container
from fsanet.io import write_json
from fsanet.provenance import environment

__all__ = ["model_costs", "parse_band", "write_model_costs"]

log = logging.getLogger(__name__)


def parse_band(text: str) -> Optional[list[int]]:
    """``full``/``none`` → None; ``5`` → ``[0,5,0,5]``; else as written (:mod:`fsanet.band`)."""
    try:
        return _parse_band(text)
    except BandError as err:
        raise ValueError(f"--band: {err}") from None


def model_costs(
    cfg: DictConfig,
    input_size: Optional[Sequence[int]] = None,
    models: Optional[Sequence[str]] = None,
    bands: Optional[Sequence[Optional[Sequence[int]]]] = None,
    warmup: int = 2,
    repeats: int = 10,
    threads: int = 1,
    rounds: int = 5,
) -> dict[str, Any]:
    """Params, FLOPs and CPU fps of each model built from ``cfg.model`` with its name replaced.

    Args:
        cfg: a loaded config (``model`` and ``data.num_classes``/``data.crop_size`` are read).
        input_size: ``(H, W)`` of the input; default ``cfg.data.crop_size``.
        models: names from :data:`fsanet.models.MODELS`; default all of them.
        bands: the FsaNet bands to measure (None = full spectrum); default ``[cfg.model.attention.band]``.
        warmup: untimed forwards before timing.
        repeats: timed forwards per model (the median is reported), split over ``rounds``.
        rounds: interleaved timing rounds: every model is timed once per round, so load from other
            processes hits all of them alike (``latency_round_ms`` holds each round's median).
        threads: torch intra-op threads while measuring (0 keeps torch's default). One thread is the
            default: on a busy shared CPU, OpenMP threads that spin-wait for a core make multi-thread
            timings swing by two orders of magnitude.

    Returns:
        ``{"env", "input_size", "num_classes", "config_hash", "warmup", "repeats", "rows": [...]}``; each row
        has
        ``model``, ``band``, ``band_label``, ``params``, ``flops``, ``latency_ms`` (+ min/max) and ``fps``.
    """
    from fsanet.models import MODELS

    size = [int(s) for s in (input_size or cfg.data.crop_size)]
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"input size must be two positive integers (H W), got {size}")
    if repeats < 1 or warmup < 0 or rounds < 1:
        raise ValueError(
            f"need repeats >= 1, warmup >= 0 and rounds >= 1, got repeats={repeats}, warmup={warmup}, "
            f"rounds={rounds}"
        )
    names = list(models) if models else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    default_band = cfg.model.attention.band
    band_list = list(bands) if bands else [None if default_band is None else list(default_band)]
    base = to_container(cfg.model)
    threads_before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        rows = _measure_all(cfg, base, names, band_list, size, warmup, repeats, rounds)
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads_before)
    return {
        "env": {**environment("cpu"), "threads": used_threads},
        "input_size": size,
        "num_classes": int(cfg.data.num_classes),
        "config_hash": config_hash({"model": base, "input_size": size}),
        "warmup": warmup,
        "repeats": repeats,
        "rounds": rounds,
        "rows": rows,
    }


def _measure_all(
    cfg: DictConfig,
    base: dict[str, Any],
    names: list[str],
    band_list: list,
    size: list[int],
    warmup: int,
    repeats: int,
    rounds: int,
) -> list[dict[str, Any]]:
    from fsanet.models import MODELS, build_model

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, int(size[0]), int(size[1]), generator=gen)  # (1, 3, H, W)
    defaults = OmegaConf.structured(AttentionConfig)
    rows, models = [], []
    for name in names:
        head = MODELS[name]
        for band in band_list if head.has_band() else [None]:
            model_cfg = OmegaConf.merge(base, {"name": name, "pretrained": None})
            for key in defaults:  # one config serves every head: each keeps only the options it reads
                if key not in head.attention_options:
                    model_cfg.attention[key] = defaults[key]
            if head.has_band():
                model_cfg.attention.band = None if band is None else list(band)
            torch.manual_seed(0)
            model = build_model(model_cfg, int(cfg.data.num_classes), pretrained=False).eval()
            with torch.inference_mode():
                flops = count_flops(lambda model=model: model(x))
            rows.append(
                {
                    "model": name,
                    "band": None if not head.has_band() or band is None else list(band),
                    "band_label": band_label(band if head.has_band() else None),
                    "params": int(sum(p.numel() for p in model.parameters())),
                    "flops": flops,
                }
            )
            models.append(model)
    with torch.inference_mode():
        calls = [lambda m=m: m(x) for m in models]
        timings = time_interleaved(calls, torch.device("cpu"), warmup, repeats, rounds)
    for row, timing in zip(rows, timings):
        row.update(timing)
        log.info(
            "%-12s %-6s %8.3f M params %8.3f GFLOPs %8.2f fps",
            row["model"],
            row["band_label"],
            row["params"] / 1e6,
            row["flops"] / 1e9,
            row["fps"] or 0.0,
        )
    return rows


def write_model_costs(cfg: DictConfig, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`model_costs` written atomically to ``out`` as JSON."""
    report = model_costs(cfg, **kwargs)
    write_json(out, report)
    log.info("wrote %s (%d models)", out, len(report["rows"]))
    return report
