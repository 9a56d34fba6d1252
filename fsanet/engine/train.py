"""``fsanet train``: iteration-based training with the mmseg protocol, resumable bit for bit.

One call of :func:`train` runs (or resumes) one training run in ``out_dir``:

* SGD (lr 0.01, momentum 0.9, weight decay 5e-4) with the per-iteration poly schedule
  (``fsanet.engine.schedule``); CE with ignore 255 (mmseg mean) or OHEM on the main output, plus
  ``model.aux_weight`` × CE on the auxiliary output; autocast (bf16/fp16 + GradScaler) on CUDA only.
* ``torchrun`` → DDP (NCCL on GPUs with SyncBN, gloo on CPU); ``train.batch_size`` is global.
* Every ``train.ckpt_interval`` iterations an atomic checkpoint holds model, optimizer, scaler,
  iteration, every rank's RNG states and the training log. The data stream is a pure function of
  ``(seed, iteration)`` (``fsanet.engine.loader``), so rerunning the same command after a crash
  resumes from the newest checkpoint and, on CPU, ends with the same bits as an uninterrupted run.
* A NaN/Inf loss stops the run with :class:`NonFiniteLossError` before anything is saved, so the
  newest checkpoint on disk is the last good state.
* Outputs: ``config.yaml`` (resolved), ``run_info.json`` (provenance, seeds, MLflow run id),
  ``train_log.json`` (loss and lr every ``log_interval`` iterations), ``checkpoints/``, and ``model.pt``
  (weights + config) for ``fsanet eval``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from fsanet.config import AmpDtype, Device, LossKind, OptimizerKind, to_container
from fsanet.engine.checkpoint import (
    checkpoint_path,
    config_diff,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from fsanet.engine.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    cleanup,
    init_distributed,
    prepare_model,
    resolve_device,
)
from fsanet.engine.loader import IterationBatchSampler, build_train_loader
from fsanet.engine.losses import cross_entropy, make_loss
from fsanet.engine.schedule import set_lr, warmup_poly_lr
from fsanet.io import write_json, write_text
from fsanet.provenance import environment
from fsanet.repro import deterministic_mode, get_rng_state, seed_everything, set_rng_state
from fsanet.tracking import Tracker, flatten

__all__ = ["NonFiniteLossError", "TrainResult", "attention_options", "run_params", "run_tags", "train"]

log = logging.getLogger(__name__)

BuildModel = Callable[[Any, int], nn.Module]
BuildDataset = Callable[..., Any]  # (cfg.data, split, train, seed=...) -> dataset

# Keys that may change between a run and its resumption without changing its numbers.
RESUME_IGNORE = ("tracking", "eval", "bench", "train.progress", "data.num_workers", "train.ckpt_interval",
                 "train.keep_ckpts")
FINAL_MODEL = "model.pt"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the newest checkpoint is the last good state."""


@dataclasses.dataclass
class TrainResult:
    out_dir: Path
    model_path: Path
    iterations: int
    final_loss: Optional[float]
    mlflow_run_id: Optional[str]
    resumed_from: Optional[int]


def attention_options(model_name: str) -> Optional[tuple[str, ...]]:
    """The ``model.attention`` options that model ``model_name`` reads (None: not a known model)."""
    from fsanet.models import MODELS

    head = MODELS.get(model_name)
    return None if head is None else tuple(head.attention_options)


def run_params(resolved: dict[str, Any]) -> dict[str, Any]:
    """The flattened config as MLflow params, without the ``model.attention`` options the model ignores
    (e.g. no ``model.attention.band`` on a non-local run), so that comparing runs shows real differences."""
    used = attention_options(str(resolved.get("model", {}).get("name")))
    prefix = "model.attention."
    return {k: v for k, v in flatten(resolved).items()
            if used is None or not k.startswith(prefix) or k[len(prefix):] in used}


def describe(cfg: DictConfig) -> dict[str, Any]:
    """What a run is about, for tags and file names: dataset, model, training band (None for a model
    without a band option), seed."""
    used = attention_options(cfg.model.name)
    band = cfg.model.attention.band if used is None or "band" in used else None
    return {
        "dataset": cfg.data.name,
        "model": cfg.model.name,
        "band": None if band is None else list(band),
        "seed": int(cfg.train.seed),
    }


def default_run_name(cfg: DictConfig) -> str:
    d = describe(cfg)
    return cfg.tracking.run_name or f"{d['model']}_{d['dataset']}_s{d['seed']}"


