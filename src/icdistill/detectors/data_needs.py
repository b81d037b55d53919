"""What a detector family needs from the training data, checked before any work: instance masks
for the mask families (``masks`` in the family table)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import DataConfig
from ..errors import ConfigError
from .families import family_facts

if TYPE_CHECKING:
    from ..data.coco import CocoDetection


def dataset_name(data_cfg: DataConfig) -> str:
    """How errors name the configured training data, e.g. ``"coco data train.json"``."""
    where = data_cfg.location
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


def require_segmentations(family: str, data_cfg: DataConfig, train_set: CocoDetection, role: str = "model") -> None:
    """ConfigError when ``family`` predicts masks and the loaded training set has annotations but
    not one segmentation (VOC, YOLO or a box-only COCO json): every mask target would be its
    box filled, so the mask head would learn rectangles. A few annotations without one are
    box-filled (see :mod:`icdistill.data.coco`); none at all means the data has no masks."""
    if not family_facts(family).masks or not train_set.with_masks:
        return
    kept = int(train_set.report.get("kept_annotations", 0))
    if kept and train_set.num_segmentations() == 0:
        raise ConfigError(
            f"{role}.family {family} predicts instance masks, but the {dataset_name(data_cfg)} "
            f"({train_set.source}) has no segmentation in any of its {kept} training annotations: "
            "train a box family (e.g. faster_rcnn, or cascade_rcnn for cascade_mask_rcnn) or use data "
            "with instance masks"
        )
