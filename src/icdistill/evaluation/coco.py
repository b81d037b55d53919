"""COCO-style bbox evaluation of torchvision detector outputs.

:class:`COCOEvaluator` follows detectron2's ``DatasetEvaluator`` protocol (``reset`` /
``process`` / ``evaluate``) so the training loop can evaluate periodically and a distributed
caller can gather per-rank predictions to rank 0 (``predictions`` / ``add_predictions``).

Metrics are returned in percent, as in the ICD paper's tables.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)

# Order of COCOeval.stats[0:6] for the bbox task.
SUMMARY_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
DEFAULT_TABLE_KEYS: tuple[str, ...] = tuple(f"bbox/{k}" for k in SUMMARY_KEYS)


def _to_numpy(x: Any, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


class COCOEvaluator:
    """Accumulates detections over a dataset and scores them with pycocotools (bbox task).

    Args:
        coco_gt: ground truth of the evaluated split (``pycocotools.coco.COCO``).
        contiguous_to_cat_id: ``contiguous_to_cat_id[c]`` is the COCO category id of the model's
            contiguous class ``c`` (0..C-1).
        class_names: name of each contiguous class, used in the per-class keys
            ``bbox/AP-<name>``; defaults to the category names in ``coco_gt``.

    Stored predictions are one record per processed image,
    ``{"image_id": int, "instances": [COCO result dicts]}``, so images with no detection still
    count in the evaluation (every processed image is evaluated, not only those with detections).
    Only the categories in ``contiguous_to_cat_id`` are scored.
    """

    def __init__(
        self,
        coco_gt: COCO,
        contiguous_to_cat_id: Sequence[int],
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.coco_gt = coco_gt
        self.contiguous_to_cat_id = [int(c) for c in contiguous_to_cat_id]
        if class_names is None:
            cats = coco_gt.loadCats(self.contiguous_to_cat_id)
            class_names = [str(c.get("name", c["id"])) for c in cats]
        if len(class_names) != len(self.contiguous_to_cat_id):
            raise ValueError(
                f"class_names has {len(class_names)} entries but contiguous_to_cat_id has "
                f"{len(self.contiguous_to_cat_id)}"
            )
        self.class_names = [str(n) for n in class_names]
        self.summary: str = ""
        self._predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Forget every processed prediction (call before each evaluation pass)."""
        self._predictions = []
        self.summary = ""

    def process(
        self,
        image_ids: Sequence[int],
        image_sizes: Sequence[tuple[int, int]],
        orig_sizes: Sequence[tuple[int, int]],
        detections: Sequence[Mapping[str, Any]],
    ) -> None:
        """Convert one batch of detections to COCO results in original-image pixels.

        Args:
            image_ids: dataset image id of each image.
            image_sizes: (h, w) of each resized image the detector saw.
            orig_sizes: (h, w) of each image on disk; boxes are rescaled from ``image_sizes``
                to this frame (x by orig_w / w, y by orig_h / h).
            detections: per image ``{"boxes": float[K, 4] xyxy pixels of the resized image,
                "scores": float[K], "labels": int64[K] contiguous class ids}`` (tensors or
                arrays, any device).
        """
        n = len(image_ids)
        if not (len(image_sizes) == len(orig_sizes) == len(detections) == n):
            raise ValueError(
                "process() needs one entry per image: got "
                f"{n} image_ids, {len(image_sizes)} image_sizes, {len(orig_sizes)} orig_sizes, "
                f"{len(detections)} detections"
            )
        num_classes = len(self.contiguous_to_cat_id)
        for img_id, (h, w), (oh, ow), det in zip(image_ids, image_sizes, orig_sizes, detections):
            boxes = _to_numpy(det["boxes"], np.float64).reshape(-1, 4).copy()
            scores = _to_numpy(det["scores"], np.float64).reshape(-1)
            labels = _to_numpy(det["labels"], np.int64).reshape(-1)
            if not (len(boxes) == len(scores) == len(labels)):
                raise ValueError(
                    f"image {img_id}: boxes, scores and labels differ in length "
                    f"({len(boxes)}, {len(scores)}, {len(labels)})"
                )
            if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(
                    f"image {img_id}: label out of range 0..{num_classes - 1} "
                    f"(got {labels.min()}..{labels.max()})"
                )
            boxes[:, 0::2] *= float(ow) / float(w)
            boxes[:, 1::2] *= float(oh) / float(h)
            instances = [
                {
                    "image_id": int(img_id),
                    "category_id": self.contiguous_to_cat_id[int(lab)],
                    # COCO results are xywh.
                    "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                    "score": float(s),
                }
                for b, s, lab in zip(boxes, scores, labels)
            ]
            self._predictions.append({"image_id": int(img_id), "instances": instances})

    def predictions(self) -> list[dict[str, Any]]:
        """This process's per-image records (picklable), for gathering to rank 0."""
        return list(self._predictions)

    def add_predictions(self, predictions: Iterable[Mapping[str, Any]]) -> None:
        """Merge records gathered from other processes (output of :meth:`predictions`)."""
        for p in predictions:
            self._predictions.append(
                {"image_id": int(p["image_id"]), "instances": list(p["instances"])}
            )

    def evaluate(self) -> dict[str, float]:
        """Run COCOeval (bbox) over the processed images.

        Returns:
            Flat metrics in percent: ``bbox/AP``, ``bbox/AP50``, ``bbox/AP75``, ``bbox/APs``,
            ``bbox/APm``, ``bbox/APl`` and ``bbox/AP-<classname>`` per class. A metric that
            pycocotools cannot define (it reports -1, e.g. ``APl`` when the processed images
            contain no large object, or a class with no ground truth) is ``float('nan')``. With
            no detections at all every metric is 0.0 (pycocotools' ``loadRes`` cannot take an
            empty list). The pycocotools summary text is kept in ``self.summary``.
        """
        img_ids = sorted({p["image_id"] for p in self._predictions})
        results = [inst for p in self._predictions for inst in p["instances"]]
        keys = [f"bbox/{k}" for k in SUMMARY_KEYS] + [f"bbox/AP-{n}" for n in self.class_names]
        if not results:
            logger.warning(
                "COCOEvaluator: no detections on %d processed images; all metrics are 0",
                len(img_ids),
            )
            self.summary = "no detections"
            return {k: 0.0 for k in keys}

        known = set(self.coco_gt.getImgIds())
        unknown = [i for i in img_ids if i not in known]
        if unknown:
            raise ValueError(
                f"{len(unknown)} processed image ids are not in the ground truth, "
                f"e.g. {unknown[:5]}"
            )

        buf = io.StringIO()
        # pycocotools prints progress and the summary table; keep stdout clean but keep the text.
        with contextlib.redirect_stdout(buf):
            # loadRes mutates the results (adds area/id), so give it copies.
            coco_dt = self.coco_gt.loadRes(copy.deepcopy(results))
            coco_eval = COCOeval(self.coco_gt, coco_dt, iouType="bbox")
            coco_eval.params.imgIds = img_ids
            # Score only the classes the model predicts: ground truth of other categories in the
            # annotation file (a class subset config) would otherwise count as misses.
            coco_eval.params.catIds = sorted(
                set(self.contiguous_to_cat_id) & set(self.coco_gt.getCatIds())
            )
            coco_eval.evaluate()
            coco_eval.accumulate()
            summary_buf = io.StringIO()
            with contextlib.redirect_stdout(summary_buf):
                coco_eval.summarize()
        self.summary = summary_buf.getvalue()
        logger.info("COCO bbox evaluation:\n%s", self.summary)

        metrics: dict[str, float] = {}
        for key, value in zip(SUMMARY_KEYS, coco_eval.stats[: len(SUMMARY_KEYS)]):
            metrics[f"bbox/{key}"] = _percent_or_nan(float(value))

        # precision: [T iou thresholds, R recall points, K categories, A area ranges, M maxDets];
        # area index 0 is "all", the last maxDets is 100.
        precision = coco_eval.eval["precision"]
        cat_ids = list(coco_eval.params.catIds)
        for name, cat_id in zip(self.class_names, self.contiguous_to_cat_id):
            if cat_id not in cat_ids:
                metrics[f"bbox/AP-{name}"] = float("nan")
                continue
            p = precision[:, :, cat_ids.index(cat_id), 0, -1]
            p = p[p > -1]
            metrics[f"bbox/AP-{name}"] = float(np.mean(p)) * 100.0 if p.size else float("nan")
        return metrics


def _percent_or_nan(value: float) -> float:
    if value < 0 or math.isnan(value):
        return float("nan")
    return value * 100.0


def format_metrics_table(
    rows: Mapping[str, Mapping[str, float]],
    keys: Sequence[str] = DEFAULT_TABLE_KEYS,
    *,
    name_header: str = "Model",
    digits: int = 1,
) -> str:
    """Render ``{row name: metrics}`` as a Markdown table (for results.md).

    Column headers drop the ``bbox/`` prefix (``bbox/AP50`` -> ``AP50``). NaN values print as
    ``n/a`` and missing keys as ``-``.
    """
    headers = [name_header] + [k.split("/", 1)[-1] for k in keys]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join([" --- "] + [" ---: "] * len(keys)) + "|",
    ]
    for name, metrics in rows.items():
        cells = [str(name)]
        for k in keys:
            if k not in metrics:
                cells.append("-")
                continue
            v = float(metrics[k])
            cells.append("n/a" if math.isnan(v) else f"{v:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
