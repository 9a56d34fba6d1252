"""mmseg and official NVlabs Segformer checkpoints, mapped onto :mod:`fsanet.models.segformer`.

Our keys (``Segformer``: ``backbone.`` + encoder keys, ``decode_head.`` + head keys; an encoder alone has
the encoder keys without prefix)::

    stages.{i}.patch_embed.proj.*      stages.{i}.patch_embed.norm.*     stages.{i}.norm.*
    stages.{i}.blocks.{j}.attn.{norm,q,kv,proj,sr,sr_norm}.*
    stages.{i}.blocks.{j}.ffn.{norm,fc1,dwconv,fc2}.*
    decode_head.convs.{i}.{conv,bn}.*  decode_head.fusion_conv.{conv,bn}.*  decode_head.classifier.*
    decode_head.attention.*            (the optional attention block; in no public checkpoint)

mmseg (``mmseg/models/backbones/mit.py``, ``decode_heads/segformer_head.py``; segmentor checkpoints under
``backbone.``/``decode_head.``, the converted ImageNet ``mit_b*`` encoders without prefix):

* ``layers.{i}.0.projection`` / ``layers.{i}.0.norm`` → ``stages.{i}.patch_embed.proj`` / ``.norm``;
* ``layers.{i}.1.{j}.norm1`` → ``….attn.norm``; ``attn.attn.in_proj_weight/bias`` (q; k; v stacked, as
  ``nn.MultiheadAttention``) → ``attn.q`` (first C rows) and ``attn.kv`` (the other 2·C rows);
  ``attn.attn.out_proj`` → ``attn.proj``; ``attn.sr`` → ``attn.sr``; ``attn.norm`` → ``attn.sr_norm``;
* ``norm2`` → ``ffn.norm``; ``ffn.layers.0/1/4`` (1×1 conv, depthwise 3×3, 1×1 conv) → ``ffn.fc1``
  (weight reshaped to a linear one), ``ffn.dwconv``, ``ffn.fc2``; ``layers.{i}.2`` → ``stages.{i}.norm``;
* ``decode_head.convs.{i}``, ``decode_head.fusion_conv`` keep their names; ``decode_head.conv_seg`` →
  ``decode_head.classifier``.

NVlabs (``mmseg/models/backbones/mix_transformer.py``, ``decode_heads/segformer_head.py``; ImageNet
``mit_b*.pth`` without prefix, segmentors under ``backbone.``/``decode_head.``):

* ``patch_embed{k}.proj/norm`` → ``stages.{k-1}.patch_embed.proj/norm``; ``norm{k}`` → ``stages.{k-1}.norm``;
* ``block{k}.{j}.norm1`` → ``….attn.norm``; ``attn.q/kv/proj/sr`` keep their names; ``attn.norm`` →
  ``attn.sr_norm``; ``norm2`` → ``ffn.norm``; ``mlp.fc1``, ``mlp.dwconv.dwconv``, ``mlp.fc2`` →
  ``ffn.fc1``, ``ffn.dwconv``, ``ffn.fc2``; the ImageNet classifier ``head.*`` is dropped;
* ``decode_head.linear_c{k}.proj`` (``nn.Linear`` with bias, no BN, no activation) →
  ``decode_head.convs.{k-1}``: the weight becomes the 1×1 conv and the bias goes into an identity BN
  (weight 1, bias = the linear bias, running mean 0, running variance ``1 − eps``), so that in eval mode
  ``BN(conv(x)) = W·x + b`` exactly (``1 − eps + eps`` rounds to 1 in float32). The head must be built
  with ``stage_act=False`` (no ReLU after these branches) to compute the NVlabs function;
* ``decode_head.linear_fuse.conv`` → ``decode_head.fusion_conv.conv`` with the input blocks permuted:
  NVlabs concatenates ``[c4, c3, c2, c1]``, we (and mmseg) ``[c1, c2, c3, c4]``;
  ``decode_head.linear_fuse.bn`` → ``decode_head.fusion_conv.bn``;
* ``decode_head.linear_pred`` → ``decode_head.classifier``; the unused ``decode_head.conv_seg`` is dropped.

The NVlabs patch-embedding and spatial-reduction LayerNorms use eps 1e-5 where our (mmseg's) use 1e-6;
mmseg loads the same converted weights with 1e-6, and so do we.

Keys a mapping does not know pass through unchanged, so that :func:`load_segformer_checkpoint` names them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["detect_format", "from_mmseg", "from_nvlabs", "load_segformer_checkpoint"]

_PREFIXES = ("backbone.", "decode_head.")


def _split_prefix(key: str) -> tuple[str, str]:
    for p in _PREFIXES:
        if key.startswith(p):
            return p, key[len(p) :]
    return "", key


# ---------------------------------------------------------------------------------------- mmseg
_MM_BLOCK = re.compile(r"layers\.(\d+)\.1\.(\d+)\.(.+)")
_MM_STAGE = re.compile(r"layers\.(\d+)\.(0\.projection|0\.norm|2)\.(.+)")
_MM_BLOCK_NAMES = {
    "norm1.": "attn.norm.",
    "attn.attn.out_proj.": "attn.proj.",
    "attn.sr.": "attn.sr.",
    "attn.norm.": "attn.sr_norm.",
    "norm2.": "ffn.norm.",
    "ffn.layers.0.": "ffn.fc1.",
    "ffn.layers.1.": "ffn.dwconv.",
    "ffn.layers.4.": "ffn.fc2.",
}
_MM_STAGE_NAMES = {"0.projection": "patch_embed.proj", "0.norm": "patch_embed.norm", "2": "norm"}


def _mmseg_backbone(key: str, value: Tensor) -> dict[str, Tensor] | None:
    """Our encoder entries for one mmseg encoder key (no prefix); None if it is not one."""
    m = _MM_STAGE.fullmatch(key)
    if m:
        return {f"stages.{m[1]}.{_MM_STAGE_NAMES[m[2]]}.{m[3]}": value}
    m = _MM_BLOCK.fullmatch(key)
    if not m:
        return None
    base, rest = f"stages.{m[1]}.blocks.{m[2]}.", m[3]
    if rest in ("attn.attn.in_proj_weight", "attn.attn.in_proj_bias"):
        kind = rest.rsplit("_", 1)[1]  # weight | bias
        c = value.shape[0] // 3
        # rows: q (C), then k (C) and v (C), which is our kv's layout
        return {f"{base}attn.q.{kind}": value[:c], f"{base}attn.kv.{kind}": value[c:]}
    for old, new in _MM_BLOCK_NAMES.items():
        if rest.startswith(old):
            param = rest[len(old) :]
            if new in ("ffn.fc1.", "ffn.fc2.") and param == "weight" and value.dim() == 4:
                value = value.flatten(1)  # (out, in, 1, 1) conv → (out, in) linear
            return {base + new + param: value}
    return None


def from_mmseg(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map an mmseg Segformer checkpoint (segmentor, or converted ``mit_b*`` encoder) onto our keys.

    A segmentor's ``backbone.*``/``decode_head.*`` keys keep their prefix (ours: ``Segformer``); an
    encoder's keys map onto :class:`~fsanet.models.segformer.MixVisionTransformer`'s. Unknown keys pass
    through unchanged.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        prefix, rest = _split_prefix(key)
        mapped = _mmseg_backbone(rest, value) if prefix != "decode_head." else None
        if mapped is not None:
            out.update({prefix + k: v for k, v in mapped.items()})
        elif prefix == "decode_head." and rest.startswith("conv_seg."):
            out["decode_head.classifier." + rest[len("conv_seg.") :]] = value
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------- NVlabs
_NV_PATCH = re.compile(r"patch_embed(\d)\.(proj|norm)\.(.+)")
_NV_NORM = re.compile(r"norm(\d)\.(.+)")
_NV_BLOCK = re.compile(r"block(\d)\.(\d+)\.(.+)")
_NV_BLOCK_NAMES = {
    "norm1.": "attn.norm.",
    "attn.q.": "attn.q.",
    "attn.kv.": "attn.kv.",
    "attn.proj.": "attn.proj.",
    "attn.sr.": "attn.sr.",
    "attn.norm.": "attn.sr_norm.",
    "norm2.": "ffn.norm.",
    "mlp.fc1.": "ffn.fc1.",
    "mlp.dwconv.dwconv.": "ffn.dwconv.",
    "mlp.fc2.": "ffn.fc2.",
}
_NV_LINEAR = re.compile(r"linear_c(\d)\.proj\.(weight|bias)")


def _nvlabs_backbone(key: str, value: Tensor) -> tuple[str, Tensor] | None:
    m = _NV_PATCH.fullmatch(key)
    if m:
        return f"stages.{int(m[1]) - 1}.patch_embed.{m[2]}.{m[3]}", value
    m = _NV_NORM.fullmatch(key)
    if m:
        return f"stages.{int(m[1]) - 1}.norm.{m[2]}", value
    m = _NV_BLOCK.fullmatch(key)
    if m:
        base, rest = f"stages.{int(m[1]) - 1}.blocks.{m[2]}.", m[3]
        for old, new in _NV_BLOCK_NAMES.items():
            if rest.startswith(old):
                return base + new + rest[len(old) :], value
    return None


def _nvlabs_head(key: str, value: Tensor, out: dict[str, Tensor], bn_eps: float) -> bool:
    """Map one NVlabs decode-head key (no prefix) into ``out``; False if it is not one."""
    m = _NV_LINEAR.fullmatch(key)
    if m:
        base = f"decode_head.convs.{int(m[1]) - 1}."
        if m[2] == "weight":
            out[base + "conv.weight"] = value[:, :, None, None]  # (E, C_k) → (E, C_k, 1, 1)
        else:  # an identity BN whose bias is the linear bias (exact in eval mode)
            out[base + "bn.weight"] = torch.ones_like(value)
            out[base + "bn.bias"] = value
            out[base + "bn.running_mean"] = torch.zeros_like(value)
            out[base + "bn.running_var"] = torch.full_like(value, 1.0 - bn_eps)
            out[base + "bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
        return True
    if key == "linear_fuse.conv.weight":
        e = value.shape[1] // 4
        blocks = value.split(e, dim=1)  # input blocks [c4, c3, c2, c1]
        out["decode_head.fusion_conv.conv.weight"] = torch.cat(blocks[::-1], dim=1)  # [c1, c2, c3, c4]
        return True
    if key.startswith("linear_fuse.bn."):
        out["decode_head.fusion_conv.bn." + key[len("linear_fuse.bn.") :]] = value
        return True
    if key.startswith("linear_pred."):
        out["decode_head.classifier." + key[len("linear_pred.") :]] = value
        return True
    return key.startswith("conv_seg.")  # NVlabs' unused BaseDecodeHead classifier: dropped


def from_nvlabs(state_dict: Mapping[str, Tensor], bn_eps: float = 1e-5) -> dict[str, Tensor]:
    """Map an official NVlabs SegFormer checkpoint (ImageNet ``mit_b*.pth`` or segmentor) onto our keys.

    The decoder's linear stage branches become conv + BN with the eval-mode function exactly
    preserved (BN weight 1, bias = the linear bias, running mean 0, running variance ``1 − bn_eps``);
    the head must then be built with ``stage_act=False``. The fuse conv's input blocks are permuted
    from NVlabs' ``[c4, c3, c2, c1]`` to our ``[c1, c2, c3, c4]``. The ImageNet classifier ``head.*``
    and the unused ``decode_head.conv_seg.*`` are dropped; unknown keys pass through unchanged.

    Args:
        state_dict: the checkpoint's weights.
        bn_eps: eps of the BatchNorm the linear branches are mapped onto (``nn.BatchNorm2d``: 1e-5).
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        prefix, rest = _split_prefix(key)
        if prefix == "decode_head.":
            if not _nvlabs_head(rest, value, out, bn_eps):
                out[key] = value
            continue
        if prefix == "" and rest.startswith("head."):
            continue  # ImageNet classifier
        mapped = _nvlabs_backbone(rest, value)
        if mapped is None:
            out[key] = value
        else:
            out[prefix + mapped[0]] = mapped[1]
    return out


