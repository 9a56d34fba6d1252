"""The fsanet study as one DAG. `snakemake --cores 8 all_tables` (or `make tables`) runs it.

Chain: download/prepare data -> mlflow_init (once) -> train the matrix (methods x bands x seeds; each
job evaluates its model) -> band truncation without retraining -> summary -> tables, plots and
findings -> mlflow_publish (the results on the study's parent run); the efficiency benchmark feeds
table T1. Study profiles are params files chosen with
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
include: "workflow/rules/coco.smk"


rule all_tables:
    default_target: True
    input:
        # an instance-segmentation profile (task: instances) ends in its COCO AP table
        (
            [
                study_path("results/tables/coco_findings.md"),
                study_path("results/metrics/coco.json"),
            ]
            if TASK == "instances"
            else [
                study_path("results/metrics/summary.json"),
                study_path("results/tables/findings.md"),
                study_path("metrics/study.json"),
                study_report_files(),
                study_path(f"results/mlflow/{config['study']}.published.json"),
            ]
        ),
