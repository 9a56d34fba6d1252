"""The ``fsanet`` command line. Snakemake rules, DVC, tests and people all reach the package through it.

Each subcommand parses its arguments here and calls one function in the module that owns the work;
heavy imports happen inside the handlers so that ``fsanet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("fsanet")

# Errors that mean "the user gave bad input": reported as one line, exit status 2, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, KeyError, PermissionError)


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        "-c",
        action="append",
        default=[],
        metavar="YAML",
        help="params file merged onto the defaults (repeatable; later files win)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="OmegaConf dotlist overrides")


# --------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------
def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="efficiency benchmarks").add_subparsers(dest="what", required=True)
    p = bench.add_parser(
        "attention",
        help="params, FLOPs, peak memory and latency of every attention module",
        description="Module-level benchmark at the paper setting and over a sweep of map sizes.",
    )
    _config_args(p)
    p.add_argument("--out", required=True, type=Path, metavar="PATH.json", help="where to write the JSON")
    p.set_defaults(handler=_run_bench_attention)
    _add_bench_models(bench)


def _run_bench_attention(args: argparse.Namespace) -> None:
    from fsanet.config import load_config

    cfg = load_config(args.config, args.overrides)
    from fsanet.bench.attention import run_attention_benchmark

    run_attention_benchmark(cfg.bench, args.out)


def _add_bench_models(bench: argparse._SubParsersAction) -> None:
    p = bench.add_parser(
        "models",
        help="params, GFLOPs and CPU fps of every segmentation model (for table T3)",
        description="Builds each model of bench.models.names (default: all of fsanet.models.MODELS) from the "
        "config's model section, FsaNet once per band of bench.models.bands (default: "
        "model.attention.band), and measures params, FlopCounterMode GFLOPs and CPU fps on one "
        "(1, 3, H, W) input (bench.models.input_size, default data.crop_size), timed in "
        "bench.models.rounds interleaved rounds. E.g. `fsanet bench models -c params/data/synthetic.yaml "
        "--out m.json 'bench.models.names=[fcn,fsanet]' 'bench.models.bands=[2,full]'`.",
    )
    _config_args(p)
    p.add_argument("--out", required=True, type=Path, metavar="PATH.json", help="where to write the JSON")
    p.set_defaults(handler=_run_bench_models)


def _run_bench_models(args: argparse.Namespace) -> None:
    from fsanet.bench.models import write_model_costs
    from fsanet.config import load_config

    cfg = load_config(args.config, args.overrides)
    report = write_model_costs(cfg, args.out)
    print(f"bench models: {len(report['rows'])} models at {report['input_size']}; wrote {args.out}")


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def _add_band_mode(p: argparse.ArgumentParser) -> None:
    """``--band-mode``: the FSA kernel of the band ablation's retrained series (T2, its plot, findings)."""
    p.add_argument(
        "--band-mode",
        default="dot",
        choices=["dot", "linsoftmax"],
        help="FSA kernel of the retrained band series (and of a banded truncated model; default dot)",
    )


