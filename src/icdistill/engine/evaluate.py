"""Evaluation of a detector on a test set, ``metrics.json``, and pictures of its detections."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from icdistill import files
from icdistill.data import CocoDetection
from icdistill.detectors.base import DetectorAdapter
from icdistill.engine.distributed import DistContext, gather_to_main
from icdistill.evaluation import COCOEvaluator, format_per_class_table
from icdistill.structures import collate_batch
from icdistill.reporting.pictures import save_detections


def write_metrics_json(path: Path, metrics: dict[str, float], class_names: list[str] | None = None) -> None:
    """``metrics.json``: flat keys, percent; a metric COCO cannot compute (NaN, e.g. APl with no
    large objects in the test set) is written as null so the file stays strict JSON. With
    ``class_names``, ``per_class.md`` beside it holds the per-class table."""
    files.write_metrics_json(path, metrics)
    if class_names:
        files.write_text_atomic(path.parent / "per_class.md", format_per_class_table(metrics, class_names))


@torch.no_grad()
def evaluate_detector(
    detector: DetectorAdapter,
    loader: DataLoader,
    evaluator: COCOEvaluator,
    device: torch.device,
    *,
    progress: bool = True,
    ctx: DistContext | None = None,
) -> dict[str, float]:
    """Box (and mask) metrics, percent, flat keys ``bbox/AP`` …, of ``detector`` on ``loader``,
    scored by ``evaluator`` (COCO or VOC; reset here).

    Under torchrun each rank detects on its shard of the test set; the predictions are gathered
    to rank 0, which scores them once. Other ranks return ``{}``.
    """
    evaluator.reset()
    was_training = detector.training
    detector.eval()
    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False, dynamic_ncols=True):
        batch = batch.to(device)
        detections = detector.detect(batch.images, batch.image_sizes, detector.features(batch.images))
        evaluator.process(batch.image_ids, batch.image_sizes, batch.orig_sizes, [
            {k: v.cpu() for k, v in d.items()} for d in detections
        ])
    detector.train(was_training)
    if ctx is None or not ctx.distributed:
        return evaluator.evaluate()
    gathered = gather_to_main(evaluator.predictions(), ctx)
    if not ctx.is_main:
        return {}
    evaluator.reset()
    for predictions in gathered:
        evaluator.add_predictions(predictions)
    return evaluator.evaluate()


@torch.no_grad()
def save_detection_examples(
    detector: DetectorAdapter, dataset: CocoDetection, out_dir: Path, count: int, device: torch.device
) -> list[Path]:
    """PNGs of the detector's detections (score ≥ 0.3) on the first ``count`` test images."""
    out_dir.mkdir(parents=True, exist_ok=True)
    was_training = detector.training
    detector.eval()
    written = []
    for index in range(min(count, len(dataset))):
        batch = collate_batch([dataset[index]]).to(device)
        det = detector.detect(batch.images, batch.image_sizes, detector.features(batch.images))[0]
        path = out_dir / f"detections_{batch.image_ids[0]:06d}.png"
        save_detections(
            path, batch.unnormalised_images()[0].cpu(), det["boxes"].cpu(), det["labels"].cpu(),
            det["scores"].cpu(), dataset.class_names,
        )
        written.append(path)
    detector.train(was_training)
    return written
