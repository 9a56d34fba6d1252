"""The fsanet study as one DAG. `snakemake --cores 8 all_tables` (or `make tables`) runs it.

Chain: download/prepare data -> mlflow_init (once) -> train the matrix (methods x bands x seeds)
-> evaluate (incl. band truncation without retraining) -> summary -> tables and plots; the
efficiency benchmark feeds table T1. Study profiles are params files chosen with
`--configfile params/profiles/NAME.yaml` (after the target); machine settings (GPU limits, SLURM)
are Snakemake profiles under profiles/.
"""


configfile: "params/profiles/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/tables.smk"


rule all_tables:
    default_target: True
    input:
        "results/tables/efficiency.md",
        "results/plots/efficiency_scaling.png",
        "results/metrics/summary.json",
        "results/tables/ablation.md",
        "results/tables/findings.md",
        "results/plots/ablation.png",
        table_files("methods", config["datasets"]),
        table_files("per_class", config["datasets"]),
        expand("results/plots/qualitative_{dataset}.png", dataset=config["datasets"]),
