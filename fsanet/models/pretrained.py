"""Pretrained backbone weights: fetch (file or URL, checksum-verified), read safely, map key names, load.

Sources understood by :func:`convert_state_dict`:

* **mmseg / mmcls** ``resnet*_v1c`` (``stem.0.weight``, ``layer1.0.conv1.weight``; possibly prefixed
  ``backbone.`` as in full segmentor checkpoints, whose other parts are ignored): our names, as is.
* **timm** deep-stem ResNets (``resnet50c``-style: ``conv1.0/1/3/4/6`` + ``bn1``): the stem is
  renamed onto ``stem.0/1/3/4/6/7``; the stages share names with ours.
* **torchvision** (and timm's plain ``resnet50``): single 7×7 ``conv1``/``bn1`` stem, renamed onto
  ``stem.conv1``/``stem.bn1``: a ``deep_stem=False`` ResNet (``model.backbone=resnet50``) loads it
  whole. Into a V1c the stages load; the deep stem cannot be filled from a 7×7 conv, so ``stem.*``
  stays randomly initialised and the report lists ``stem.conv1``/``stem.bn1`` as unexpected and the
  deep stem's tensors as missing.
* anything else is matched by name (e.g. weights saved from this package's own backbones).

Classifier weights (``fc.*``, ``head.*``) are dropped and listed as ignored. Files are read with
``torch.load(..., map_location="cpu", weights_only=True)``; ``{"state_dict": …}`` and ``{"model": …}``
wrappers and ``module.`` prefixes are unwrapped.
"""

from __future__ import annotations

import hashlib
import logging
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

__all__ = [
    "OPENMMLAB_URLS",
    "TORCHVISION_URLS",
    "LoadReport",
    "PretrainedError",
    "convert_state_dict",
    "fetch_checkpoint",
    "load_pretrained",
    "read_state_dict",
    "sha256_file",
]

log = logging.getLogger(__name__)