def _add_tables(sub: argparse._SubParsersAction) -> None:
    tables = sub.add_parser("tables", help="render result files as Markdown/LaTeX/CSV tables and plots")
    what = tables.add_subparsers(dest="what", required=True)
    p = what.add_parser("efficiency", help="T1: efficiency against regular self-attention (non-local)")
    p.add_argument(
        "--bench", required=True, type=Path, metavar="JSON", help="output of `fsanet bench attention`"
    )
    p.add_argument(
        "--out-dir", type=Path, default=Path("results/tables"), help="folder for efficiency.{md,tex,csv}"
    )
    p.add_argument(
        "--plot", type=Path, default=Path("results/plots/efficiency_scaling.png"), help="log-log plot path"
    )
    p.set_defaults(handler=_run_tables_efficiency)

    p = what.add_parser(
        "summary",
        help="results/metrics/summary.json: one record per evaluation (from metrics.json files)",
        description="Collects `fsanet eval` metrics.json files (paths or glob patterns) into one sorted "
        "summary with provenance; the study tables and plots read it.",
    )
    p.add_argument(
        "--metrics", required=True, nargs="+", metavar="FILE", help="metrics.json files or glob patterns"
    )
    p.add_argument("--out", type=Path, default=Path("results/metrics/summary.json"), help="the summary JSON")
    p.set_defaults(handler=_run_tables_summary)

    def study(name: str, text: str, stem: str) -> argparse.ArgumentParser:
        p = what.add_parser(name, help=text)
        p.add_argument(
            "--summary",
            type=Path,
            default=Path("results/metrics/summary.json"),
            help="output of `fsanet tables summary`",
        )
        p.add_argument(
            "--out-dir", type=Path, default=Path("results/tables"), help=f"folder for {stem}.{{md,tex,csv}}"
        )
        p.add_argument("--dataset", action="append", metavar="NAME", help="only these datasets (repeatable)")
        p.add_argument(
            "--setting",
            default=None,
            metavar="SPLIT/MODE/SCALES",
            help="evaluation setting, e.g. val/slide/ms+flip (default: the single-scale evaluations)",
        )
        return p

    p = study(
        "ablation", "T2: band ablation (FsaNet retrained vs NL truncated without retraining)", "ablation"
    )
    p.add_argument(
        "--retrained-model", default=None, help="model trained per band (default: the model with a band)"
    )
    p.add_argument(
        "--truncated-model", default="nonlocal", help="full-band model truncated at eval (default nonlocal)"
    )
    _add_band_mode(p)
    p.set_defaults(handler=_run_tables_ablation)
    p = study("methods", "T3: method comparison per dataset (mIoU, params, GFLOPs, fps)", "methods_DATASET")
    p.add_argument("--costs", type=Path, default=None, metavar="JSON", help="output of `fsanet bench models`")
    p.add_argument(
        "--band", action="append", metavar="LABEL", help="FsaNet bands to list, e.g. 5x5 (default: all)"
    )
    p.set_defaults(handler=_run_tables_methods)
    p = what.add_parser(
        "findings", help="results/tables/findings.md: the study's claims with numbers and verdicts"
    )
    p.add_argument(
        "--summary",
        type=Path,
        default=Path("results/metrics/summary.json"),
        help="output of `fsanet tables summary`",
    )
    p.add_argument(
        "--bench", type=Path, default=None, metavar="JSON", help="output of `fsanet bench attention` (T1)"
    )
    p.add_argument("--out", type=Path, default=Path("results/tables/findings.md"), help="the findings file")
    p.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the claims and verdicts as JSON (read by `fsanet mlflow publish`)",
    )
    p.add_argument("--dataset", default=None, metavar="NAME", help="only this dataset (default: all)")
    p.add_argument("--default-band", default="5x5", metavar="LABEL", help="FsaNet's band in the method rows")
    p.add_argument(
        "--retrained-model", default=None, help="model trained per band (default: the one with a band sweep)"
    )
    p.add_argument(
        "--truncated-model", default="nonlocal", help="full-band model truncated at eval (default nonlocal)"
    )
    _add_band_mode(p)
    p.set_defaults(handler=_run_tables_findings)
    p = what.add_parser(
        "metrics", help="metrics/study.json: the study's headline numbers (dvc metrics, dvc exp show)"
    )
    p.add_argument(
        "--summary",
        type=Path,
        default=Path("results/metrics/summary.json"),
        help="output of `fsanet tables summary`",
    )
    p.add_argument(
        "--findings", type=Path, default=None, metavar="JSON", help="`fsanet tables findings --json` output"
    )
    p.add_argument("--out", type=Path, default=Path("metrics/study.json"), help="the metrics file")
    p.set_defaults(handler=_run_tables_metrics)
    p = what.add_parser(
        "cost",
        help="estimated GPU-hours of a study profile's trainings (cost.{md,tex,csv})",
        description="Scales mmseg's published training speed (docs/en/model_zoo.md) by each dataset's "
        "iterations, batch and crop; see fsanet/report/cost.py. Snakemake's `cost_table` rule passes "
        "the study's training counts.",
    )
    p.add_argument(
        "--trainings", required=True, action="append", metavar="NAME=N", help="trainings on a dataset"
    )
    p.add_argument(
        "--dataset-config",
        required=True,
        action="append",
        metavar="NAME=FILE[,FILE…]",
        help="the config files a dataset's trainings are built from (the profile's fsanet_configs)",
    )
    p.add_argument("--gpus-per-job", type=int, default=1, help="GPUs one training uses")
    p.add_argument("--profile", default="study", help="the study profile's name, for the caption")
    p.add_argument(
        "--out-dir", type=Path, default=Path("results/tables"), help="folder for cost.{md,tex,csv}"
    )
    p.set_defaults(handler=_run_tables_cost)
    p = what.add_parser(
        "coco",
        help="Mask R-CNN study: COCO AP table per dataset, coco_findings.md and coco.json",
        description="Groups detector evaluations (metrics.json with task=instances) by method and "
        "writes box AP, mask AP and the context classes' mask AP as mean ± std over seeds, and checks "
        "that each attention variant beats plain Mask R-CNN on the context classes in every seed.",
    )
    p.add_argument("--metrics", required=True, nargs="+", metavar="FILE", help="detector metrics.json files")
    p.add_argument(
        "--out-dir", type=Path, default=Path("results/tables"), help="folder for coco_DATASET.{md,tex,csv}"
    )
    p.add_argument("--summary", type=Path, default=None, metavar="JSON", help="every run and claim (JSON)")
    p.add_argument("--margin", type=float, default=5.0, help="context-class AP gain claimed (default 5)")
    p.set_defaults(handler=_run_tables_coco)
    p = study("per-class", "T4: per-class IoU per method", "per_class_DATASET")
    p.add_argument(
        "--band", action="append", metavar="LABEL", help="FsaNet bands to list, e.g. 5x5 (default: all)"
    )
    p.set_defaults(handler=_run_tables_per_class)


