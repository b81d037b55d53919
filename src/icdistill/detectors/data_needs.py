"""What a detector family needs from the training data, checked before any work: instance masks
for the mask families (``masks`` in the family table)."""

from __future__ import annotations

from ..config import DataConfig
from ..errors import ConfigError
from .families import family_facts


def dataset_name(data_cfg: DataConfig) -> str:
    """How errors name the configured training data, e.g. ``"coco data train.json"``."""
    where = data_cfg.train_ann or data_cfg.root or (data_cfg.shapes.root if data_cfg.format == "shapes" else "")
    return f"{data_cfg.format} data {where}".rstrip()


def require_masks(family: str, data_cfg: DataConfig, role: str = "model") -> None:
    """ConfigError when ``family`` predicts masks but ``data.with_masks`` is false: its
    training targets would have no ``masks``. (``data.with_masks: null`` loads them for a mask
    family; annotations without a segmentation then get box-filled masks, see
    :mod:`icdistill.data.coco`.) A teacher needs no masks: it only runs on the images."""
    if family_facts(family).masks and data_cfg.with_masks is False:
        raise ConfigError(
            f"{role}.family {family} predicts instance masks, but data.with_masks is false for the "
            f"{dataset_name(data_cfg)}: set data.with_masks to true or null (on data with segmentations) "
            "or train a box family (e.g. faster_rcnn)"
        )