#: ``open-mmlab://NAME`` shortcuts (mmcv's model-zoo table); the file names end in their sha256 prefix
OPENMMLAB_URLS = {
    "resnet50_v1c": "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth",
    "resnet101_v1c": "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth",
}
#: ``torchvision://NAME`` shortcuts (mmcv resolves them to torchvision's ImageNet ``IMAGENET1K_V1`` files)
TORCHVISION_URLS = {
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
_SHORTCUTS = {"open-mmlab://": OPENMMLAB_URLS, "torchvision://": TORCHVISION_URLS}

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")
_CLASSIFIER_PREFIXES = ("fc.", "head.", "classifier.", "decode_head.", "auxiliary_head.")


class PretrainedError(ValueError):
    """A pretrained checkpoint could not be fetched, verified or read; the message names it."""


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------
def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_hash(path: Path, sha256: Optional[str], what: str) -> None:
    if sha256 is None:
        return
    got = sha256_file(path)
    if not got.startswith(sha256.lower()):
        raise PretrainedError(
            f"{what}: checksum mismatch for {path}: sha256 {got}, expected {sha256.lower()}"
            + ("…" if len(sha256) < 64 else "")
            + "; delete the file (or fix model.pretrained_sha256) and retry"
        )


def _download(url: str, dest: Path, checksum: Optional[str], timeout: float) -> None:
    """Fetch ``url`` to ``dest`` with the one downloader (:func:`fsanet.data.download.fetch`: resumable,
    HTML answers refused, the file published under its name only once complete and, given
    ``checksum``, verified)."""
    from fsanet.data.download import fetch
    from fsanet.data.errors import ChecksumError, DownloadError

    try:
        fetch(url, dest, checksum, timeout=timeout, refuse_html=True)
    except ChecksumError as err:
        raise PretrainedError(f"model.pretrained: {err}") from None
    except (DownloadError, OSError) as err:
        raise PretrainedError(f"model.pretrained: could not download {url}: {err}") from None


def fetch_checkpoint(
    spec: str,
    cache_dir: Union[str, Path] = "data/pretrained",
    sha256: Optional[str] = None,
    timeout: float = 60.0,
) -> Path:
    """Return a local, verified path for ``model.pretrained``.

    Args:
        spec: a local file, an ``http(s)://`` URL, or a shortcut: ``open-mmlab://resnet50_v1c`` /
            ``resnet101_v1c``, ``torchvision://resnet50`` / ``resnet101``.
        cache_dir: downloads go to ``cache_dir/<hash of the URL>/<file name>`` (atomically) and are
            reused on later calls.
        sha256: expected sha256 (64 hex digits). Without it, a URL whose file name ends in
            ``-<hex>.ext`` (the torch.hub/OpenMMLab convention) is checked against that prefix;
            otherwise a warning says the file is unverified.
        timeout: network timeout in seconds.

    Raises:
        PretrainedError: malformed checksum, download failure or checksum mismatch.
        FileNotFoundError: a local path that does not exist.
    """
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise PretrainedError(f"model.pretrained_sha256 must be 64 hex digits, got {sha256!r}")
    for prefix, table in _SHORTCUTS.items():
        if spec.startswith(prefix):
            name = spec[len(prefix) :]
            if name not in table:
                raise PretrainedError(
                    f"model.pretrained: unknown shortcut {spec!r}; known: "
                    + ", ".join(f"{p}{k}" for p, t in _SHORTCUTS.items() for k in t)
                )
            spec = table[name]
    scheme = urllib.parse.urlparse(spec).scheme
    if scheme not in ("http", "https"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"model.pretrained: checkpoint file {path} not found")
        _check_hash(path, sha256, "model.pretrained")
        return path

    name = Path(urllib.parse.urlparse(spec).path).name
    if not name or name in (".", ".."):
        raise PretrainedError(f"model.pretrained: URL {spec!r} does not name a file")
    expected = sha256
    if expected is None:
        m = _HASH_IN_NAME.search(name)
        if m:
            expected = m.group(1)
        else:
            log.warning(
                "model.pretrained: no checksum for %s; set model.pretrained_sha256 to verify the download",
                spec,
            )
    dest = Path(cache_dir).expanduser() / hashlib.sha256(spec.encode()).hexdigest()[:12] / name
    if not dest.is_file():
        log.info("downloading %s to %s", spec, dest)
        _download(spec, dest, f"sha256:{sha256.lower()}" if sha256 else None, timeout)
    try:
        _check_hash(dest, expected, "model.pretrained")
    except PretrainedError:
        dest.unlink()  # never keep a corrupt download in the cache
        raise
    return dest


# --------------------------------------------------------------------------------------------
# Reading and key mapping
# --------------------------------------------------------------------------------------------
def read_state_dict(path: Union[str, Path]) -> dict[str, Tensor]:
    """Load a checkpoint with ``weights_only=True`` and unwrap it to a flat ``{name: tensor}`` dict."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in several types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PretrainedError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({first}); "
            "re-save just the state dict: torch.save(ckpt['state_dict'], 'weights.pth')"
        ) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise PretrainedError(
            f"{path}: expected a state dict (mapping of names to tensors), got {type(obj).__name__}"
        )
    state = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not state:
        raise PretrainedError(f"{path}: the checkpoint holds no tensors (keys: {list(obj)[:8]})")
    return state


def convert_state_dict(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str, list[str]]:
    """Map a ResNet checkpoint's names onto ours.

    Returns:
        ``(converted, format, ignored)``: the renamed tensors, the detected source format
        (``mmseg``, ``timm-deep-stem``, ``torchvision``, ``native``) and the dropped keys
        (classifier, other segmentor parts).
    """
    items = dict(state)
    while items and all(k.startswith("module.") for k in items):
        items = {k[len("module.") :]: v for k, v in items.items()}
    ignored: list[str] = []
    if any(k.startswith("backbone.") for k in items):
        ignored += [k for k in items if not k.startswith("backbone.")]
        items = {k[len("backbone.") :]: v for k, v in items.items() if k.startswith("backbone.")}
    ignored += [k for k in items if k.startswith(_CLASSIFIER_PREFIXES)]
    items = {k: v for k, v in items.items() if not k.startswith(_CLASSIFIER_PREFIXES)}

    if "stem.0.weight" in items and "layer1.0.conv1.weight" in items:
        fmt = "mmseg"
    elif "conv1.0.weight" in items:
        fmt = "timm-deep-stem"
        renamed = {}
        for k, v in items.items():
            m = re.match(r"conv1\.(\d+)\.(.+)$", k)
            if m:
                k = f"stem.{m.group(1)}.{m.group(2)}"
            elif k.startswith("bn1."):
                k = "stem.7." + k[len("bn1.") :]
            renamed[k] = v
        items = renamed
    elif (
        "conv1.weight" in items and items["conv1.weight"].dim() == 4 and items["conv1.weight"].shape[-1] == 7
    ):
        fmt = "torchvision"
        items = {(f"stem.{k}" if k.startswith(("conv1.", "bn1.")) else k): v for k, v in items.items()}
    else:
        fmt = "native"
    return items, fmt, ignored


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did. Keys are the model's names (after mapping)."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model tensors left at their initialisation
    unexpected: list[str] = field(default_factory=list)  # checkpoint tensors with no model counterpart
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # classifier / non-backbone keys dropped on purpose

    @property
    def complete(self) -> bool:
        """Every model tensor came from the checkpoint."""
        return not self.missing and not self.mismatched

    def summary(self, limit: int = 8) -> str:
        def show(keys: list[str]) -> str:
            more = f", … and {len(keys) - limit} more" if len(keys) > limit else ""
            return ", ".join(keys[:limit]) + more

        total = len(self.loaded) + len(self.missing) + len(self.mismatched)
        lines = [f"{self.source} ({self.format} format): loaded {len(self.loaded)}/{total} model tensors"]
        if self.mismatched:
            lines.append(
                "shape mismatch (left at init): "
                + show([f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched])
            )
        if self.missing:
            lines.append(f"missing from checkpoint (left at init): {show(self.missing)}")
        if self.unexpected:
            lines.append(f"unexpected in checkpoint (unused): {show(self.unexpected)}")
        if self.ignored:
            lines.append(f"ignored (classifier/other parts): {len(self.ignored)} keys")
        return "; ".join(lines)


def load_pretrained(
    module: nn.Module, checkpoint: Union[str, Path, Mapping[str, Tensor]], *, strict: bool = False
) -> LoadReport:
    """Copy the tensors of a checkpoint into ``module`` by (mapped) name, in place.

    Args:
        module: the backbone to fill.
        checkpoint: a file (read with :func:`read_state_dict`) or an already loaded state dict.
        strict: raise if anything is missing, mismatched or unexpected.

    Returns:
        A :class:`LoadReport`; its :meth:`~LoadReport.summary` is logged (warning when incomplete).

    Raises:
        PretrainedError: no tensor matched at all (wrong file or architecture), or ``strict`` and the
            match is not exact.
    """
    source = str(checkpoint) if isinstance(checkpoint, (str, Path)) else "state dict"
    state = read_state_dict(checkpoint) if isinstance(checkpoint, (str, Path)) else dict(checkpoint)
    converted, fmt, ignored = convert_state_dict(state)
    report = LoadReport(source=source, format=fmt, ignored=ignored)
    own = module.state_dict()
    with torch.no_grad():
        for key, target in own.items():
            if key not in converted:
                if not key.endswith("num_batches_tracked"):  # absent from older checkpoints; harmless
                    report.missing.append(key)
                continue
            value = converted[key]
            if tuple(value.shape) != tuple(target.shape):
                report.mismatched.append((key, tuple(value.shape), tuple(target.shape)))
                continue
            target.copy_(value.to(dtype=target.dtype))
            report.loaded.append(key)
    report.unexpected = [k for k in converted if k not in own]
    if not report.loaded:
        raise PretrainedError(f"none of the checkpoint's tensors fit the model: {report.summary()}")
    if strict and (not report.complete or report.unexpected):
        raise PretrainedError(f"checkpoint does not match the model exactly: {report.summary()}")
    level = logging.INFO if report.complete and not report.unexpected else logging.WARNING
    log.log(level, "pretrained weights: %s", report.summary())
    return report
