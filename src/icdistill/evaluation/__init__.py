"""Detection evaluation."""

from icdistill.evaluation.coco import COCOEvaluator, format_metrics_table

__all__ = ["COCOEvaluator", "format_metrics_table"]