def _run_tables_efficiency(args: argparse.Namespace) -> None:
    from fsanet.report.efficiency import efficiency_plot, efficiency_tables

    efficiency_tables(args.bench, args.out_dir)
    efficiency_plot(args.bench, args.plot)


def _run_tables_summary(args: argparse.Namespace) -> None:
    from fsanet.report.summary import write_summary

    summary = write_summary(args.metrics, args.out)
    print(
        f"tables summary: {len(summary['runs'])} evaluations from {summary['provenance']['created_from']} "
        f"files; wrote {args.out}"
    )


def _run_tables_ablation(args: argparse.Namespace) -> None:
    from fsanet.report.study_tables import ablation_tables

    paths = ablation_tables(
        args.summary,
        args.out_dir,
        args.dataset,
        args.setting,
        args.retrained_model,
        args.truncated_model,
        args.band_mode,
    )
    print("tables ablation: wrote " + ", ".join(map(str, paths)))


def _run_tables_methods(args: argparse.Namespace) -> None:
    from fsanet.report.study_tables import methods_tables

    paths = methods_tables(args.summary, args.out_dir, args.costs, args.dataset, args.setting, args.band)
    print("tables methods: wrote " + ", ".join(map(str, paths)))


def _named(items: list[str], flag: str) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict, refusing a malformed or repeated name."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} {item!r}: expected NAME=VALUE")
        if name in out:
            raise ValueError(f"{flag}: {name} is given twice; give each name once")
        out[name] = value
    return out


def _run_tables_cost(args: argparse.Namespace) -> None:
    from fsanet.config import load_config
    from fsanet.report.cost import cost_tables, studies_from_configs

    counts = {}
    for name, text in _named(args.trainings, "--trainings").items():
        if not text.isdigit():
            raise ValueError(f"--trainings {name}={text}: N must be a whole number")
        counts[name] = int(text)
    files = _named(args.dataset_config, "--dataset-config")
    configs = {name: load_config(paths.split(",")) for name, paths in files.items()}
    studies = studies_from_configs(counts, configs, args.gpus_per_job)
    paths = cost_tables(studies, args.out_dir, args.profile)
    print(f"tables cost: {sum(counts.values())} trainings over {len(counts)} dataset(s); wrote {paths[0]}")


def _run_tables_coco(args: argparse.Namespace) -> None:
    from fsanet.report.coco_tables import coco_tables
    from fsanet.report.summary import expand_inputs

    paths = coco_tables(expand_inputs(args.metrics), args.out_dir, args.summary, args.margin)
    print(f"tables coco: wrote {', '.join(str(p) for p in paths)}")


def _run_tables_findings(args: argparse.Namespace) -> None:
    from fsanet.report.findings import write_findings

    items = write_findings(
        args.summary,
        args.out,
        args.bench,
        args.dataset,
        args.default_band,
        args.json,
        truncated_model=args.truncated_model,
        retrained_model=args.retrained_model,
        band_mode=args.band_mode,
    )
    counts = {v: sum(f["verdict"] == v for f in items) for v in ("pass", "fail", "unstable", "untestable")}
    print(
        f"tables findings: {len(items)} claims ({', '.join(f'{k} {v}' for k, v in counts.items())}); wrote "
        f"{args.out}"
    )


def _run_tables_metrics(args: argparse.Namespace) -> None:
    from fsanet.io import read_json, write_json
    from fsanet.report.summary import headline_metrics, load_summary

    tree = headline_metrics(load_summary(args.summary), read_json(args.findings) if args.findings else None)
    write_json(args.out, tree)
    rows = sum(len(v.get("retrained", {})) + len(v.get("truncated", {})) for v in tree.values())
    print(f"tables metrics: {rows} rows over {len(tree)} dataset(s); wrote {args.out}")


