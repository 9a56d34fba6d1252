rule table_efficiency:
    input:
        bench=study_path("results/bench/attention.json"),
    output:
        md=study_path("results/tables/efficiency.md"),
        tex=study_path("results/tables/efficiency.tex"),
        csv=study_path("results/tables/efficiency.csv"),
        plot=study_path("results/plots/efficiency_scaling.png"),
    log:
        study_path("logs/tables/efficiency.log"),
    conda:
        "../../environment.yml"
    params:
        code=CODE_HASH,
        out_dir=subpath(output.md, parent=True),
    shell:
        "fsanet tables efficiency --bench {input.bench} --out-dir {params.out_dir} "
        "--plot {output.plot} > {log} 2>&1"


rule summary:
    input:
        study_evaluations(),
    output:
        study_path("results/metrics/summary.json"),
    log:
        study_path("logs/tables/summary.log"),
    conda:
        "../../environment.yml"
    params:
        code=CODE_HASH,
    shell:
        "fsanet -q tables summary --metrics {input} --out {output} > {log} 2>&1"


rule table_ablation:
    input:
        summary=study_path("results/metrics/summary.json"),
    output:
        md=study_path("results/tables/ablation.md"),
        tex=study_path("results/tables/ablation.tex"),
        csv=study_path("results/tables/ablation.csv"),
    log:
        study_path("logs/tables/ablation.log"),
    conda:
        "../../environment.yml"
    params:
        code=CODE_HASH,
        out_dir=subpath(output.md, parent=True),
        series=ablation_args(),
    shell:
        "fsanet -q tables ablation --summary {input.summary} --out-dir {params.out_dir} "
        "{params.series} > {log} 2>&1"


rule table_methods:
    input:
        summary=study_path("results/metrics/summary.json"),
        costs=study_path("results/bench/models_{dataset}.json"),
    output:
        md=study_path("results/tables/methods_{dataset}.md"),
        tex=study_path("results/tables/methods_{dataset}.tex"),
        csv=study_path("results/tables/methods_{dataset}.csv"),
        per_class_md=study_path("results/tables/per_class_{dataset}.md"),
        per_class_tex=study_path("results/tables/per_class_{dataset}.tex"),
        per_class_csv=study_path("results/tables/per_class_{dataset}.csv"),
    log:
        study_path("logs/tables/methods_{dataset}.log"),
    conda:
        "../../environment.yml"
    params:
        code=CODE_HASH,
        out_dir=subpath(output.md, parent=True),
    shell:
        "(fsanet -q tables methods --summary {input.summary} --costs {input.costs} "
        "--dataset {wildcards.dataset} --out-dir {params.out_dir} && "
        "fsanet -q tables per-class --summary {input.summary} --dataset {wildcards.dataset} "
        "--out-dir {params.out_dir}) > {log} 2>&1"


rule bench_models:
    input:
        data=lambda wc: prepared_marker(wc.dataset),
    output:
        study_path("results/bench/models_{dataset}.json"),
    log:
        study_path("logs/bench/models_{dataset}.log"),
    conda:
        "../../environment.yml"
    threads: 1
    params:
        code=CODE_HASH,
        configs=fsanet_configs,
        overrides=lambda wc, threads: quoted(
            [
                f"bench.models.names=[{','.join(config['methods'])}]",
                f"bench.models.bands=[{','.join(config['fsanet_bands'])}]",
                f"bench.models.threads={threads}",
            ]
        ),
    shell:
        "fsanet -q bench models {params.configs} {params.overrides} --out {output} > {log} 2>&1"


rule plot_ablation:
    input:
        summary=study_path("results/metrics/summary.json"),
    output:
        png=study_path("results/plots/ablation_{dataset}.png"),
        csv=study_path("results/plots/ablation_{dataset}.csv"),
    log:
        study_path("logs/plots/ablation_{dataset}.log"),
    conda:
        "../../environment.yml"
    params:
        code=CODE_HASH,
        series=ablation_args(),
    shell:
        "fsanet -q plots ablation --summary {input.summary} --dataset {wildcards.dataset} "
        "{params.series} --out {output.png} --csv {output.csv} > {log} 2>&1"


rule plot_qualitative:
    input:
        unpack(qualitative_checkpoints),
    output:
        study_path("results/plots/qualitative_{dataset}.png"),
    log:
        study_path("logs/plots/qualitative_{dataset}.log"),
    conda:
        "../../environment.yml"
    threads: 1
    params:
        code=CODE_HASH,
        checkpoints=qualitative_args,
    shell:
        "fsanet -q plots qualitative {params.checkpoints} --out {output} -n 4 > {log} 2>&1"


rule findings:
    input:
        summary=study_path("results/metrics/summary.json"),
        bench=study_path("results/bench/attention.json"),
    output:
        md=study_path("results/tables/findings.md"),
        json=study_path("results/tables/findings.json"),
    log:
        study_path("logs/tables/findings.log"),
    conda:
        "../../environment.yml"
    params:
        code=CODE_HASH,
        band=lambda wc: band_text(config["fsanet_default_band"]),
        series=ablation_args(),
    shell:
        "fsanet -q tables findings --summary {input.summary} --bench {input.bench} --out {output.md} "
        "--json {output.json} --default-band {params.band} {params.series} > {log} 2>&1"


rule study_metrics:
    input:
        summary=study_path("results/metrics/summary.json"),
        findings=study_path("results/tables/findings.json"),
    output:
        study_path("metrics/study.json"),
    log:
        study_path("logs/tables/study_metrics.log"),
    conda:
        "../../environment.yml"
    params:
        code=CODE_HASH,
    shell:
        "fsanet -q tables metrics --summary {input.summary} --findings {input.findings} --out {output} "
        "> {log} 2>&1"


rule mlflow_publish:
    input:
        marker=STUDY_MARKER,
        summary=study_path("results/metrics/summary.json"),
        findings=study_path("results/tables/findings.json"),
        files=[
            study_path("results/tables/findings.md"),
            study_path("metrics/study.json"),
            *study_report_files(),
        ],
    output:
        study_path(f"results/mlflow/{config['study']}.published.json"),
    log:
        study_path(f"logs/mlflow/{config['study']}.publish.log"),
    conda:
        "../../environment.yml"
    params:
        code=CODE_HASH,
        files=lambda wc, input: " ".join(f"--artifact {f}" for f in input.files),
    shell:
        "fsanet -q mlflow publish --marker {input.marker} --summary {input.summary} "
        "--findings {input.findings} {params.files} --out {output} > {log} 2>&1"


rule cost_table:
    """Estimated GPU-hours of the study's trainings (not part of all_tables):
    `snakemake cost_table --configfile params/profiles/paper.yaml`."""
    output:
        md=study_path("results/tables/cost.md"),
        tex=study_path("results/tables/cost.tex"),
        csv=study_path("results/tables/cost.csv"),
    log:
        study_path("logs/tables/cost.log"),
    conda:
        "../../environment.yml"
    params:
        code=CODE_HASH,
        args=cost_args(),
        gpus=config["gpus_per_job"],
        profile=config["profile"],
        out_dir=subpath(output.md, parent=True),
    shell:
        "fsanet -q tables cost {params.args} --gpus-per-job {params.gpus} --profile {params.profile} "
        "--out-dir {params.out_dir} > {log} 2>&1"
