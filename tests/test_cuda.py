"""CUDA paths: what the GPU computes equals what the CPU computes, and the GPU-only code runs.

* every attention module (and FSA in both modes and both implementations, with and without an
  evaluation band) gives the same output and gradients on CUDA as on the CPU, in float64;
* in float32 with TF32 off, CUDA FSA stays within float32 rounding of the float64 reference;
  under bf16 autocast it keeps the residual's dtype and stays within bf16 rounding;
* ``fsanet train`` with ``train.device=cuda`` and bf16 autocast, a resume from a CUDA checkpoint
  (its CUDA RNG state included), and ``fsanet eval`` on CUDA scoring what the CPU scores;
* ``fsanet bench attention`` on CUDA reports peak memory from the caching allocator.

These tests are selected with ``-m cuda`` (``make test-cuda``) on a machine with a GPU. The default
selection leaves them out; selected without a GPU they fail, they never skip.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from engine_stubs import build_tiny_dataset, build_tiny_model
from test_fsa import randomise as randomise_fsa
from test_peers import FACTORIES, randomise

from fsanet.config import load_config
from fsanet.engine.train import train
from fsanet.nn.dct import lowpass
from fsanet.nn.fsa import IMPLS, MODES, FrequencySelfAttention

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64


@pytest.fixture(autouse=True)
def _needs_gpu():
    assert torch.cuda.is_available(), "the cuda tests need a GPU: run `make test-cuda` on a CUDA machine"
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


FSA_VARIANTS = {f"fsa_{mode}_{impl}": (mode, impl) for mode in MODES for impl in IMPLS}
MODULES = [*FACTORIES, *FSA_VARIANTS]


def _module(name: str) -> torch.nn.Module:
    """A module of ``name`` with random non-trivial weights (γ ≠ 0, BN statistics set)."""
    if name in FSA_VARIANTS:
        mode, impl = FSA_VARIANTS[name]
        return randomise_fsa(FrequencySelfAttention(16, band=(0, 4, 0, 4), mode=mode, impl=impl))
    return randomise(FACTORIES[name](16))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


@pytest.mark.parametrize("eval_band", [None, (0, 2, 0, 3)], ids=["full", "eval_band"])
@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", MODULES)
def test_module_on_cuda_equals_cpu_in_float64(name, train_mode, eval_band):
    cpu = _module(name).double().train(train_mode)
    cpu.eval_band = eval_band
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(2, 16, 9, 7, dtype=F64)
    xg = x.cuda().requires_grad_()
    x.requires_grad_()
    y, yg = cpu(x), gpu(xg)
    assert yg.device.type == "cuda"
    assert _rel(yg.cpu(), y) <= 1e-10, name
    w = torch.randn_like(y)
    (y * w).sum().backward()
    (yg * w.cuda()).sum().backward()
    assert _rel(xg.grad.cpu(), x.grad) <= 1e-9
    for (pname, p), pg in zip(cpu.named_parameters(), gpu.parameters()):
        if p.grad is not None:
            assert _rel(pg.grad.cpu(), p.grad) <= 1e-9, f"{name}.{pname}"
    if train_mode:
        for (bname, b), bg in zip(cpu.named_buffers(), gpu.buffers()):
            if b.is_floating_point():
                assert _rel(bg.cpu(), b) <= 1e-10, f"{name}.{bname} (running statistics)"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", MODES)
def test_fsa_float32_on_cuda_close_to_float64_reference(mode, impl):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    ref = (
        randomise_fsa(FrequencySelfAttention(32, band=(0, 5, 0, 5), mode=mode, impl="reference"))
        .double()
        .eval()
    )
    m = copy.deepcopy(ref).float().cuda()
    m.impl = impl
    x = torch.randn(2, 32, 24, 20, dtype=F64)
    y_ref = ref(x)
    y = m(x.float().cuda()).double().cpu()
    assert _rel(y - x, y_ref - x) <= 1e-5  # relative to the attention branch, not to the residual


@pytest.mark.parametrize("mode", MODES)
def test_fsa_bf16_autocast_on_cuda(mode):
    m = randomise_fsa(FrequencySelfAttention(32, band=(0, 5, 0, 5), mode=mode)).cuda().train()
    ref = copy.deepcopy(m)
    x = torch.randn(2, 32, 24, 20, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.float32  # the residual keeps the input's dtype
    y_ref = ref(x.detach())
    assert _rel(y - x, y_ref - x) <= 3e-2  # bf16 has 8 significant bits
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_lowpass_on_cuda_equals_cpu():
    x = torch.randn(3, 5, 33, 17, dtype=F64)
    for band in [(0, 1, 0, 1), (0, 5, 0, 5), (2, 7, 1, 4), (0, 33, 0, 17)]:
        assert _rel(lowpass(x.cuda(), band).cpu(), lowpass(x, band)) <= 1e-12
    assert _rel(lowpass(x.cuda(), (0, 33, 0, 17)).cpu(), x) <= 1e-12  # the full band is the identity


# --------------------------------------------------------------------------------------------------
# training, resume and evaluation


OVR = [
    "tracking.enabled=false",
    "train.progress=false",
    "train.batch_size=4",
    "train.log_interval=1",
    "train.ckpt_interval=3",
    "data.num_workers=0",
    "train.device=cuda",
    "train.amp=bf16",
]


def test_train_resumes_from_a_cuda_checkpoint(tmp_path):
    """An uninterrupted CUDA run and one crashed after iteration 3 and rerun end at the same weights, up
    to CUDA's non-deterministic bilinear backward; restoring the wrong RNG state or optimiser would
    change them at the percent level."""
    cfg = load_config([], [*OVR, "train.max_iters=6"])
    ref = train(cfg, tmp_path / "ref", build_model=build_tiny_model, build_dataset=build_tiny_dataset)

    def crash(it: int) -> None:
        if it == 3:
            raise RuntimeError("injected crash")

    with pytest.raises(RuntimeError, match="injected crash"):
        train(
            cfg,
            tmp_path / "cut",
            build_model=build_tiny_model,
            build_dataset=build_tiny_dataset,
            callback=crash,
        )
    ckpt = torch.load(tmp_path / "cut" / "checkpoints" / "iter_000003.pt", weights_only=True)
    assert len(ckpt["rng"][0]["cuda"]) == torch.cuda.device_count()
    got = train(cfg, tmp_path / "cut", build_model=build_tiny_model, build_dataset=build_tiny_dataset)
    a = torch.load(ref.model_path, weights_only=True)["model"]
    b = torch.load(got.model_path, weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4)
    info = json.loads((tmp_path / "cut" / "run_info.json").read_text())
    assert info["status"] == "finished" and info["environment"]["device"].startswith("cuda")


SYN = ["data.synthetic.num_train=16", "data.synthetic.num_val=4", "data.check_split_sizes=false"]


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fsanet.cli", "-q", *args], check=True, cwd=ROOT)


@pytest.mark.parametrize("model", ["fsanet", "nonlocal"])
def test_cli_train_on_cuda_then_eval_on_cuda_and_cpu(tmp_path, model):
    root = tmp_path / "synthetic"
    common = [f"data.root={root}", *SYN, "tracking.enabled=false"]
    _cli("data", "prepare", "synthetic", "--root", str(tmp_path), *SYN)
    run = tmp_path / "run"
    _cli(
        "train",
        *common,
        "train.progress=false",
        "train.max_iters=20",
        "train.batch_size=4",
        "train.device=cuda",
        "train.amp=bf16",
        f"model.name={model}",
        "--out-dir",
        str(run),
    )
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "finished" and info["environment"]["device"].startswith("cuda")
    scores = {}
    for device in ("cuda", "cpu"):
        out = tmp_path / f"eval_{device}"
        _cli(
            "eval",
            "--checkpoint",
            str(run / "model.pt"),
            f"eval.device={device}",
            "eval.eval_band=[0,2,0,2]",
            "--out-dir",
            str(out),
        )
        scores[device] = json.loads((out / "metrics.json").read_text())
    assert scores["cuda"]["num_images"] == scores["cpu"]["num_images"] == 4
    # cuDNN's float32 convolutions use TF32, so a handful of near-tie pixels may flip class
    assert abs(scores["cuda"]["mIoU"] - scores["cpu"]["mIoU"]) <= 0.5, scores


def test_bench_attention_measures_cuda_peak_memory(tmp_path):
    out = tmp_path / "bench.json"
    _cli(
        "bench",
        "attention",
        "bench.device=cuda",
        "bench.modules=[fsa,nonlocal]",
        "bench.paper_size=[64,64]",
        "bench.paper_bands=[[0,5,0,5]]",
        "bench.sweep_sizes=[32]",
        "bench.channels=64",
        "bench.repeats=20",
        "--out",
        str(out),
    )
    data = json.loads(out.read_text())
    assert data["env"]["device"].startswith("cuda")
    paper = {r["series"]: r for r in data["results"] if r["setting"] == "paper" and r["status"] == "ok"}
    nl = next(r for s, r in paper.items() if s.startswith("nonlocal"))
    fsa = [r for s, r in paper.items() if s.startswith("fsa")]
    assert fsa and nl["peak_memory_bytes"] > 64 * 64 * 64 * 64 * 4 / 2  # NL holds a (HW)² map of float32
    assert all(0 < r["peak_memory_bytes"] < nl["peak_memory_bytes"] for r in fsa)