def _run_tables_per_class(args: argparse.Namespace) -> None:
    from fsanet.report.study_tables import per_class_tables

    paths = per_class_tables(args.summary, args.out_dir, args.dataset, args.setting, args.band)
    print("tables per-class: wrote " + ", ".join(map(str, paths)))


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------
def _add_plots(sub: argparse._SubParsersAction) -> None:
    plots = sub.add_parser("plots", help="study figures (band ablation, qualitative grid)")
    what = plots.add_subparsers(dest="what", required=True)
    p = what.add_parser("ablation", help="mIoU vs number of DCT coefficients K, retrained vs truncated")
    p.add_argument(
        "--summary",
        type=Path,
        default=Path("results/metrics/summary.json"),
        help="output of `fsanet tables summary`",
    )
    p.add_argument("--out", type=Path, default=Path("results/plots/ablation.png"), help="the PNG")
    p.add_argument(
        "--csv", type=Path, default=Path("results/plots/ablation.csv"), help="the plotted data (dvc plots)"
    )
    p.add_argument("--dataset", default=None, help="dataset (default: the only one with ablation runs)")
    p.add_argument("--setting", default=None, help="evaluation setting (default: single-scale)")
    p.add_argument(
        "--retrained-model", default=None, help="model trained per band (default: the model with a band)"
    )
    p.add_argument("--truncated-model", default="nonlocal")
    _add_band_mode(p)
    p.set_defaults(handler=_run_plots_ablation)

    p = what.add_parser(
        "dvc-template",
        help="an offline page template for `dvc plots show` (Vega libraries inlined)",
        description="Downloads vega, vega-lite and vega-embed (the versions DVC's page loads from a CDN) "
        "from the "
        "npm registry once, verifies each against its pinned sha512, and writes a page template with them "
        "inlined: `dvc plots show --html-template FILE` then needs no network (`make plots`).",
    )
    p.add_argument("--out", type=Path, default=Path(".dvc/tmp/plots_template.html"), help="the template")
    p.add_argument("--cache-dir", type=Path, default=Path(".dvc/tmp/npm"), help="where the tarballs are kept")
    p.add_argument(
        "--registry", default=None, metavar="URL", help="npm registry (default https://registry.npmjs.org)"
    )
    p.set_defaults(handler=_run_plots_dvc_template)

    p = what.add_parser(
        "qualitative",
        help="rows = images, columns = image | truth | each checkpoint's prediction",
        description="Runs each checkpoint (its stored config + key=value overrides, e.g. data.root=DIR) on "
        "the first N validation images of the first checkpoint's dataset.",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="LABEL=PATH",
        help="column label and model.pt (repeatable, in column order)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="PNG", help="the PNG")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="LABEL:key=value",
        dest="per_checkpoint",
        help="override for one column only, e.g. 'NL 2x2:eval.eval_band=[0,2,0,2]' (repeatable)",
    )
    p.add_argument("-n", type=int, default=4, help="number of images (default 4)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every checkpoint's config")
    p.set_defaults(handler=_run_plots_qualitative)


def _run_plots_ablation(args: argparse.Namespace) -> None:
    from fsanet.report.plots import ablation_plot

    paths = ablation_plot(
        args.summary,
        args.out,
        args.csv,
        args.dataset,
        args.setting,
        args.retrained_model,
        args.truncated_model,
        args.band_mode,
    )
    print("plots ablation: wrote " + ", ".join(map(str, paths)))


def _run_plots_dvc_template(args: argparse.Namespace) -> None:
    from fsanet.data.errors import DownloadError
    from fsanet.report.dvc_plots import NPM_REGISTRY, write_offline_template

    try:
        out = write_offline_template(
            args.out, args.cache_dir, args.registry or NPM_REGISTRY, progress=_progress(args)
        )
    except DownloadError as err:
        raise SystemExit(f"fsanet plots dvc-template: error: {err}") from None
    print(f"plots dvc-template: wrote {out}; render with `dvc plots show --html-template {out}`")


def _run_plots_qualitative(args: argparse.Namespace) -> None:
    from fsanet.report.plots import qualitative_grid

    checkpoints: dict[str, Path] = {}
    for item in args.checkpoint:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise ValueError(
                f"--checkpoint {item!r}: expected LABEL=PATH, e.g. FsaNet=results/runs/.../model.pt"
            )
        if label in checkpoints:
            raise ValueError(f"--checkpoint: label {label!r} given twice")
        checkpoints[label] = Path(path)
    own: dict[str, list[str]] = {label: [] for label in checkpoints}
    for item in args.per_checkpoint:
        label, sep, override = item.partition(":")
        if not sep or label not in own or "=" not in override:
            raise ValueError(f"--set {item!r}: expected LABEL:key=value with LABEL one of {sorted(own)}")
        own[label].append(override)
    out = qualitative_grid({k: (v, own[k]) for k, v in checkpoints.items()}, args.out, args.n, args.overrides)
    print(f"plots qualitative: wrote {out}")


