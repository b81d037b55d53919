"""Detection evaluation: COCO and Pascal VOC evaluators with detectron2's reset/process/evaluate."""

from icdistill.evaluation.build import build_evaluator
from icdistill.evaluation.coco import COCOEvaluator, format_metrics_table, format_per_class_table
from icdistill.evaluation.voc import VOCEvaluator

__all__ = ["COCOEvaluator", "VOCEvaluator", "build_evaluator", "format_metrics_table", "format_per_class_table"]
