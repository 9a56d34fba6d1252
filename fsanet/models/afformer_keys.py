"""Load the released AFFormer checkpoints into :class:`fsanet.models.afformer.AFFormer`.

Our module attributes carry the official names (``tools/afformer.py`` backbone, ``CLS`` head, mmcv
``ConvModule`` with GroupNorm → ``conv``/``gn``), so the key mapping is the identity; what this
module handles is the packaging:

* the mmseg training checkpoints: ``{"meta", "state_dict": {"backbone.*", "decode_head.*"}, ...}``,
  loaded strictly into the whole model;
* the ImageNet-pretrained backbones (``AFFormer_{size}_ImageNet1k.pth``): backbone keys without a
  prefix (or with ``backbone.``), loaded strictly into the encoder; a classification head under
  ``cls_head.*`` (the official classifier's attribute name) is dropped, with a log line;
* a ``state_dict`` or ``model`` wrapper and a DistributedDataParallel ``module.`` prefix.

The official model registers the per-encoder shared modules (position encoding ``cpe`` and the
high-pass filters ``crpe``) under every block too, so its state dict repeats those tensors under
several names. A checkpoint that holds only one name of such a tensor (e.g. re-saved without the
duplicates) is completed from it; any other missing, unexpected or reshaped key is refused with a
``ValueError`` naming the first offending key and the fix.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Optional

from torch import Tensor, nn

from fsanet.models.afformer import AdaptiveFrequencyFilter

__all__ = ["guess_afformer_size", "load_afformer_checkpoint"]

log = logging.getLogger(__name__)

_WRAPPERS = ("state_dict", "model")
_PREFIXES = ("backbone.", "decode_head.")
_CLASSIFIER = "cls_head."  # the ImageNet classifier of the official backbone

#: (C_1, C_2) → size: the stage widths that tell the released sizes apart (C_0 = 32, C_3 = 216 in all)
_SIZES_BY_WIDTH = {(64, 160): "tiny", (64, 176): "small", (96, 176): "base"}


def _unwrap(state: Mapping[str, Any]) -> dict[str, Tensor]:
    obj: Any = state
    for _ in range(2):
        for wrapper in _WRAPPERS:
            if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"AFFormer checkpoint: expected a state dict (name → tensor), got {type(obj).__name__}"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError(
            f"AFFormer checkpoint: no tensors found (top-level keys: {list(obj)[:6]}); pass the checkpoint "
            "as saved by mmseg or its 'state_dict'"
        )
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def guess_afformer_size(state: Mapping[str, Tensor]) -> Optional[str]:
    """The released size a state dict (with or without the ``backbone.`` prefix) was saved from, or None."""
    widths = []
    for stage in (1, 2):
        key = f"patch_embed_stages.{stage}.patch_embeds.0.patch_conv.pwconv.weight"
        t = state.get(key, state.get("backbone." + key))
        if t is None:
            return None
        widths.append(int(t.shape[0]))
    return _SIZES_BY_WIDTH.get((widths[0], widths[1]))


def _alias_groups(module: nn.Module) -> dict[str, list[str]]:
    """Key → the other keys naming the same tensor in ``module.state_dict()`` (shared submodules)."""
    by_tensor: dict[int, list[str]] = {}
    for key, t in module.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(t), []).append(key)
    return {k: [o for o in keys if o != k] for keys in by_tensor.values() for k in keys if len(keys) > 1}


def _hint(target: nn.Module, state: Mapping[str, Tensor], prefix: str) -> str:
    """How to fix a mismatch: the size the checkpoint is from, or the filter variant."""
    own_size = guess_afformer_size(target.state_dict())
    ckpt_size = guess_afformer_size(state)
    if ckpt_size is not None and ckpt_size != own_size:
        return f"the checkpoint is AFFormer-{ckpt_size}: build AFFormer(size={ckpt_size!r})"
    if any(not isinstance(f, AdaptiveFrequencyFilter) for f in getattr(target, "filters", ())):
        return (
            "this model replaces AFF by another filter (filter=...), whose weights the released "
            "checkpoints do not contain; load them into AFFormer(filter=None)"
        )
    return (
        f"pass an official AFFormer checkpoint ({prefix or 'no prefix'} keys as saved by the official code) "
        "for the size this model was built with"
    )


def load_afformer_checkpoint(model: nn.Module, state_dict: Mapping[str, Any]) -> str:
    """Load an official AFFormer checkpoint strictly; return ``"full"`` or ``"backbone"``.

    Args:
        model: an :class:`~fsanet.models.afformer.AFFormer` (or any module with ``backbone`` and
            ``decode_head`` named as the official ones), or an
            :class:`~fsanet.models.afformer.AFFormerEncoder` alone.
        state_dict: the checkpoint: a state dict, possibly wrapped in ``state_dict``/``model``, with
            ``backbone.``/``decode_head.`` keys (mmseg segmentation checkpoint) or bare backbone keys
            (ImageNet-pretrained backbone), possibly with a ``module.`` prefix.

    Returns:
        ``"full"`` when the whole model was loaded, ``"backbone"`` when only the encoder was.

    Raises:
        ValueError: a key is missing, unexpected or has another shape (the message names the first
            one and the fix: the size or class count to build with).
    """
    state = _unwrap(state_dict)
    encoder_only = not hasattr(model, "backbone")
    full = any(k.startswith(_PREFIXES) for k in state)

    if full:
        stray = [k for k in state if not k.startswith(_PREFIXES)]
        if stray:
            raise ValueError(
                f"AFFormer checkpoint: key {stray[0]!r} is neither backbone.* nor decode_head.* "
                f"({len(stray)} such keys); AFFormer has no other parts (e.g. no auxiliary head): drop them"
            )
        if encoder_only:
            dropped = sum(1 for k in state if k.startswith("decode_head."))
            state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
            log.info("AFFormer checkpoint: loading the backbone only (%d decode_head keys ignored)", dropped)
        kind, target, prefix = ("backbone" if encoder_only else "full"), model, ""
    else:
        classifier = [k for k in state if k.startswith(_CLASSIFIER)]
        if classifier:
            log.info("AFFormer checkpoint: dropping the ImageNet classifier (%s)", ", ".join(classifier))
            state = {k: v for k, v in state.items() if not k.startswith(_CLASSIFIER)}
        kind, target, prefix = "backbone", (model if encoder_only else model.backbone), "backbone"

    own = target.state_dict()
    aliases = _alias_groups(target)
    for key in [k for k in own if k not in state]:
        source = next((a for a in aliases.get(key, ()) if a in state), None)
        if source is not None:
            state[key] = state[source]

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        if reshaped and reshaped[0].endswith("conv_seg.weight") and not missing and not unexpected:
            classes = int(state[reshaped[0]].shape[0])
            fix = f"the checkpoint predicts {classes} classes: build AFFormer(num_classes={classes})"
        else:
            fix = _hint(model, state, prefix)
        problems = [
            f"{what} key {keys[0]!r}" + (f" (+{len(keys) - 1} more)" if len(keys) > 1 else "")
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped))
            if keys
        ]
        if reshaped:
            k = reshaped[0]
            problems[-1] += f" [{tuple(state[k].shape)} in the checkpoint, {tuple(own[k].shape)} here]"
        raise ValueError(f"AFFormer checkpoint ({kind}): {'; '.join(problems)}; {fix}")

    target.load_state_dict(state, strict=True)
    log.info("AFFormer checkpoint: loaded %d tensors (%s)", len(own), kind)
    return kind
