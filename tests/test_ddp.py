"""Two gloo processes (DDP on CPU) train exactly what one process trains with the same global batch.

Apples to apples:
* the data stream gives rank r slots [r·b, (r+1)·b) of each global batch, and every sample's
  augmentation depends only on its position, so both setups see the same augmented samples;
* the stand-in model has no BatchNorm (SyncBatchNorm raises on CPU tensors in torch 2.13, and plain BN
  would use per-process batch statistics) and no dropout (each rank has its own RNG stream); it uses
  GroupNorm, which normalises each sample on its own;
* the loss is mmseg's CE, a mean over the B·H·W pixels of a process's batch; DDP averages gradients
  over ranks, so the mean of two per-rank means of equal size is the global mean.

The remaining difference is the order of floating-point reductions (per-rank sums, then an
all-reduce). The model runs in float64 (unit roundoff 1.1e-16), so after 6 SGD steps any real
difference (a wrong shard, a missing gradient average: errors of order 1e-2) stands out against a
tolerance of rtol 1e-9 / atol 1e-12; in float32 the same reordering gives differences near 1e-7.
"""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from engine_stubs import build_tiny_dataset, build_tiny_model_f64

from fsanet.config import load_config
from fsanet.engine.train import train

OVERRIDES = [
    "tracking.enabled=false",
    "train.progress=false",
    "train.batch_size=4",
    "train.max_iters=6",
    "train.log_interval=2",
    "train.ckpt_interval=2",
    "train.threads=1",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, crash_at: int) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
        }
    )

    def crash(it: int) -> None:
        if it == crash_at:
            raise RuntimeError(f"injected crash after iteration {it}")  # both ranks stop here

    cfg = load_config([], OVERRIDES)
    train(
        cfg,
        out_dir,
        build_model=build_tiny_model_f64,
        build_dataset=build_tiny_dataset,
        callback=crash if crash_at else None,
    )


def _spawn(out_dir, crash_at: int = 0) -> None:
    mp.start_processes(
        _worker, args=(2, _free_port(), str(out_dir), crash_at), nprocs=2, join=True, start_method="spawn"
    )


def test_two_gloo_processes_match_one_process(tmp_path):
    single = train(
        load_config([], OVERRIDES),
        tmp_path / "single",
        build_model=build_tiny_model_f64,
        build_dataset=build_tiny_dataset,
    )
    _spawn(tmp_path / "ddp")
    ref = torch.load(single.model_path, weights_only=True)
    got = torch.load(tmp_path / "ddp" / "model.pt", weights_only=True)
    start = torch.load(tmp_path / "ddp" / "checkpoints" / "iter_000004.pt", weights_only=True)
    assert len(start["rng"]) == 2  # every rank's RNG state is checkpointed
    moved = 0.0
    for key, value in ref["model"].items():
        assert value.dtype == torch.float64
        torch.testing.assert_close(got["model"][key], value, rtol=1e-9, atol=1e-12)
        moved = max(moved, (value - start["model"][key]).abs().max().item())
    assert moved > 1e-4  # the last two steps changed the weights far beyond the tolerance
    log_single = json.loads((tmp_path / "single" / "train_log.json").read_text())
    log_ddp = json.loads((tmp_path / "ddp" / "train_log.json").read_text())
    assert [e["iteration"] for e in log_ddp] == [2, 4, 6]
    for a, b in zip(log_single, log_ddp):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-9)  # all-reduced mean = global-batch mean
    info = json.loads((tmp_path / "ddp" / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "finished"


@pytest.mark.slow
def test_ddp_run_resumes_bit_identically(tmp_path):
    """Every rank's RNG state is checkpointed: a 2-process run cut at iteration 3 and rerun is exact."""
    _spawn(tmp_path / "ref")
    with pytest.raises(mp.ProcessRaisedException, match="injected crash"):
        _spawn(tmp_path / "resumed", crash_at=3)
    _spawn(tmp_path / "resumed")
    ref = torch.load(tmp_path / "ref" / "model.pt", weights_only=True)["model"]
    got = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)
