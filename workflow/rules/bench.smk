rule bench_attention:
    input:
        params=config["bench_params"],
    output:
        "results/bench/attention.json",
    log:
        "logs/bench/attention.log",
    benchmark:
        "benchmarks/bench/attention.tsv"
    conda:
        "../../environment.yml"
    threads: workflow.cores
    params:
        code=CODE_HASH,
        overrides=quoted(config.get("bench_overrides", [])),
    shell:
        "fsanet bench attention --config {input.params} --out {output} {params.overrides} > {log} 2>&1"
