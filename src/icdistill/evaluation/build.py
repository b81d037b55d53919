"""From the ``eval`` section of a config to the evaluator of a test set."""

from __future__ import annotations

from typing import TYPE_CHECKING

from icdistill.config import EvalConfig
from icdistill.evaluation.coco import COCOEvaluator
from icdistill.evaluation.voc import VOCEvaluator

if TYPE_CHECKING:  # only for the annotation: evaluation does not depend on the data package
    from icdistill.data import CocoDetection

__all__ = ["build_evaluator"]


def build_evaluator(eval_cfg: EvalConfig, dataset: "CocoDetection", *, with_masks: bool) -> COCOEvaluator:
    """The configured evaluator (``eval.evaluator``) over ``dataset``'s ground truth.

    ``voc``: a :class:`VOCEvaluator` (bbox only; ``eval.voc_07_metric`` picks 11-point AP).
    ``coco``: a :class:`COCOEvaluator` scoring ``bbox``, plus ``segm`` when ``with_masks``
    (the model predicts instance masks).
    """
    if eval_cfg.evaluator == "voc":
        return VOCEvaluator(dataset.coco, dataset.contiguous_to_cat_id, dataset.class_names,
                            use_07_metric=eval_cfg.voc_07_metric)
    tasks = ("bbox", "segm") if with_masks else ("bbox",)
    return COCOEvaluator(dataset.coco, dataset.contiguous_to_cat_id, dataset.class_names, tasks=tasks)
