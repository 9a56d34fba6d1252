rule table_efficiency:
    input:
        bench="results/bench/attention.json",
    output:
        md="results/tables/efficiency.md",
        tex="results/tables/efficiency.tex",
        csv="results/tables/efficiency.csv",
        plot="results/plots/efficiency_scaling.png",
    log:
        "logs/tables/efficiency.log",
    conda:
        "../../environment.yml"
    params:
        code=CODE_HASH,
        out_dir=subpath(output.md, parent=True),
    shell:
        "fsanet tables efficiency --bench {input.bench} --out-dir {params.out_dir} "
        "--plot {output.plot} > {log} 2>&1"
