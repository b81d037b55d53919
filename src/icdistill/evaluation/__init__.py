"""Detection evaluation: COCO and Pascal VOC evaluators with detectron2's reset/process/evaluate."""

from icdistill.evaluation.coco import COCOEvaluator, format_metrics_table, format_per_class_table
from icdistill.evaluation.voc import VOCEvaluator

__all__ = ["COCOEvaluator", "VOCEvaluator", "format_metrics_table", "format_per_class_table"]
