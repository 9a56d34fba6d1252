# The instance-segmentation study (profiles with `task: instances`): Mask R-CNN ± a res4 attention
# block, trained by the train rule like every other method, scored with COCO AP in the same process.
rule coco_tables:
    input:
        study_evaluations(),
    output:
        md=expand(study_path("results/tables/coco_{dataset}.md"), dataset=config["datasets"]),
        csv=expand(study_path("results/tables/coco_{dataset}.csv"), dataset=config["datasets"]),
        tex=expand(study_path("results/tables/coco_{dataset}.tex"), dataset=config["datasets"]),
        findings=study_path("results/tables/coco_findings.md"),
        summary=study_path("results/metrics/coco.json"),
    log:
        study_path("logs/tables/coco.log"),
    conda:
        "../../environment.yml"
    params:
        code=CODE_HASH,
        out_dir=subpath(output.findings, parent=True),
    shell:
        "fsanet -q tables coco --metrics {input} --out-dir {params.out_dir} --summary {output.summary} "
        "> {log} 2>&1"
