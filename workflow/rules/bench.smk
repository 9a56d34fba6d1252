rule bench_attention:
    input:
        params=[config["bench_params"]] if config.get("bench_params") else [],
    output:
        study_path("results/bench/attention.json"),
    log:
        study_path("logs/bench/attention.log"),
    benchmark:
        study_path("benchmarks/bench/attention.tsv")
    conda:
        "../../environment.yml"
    threads: workflow.cores
    params:
        code=CODE_HASH,
        configs=lambda wc, input: " ".join(f"--config {f}" for f in input.params),
        overrides=quoted(config.get("bench_overrides", [])),
    shell:
        "fsanet bench attention {params.configs} --out {output} {params.overrides} > {log} 2>&1"
