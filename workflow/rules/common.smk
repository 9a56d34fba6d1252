"""Helpers shared by the rule files (kept apart from the rules, as `snakemake --lint` asks)."""

import shlex
from pathlib import PurePosixPath

import jsonschema
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from fsanet.data import DATASETS
from fsanet.data.instances import INSTANCE_DATASETS
from fsanet.models import MODELS, band_models
from fsanet.provenance import source_hash


def validate_profile():
    """The profile against workflow/schemas/profile.schema.yaml, as one line naming the key at fault."""
    try:
        validate(config, "../schemas/profile.schema.yaml")
    except WorkflowError as err:
        e = err.__cause__ or err.__context__  # the jsonschema error it was raised from
        if not isinstance(e, jsonschema.ValidationError):
            raise
        key = ".".join(str(p) for p in e.absolute_path)
        where = f"profile key '{key}'" if key else "profile"
        raise ValueError(
            f"{where}: {e.message} (see workflow/schemas/profile.schema.yaml)"
        ) from None


validate_profile()

# Where this study writes its results/, logs/, benchmarks/ and metrics/: the project root for the
# default study, studies/<study> for any other (or the profile's `study_dir`), so that two profiles
# never write the same file. data_root and the MLflow store stay shared.
STUDY_DIR = config.get("study_dir") or (
    "." if config["study"] == "default" else f"studies/{config['study']}"
)
_study_dir = PurePosixPath(STUDY_DIR)
if _study_dir.is_absolute() or ".." in _study_dir.parts or str(_study_dir) != STUDY_DIR:
    raise ValueError(
        f"profile key 'study_dir': {STUDY_DIR!r} must be '.' or a relative folder without '..' "
        "and without a trailing '/', e.g. studies/transformers"
    )


def study_path(path):
    """`path` (results/…, logs/…, benchmarks/… or metrics/…) inside the profile's `study_dir`."""
    return path if STUDY_DIR == "." else f"{STUDY_DIR}/{path}"


# the study's MLflow parent-run marker (written once by rule mlflow_init, read by every job)
STUDY_MARKER = study_path(f"results/mlflow/{config['study']}.json")


def check_names(key, names, known):
    """A profile's method or dataset names must be known to the package: one line naming the key."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"profile key '{key}': unknown name {unknown[0]!r}; choose from {', '.join(known)}"
        )


# what the profile's methods predict: label maps (the default) or instances (Mask R-CNN, COCO AP)
TASK = config.get("task", "semantic")
check_names("methods", config["methods"], [n for n, m in MODELS.items() if m.task == TASK])
check_names("datasets", config["datasets"], INSTANCE_DATASETS if TASK == "instances" else DATASETS)
if config.get("truncation_model"):
    check_names("truncation_model", [config["truncation_model"]], config["methods"])
if config.get("retrained_model"):
    check_names("retrained_model", [config["retrained_model"]], config["methods"])
missing = [d for d in config["datasets"] if d not in config["fsanet_configs"]]
if missing:
    raise ValueError(f"profile key 'fsanet_configs': no params files for dataset {missing[0]!r}")

BAND_MODELS = band_models()  # methods trained at a DCT band, from the heads' declarations


# Hash of the package's sources, passed as a param so that a code change under fsanet/ reruns jobs.
CODE_HASH = source_hash()
RUNS = study_path("results/runs/{dataset}/{model}/band~{band}/mode~{mode}/seed~{seed}")


def quoted(items):
    """Join fsanet CLI overrides (key=value) into one shell-quoted string, each key once: a later
    item (the profile's train_overrides/eval_overrides) replaces an earlier one (the rule's default),
    since `fsanet` refuses a key given twice."""
    last = {str(item).partition("=")[0].strip(): str(item) for item in items}
    escaped = (item.replace("'", "'\\''") for item in last.values())
    return " ".join(f"'{item}'" for item in escaped)


def prepared_marker(dataset):
    return study_path(f"results/data/{dataset}.prepared.json")


def download_step(wildcards):
    """The synthetic set is generated; every other dataset is downloaded (and checksummed) first."""
    if wildcards.dataset == "synthetic":
        return "true"
    return f"fsanet -q data download {wildcards.dataset} --root {config['data_root']} {fsanet_configs(wildcards)}"


def band_value(band):
    """The `band` wildcard as an fsanet override value: 'none' (no attention band), 'full', or n (n×n)."""
    if band in ("none", "full"):
        return "null"
    return f"[0,{int(band)},0,{int(band)}]"


def fsanet_configs(wildcards):
    return " ".join(f"--config {p}" for p in config["fsanet_configs"][wildcards.dataset])


def train_procs():
    """Processes per training: `train_procs` if set, else one per GPU of `gpus_per_job` (at least 1)."""
    return max(int(config.get("train_procs") or config["gpus_per_job"] or 1), 1)


def train_launcher():
    """`fsanet`, or torchrun with one DDP process per GPU (or CPU worker) when a training uses several."""
    n = train_procs()
    if n > 1:
        return f"torchrun --standalone --nproc-per-node {n} -m fsanet.cli"
    return "fsanet"


def train_overrides(wildcards, threads):
    per_proc = max(threads // train_procs(), 1)  # the job's threads, shared by its processes
    items = [
        f"data.name={wildcards.dataset}",
        f"model.name={wildcards.model}",
        f"train.seed={wildcards.seed}",
        f"train.threads={per_proc}",
        f"eval.threads={threads}",  # the final evaluation (train --eval-out) runs in rank 0 alone
        "train.progress=false",
        f"tracking.experiment={config['experiment']}",
        f"tracking.study_marker={STUDY_MARKER}",
        f"tracking.run_name={wildcards.model}_b{wildcards.band}_{wildcards.mode}_{wildcards.dataset}_s{wildcards.seed}",
    ]
    if wildcards.model in BAND_MODELS:
        items.append(f"model.attention.band={band_value(wildcards.band)}")
        items.append(f"model.attention.mode={wildcards.mode}")
    return quoted(
        items + list(config.get("train_overrides", [])) + list(config.get("eval_overrides", []))
    )


def eval_overrides(wildcards, threads):
    items = [
        f"eval.threads={threads}",
        f"tracking.experiment={config['experiment']}",
        f"tracking.study_marker={STUDY_MARKER}",
    ]
    return quoted(items + list(config.get("eval_overrides", [])))


def method_band(model):
    return config["fsanet_default_band"] if model in BAND_MODELS else "none"


def method_modes(model):
    """FSA kernels trained in the method comparison; 'none' for heads without one."""
    return config["fsanet_modes"] if model in BAND_MODELS else ["none"]


def run_dir(ds, model, band, mode, seed):
    return RUNS.format(dataset=ds, model=model, band=band, mode=mode, seed=seed)


def truncated_run_dir(ds, seed):
    """A run of `truncation_model` to truncate: a band model (FsaNet) from its full-band runs in
    `fsanet_band_mode`, any other model from its only runs."""
    t = config["truncation_model"]
    if t in BAND_MODELS:
        return run_dir(ds, t, "full", config["fsanet_band_mode"], seed)
    return run_dir(ds, t, "none", "none", seed)


def study_evaluations():
    """Every metrics.json of the study: methods (both FSA modes) × seeds, FsaNet bands (band mode)
    × band seeds, and the truncation bands of each band seed of the truncated model."""
    out = set()
    for ds in config["datasets"]:
        for m in config["methods"]:
            for mode in method_modes(m):
                for s in config["method_seeds"]:
                    out.add(f"{run_dir(ds, m, method_band(m), mode, s)}/eval/none/metrics.json")
        for m in sorted(BAND_MODELS & set(config["methods"])):
            for b in config["fsanet_bands"]:
                for s in config["band_seeds"]:
                    out.add(
                        f"{run_dir(ds, m, b, config['fsanet_band_mode'], s)}/eval/none/metrics.json"
                    )
        t = config.get("truncation_model")
        if t:
            for s in config["band_seeds"]:
                # the untruncated evaluation is the truncated series' full point
                for b in ["none"] + list(config["truncation_bands"]):
                    out.add(f"{truncated_run_dir(ds, s)}/eval/{b}/metrics.json")
    return sorted(out)


def ablation_args():
    """The band ablation's two series for `fsanet tables ablation|findings` and `plots ablation`."""
    items = ["--band-mode", config["fsanet_band_mode"]]
    if config.get("truncation_model"):
        items += ["--truncated-model", config["truncation_model"]]
    if config.get("retrained_model"):
        items += ["--retrained-model", config["retrained_model"]]
    return " ".join(shlex.quote(item) for item in items)


