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
* Every stop is recorded: ``run_info.json`` ends ``finished``, ``failed`` or ``interrupted`` (Ctrl-C,
  or SIGTERM from a scheduler) and the MLflow run FINISHED, FAILED or KILLED. After a kill -9 the
  rerun records it: it resumes, or, if ``model.pt`` was already written, only closes the run. MLflow
  metrics are flushed at every checkpoint; a resumed run re-logs from the checkpoint's history what
  the store lacks, and never logs a (key, step) twice. ``train_seconds`` adds up the training time
  of all segments (carried in the checkpoints). Temporary files of writes interrupted by a kill are
  removed when the run starts again.
* Outputs: ``config.yaml`` (resolved; credentials in URIs redacted, as everywhere below),
  ``run_info.json`` (status, provenance, seeds, MLflow run id and store, training time),
  ``train_log.json`` (loss and lr every ``log_interval`` iterations), ``checkpoints/``, and ``model.pt``
  (weights + config) for ``fsanet eval``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import platform
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm import tqdm

from fsanet.config import AmpDtype, Device, LossKind, OptimizerKind, Schedule, to_container
from fsanet.data.instances import collate_instances
from fsanet.engine.checkpoint import (
    CHECKPOINT_DIR,
    checkpoint_path,
    config_diff,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
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
from fsanet.engine.loader import IterationBatchSampler, build_train_loader, collate_train
from fsanet.engine.losses import cross_entropy, make_loss
from fsanet.engine.schedule import set_lr, warmup_poly_lr, warmup_step_lr
from fsanet.io import read_json, write_json, write_text
from fsanet.provenance import environment
from fsanet.repro import deterministic_mode, get_rng_state, seed_everything, set_rng_state
from fsanet.tracking import OFFLINE_DIR, Tracker, flatten, redact, redact_config

__all__ = ["NonFiniteLossError", "TrainResult", "attention_options", "run_params", "run_tags", "train"]

log = logging.getLogger(__name__)

BuildModel = Callable[[Any, int], nn.Module]
BuildDataset = Callable[..., Any]  # (cfg.data, split, train, seed=...) -> dataset

# Keys that may change between a run and its resumption without changing its numbers.
RESUME_IGNORE = (
    "tracking",
    "eval",
    "bench",
    "train.progress",
    "data.num_workers",
    "train.ckpt_interval",
    "train.keep_ckpts",
)
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


def model_task(model_name: str) -> str:
    """``"semantic"`` or ``"instances"``: what model ``model_name`` predicts (its method's ``task``)."""
    from fsanet.models import MODELS

    method = MODELS.get(model_name)
    return "semantic" if method is None else method.task


def dataset_builder(model_name: str) -> BuildDataset:
    """The dataset factory for a model's task: semantic label maps, or instances for a detector."""
    if model_task(model_name) == "instances":
        from fsanet.data.instances import build_instance_dataset

        return build_instance_dataset
    from fsanet.data import build_dataset

    return build_dataset


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
    return {
        k: v
        for k, v in flatten(resolved).items()
        if used is None or not k.startswith(prefix) or k[len(prefix) :] in used
    }


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
        "dataset": d["dataset"],
        "model": d["model"],
        "band": str(d["band"]),
        "seed": str(d["seed"]),
        "device": str(device),
        "device_name": str(env["device_name"]),
        "torch": env["torch"],
        "cuda": str(env["cuda"]),
        "host": platform.node(),
        "out_dir": str(out_dir),
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
        if not param.requires_grad:  # frozen (a detector's first backbone stages)
            continue
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
        raise ValueError(
            f"need train.warmup_iters ≥ 0 and 0 < train.warmup_ratio ≤ 1, got "
            f"{tc.warmup_iters} and {tc.warmup_ratio}"
        )
    if Schedule(tc.schedule) is Schedule.step and (
        list(tc.steps) != sorted(tc.steps) or any(s < 1 or s > tc.max_iters for s in tc.steps)
    ):
        raise ValueError(
            f"train.steps must be increasing iterations in 1..train.max_iters={tc.max_iters}, "
            f"got {list(tc.steps)}"
        )
    if len(tc.betas) != 2 or not all(0.0 <= b < 1.0 for b in tc.betas):
        raise ValueError(f"train.betas must be two numbers in [0, 1), got {list(tc.betas)}")
    if tc.ckpt_interval % tc.log_interval:
        # a checkpoint must close a logging window, or a resumed run would average a shorter window
        raise ValueError(
            f"train.ckpt_interval={tc.ckpt_interval} must be a multiple of "
            f"train.log_interval={tc.log_interval}"
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
        build_dataset = dataset_builder(cfg.model.name)
    _validate(cfg)
    out_dir = Path(out_dir)
    threads_before = torch.get_num_threads()
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(
        Device(cfg.train.device).value, int(os.environ.get("LOCAL_RANK", 0)), "train.device"
    )
    info = init_distributed(device.type)
    try:
        with deterministic_mode(cfg.train.deterministic, cfg.train.warn_only):
            return _Run(cfg, out_dir, device, info, build_model, build_dataset, callback).run()
    finally:
        torch.set_num_threads(threads_before)
        cleanup(info)


class _Run:
    """The state of one training process; :meth:`run` is the loop.

    Besides the weights, a checkpoint carries what the bookkeeping of a resumed run needs: the
    training log (re-logged to MLflow where the store lacks points), the measured speeds, the
    training time accumulated over all segments (processes) so far and their number.
    """

    def __init__(
        self,
        cfg: DictConfig,
        out_dir: Path,
        device: torch.device,
        info: DistInfo,
        build_model: BuildModel,
        build_dataset: BuildDataset,
        callback: Optional[Callable[[int], None]],
    ) -> None:
        self.cfg, self.tc, self.out_dir, self.device, self.info = cfg, cfg.train, out_dir, device, info
        self.build_model, self.build_dataset, self.callback = build_model, build_dataset, callback
        self.resolved = redact_config(to_container(cfg))  # what is written, checkpointed and logged
        self.run_name = redact(default_run_name(cfg))
        self.tracker = Tracker(cfg.tracking, out_dir, self.run_name, active=False)  # until _start_tracking
        self.history: list[dict[str, Any]] = []
        self.speeds: list[list[float]] = []  # [iteration, it/s] per logging window (MLflow train/it_per_s)
        self.prior_seconds = 0.0  # training time of earlier segments
        self.segments = 1
        self.iteration = 0
        self.t_start: Optional[float] = None

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
            log.warning(
                "resuming a %d-process run with %d processes: the data order is the same but RNG "
                "streams are not, so the result will not be bit-identical",
                state["world_size"],
                self.info.world_size,
            )
        log.info("resuming from %s (iteration %d of %d)", path, state["iteration"], self.tc.max_iters)
        return state

    def _read_run_info(self) -> dict[str, Any]:
        path = self.out_dir / "run_info.json"
        try:
            return read_json(path) if path.is_file() else {}
        except ValueError:
            return {}

    def _write_run_info(self, status: str, **extra: Any) -> None:
        if not self.info.is_main:
            return
        write_json(
            self.out_dir / "run_info.json",
            {
                "status": status,
                "run_name": self.run_name,
                "command": "train",
                **describe(self.cfg),
                "seeds": {
                    "seed": self.tc.seed,
                    "scheme": "torch/numpy/python seeded with seed+rank after "
                    "model init; sample p of the data stream drawn under sample_seed(seed, p)",
                },
                "world_size": self.info.world_size,
                "mlflow_run_id": self.tracker.run_id,
                "mlflow_tracking_uri": self.tracker.display_uri,
                "mlflow_offline": self.tracker.offline_reason,
                "deterministic": self.tc.deterministic,
                "environment": environment(self.device),
                "config": self.resolved,
                **extra,
            },
        )

    def _build(self) -> None:
        """Dataset, model (DDP-wrapped), optimizer, AMP scaler and loss, in a fixed RNG order."""
        cfg, tc, info, device = self.cfg, self.tc, self.info, self.device
        seed_everything(tc.seed)
        self.dataset = self.build_dataset(cfg.data, cfg.data.train_split, True, seed=tc.seed)
        self.classes = [str(c) for c in self.dataset.CLASSES]
        model = self.build_model(cfg.model, len(self.classes))
        self.ddp_model = prepare_model(model, device, info, tc.sync_bn, tc.find_unused_parameters)
        self.model = (
            self.ddp_model.module
            if isinstance(self.ddp_model, nn.parallel.DistributedDataParallel)
            else self.ddp_model
        )
        self.optimizer = _make_optimizer(self.ddp_model, tc)
        self.amp_dtype = _amp_dtype(cfg, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loss_fn = make_loss(
            LossKind(tc.loss).value, tc.ohem_thresh, tc.ohem_min_kept, cfg.data.ignore_index
        )
        self.aux_weight = float(cfg.model.aux_weight)
        # a detector returns its loss terms (train mode, with targets); they are logged one by one
        self.instances = getattr(model, "task", "semantic") == "instances"
        self.parts: tuple[str, ...] = tuple(getattr(model, "loss_names", ())) if self.instances else ()

    def _restore(self, state: Optional[dict[str, Any]]) -> int:
        """Load the checkpoint's states (or seed a fresh run); returns the first iteration to run."""
        if state is None:
            seed_everything(self.tc.seed + self.info.rank)
            return 0
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._restore_bookkeeping(state)
        rngs = state["rng"]
        set_rng_state(rngs[min(self.info.rank, len(rngs) - 1)])
        return int(state["iteration"])

    def _restore_bookkeeping(self, state: dict[str, Any]) -> None:
        self.history = list(state["history"])
        self.speeds = [list(s) for s in state.get("speeds", [])]
        self.prior_seconds = float(state.get("train_seconds") or 0.0)
        self.segments = int(state.get("segments", 1)) + 1
        self.iteration = int(state["iteration"])

    def _start_tracking(self, state: Optional[dict[str, Any]]) -> None:
        """Open (or reopen) the MLflow run, log the params and, when resuming, whatever the store lacks."""
        tags = run_tags(self.cfg, "train", self.device, self.out_dir) if self.info.is_main else {}
        tags["world_size"] = str(self.info.world_size)
        tags["deterministic"] = str(self.tc.deterministic)
        self.tracker = Tracker(
            self.cfg.tracking,
            self.out_dir,
            self.run_name,
            tags,
            resume_run_id=state.get("mlflow_run_id") if state else None,
            active=self.info.is_main,
            continues=state is not None,
        )
        self.tracker.log_params(run_params(self.resolved))
        if state is not None:
            self.tracker.load_logged_steps((*TRAIN_METRICS, "train/it_per_s", "train/seconds"))
            speeds = {int(i): v for i, v in self.speeds}
            for entry in self.history:
                self.tracker.log_metrics(
                    _train_metrics(entry, speeds.get(entry["iteration"])), step=entry["iteration"]
                )
            self.tracker.flush()
        if self.info.is_main:
            write_text(self.out_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(self.resolved)))

    def _seconds(self) -> float:
        """Training time of all segments so far (this one counted from the start of its loop)."""
        now = 0.0 if self.t_start is None else time.perf_counter() - self.t_start
        return self.prior_seconds + now

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        if self.info.is_main:
            remove_stale_temporaries(self.out_dir, (CHECKPOINT_DIR, OFFLINE_DIR))
        state = self._resume_state()
        model_path = self.out_dir / FINAL_MODEL
        if state is not None and state["iteration"] >= self.tc.max_iters and model_path.is_file():
            return self._complete(state, model_path)
        resumed_from = int(state["iteration"]) if state is not None else None
        self.iteration = resumed_from or 0
        try:
            with _sigterm_as_interrupt():
                self._build()
                start = self._restore(state)
                self._start_tracking(state)
                self._write_run_info(
                    "running", resumed_from=resumed_from, started=_now(), segments=self.segments
                )
                it = self._loop(start)
                self._finish(it, model_path, resumed_from)
        except BaseException as err:
            self._stop(err)
            raise
        history = self.history
        return TrainResult(
            self.out_dir,
            model_path,
            it,
            history[-1]["loss"] if history else None,
            self.tracker.run_id,
            resumed_from,
        )

    def _complete(self, state: dict[str, Any], model_path: Path) -> TrainResult:
        """Rerun of a run whose ``model.pt`` is written: nothing to train. If the run was stopped before
        it was closed (run_info.json not ``finished``, or the MLflow run not ended), close it now."""
        iterations, history = int(state["iteration"]), list(state["history"])
        final_loss = history[-1]["loss"] if history else None
        previous = self._read_run_info()
        if previous.get("status") == "finished" and previous.get("mlflow_status"):
            log.info("%s already finished %d iterations; nothing to do", self.out_dir, iterations)
            return TrainResult(
                self.out_dir, model_path, iterations, final_loss, state.get("mlflow_run_id"), None
            )
        log.info(
            "%s: %s is complete but the run was not closed (run_info status %r); closing it",
            self.out_dir,
            FINAL_MODEL,
            previous.get("status"),
        )
        self._restore_bookkeeping(state)
        self.segments -= 1  # closing adds no training segment
        seconds = state.get("train_seconds", previous.get("train_seconds"))
        try:
            with _sigterm_as_interrupt():
                self._start_tracking(state)
                self._close(iterations, previous.get("resumed_from"), seconds, final_loss)
        except BaseException as err:
            self._stop(err)
            raise
        return TrainResult(self.out_dir, model_path, iterations, final_loss, self.tracker.run_id, None)

    def _loop(self, start: int) -> int:
        """Iterations ``start`` … ``max_iters``: returns the number of finished iterations."""
        cfg, tc, info, device = self.cfg, self.tc, self.info, self.device
        sampler = IterationBatchSampler(
            len(self.dataset), tc.batch_size, tc.seed, start, tc.max_iters, info.rank, info.world_size
        )
        loader = build_train_loader(
            self.dataset,
            sampler,
            cfg.data.num_workers,
            tc.seed,
            pin_memory=device.type == "cuda",
            collate=collate_instances if self.instances else collate_train,
        )
        check_every = 1 if device.type == "cpu" else tc.log_interval
        # sums of loss, main, aux, then a detector's loss terms
        window = torch.zeros(3 + len(self.parts), dtype=torch.float64, device=device)
        n_window, t_window = 0, time.perf_counter()
        ddp_model, optimizer, scaler, amp_dtype = self.ddp_model, self.optimizer, self.scaler, self.amp_dtype
        bar = tqdm(
            total=tc.max_iters,
            initial=start,
            desc=self.run_name,
            unit="it",
            mininterval=1.0,
            dynamic_ncols=True,
            disable=not (info.is_main and tc.progress),
        )
        ddp_model.train()
        it = self.iteration = start
        self.t_start = time.perf_counter()
        try:
            for images, labels in loader:
                images = images.to(device, non_blocking=True)
                lr = self._lr(it)
                set_lr(optimizer, lr)
                terms: list[Tensor] = []
                if self.instances:  # labels: one target dict per image
                    targets = [_to_device(t, device) for t in labels]
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        losses = ddp_model(images, targets)
                    terms = [losses[name].float() for name in self.parts]
                    loss_main, loss_aux = torch.stack(terms).sum(), None
                else:
                    labels = labels.to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        out = ddp_model(images)
                    loss_main = self.loss_fn(out["out"], labels)
                    loss_aux = (
                        cross_entropy(out["aux"], labels, cfg.data.ignore_index)
                        if self.aux_weight and "aux" in out
                        else None
                    )
                loss = loss_main if loss_aux is None else loss_main + self.aux_weight * loss_aux
                window += torch.stack(
                    [
                        loss.detach(),
                        loss_main.detach(),
                        loss_main.detach() * 0 if loss_aux is None else loss_aux.detach(),
                        *(t.detach() for t in terms),
                    ]
                ).double()
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
                it = self.iteration = done
                bar.update()
                if log_now:
                    self._log_window(window, n_window, time.perf_counter() - t_window, it, lr, bar)
                    window.zero_()
                    n_window, t_window = 0, time.perf_counter()
                if ckpt_now:
                    self._checkpoint(it)
                if self.callback is not None:
                    self.callback(it)
        finally:
            bar.close()
        return it

    def _log_window(
        self, window: Tensor, n_window: int, elapsed: float, it: int, lr: float, bar: Any
    ) -> None:
        """Close a logging window: mean losses into the history and MLflow, speed into MLflow."""
        means = self._reduce_mean(window) / n_window
        entry = {
            "iteration": it,
            "loss": float(means[0]),
            "loss_main": float(means[1]),
            "loss_aux": float(means[2]),
            "lr": lr,
            **{name: float(v) for name, v in zip(self.parts, means[3:])},
        }
        self.history.append(entry)
        speed = n_window / max(elapsed, 1e-9)
        self.speeds.append([it, speed])
        self.tracker.log_metrics(_train_metrics(entry, speed), step=it)
        self.tracker.maybe_flush(it)
        bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)

    def _checkpoint(self, it: int) -> None:
        """Write checkpoint ``it`` (main rank) and send the buffered metrics, so a killed run loses none."""
        rngs = all_gather_objects(get_rng_state(), self.info)
        if self.info.is_main:
            save_checkpoint(
                checkpoint_path(self.out_dir, it),
                {
                    "format": 1,
                    "iteration": it,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "rng": rngs,
                    "history": self.history,
                    "config": self.resolved,
                    "classes": self.classes,
                    "num_classes": len(self.classes),
                    "mlflow_run_id": self.tracker.run_id,
                    "world_size": self.info.world_size,
                    "speeds": self.speeds,
                    "train_seconds": self._seconds(),
                    "segments": self.segments,
                },
            )
            prune_checkpoints(self.out_dir, self.tc.keep_ckpts)
            write_json(self.out_dir / "train_log.json", self.history)
            self.tracker.flush()
        barrier(self.info)

    def _finish(self, it: int, model_path: Path, resumed_from: Optional[int]) -> None:
        """Write ``model.pt`` and the final log, then close the run (main rank)."""
        seconds = self._seconds()
        if self.info.is_main:
            save_checkpoint(
                model_path,
                {
                    "format": 1,
                    "iteration": it,
                    "model": self.model.state_dict(),
                    "config": self.resolved,
                    "classes": self.classes,
                    "num_classes": len(self.classes),
                    "mlflow_run_id": self.tracker.run_id,
                    "train_seconds": seconds,
                    "segments": self.segments,
                },
            )
            write_json(self.out_dir / "train_log.json", self.history)
            self._close(it, resumed_from, seconds, self.history[-1]["loss"] if self.history else None)
        barrier(self.info)

    def _close(
        self, it: int, resumed_from: Optional[int], seconds: Optional[float], final_loss: Optional[float]
    ) -> None:
        """Mark the run finished: run_info.json, MLflow artifacts and ``train/seconds``, the MLflow run
        FINISHED, and run_info.json again with the tracking outcome (a rerun finds a closed run)."""
        fields = {
            "resumed_from": resumed_from,
            "iterations": it,
            "train_seconds": seconds,
            "segments": self.segments,
            "finished": _now(),
            "final_loss": final_loss,
        }
        self._write_run_info("finished", **fields)
        for name in ("config.yaml", "run_info.json", "train_log.json"):
            self.tracker.log_artifact(self.out_dir / name)
        if seconds is not None:
            self.tracker.log_metrics({"train/seconds": seconds}, step=it)
        self.tracker.finish("FINISHED")
        outcome = (
            "disabled"
            if not self.tracker.active
            else "offline"
            if self.tracker.offline
            else self.tracker.status
        )
        self._write_run_info("finished", **fields, mlflow_status=outcome)

    def _stop(self, err: BaseException) -> None:
        """Record a run stopped by ``err``: MLflow KILLED (interrupt) or FAILED, run_info.json
        ``interrupted`` or ``failed``. Errors while recording are logged, so that ``err`` propagates."""
        interrupted = isinstance(err, KeyboardInterrupt)
        try:
            self.tracker.finish("KILLED" if interrupted else "FAILED")
        except Exception as inner:
            log.warning("could not close the MLflow run: %s", redact(f"{type(inner).__name__}: {inner}"))
        try:
            self._write_run_info(
                "interrupted" if interrupted else "failed",
                error=redact(f"{type(err).__name__}: {err}"),
                iterations=self.iteration,
                train_seconds=self._seconds(),
                segments=self.segments,
                stopped=_now(),
            )
        except Exception as inner:
            log.warning("could not record the stop in %s: %s", self.out_dir / "run_info.json", inner)

    def _lr(self, it: int) -> float:
        tc = self.tc
        if Schedule(tc.schedule) is Schedule.step:
            return warmup_step_lr(it, tc.lr, tc.steps, tc.step_gamma, tc.warmup_iters, tc.warmup_ratio)
        return warmup_poly_lr(
            it, tc.max_iters, tc.lr, tc.lr_power, tc.min_lr, tc.warmup_iters, tc.warmup_ratio
        )

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


TRAIN_METRICS = ("train/loss", "train/loss_main", "train/loss_aux", "train/lr")
_SEGMENT_TERMS = ("loss_main", "loss_aux")


def _to_device(target: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A detector's target dict with its tensors on ``device`` (ids and names as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in target.items()}


def _train_metrics(entry: dict[str, Any], it_per_s: Optional[float]) -> dict[str, float]:
    """The MLflow metrics of one training-log entry (and the window's speed, when known)."""
    out = {
        "train/loss": entry["loss"],
        "train/loss_main": entry["loss_main"],
        "train/loss_aux": entry["loss_aux"],
        "train/lr": entry["lr"],
        # a detector's loss terms (loss_rpn_cls, …)
        **{f"train/{k}": v for k, v in entry.items() if k.startswith("loss_") and k not in _SEGMENT_TERMS},
    }
    if it_per_s is not None:
        out["train/it_per_s"] = it_per_s
    return out


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (a scheduler cancelling the job) stops the run like Ctrl-C does, so
    that the run is recorded as interrupted; the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
