"""The fsanet study as one DAG. `snakemake --cores 8 all_tables` (or `make tables`) runs it.

Profiles of the study are params files: `--configfile params/profiles/NAME.yaml` after the target.
Machine settings (local GPU limits, SLURM) are Snakemake profiles under profiles/.
"""


configfile: "params/profiles/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/tables.smk"


rule all_tables:
    default_target: True
    input:
        "results/tables/efficiency.md",
        "results/tables/efficiency.tex",
        "results/tables/efficiency.csv",
        "results/plots/efficiency_scaling.png",