def training_counts():
    """Trainings per dataset: the study evaluations that come from a train job (`eval/none`)."""
    counts = {ds: 0 for ds in config["datasets"]}
    for path in study_evaluations():
        # …/results/runs/DATASET/MODEL/band~B/mode~M/seed~S/eval/BAND/metrics.json
        parts = path.split("/")
        if parts[-2:] == ["none", "metrics.json"]:
            counts[parts[-8]] += 1
    return counts


def cost_args():
    """`fsanet tables cost` options: each dataset's training count and config files."""
    items = []
    for ds, n in training_counts().items():
        items += ["--trainings", f"{ds}={n}"]
        items += ["--dataset-config", f"{ds}=" + ",".join(config["fsanet_configs"][ds])]
    return " ".join(shlex.quote(item) for item in items)


def qualitative_checkpoints(wildcards):
    """One trained model per method (first method seed): the qualitative grid's columns."""
    s = config["method_seeds"][0]
    return {
        m: f"{run_dir(wildcards.dataset, m, method_band(m), method_modes(m)[0], s)}/model.pt"
        for m in config["methods"]
    }


def qualitative_args(wildcards, input):
    return " ".join(f"--checkpoint {label}={path}" for label, path in input.items())


def study_report_files():
    """The study's tables and plots (beside summary.json and findings.md): what all_tables asks for and
    what mlflow_publish logs on the study's parent run."""
    ds = config["datasets"]
    return [
        study_path("results/tables/efficiency.md"),
        study_path("results/tables/efficiency.csv"),
        study_path("results/plots/efficiency_scaling.png"),
        study_path("results/tables/ablation.md"),
        study_path("results/tables/ablation.csv"),
        *expand(study_path("results/plots/ablation_{dataset}.png"), dataset=ds),
        *expand(study_path("results/plots/ablation_{dataset}.csv"), dataset=ds),
        *table_files("methods", ds),
        *table_files("per_class", ds),
        *expand(study_path("results/plots/qualitative_{dataset}.png"), dataset=ds),
    ]


def table_files(stem, datasets):
    return [
        study_path(f"results/tables/{stem}_{ds}.{ext}")
        for ds in datasets
        for ext in ("md", "tex", "csv")
    ]


def band_text(band):
    """The `band` wildcard as a table label: 'full' or 'nxn'."""
    return "full" if band == "full" else f"{int(band)}x{int(band)}"
