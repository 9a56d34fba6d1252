rule prepare_data:
    output:
        marker=study_path("results/data/{dataset}.prepared.json"),
    log:
        study_path("logs/data/prepare_{dataset}.log"),
    benchmark:
        study_path("benchmarks/data/prepare_{dataset}.tsv")
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
