localrules:
    mlflow_init,


rule mlflow_init:
    output:
        STUDY_MARKER,
    log:
        study_path(f"logs/mlflow/{config['study']}.log"),
    conda:
        "../../environment.yml"
    params:
        experiment=config["experiment"],
        study=config["study"],
    shell:
        "fsanet -q mlflow init --experiment {params.experiment} --study {params.study} --out {output} > {log} 2>&1"


rule train:
    input:
        data=lambda wc: prepared_marker(wc.dataset),
        study=STUDY_MARKER,
    output:
        model=f"{RUNS}/model.pt",
        info=f"{RUNS}/run_info.json",
        metrics=f"{RUNS}/eval/none/metrics.json",  # the final model's evaluation, in the same process
    log:
        study_path("logs/train/{dataset}/{model}/band~{band}/mode~{mode}/seed~{seed}.log"),
    benchmark:
        study_path("benchmarks/train/{dataset}/{model}/band~{band}/mode~{mode}/seed~{seed}.tsv")
    wildcard_constraints:
        band=r"none|full|\d+",
        mode=r"none|dot|linsoftmax",
        seed=r"\d+",
    conda:
        "../../environment.yml"
    threads: config["train_threads"] * train_procs()
    resources:
        gpu=config["gpus_per_job"],
    params:
        code=CODE_HASH,
        launcher=train_launcher(),
        configs=fsanet_configs,
        overrides=train_overrides,
        out_dir=subpath(output.model, parent=True),
        eval_dir=subpath(output.metrics, parent=True),
    shell:
        "{params.launcher} -q train {params.configs} --out-dir {params.out_dir} --eval-out {params.eval_dir} "
        "{params.overrides} > {log} 2>&1"
