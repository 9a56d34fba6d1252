"""Every name the reports show: datasets, methods, attention modules, FSA modes and backbones.

Method and module names come from the heads' and modules' own declarations (``display`` in
:data:`fsanet.models.MODELS` and :func:`fsanet.models.attention_modules`; imported on first use, as
they load torch); the rest are the tables here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "BACKBONE_NAMES",
    "DATASET_NAMES",
    "MODE_NAMES",
    "dataset_display",
    "method_display",
    "method_order",
    "module_display",
]

#: dataset name → how tables and plots name it (synthetic data says that it is synthetic)
DATASET_NAMES = {
    "synthetic": "synthetic (built-in procedural set, not a benchmark)",
    "cityscapes": "Cityscapes",
    "ade20k": "ADE20K",
    "voc": "PASCAL VOC 2012 (aug)",
    "coco_stuff": "COCO-Stuff",
}
#: FSA kernel (``model.attention.mode``) → its name in tables
MODE_NAMES = {"dot": "dot", "linsoftmax": "LinSoftmax"}
#: ``model.backbone`` → its description in table captions
BACKBONE_NAMES = {
    "small": "the small CPU backbone (output stride 8, 39 px receptive field, `fsanet/models/small.py`)",
    "resnet50_v1c": "ResNet-50-V1c-D8",
    "resnet101_v1c": "ResNet-101-V1c-D8",
}


def _heads() -> Mapping[str, Any]:
    from fsanet.models import MODELS

    return MODELS


def dataset_display(dataset: str) -> str:
    """The dataset's name in tables and plots (its key if it is not a known dataset)."""
    return DATASET_NAMES.get(dataset, dataset)


def method_display(model: str) -> str:
    """The model's name in tables and plots (its key if it is not a known model)."""
    from fsanet.models import display_name

    return display_name(model)


def method_order(model: str) -> int:
    """The model's position in the tables (declaration order; unknown models last)."""
    order = list(_heads())
    return order.index(model) if model in order else len(order)


def module_display(module: str) -> str:
    """An attention module's name in T1 (for benchmark reports written before rows carried ``display``)."""
    from fsanet.bench.attention import FLOOR_DISPLAY
    from fsanet.models import attention_modules

    if module == "floor":
        return FLOOR_DISPLAY
    cls = attention_modules().get(module)
    return cls.display if cls is not None else module
