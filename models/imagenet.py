"""The ImageNet-1k class index: the 1000 WordNet ids in sorted order, their names, ReaL relabels.

Index ``i`` is the ``i``-th WordNet id in sorted order, as torchvision, Keras and GluonCV
number their outputs. The files come from timm's package data (Apache-2.0); the ReaL
labels are Beyer et al., "Are we done with ImageNet?" (google-research/reassessed-imagenet).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

NUM_CLASSES = 1000
WNID_PATTERN = re.compile(r"^n\d{8}$")


def _data_text(name: str) -> str:
    return resources.files("xfverify.models").joinpath("data", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def class_table() -> tuple[tuple[str, str], ...]:
    """(wnid, human name) for class indices 0..999."""
    rows = []
    for line in _data_text("imagenet_classes.tsv").splitlines()[1:]:
        index, wnid, name = line.split("\t")
        if int(index) != len(rows):
            raise RuntimeError("imagenet_classes.tsv is out of order")
        rows.append((wnid, name))
    return tuple(rows)


@lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    """WordNet id -> class index."""
    return {wnid: i for i, (wnid, _) in enumerate(class_table())}


def class_name(index: int) -> str:
    """Short human name of a class index (the first lemma)."""
    return class_table()[index][1].split(",")[0]


@lru_cache(maxsize=1)
def real_labels() -> tuple[tuple[int, ...], ...]:
    """ImageNet ReaL labels for the 50,000 validation images, in ILSVRC2012_val_00000001.. order.

    An empty tuple means the raters found no ImageNet class in the image.
    """
    return tuple(tuple(v) for v in json.loads(_data_text("imagenet_real_labels.json")))


_VAL_ID = re.compile(r"ILSVRC2012_val_(\d{8})")


def validation_number(image_id: str) -> int | None:
    """1-based number of an ImageNet validation image from its id or file name, else None."""
    match = _VAL_ID.search(image_id)
    return int(match.group(1)) if match else None