# --------------------------------------------------------------------------------------------
# data, train, eval: filled in by the datasets and engine work
# --------------------------------------------------------------------------------------------
def _add_data(sub: argparse._SubParsersAction) -> None:
    """`fsanet data {download,prepare,stats,show}` (datasets)."""
    names = ["synthetic", "cityscapes", "ade20k", "voc", "coco_stuff", "coco"]

    data = sub.add_parser("data", help="download, prepare and inspect datasets").add_subparsers(
        dest="what", required=True
    )

    def common(p: argparse.ArgumentParser, config: bool = True) -> None:
        p.add_argument("name", choices=names, metavar="NAME", help=f"dataset: {', '.join(names)}")
        p.add_argument("--root", type=Path, default=Path("data"), help="data root folder (default: data)")
        if config:
            p.add_argument(
                "--config",
                "-c",
                action="append",
                default=[],
                metavar="YAML",
                help="params file(s) (default: params/data/NAME.yaml when it exists)",
            )
            p.add_argument(
                "overrides", nargs="*", metavar="key=value", help="e.g. data.check_split_sizes=false"
            )

    p = data.add_parser(
        "download",
        help="fetch the official archives, verify checksums, extract safely",
        description="Download (resumable) or take from --from DIR the archives listed under data.download "
        "in params/data/NAME.yaml, verify their checksums and extract them under --root. Cityscapes reads "
        "CITYSCAPES_USERNAME / CITYSCAPES_PASSWORD from the environment. Extraction refuses decompression "
        "bombs by the limits under data.extract (max_ratio, free disk) and data.download[].unpacked_bytes. "
        "A lock per archive and per dataset lets two downloads share a root; a process waits for another's "
        "lock up to FSANET_LOCK_TIMEOUT_S seconds (environment variable; default 12 hours, negative: no "
        "limit).",
    )
    common(p)
    p.add_argument("--from", dest="from_dir", type=Path, metavar="DIR", help="archives downloaded by hand")
    p.set_defaults(handler=_run_data_download)

    p = data.add_parser(
        "verify",
        help="re-hash the downloaded archives against their published or self-recorded checksums",
        description="Re-hashes each archive of NAME found in ROOT/archives against the checksum in "
        "params/data/NAME.yaml or, for archives without one, the digest recorded in "
        "ROOT/archives/checksums.json (published by the site, or self-recorded on first use after the "
        "archive "
        "extracted safely with the dataset's layout). Prints one line per archive (ok, self-recorded, "
        "mismatch, missing, unverified); exit status 1 if any mismatches. --clear forgets self-recorded "
        "digests so that the next `fsanet data download` checks and records the archive again. Downloads "
        "take a lock per archive and per dataset and wait for another process's lock up to "
        "FSANET_LOCK_TIMEOUT_S seconds (environment variable; default 12 hours, negative: no limit).",
    )
    common(p)
    p.add_argument("--archive", metavar="FILE", help="only this archive (a file name from data.download)")
    p.add_argument(
        "--clear",
        action="store_true",
        help="remove the self-recorded digests (of --archive FILE only, if given) instead of checking",
    )
    p.set_defaults(handler=_run_data_verify)

    p = data.add_parser("prepare", help="convert labels, write split lists, check split sizes")
    common(p)
    p.add_argument("--workers", type=int, default=0, help="processes (0 = one per CPU)")
    p.add_argument("--force", action="store_true", help="redo even if marked prepared")
    p.add_argument(
        "--marker",
        type=Path,
        metavar="JSON",
        help="also write the preparation summary here when done (a pipeline's output file)",
    )
    p.set_defaults(handler=_run_data_prepare)

    p = data.add_parser("stats", help="sample counts and class frequencies")
    common(p, config=False)
    p.add_argument("--split", action="append", metavar="SPLIT", help="split(s) (default: all known)")
    p.set_defaults(handler=_run_data_stats)

    p = data.add_parser("show", help="PNG grid of image | coloured label")
    common(p, config=False)
    p.add_argument("--out", type=Path, required=True, metavar="PNG", help="the PNG to write")
    p.add_argument("--split", default="val", help="split (default: val)")
    p.add_argument("-n", type=int, default=4, help="number of samples (default: 4)")
    p.set_defaults(handler=_run_data_show)


def _data_config(args: argparse.Namespace):
    from fsanet.config import load_config

    paths = list(args.config)
    if not paths:
        for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
            if (base / "params" / "data" / f"{args.name}.yaml").is_file():
                paths = [base / "params" / "data" / f"{args.name}.yaml"]
                break
    return load_config(paths, args.overrides)


def _progress(args: argparse.Namespace) -> bool:
    return not getattr(args, "quiet", False)


def _run_data_download(args: argparse.Namespace) -> None:
    from fsanet.data.download import download_dataset

    if args.name == "synthetic":
        raise ValueError(
            "the synthetic set is generated, not downloaded: run `fsanet data prepare synthetic`"
        )
    cfg = _data_config(args)
    targets = download_dataset(
        args.name, cfg.data.download, args.root, args.from_dir, _progress(args), limits=cfg.data.extract
    )
    for target in targets:
        print(f"{args.name}: extracted into {target}")


