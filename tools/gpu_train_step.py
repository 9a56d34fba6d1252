"""One AMP (bf16) training step of the paper's R101-D8 FsaNet at 769×769 on CUDA: time and peak memory.

Usage: python tools/gpu_train_step.py OUT.json [--batch 2] [--size 769]
Random weights (no download) and random inputs: this checks the CUDA path and its cost, not accuracy.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from fsanet.config import load_config
from fsanet.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=769)
    args = ap.parse_args()
    dev = torch.device("cuda")
    cfg = load_config(["params/model/paper_r101.yaml"], ["model.name=fsanet", "model.pretrained=null"])
    model = build_model(cfg.model, 19, pretrained=False).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 19, (args.batch, args.size, args.size), device=dev)
    record = []
    for step in range(3):  # the first step includes cuDNN set-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
            loss = sum(w * F.cross_entropy(F.interpolate(out[k], y.shape[-2:], mode="bilinear"), y)
                       for k, w in (("out", 1.0), ("aux", 0.4)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        record.append({"step": step, "seconds": time.perf_counter() - t0, "loss": float(loss),
                       "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30})
    result = {"model": "fsanet R101-D8 (random init)", "batch": args.batch, "size": args.size,
              "amp": "bf16", "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": record}
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in record), "non-finite loss"
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