# ---------------------------------------------------------------------------------------- loading
def _unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("state_dict", "model"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and not isinstance(inner, Tensor):
            return inner
    return checkpoint


def detect_format(state_dict: Mapping[str, Any]) -> str:
    """``"nvlabs"``, ``"mmseg"`` or ``"ours"`` from the key names; ValueError if none fits."""
    keys = [_split_prefix(k)[1] for k in state_dict]
    if any(re.match(r"(patch_embed\d|block\d\.\d|linear_c\d\.|linear_fuse\.)", k) for k in keys):
        return "nvlabs"
    if any(re.match(r"layers\.\d+\.\d", k) or k.startswith("fusion_conv.conv") for k in keys):
        if not any(k.startswith("stages.") for k in keys):
            return "mmseg"
    if any(k.startswith(("stages.", "convs.", "classifier.")) for k in keys):
        return "ours"
    first = next(iter(state_dict), None)
    raise ValueError(
        f"load_segformer_checkpoint: not a Segformer checkpoint (first key {first!r}); expected mmseg "
        "(layers.*), NVlabs (patch_embed1.*, block1.*) or fsanet (stages.*) keys"
    )


def _encoder_of(model: nn.Module) -> nn.Module | None:
    from fsanet.models.segformer import MixVisionTransformer

    if isinstance(model, MixVisionTransformer):
        return model
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, MixVisionTransformer) else None