def _run_data_verify(args: argparse.Namespace) -> None:
    from fsanet.data.download import clear_recorded, verify_archives

    if args.name == "synthetic":
        raise ValueError("the synthetic set is generated, not downloaded: there are no archives to verify")
    cfg = _data_config(args)
    if args.clear:
        gone = clear_recorded(args.name, cfg.data.download, args.root, args.archive)
        print(
            f"{args.name}: forgot the self-recorded digest of {', '.join(gone)}"
            if gone
            else f"{args.name}: no self-recorded digest to forget"
        )
        return
    rows = verify_archives(args.name, cfg.data.download, args.root, args.archive, _progress(args))
    for row in rows:
        print(f"{row.archive}: {row.status} ({row.detail})")
    bad = [row.archive for row in rows if row.status == "mismatch"]
    if bad:
        print(
            f"fsanet data verify: error: {len(bad)} archive(s) do not match their checksum: {', '.join(bad)}",
            file=sys.stderr,
        )
        raise SystemExit(1)


def _run_data_prepare(args: argparse.Namespace) -> None:
    cfg = _data_config(args)
    if args.name == "synthetic":
        from fsanet.data.synthetic import prepare_synthetic

        root = prepare_synthetic(
            args.root / "synthetic",
            cfg.data,
            processes=args.workers or None,
            force=args.force,
            progress=_progress(args),
        )
        if args.marker:
            from fsanet.io import read_json, write_json

            write_json(
                args.marker, {"dataset": "synthetic", "root": str(root), **read_json(root / "READY.json")}
            )
        print(f"synthetic: ready in {root}")
        return
    from fsanet.data.prepare import prepare_dataset

    summary = prepare_dataset(
        args.name,
        args.root,
        workers=args.workers,
        check_split_sizes=cfg.data.check_split_sizes,
        progress=_progress(args),
        force=args.force,
    )
    if args.marker:
        from fsanet.io import write_json

        write_json(args.marker, {"dataset": args.name, **summary})
    splits = ", ".join(f"{k} {v}" for k, v in summary.get("splits", {}).items())
    print(f"{args.name}: prepared ({splits}; {summary.get('converted', 0)} files converted)")


def _run_data_stats(args: argparse.Namespace) -> None:
    from fsanet.data.prepare import dataset_stats

    for split, st in dataset_stats(args.name, args.root, args.split, _progress(args)).items():
        classes = st["classes"]
        total = sum(classes.values()) or 1
        unit = "objects" if args.name == "coco" else "pixels"
        print(
            f"{args.name}/{split}: {st['samples']} samples, {sum(classes.values())} labelled {unit}"
            + (f", {st['ignore']} ignored" if "ignore" in st else "")
        )
        width = max(len(c) for c in classes)
        for k, (cls, count) in enumerate(classes.items()):
            print(f"  {k:3d} {cls:<{width}} {count:>14d} {100 * count / total:7.3f}%")


def _run_data_show(args: argparse.Namespace) -> None:
    from fsanet.data.prepare import show_samples

    print(f"{args.name}: wrote {show_samples(args.name, args.root, args.out, args.split, args.n)}")


