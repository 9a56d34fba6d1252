# The band truncation without retraining: one process per checkpoint evaluates it at every band of
# `truncation_bands` (the untruncated evaluation, eval/none, is written by the train rule).
if config.get("truncation_model") and config.get("truncation_bands"):

    rule evaluate_truncation:
        input:
            model=f"{RUNS}/model.pt",
        output:
            metrics=[f"{RUNS}/eval/{b}/metrics.json" for b in config["truncation_bands"]],
        log:
            study_path(
                "logs/eval/{dataset}/{model}/band~{band}/mode~{mode}/seed~{seed}/truncation.log"
            ),
        benchmark:
            study_path(
                "benchmarks/eval/{dataset}/{model}/band~{band}/mode~{mode}/seed~{seed}/truncation.tsv"
            )
        wildcard_constraints:
            band=r"none|full|\d+",
            mode=r"none|dot|linsoftmax",
            seed=r"\d+",
        conda:
            "../../environment.yml"
        threads: config["train_threads"]
        resources:
            gpu=config["gpus_per_job"],
        params:
            code=CODE_HASH,
            bands=" ".join(f"--band {b}" for b in config["truncation_bands"]),
            overrides=eval_overrides,
            # a function, so that Snakemake leaves the {band} placeholder for fsanet eval to fill
            out_dir=lambda wc: f"{run_dir(wc.dataset, wc.model, wc.band, wc.mode, wc.seed)}/eval/{{band}}",
        shell:
            "fsanet -q eval --checkpoint {input.model} {params.bands} --out-dir '{params.out_dir}' "
            "{params.overrides} > {log} 2>&1"