def _fix(kind: str, key: str, weights: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> str:
    """The one-line advice for the first problem found."""
    if key.startswith("decode_head.attention."):
        return (
            "the head's attention block has no weights in this checkpoint: build the model without it, "
            "or load only the encoder (the backbone.* entries without their prefix)"
        )
    if key.startswith("decode_head.") and (kind == "shape" or kind == "missing"):
        w = weights.get("decode_head.convs.0.conv.weight")
        cls = weights.get("decode_head.classifier.weight")
        if w is not None and cls is not None:
            return (
                f"the checkpoint's head has decoder_channels={w.shape[0]} and num_classes={cls.shape[0]} "
                "(mmseg configs use 256 channels for every size): build the model with those"
            )
    if kind == "unexpected" and not key.startswith(("backbone.stages.", "stages.", "decode_head.")):
        return "it is not a Segformer weight of this format: remove it from the state dict"
    return "build the model with the checkpoint's MiT size (b0…b5), decoder_channels and num_classes"


def load_segformer_checkpoint(model: nn.Module, state_dict: Mapping[str, Any]) -> str:
    """Detect the checkpoint's format, map its keys onto ours and load it strictly into ``model``.

    Accepts mmseg and NVlabs checkpoints (segmentor or ImageNet encoder) and our own state dicts, bare or
    under a ``state_dict``/``model`` entry. An encoder-only checkpoint loads strictly into the encoder
    (``model`` itself if it is a :class:`~fsanet.models.segformer.MixVisionTransformer`, else
    ``model.backbone``); a segmentor checkpoint needs a model with ``backbone`` and ``decode_head``.

    Returns:
        the detected format: ``"mmseg"``, ``"nvlabs"`` or ``"ours"``.

    Raises:
        ValueError: one line naming the first missing, unexpected or reshaped key and the fix; also when
            an NVlabs decoder would be loaded into a head with a ReLU after the stage branches.
    """
    weights = _unwrap(state_dict)
    if weights and all(k.startswith("module.") for k in weights):
        weights = {k[len("module.") :]: v for k, v in weights.items()}  # DistributedDataParallel
    fmt = detect_format(weights)
    mapped = {"mmseg": from_mmseg, "nvlabs": from_nvlabs}.get(fmt, dict)(weights)

    encoder = _encoder_of(model)
    encoder_only = not any(k.startswith(_PREFIXES) for k in mapped)
    if encoder_only:
        if encoder is None:
            raise ValueError(
                f"load_segformer_checkpoint: {fmt} encoder checkpoint, but {type(model).__name__} has no "
                "MixVisionTransformer encoder (as itself or as .backbone): build a Segformer model"
            )
        target = encoder
    else:
        if encoder is model:
            raise ValueError(
                f"load_segformer_checkpoint: {fmt} checkpoint of a whole segmentor (backbone + decode_head) "
                "for a bare encoder: load it into a Segformer model, or pass only its backbone weights"
            )
        target = model
        head = getattr(model, "decode_head", None)
        if (
            fmt == "nvlabs"
            and any(k.startswith("decode_head.") for k in mapped)
            and getattr(head, "stage_act", False)
        ):
            raise ValueError(
                "load_segformer_checkpoint: the NVlabs decoder has no ReLU after its linear stage branches: "
                "build the head with stage_act=False (build_segformer(..., stage_act=False)) to load it"
            )

    own = target.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    reshaped = [k for k in own if k in mapped and tuple(mapped[k].shape) != tuple(own[k].shape)]
    for kind, keys in (("unexpected", unexpected), ("missing", missing), ("shape", reshaped)):
        if keys:
            key = keys[0]
            what = (
                f"{kind} key {key!r}"
                if kind != "shape"
                else f"key {key!r} has shape {tuple(mapped[key].shape)}, the model {tuple(own[key].shape)}"
            )
            counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(reshaped)} reshaped"
            raise ValueError(
                f"load_segformer_checkpoint: {fmt} checkpoint does not fit {type(target).__name__}: {what} "
                f"({counts}); {_fix(kind, key, mapped, own)}"
            )
    target.load_state_dict(mapped, strict=True)
    return fmt
