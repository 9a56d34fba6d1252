rule prepare_data:
    output:
        marker="results/data/{dataset}.prepared.json",
    log:
        "logs/data/prepare_{dataset}.log",
    benchmark:
        "benchmarks/data/prepare_{dataset}.tsv"
    conda:
        "../../environment.yml"
    threads: workflow.cores
    params:
        code=CODE_HASH,
        root=config["data_root"],
        configs=fsanet_configs,
        download=download_step,
    shell:
        "({params.download} && fsanet -q data prepare {wildcards.dataset} --root {params.root} "
        "--workers {threads} --marker {output.marker} {params.configs}) > {log} 2>&1"
