"""Whole-model costs for the method table (T3): parameters, GFLOPs and CPU frames per second.

``fsanet bench models -c params/data/synthetic.yaml --out results/bench/models.json`` builds every
model of ``bench.models.names`` (default: all of :data:`fsanet.models.MODELS`; FsaNet once per band of
``bench.models.bands``) with the given config, then measures on one ``(1, 3, H, W)`` input in eval mode:

* ``params``: all parameters, auxiliary head included (it is part of the trained model);
* ``flops``: one forward under ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-accumulate;
  ops it does not count, such as FFTs or SDPA on CPU, contribute 0);
* ``latency_ms``: median wall-clock time of ``repeats`` forwards after ``warmup`` (inference mode,
  batch 1, ``bench.models.threads`` torch threads, one by default), and ``fps = 1000 / latency_ms``.
  On a shared CPU these are rough; the report records the threads and the min/max latency.
"""

from __future__ import annotations

import logging
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
        raise ValueError(f"bench.models.bands: {err}") from None


def model_costs(cfg: DictConfig) -> dict[str, Any]:
    """Params, FLOPs and CPU fps of each model built from ``cfg.model`` with its name replaced.

    Args:
        cfg: a loaded config: ``bench.models`` (:class:`fsanet.config.ModelBenchConfig`: which models
            and bands, the input size, warm-up, repeats, interleaved rounds and threads), ``model``, and
            ``data.num_classes`` / ``data.crop_size``.

    Returns:
        ``{"env", "input_size", "num_classes", "config_hash", "warmup", "repeats", "rounds", "rows"}``;
        each row has ``model``, ``band``, ``band_label``, ``params``, ``flops``, ``latency_ms`` (+ min/max,
        per-round medians) and ``fps``.

    Raises:
        ValueError: an unknown model or band, named with its key.
    """
    from fsanet.models import MODELS

    mc = cfg.bench.models
    size = [int(s) for s in (mc.input_size or cfg.data.crop_size)]
    if len(size) != 2:
        raise ValueError(f"bench.models.input_size must be two integers (H, W), got {size}")
    warmup, repeats, rounds, threads = int(mc.warmup), int(mc.repeats), int(mc.rounds), int(mc.threads)
    # the segmentation models (a detector's cost depends on its detections, not on the input alone)
    semantic = [n for n, m in MODELS.items() if m.task == "semantic"]
    names = list(mc.names) if mc.names else semantic
    unknown = [n for n in names if n not in semantic]
    if unknown:
        raise ValueError(
            f"bench.models.names: unknown or non-segmentation model(s) {', '.join(unknown)}; choose from "
            f"{', '.join(semantic)}"
        )
    default_band = cfg.model.attention.band
    if mc.bands:
        band_list = [parse_band(str(b)) for b in mc.bands]
    else:
        band_list = [None if default_band is None else list(default_band)]
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


def write_model_costs(cfg: DictConfig, out: str | Path) -> dict[str, Any]:
    """:func:`model_costs` written atomically to ``out`` as JSON."""
    report = model_costs(cfg)
    write_json(out, report)
    log.info("wrote %s (%d models)", out, len(report["rows"]))
    return report
