"""Why a trained non-local model loses the context when its attention input is truncated.

For each trained non-local checkpoint of the synthetic study, and for each evaluation band, this
measures on val images of the ``band`` layout (one cue per image):

* ``mass``: the mean attention weight that a disc cell of the feature grid puts on cue cells
  (softmax rows summed over the cue cells, averaged over disc cells and images);
* ``share``: the cue cells' share of the grid, i.e. what ``mass`` is under uniform attention,
  which is what a 1×1 truncation gives (a constant attention input makes every logit equal);
* ``signal``: ``‖E[y | red cue] − E[y | blue cue]‖`` of the block's attention output ``y`` at disc
  cells, the part of ``y`` that can tell the two disc classes apart, and its ratio to the full band.

Usage (after ``make tables``)::

    .venv/bin/python tools/attention_mass.py \
        results/runs/synthetic/nonlocal/band~none/mode~none/seed~*/model.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from fsanet.data import build_dataset
from fsanet.data.synthetic import CONTEXT_CLASSES, CUE_CLASSES, CUE_RED
from fsanet.engine.checkpoint import load_checkpoint
from fsanet.engine.evaluate import eval_config
from fsanet.models import build_model, load_trained_weights


def measure(
    checkpoint: Path, bands: list[int | None], images: int
) -> dict[int | None, tuple[float, float, float]]:
    """``(mass, share, signal)`` per band (None: the full band) over the first ``images`` val images."""
    cfg = eval_config(checkpoint)
    if cfg.model.name != "nonlocal" or cfg.data.name != "synthetic":
        raise SystemExit(f"{checkpoint}: needs a non-local model trained on synthetic, got {cfg.model.name}")
    dataset = build_dataset(cfg.data, cfg.data.val_split, False, seed=cfg.train.seed)
    model = build_model(cfg.model, len(dataset.CLASSES), pretrained=False)
    load_trained_weights(model, load_checkpoint(checkpoint), checkpoint)
    model.eval()
    (block,) = model.attention_modules()
    cue_classes, context_classes = torch.tensor(CUE_CLASSES), torch.tensor(CONTEXT_CLASSES)
    seen: dict[str, torch.Tensor] = {}
    block.register_forward_hook(lambda mod, args, out: seen.update(x=args[0]))
    result = {}
    for band in bands:
        block.eval_band = None if band is None else [0, band, 0, band]
        masses, shares, outputs = [], [], {True: [], False: []}
        with torch.no_grad():
            for i in range(min(images, len(dataset))):
                item = dataset[i]
                model(item["image"][None])
                attn, y = block.attend(block.attention_input(seen["x"]))  # (1, N, N), (1, C', N)
                label = item["label"][None, None].float()
                grid = F.interpolate(label, size=seen["x"].shape[-2:], mode="nearest").long().flatten()
                cue = torch.isin(grid, cue_classes)
                disc = torch.isin(grid, context_classes)
                if not cue.any() or not disc.any():
                    continue
                masses.append(attn[0][disc][:, cue].sum(-1).mean().item())
                shares.append(cue.float().mean().item())
                outputs[bool((item["label"] == CUE_RED).any())].append(y[0][:, disc].mean(-1))
        signal = (torch.stack(outputs[True]).mean(0) - torch.stack(outputs[False]).mean(0)).norm().item()
        result[band] = (sum(masses) / len(masses), sum(shares) / len(shares), signal)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--band", type=int, action="append", help="bands n (n×n); default 1 2 4 5 8")
    parser.add_argument("--images", type=int, default=200, help="val images per band (default 200)")
    args = parser.parse_args()
    bands: list[int | None] = [None, *(args.band or [1, 2, 4, 5, 8])]
    print("| checkpoint | band | mass disc→cue | cue share | signal | signal / full |")
    print("|---|---|---|---|---|---|")
    for checkpoint in args.checkpoints:
        result = measure(checkpoint, bands, args.images)
        full = result[None][2]
        for band, (mass, share, signal) in result.items():
            name = "full" if band is None else f"{band}×{band}"
            ratio = signal / full
            print(f"| {checkpoint} | {name} | {mass:.3f} | {share:.3f} | {signal:.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