class _IntermixedParser(argparse.ArgumentParser):
    """Lets ``key=value`` overrides and options come in any order (``fsanet train -c F k=v --out-dir D``).

    Every parser of the CLI is one (``add_subparsers`` gives subcommands their parent's class); a parser
    with subcommands of its own parses as argparse does, since intermixed parsing cannot dispatch them.
    """

    _inner = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inner or self._subparsers is not None:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def _add_train(sub: argparse._SubParsersAction) -> None:
    """`fsanet train` and `fsanet mlflow init` (engine)."""
    p = sub.add_parser(
        "train",
        help="train (or resume) one model",
        description="Iteration-based training (mmseg protocol). Rerunning the same command resumes from "
        "the newest checkpoint in --out-dir. Multi-GPU: torchrun --nproc-per-node N -m fsanet.cli train ...",
    )
    _config_args(p)
    p.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="run folder (default: results/runs/<model>_<dataset>_s<seed>)",
    )
    p.add_argument(
        "--eval-out",
        type=Path,
        default=None,
        metavar="DIR",
        help="then evaluate the final model on the val split in this process, writing the reports "
        "`fsanet eval --checkpoint <run>/model.pt --out-dir DIR` would write (saves a start-up)",
    )
    p.set_defaults(handler=_run_train)

    mlflow = sub.add_parser("mlflow", help="MLflow store helpers").add_subparsers(dest="what", required=True)
    p = mlflow.add_parser(
        "init",
        help="create the store, experiment and a study's parent run (once, before parallel jobs)",
        description="Creates the tracking store (avoiding the fresh-SQLite migration race of parallel "
        "jobs), the experiment and the study's parent run, and writes a marker JSON with the parent run id; "
        "runs started with tracking.study_marker=MARKER become its children.",
    )
    p.add_argument("--experiment", required=True, help="experiment name, e.g. fsanet/ablation-band")
    p.add_argument("--study", required=True, help="name of the parent run")
    p.add_argument("--out", required=True, type=Path, metavar="MARKER.json", help="marker file to write")
    p.add_argument(
        "--uri",
        default=None,
        help="tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db at the project root)",
    )
    p.set_defaults(handler=_run_mlflow_init)
    p = mlflow.add_parser(
        "relocate",
        help="after moving or copying mlflow.db with its mlruns/, point its artifact locations there",
        description="A local store keeps absolute file:// artifact locations. After moving mlflow.db "
        "together with the mlruns/ folder beside it, this rewrites the locations under the new folder.",
    )
    p.add_argument("db", type=Path, help="the moved mlflow.db")
    p.set_defaults(handler=_run_mlflow_relocate)
    p = mlflow.add_parser(
        "publish",
        help="log a finished study's summary, findings, tables and plots on its parent run",
        description="Reopens the study's parent run named by the marker of `fsanet mlflow init`, logs the "
        "per-group mIoU (mean, std, n) of summary.json and the findings' verdict counts as metrics, and the "
        "files as artifacts, then marks the run FINISHED.",
    )
    p.add_argument(
        "--marker", required=True, type=Path, metavar="MARKER.json", help="written by `fsanet mlflow init`"
    )
    p.add_argument("--summary", required=True, type=Path, help="results/metrics/summary.json")
    p.add_argument(
        "--findings", type=Path, default=None, metavar="JSON", help="`fsanet tables findings --json` output"
    )
    p.add_argument(
        "--artifact",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        dest="artifacts",
        help="a table or plot to log (repeatable)",
    )
    p.add_argument("--out", type=Path, default=None, metavar="JSON", help="receipt to write")
    p.set_defaults(handler=_run_mlflow_publish)
    p = mlflow.add_parser(
        "sync",
        help="upload runs kept offline (<run dir>/mlflow_offline/) into a store",
        description="A run whose store was unreachable or failed keeps its params, metrics, tags and "
        "artifacts "
        "under <run dir>/mlflow_offline/. This uploads every such copy in or below the given folders (a "
        "training before its evaluations): into the run it was logging to if the store has it, else into a "
        "new run nested under its training or study run; only what the run lacks is added, and the copy is "
        "marked synced, so running it again adds nothing. Credentials: MLFLOW_TRACKING_USERNAME/PASSWORD.",
    )
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders to search")
    p.add_argument(
        "--uri",
        default=None,
        help="the store (default: the one each copy names, else $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db at the project root); a SQLite store must exist",
    )
    p.set_defaults(handler=_run_mlflow_sync)


def _run_train(args: argparse.Namespace) -> None:
    import os

    from fsanet.config import load_config
    from fsanet.engine.train import NonFiniteLossError, default_run_name, train

    cfg = load_config(args.config, args.overrides)
    out_dir = args.out_dir or Path("results/runs") / default_run_name(cfg)
    try:
        result = train(cfg, out_dir)
    except NonFiniteLossError as err:
        raise SystemExit(f"fsanet train: error: {err}") from None
    if int(os.environ.get("RANK", "0")) != 0:  # one line and one evaluation per run, not per torchrun process
        return
    loss = "n/a" if result.final_loss is None else f"{result.final_loss:.4f}"
    print(f"train: {result.iterations} iterations, final loss {loss}; model: {result.model_path}")
    if args.eval_out is not None:
        from fsanet.engine.evaluate import eval_config, evaluate

        _print_eval(evaluate(eval_config(result.model_path), result.model_path, args.eval_out), args.eval_out)


def _run_mlflow_init(args: argparse.Namespace) -> None:
    from fsanet.tracking import TrackingError, init_study

    try:
        marker = init_study(args.experiment, args.study, args.out, uri=args.uri)
    except TrackingError as err:
        raise SystemExit(f"fsanet mlflow init: error: {err}") from None
    print(
        f"mlflow: study '{marker['study']}' parent run {marker['parent_run_id']} "
        f"in '{marker['experiment']}' at {marker['tracking_uri']}; marker {args.out}"
    )


def _run_mlflow_relocate(args: argparse.Namespace) -> None:
    from fsanet.tracking import relocate_store

    counts = relocate_store(args.db)
    print(
        f"mlflow relocate: {counts['experiments']} experiment and {counts['runs']} run locations now under "
        f"{args.db.resolve().parent / 'mlruns'}"
    )