def run_tags(cfg: DictConfig, kind: str, device: torch.device, out_dir: Path) -> dict[str, str]:
    """MLflow tags shared by train and eval runs."""
    env = environment(device)
    d = describe(cfg)
    return {
        "fsanet.kind": kind,
        "mlflow.source.git.commit": str(env["git_sha"]),
        "git.dirty": str(env["git_dirty"]),
        "dataset": d["dataset"], "model": d["model"], "band": str(d["band"]), "seed": str(d["seed"]),
        "device": str(device), "device_name": str(env["device_name"]), "torch": env["torch"],
        "cuda": str(env["cuda"]), "host": platform.node(), "out_dir": str(out_dir),
    }


def _amp_dtype(cfg: DictConfig, device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype: only on CUDA; CPU training stays float32 whatever ``train.amp`` says."""
    amp = AmpDtype(cfg.train.amp)
    if device.type != "cuda" or amp is AmpDtype.none:
        return None
    return {AmpDtype.bf16: torch.bfloat16, AmpDtype.fp16: torch.float16}[amp]


def _make_optimizer(model: nn.Module, tc: DictConfig) -> torch.optim.Optimizer:
    """SGD with momentum and L2 weight decay (mmseg), or AdamW with decoupled weight decay.

    Parameters under a ``decode_head``/``aux_head`` module name form a second group whose learning
    rate is ``train.head_lr_mult`` times the schedule's (mmseg ``paramwise_cfg`` ``head`` lr_mult).
    """
    head, rest = [], []
    for name, param in model.named_parameters():
        (head if name.split(".")[0] in ("decode_head", "aux_head") else rest).append(param)
    groups = [{"params": rest, "lr_mult": 1.0}, {"params": head, "lr_mult": float(tc.head_lr_mult)}]
    groups = [g for g in groups if g["params"]]
    if OptimizerKind(tc.optimizer) is OptimizerKind.adamw:
        return torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
    return torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay)


def _validate(cfg: DictConfig) -> None:
    tc = cfg.train
    for key in ("max_iters", "batch_size", "log_interval", "ckpt_interval"):
        if tc[key] < 1:
            raise ValueError(f"train.{key} must be ≥ 1, got {tc[key]}")
    if tc.lr <= 0 or tc.min_lr < 0 or tc.min_lr > tc.lr:
        raise ValueError(f"need 0 ≤ train.min_lr ≤ train.lr and lr > 0, got lr={tc.lr}, min_lr={tc.min_lr}")
    if tc.warmup_iters < 0 or not 0.0 < tc.warmup_ratio <= 1.0:
        raise ValueError(f"need train.warmup_iters ≥ 0 and 0 < train.warmup_ratio ≤ 1, got "
                         f"{tc.warmup_iters} and {tc.warmup_ratio}")
    if len(tc.betas) != 2 or not all(0.0 <= b < 1.0 for b in tc.betas):
        raise ValueError(f"train.betas must be two numbers in [0, 1), got {list(tc.betas)}")
    if tc.ckpt_interval % tc.log_interval:
        # a checkpoint must close a logging window, or a resumed run would average a shorter window
        raise ValueError(
            f"train.ckpt_interval={tc.ckpt_interval} must be a multiple of train.log_interval={tc.log_interval}"
        )


def train(
    cfg: DictConfig,
    out_dir: str | Path,
    *,
    build_model: Optional[BuildModel] = None,
    build_dataset: Optional[BuildDataset] = None,
    callback: Optional[Callable[[int], None]] = None,
) -> TrainResult:
    """Train (or resume) the run described by ``cfg`` in ``out_dir``.

    Args:
        cfg: the resolved :class:`fsanet.config.Config`.
        out_dir: the run folder; a checkpoint found there is resumed.
        build_model: ``(cfg.model, num_classes) -> SegmentationModel``; default ``fsanet.models.build_model``.
        build_dataset: ``(cfg.data, split, train, seed=) -> dataset`` whose ``dataset[(index, stream)]``
            is item ``index`` augmented from stream ``stream``; default ``fsanet.data.build_dataset``.
        callback: called with the number of finished iterations after each one (tests inject faults here).

    Returns:
        Where the final model is and how the run went.

    Raises:
        NonFiniteLossError: the loss became NaN/Inf (nothing is saved past the last good checkpoint).
        ValueError: invalid settings, or ``out_dir`` holds a run with a different config.
    """
    if build_model is None:
        from fsanet.models import build_model
    if build_dataset is None:
        from fsanet.data import build_dataset
    _validate(cfg)
    out_dir = Path(out_dir)
    threads_before = torch.get_num_threads()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(Device(cfg.train.device).value, int(os.environ.get("LOCAL_RANK", 0)), "train.device")
    info = init_distributed(device.type)
    try:
        with deterministic_mode(cfg.train.deterministic, cfg.train.warn_only):
            return _Run(cfg, out_dir, device, info, build_model, build_dataset, callback).run()
    finally:
        torch.set_num_threads(threads_before)
        cleanup(info)


class _Run:
    """The state of one training process; :meth:`run` is the loop."""

    def __init__(
        self, cfg: DictConfig, out_dir: Path, device: torch.device, info: DistInfo,
        build_model: BuildModel, build_dataset: BuildDataset, callback: Optional[Callable[[int], None]],
    ) -> None:
        self.cfg, self.tc, self.out_dir, self.device, self.info = cfg, cfg.train, out_dir, device, info
        self.build_model, self.build_dataset, self.callback = build_model, build_dataset, callback
        self.resolved = to_container(cfg)
        self.run_name = default_run_name(cfg)

    # -- setup ---------------------------------------------------------------------------------
    def _resume_state(self) -> Optional[dict[str, Any]]:
        path = latest_checkpoint(self.out_dir)
        if path is None:
            return None
        state = load_checkpoint(path)
        diff = config_diff(state["config"], self.resolved, ignore=RESUME_IGNORE)
        if diff:
            raise ValueError(
                f"{self.out_dir} holds a run with a different config ({', '.join(diff[:5])}"
                f"{' …' if len(diff) > 5 else ''} differ); use another --out-dir or delete that folder"
            )
        if state["world_size"] != self.info.world_size:
            log.warning("resuming a %d-process run with %d processes: the data order is the same but RNG "
                        "streams are not, so the result will not be bit-identical",
                        state["world_size"], self.info.world_size)
        log.info("resuming from %s (iteration %d of %d)", path, state["iteration"], self.tc.max_iters)
        return state

    def _write_run_info(self, status: str, **extra: Any) -> None:
        if not self.info.is_main:
            return
        write_json(self.out_dir / "run_info.json", {
            "status": status,
            "run_name": self.run_name,
            "command": "train",
            **describe(self.cfg),
            "seeds": {"seed": self.tc.seed, "scheme": "torch/numpy/python seeded with seed+rank after "
                      "model init; sample p of the data stream drawn under sample_seed(seed, p)"},
            "world_size": self.info.world_size,
            "mlflow_run_id": self.tracker.run_id,
            "mlflow_offline": self.tracker.offline_reason,
            "deterministic": self.tc.deterministic,
            "environment": environment(self.device),
            "config": self.resolved,
            **extra,
        })

    # -- loop ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg, tc, info, device = self.cfg, self.tc, self.info, self.device
        state = self._resume_state()
        model_path = self.out_dir / FINAL_MODEL
        if state is not None and state["iteration"] >= tc.max_iters and model_path.is_file():
            log.info("%s already finished %d iterations; nothing to do", self.out_dir, state["iteration"])
            history = state["history"]
            return TrainResult(self.out_dir, model_path, state["iteration"],
                               history[-1]["loss"] if history else None, state.get("mlflow_run_id"), None)
        seed_everything(tc.seed)
        dataset = self.build_dataset(cfg.data, cfg.data.train_split, True, seed=tc.seed)
        classes = [str(c) for c in dataset.CLASSES]
        model = self.build_model(cfg.model, len(classes))
        ddp_model = prepare_model(model, device, info, tc.sync_bn, tc.find_unused_parameters)
        model = ddp_model.module if isinstance(ddp_model, nn.parallel.DistributedDataParallel) else ddp_model
        optimizer = _make_optimizer(ddp_model, tc)
        amp_dtype = _amp_dtype(cfg, device)
        scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
        loss_fn = make_loss(LossKind(tc.loss).value, tc.ohem_thresh, tc.ohem_min_kept, cfg.data.ignore_index)
        aux_weight = float(cfg.model.aux_weight)

        start, history, run_id = 0, [], None
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start, history, run_id = state["iteration"], list(state["history"]), state.get("mlflow_run_id")
            rngs = state["rng"]
            set_rng_state(rngs[min(info.rank, len(rngs) - 1)])
        else:
            seed_everything(tc.seed + info.rank)

        tags = run_tags(cfg, "train", device, self.out_dir) if info.is_main else {}
        tags["world_size"] = str(info.world_size)
        tags["deterministic"] = str(tc.deterministic)
        self.tracker = Tracker(cfg.tracking, self.out_dir, self.run_name, tags, resume_run_id=run_id,
                               active=info.is_main)
        self.tracker.log_params(run_params(self.resolved))
        if info.is_main:
            write_text(self.out_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(self.resolved)))
        self._write_run_info("running", resumed_from=start if state else None, started=_now())

        def checkpoint(it: int) -> None:
            rngs = all_gather_objects(get_rng_state(), info)
            if info.is_main:
                save_checkpoint(checkpoint_path(self.out_dir, it), {
                    "format": 1, "iteration": it, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rngs,
                    "history": history, "config": self.resolved, "classes": classes,
                    "num_classes": len(classes), "mlflow_run_id": self.tracker.run_id,
                    "world_size": info.world_size,
                })
                prune_checkpoints(self.out_dir, tc.keep_ckpts)
                write_json(self.out_dir / "train_log.json", history)
            barrier(info)

        sampler = IterationBatchSampler(len(dataset), tc.batch_size, tc.seed, start, tc.max_iters,
                                        info.rank, info.world_size)
        loader = build_train_loader(dataset, sampler, cfg.data.num_workers, tc.seed,
                                    pin_memory=device.type == "cuda")
        check_every = 1 if device.type == "cpu" else tc.log_interval
        window = torch.zeros(3, dtype=torch.float64, device=device)  # sums of loss, main, aux
        n_window, t_window = 0, time.perf_counter()
        lr = self._lr(start)
        bar = tqdm(total=tc.max_iters, initial=start, desc=self.run_name, unit="it", mininterval=1.0,
                   dynamic_ncols=True, disable=not (info.is_main and tc.progress))
        ddp_model.train()
        it = start
        t_start = time.perf_counter()
        try:
            for images, labels in loader:
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                lr = self._lr(it)
                set_lr(optimizer, lr)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    out = ddp_model(images)
                loss_main = loss_fn(out["out"], labels)
                loss_aux = (cross_entropy(out["aux"], labels, cfg.data.ignore_index)
                            if aux_weight and "aux" in out else None)
                loss = loss_main if loss_aux is None else loss_main + aux_weight * loss_aux
                window += torch.stack([loss.detach(), loss_main.detach(),
                                       loss_main.detach() * 0 if loss_aux is None else loss_aux.detach()]).double()
                n_window += 1
                done = it + 1
                log_now = done % tc.log_interval == 0 or done == tc.max_iters
                ckpt_now = done % tc.ckpt_interval == 0 or done == tc.max_iters
                if log_now or ckpt_now or done % check_every == 0:
                    self._check_finite(window, done)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                it = done
                bar.update()
                if log_now:
                    means = self._reduce_mean(window) / n_window
                    entry = {"iteration": it, "loss": float(means[0]), "loss_main": float(means[1]),
                             "loss_aux": float(means[2]), "lr": lr}
                    history.append(entry)
                    elapsed = time.perf_counter() - t_window
                    self.tracker.log_metrics({"train/loss": entry["loss"], "train/loss_main": entry["loss_main"],
                                              "train/loss_aux": entry["loss_aux"], "train/lr": lr,
                                              "train/it_per_s": n_window / max(elapsed, 1e-9)}, step=it)
                    self.tracker.maybe_flush(it)
                    bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                    window.zero_()
                    n_window, t_window = 0, time.perf_counter()
                if ckpt_now:
                    checkpoint(it)
                if self.callback is not None:
                    self.callback(it)
            bar.close()
            train_time = time.perf_counter() - t_start
            if info.is_main:
                save_checkpoint(model_path, {
                    "format": 1, "iteration": it, "model": model.state_dict(), "config": self.resolved,
                    "classes": classes, "num_classes": len(classes), "mlflow_run_id": self.tracker.run_id,
                })
                write_json(self.out_dir / "train_log.json", history)
                self._write_run_info("finished", resumed_from=start if state else None, iterations=it,
                                     train_seconds=train_time, finished=_now(),
                                     final_loss=history[-1]["loss"] if history else None)
                for name in ("config.yaml", "run_info.json", "train_log.json"):
                    self.tracker.log_artifact(self.out_dir / name)
                self.tracker.log_metrics({"train/seconds": train_time}, step=it)
            barrier(info)
            self.tracker.finish("FINISHED")
        except BaseException as err:
            bar.close()
            status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
            self.tracker.finish(status)
            self._write_run_info("failed", error=f"{type(err).__name__}: {err}", iterations=it)
            raise
        return TrainResult(self.out_dir, model_path, it, history[-1]["loss"] if history else None,
                           self.tracker.run_id, start if state else None)

    def _lr(self, it: int) -> float:
        tc = self.tc
        return warmup_poly_lr(it, tc.max_iters, tc.lr, tc.lr_power, tc.min_lr, tc.warmup_iters, tc.warmup_ratio)

    def _reduce_mean(self, values: Tensor) -> Tensor:
        if self.info.distributed:
            values = values.clone()
            dist.all_reduce(values)
            values /= self.info.world_size
        return values.cpu()

    def _check_finite(self, window: Tensor, it: int) -> None:
        bad = (~torch.isfinite(window[:1])).double()
        if self.info.distributed:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bool(bad.item()):
            newest = latest_checkpoint(self.out_dir)
            raise NonFiniteLossError(
                f"training loss is NaN/Inf at iteration {it}; stopped without saving. The last good "
                f"checkpoint is {newest or 'none (no checkpoint was written yet)'}; lower train.lr or "
                "check the data, then rerun the command to resume from it"
            )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
