rule evaluate:
    input:
        model=f"{RUNS}/model.pt",
    output:
        metrics=f"{RUNS}/eval/{{ev}}/metrics.json",
    log:
        "logs/eval/{dataset}/{model}/band~{band}/mode~{mode}/seed~{seed}/{ev}.log",
    benchmark:
        "benchmarks/eval/{dataset}/{model}/band~{band}/mode~{mode}/seed~{seed}/{ev}.tsv"
    wildcard_constraints:
        band=r"none|full|\d+",
        mode=r"none|dot|linsoftmax",
        seed=r"\d+",
        ev=r"none|full|\d+",
    conda:
        "../../environment.yml"
    threads: config["train_threads"]
    resources:
        gpu=config["gpus_per_job"],
    params:
        code=CODE_HASH,
        overrides=eval_overrides,
        out_dir=subpath(output.metrics, parent=True),
    shell:
        "fsanet -q eval --checkpoint {input.model} --out-dir {params.out_dir} {params.overrides} > {log} 2>&1"