def _run_mlflow_sync(args: argparse.Namespace) -> None:
    from fsanet.tracking import TrackingError, sync_offline

    try:
        receipts = sync_offline(args.run_dirs, uri=args.uri)
    except TrackingError as err:
        raise SystemExit(f"fsanet mlflow sync: error: {err}") from None
    for r in receipts:
        print(
            f"mlflow sync: {r['folder']} -> {'new' if r['created'] else 'existing'} run {r['run_id']} "
            f"({r['status']}) at {r['tracking_uri']}: added {r['params']} params, {r['metrics']} metric "
            f"points, {r['tags']} tags, {r['artifacts']} artifacts"
        )
    if not receipts:
        print("mlflow sync: no offline copies (mlflow_offline/run.json) found")


def _run_mlflow_publish(args: argparse.Namespace) -> None:
    from fsanet.publish import publish_study

    r = publish_study(args.marker, args.summary, args.artifacts, args.findings, args.out)
    print(
        f"mlflow: published {r['metrics']} metrics and {len(r['artifacts'])} files to run "
        f"{r['parent_run_id']} "
        f"in '{r['experiment']}'" + (f" (offline: {r['offline']})" if r["offline"] else "")
    )


def _add_eval(sub: argparse._SubParsersAction) -> None:
    """`fsanet eval` (engine)."""
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint: mIoU/mAcc/aAcc, tables, confusion matrix, examples",
        description="Evaluates --checkpoint with the config stored in it, updated by --config files and "
        "key=value overrides, e.g. eval.eval_band=[0,8,0,8] (band truncation without retraining), "
        "eval.mode=slide, eval.scales=[0.5,0.75,1.0,1.25,1.5,1.75] eval.flip=true.",
    )
    p.add_argument(
        "--checkpoint", required=True, type=Path, metavar="PATH", help="model.pt or checkpoints/iter_N.pt"
    )
    _config_args(p)
    p.add_argument(
        "--out-dir",
        type=str,
        default=None,
        metavar="DIR",
        help="report folder (default: <run dir>/eval/<split>[_band…][_slide<crop>s<stride>]"
        "[_ms<scales>][_flip]); with several --band it must contain {band}, which each band's "
        "text replaces",
    )
    p.add_argument(
        "--band",
        action="append",
        default=[],
        metavar="B",
        dest="bands",
        help="truncation band: n (the n×n band [0,n,0,n]) or none; repeatable, to evaluate one "
        "checkpoint at several bands in one process (overrides eval.eval_band)",
    )
    p.set_defaults(handler=_run_eval)


def _band_arg(text: str) -> list[int] | None:
    if text == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"--band {text!r}: expected a positive integer n (the n×n band) or 'none'")
    return [0, int(text), 0, int(text)]


def _print_eval(m: dict, out_dir: Path | str) -> None:
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    if m.get("task") == "instances":
        print(
            f"eval: box AP {fmt(m['box_AP'])}  mask AP {fmt(m['mask_AP'])}  context mask AP "
            f"{fmt(m['context_mask_AP'])} ({m['num_images']} images); reports in {out_dir}"
        )
        return
    print(
        f"eval: mIoU {fmt(m['mIoU'])}  mAcc {fmt(m['mAcc'])}  aAcc {fmt(m['aAcc'])} "
        f"({m['num_images']} images); reports in {out_dir}"
    )


def _run_eval(args: argparse.Namespace) -> None:
    from fsanet.engine.evaluate import default_eval_dir, eval_config, evaluate, evaluate_bands, with_eval_band

    cfg = eval_config(args.checkpoint, args.config, args.overrides)
    if not args.bands:
        out_dir = Path(args.out_dir) if args.out_dir else default_eval_dir(args.checkpoint, cfg)
        _print_eval(evaluate(cfg, args.checkpoint, out_dir), out_dir)
        return
    if len(args.bands) != len(set(args.bands)):
        raise ValueError(f"--band: each band once, got {' '.join(args.bands)}")
    if args.out_dir is not None and len(args.bands) > 1 and "{band}" not in args.out_dir:
        raise ValueError(
            f"--out-dir {args.out_dir!r}: with several --band it must contain {{band}}, e.g. "
            "results/runs/.../eval/{band}"
        )
    runs = []
    for text in args.bands:
        band = _band_arg(text)
        if args.out_dir is not None:
            out_dir = Path(args.out_dir.replace("{band}", text))
        else:
            out_dir = default_eval_dir(args.checkpoint, with_eval_band(cfg, band))
        runs.append((band, out_dir))
    for (_, out_dir), m in zip(runs, evaluate_bands(cfg, args.checkpoint, runs)):
        _print_eval(m, out_dir)


def build_parser() -> argparse.ArgumentParser:
    from fsanet import __version__

    parser = _IntermixedParser(
        prog="fsanet",
        description="FsaNet study: frequency self-attention and its peers for semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"fsanet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_data, _add_train, _add_eval, _add_bench, _add_tables, _add_plots):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else args.verbose)
    try:
        args.handler(args)
    except USER_ERRORS as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"fsanet {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fsanet: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
