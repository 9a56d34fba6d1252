"""torch.distributed plumbing for ``torchrun`` (one process per GPU) and CPU tests (gloo).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and joins the process group (NCCL on CUDA, gloo on CPU). A
plain ``python``/``fsanet`` process without them is a world of one and nothing is initialised.

SyncBatchNorm: the conversion happens on CUDA when more than one process trains. torch 2.13's
``SyncBatchNorm.forward`` raises on CPU tensors ("expected input tensor to be on GPU"), so on CPU
each process keeps its own batch statistics (a warning says so when BN layers are present).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "barrier",
    "cleanup",
    "init_distributed",
    "prepare_model",
    "resolve_device",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    Args:
        device_type: ``"cuda"`` selects NCCL (and pins the local GPU), anything else gloo.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch multi-process training with "
            "torchrun"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    log.info("rank %d/%d joined the %s process group", rank, world, backend)
    return DistInfo(rank, world, local_rank, initialized_here=True)


def resolve_device(name: str, local_rank: int = 0, key: str = "device") -> torch.device:
    """``auto`` → the local GPU if CUDA is available, else CPU; ``cuda`` without a GPU is an error that
    names the config ``key`` (``train.device``, ``eval.device``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{key}=cuda but torch sees no GPU (torch {torch.__version__}, CUDA build: "
                f"{torch.version.cuda or 'no'}); set {key}=cpu or {key}=auto"
            )
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"{key}={name!r} is not a device; use auto, cpu or cuda")
    return torch.device("cpu")


def prepare_model(
    model: nn.Module, device: torch.device, info: DistInfo, sync_bn: bool = True, find_unused: bool = False
) -> nn.Module:
    """Move to ``device``; with several processes convert BN to SyncBN (CUDA only) and wrap in DDP."""
    model = model.to(device)
    if not info.distributed:
        return model
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if sync_bn and has_bn:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            log.warning(
                "SyncBatchNorm needs CUDA tensors in torch %s; on CPU each of the %d processes keeps its own "
                "BatchNorm batch statistics",
                torch.__version__,
                info.world_size,
            )
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (a list of one element outside distributed runs)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(info: DistInfo) -> None:
    """Leave the process group if this module created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
