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
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", action="append", default=[], metavar="YAML",
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


def _run_bench_attention(args: argparse.Namespace) -> None:
    from fsanet.config import load_config

    cfg = load_config(args.config, args.overrides)
    from fsanet.bench import run_attention_benchmark

    run_attention_benchmark(cfg.bench, args.out)


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------
def _add_tables(sub: argparse._SubParsersAction) -> None:
    tables = sub.add_parser("tables", help="render result files as Markdown/LaTeX/CSV tables and plots")
    what = tables.add_subparsers(dest="what", required=True)
    p = what.add_parser("efficiency", help="T1: efficiency against regular self-attention (non-local)")
    p.add_argument("--bench", required=True, type=Path, metavar="JSON", help="output of `fsanet bench attention`")
    p.add_argument("--out-dir", type=Path, default=Path("results/tables"), help="folder for efficiency.{md,tex,csv}")
    p.add_argument(
        "--plot", type=Path, default=Path("results/plots/efficiency_scaling.png"), help="log-log plot path"
    )
    p.set_defaults(handler=_run_tables_efficiency)


def _run_tables_efficiency(args: argparse.Namespace) -> None:
    from fsanet.tables import efficiency_plot, efficiency_tables

    efficiency_tables(args.bench, args.out_dir)
    efficiency_plot(args.bench, args.plot)


# --------------------------------------------------------------------------------------------
# data, train, eval: filled in by the datasets and engine work
# --------------------------------------------------------------------------------------------
def _add_data(sub: argparse._SubParsersAction) -> None:
    """`fsanet data {download,prepare,stats,show}` (datasets)."""


def _add_train(sub: argparse._SubParsersAction) -> None:
    """`fsanet train` (engine)."""


def _add_eval(sub: argparse._SubParsersAction) -> None:
    """`fsanet eval` (engine)."""


def build_parser() -> argparse.ArgumentParser:
    from fsanet import __version__

    parser = argparse.ArgumentParser(
        prog="fsanet",
        description="FsaNet study: frequency self-attention and its peers for semantic segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"fsanet {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_data, _add_train, _add_eval, _add_bench, _add_tables):
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
