"""Pascal VOC-style bbox evaluation (detectron2's ``PascalVOCDetectionEvaluator`` metric).

:class:`VOCEvaluator` has :class:`~icdistill.evaluation.coco.COCOEvaluator`'s interface
(``reset`` / ``process`` / ``evaluate`` / ``predictions`` / ``add_predictions``) and inherits
its ``process``: detections arrive as xyxy pixels of the resized image and are rescaled to the
original image and stored as COCO results (``bbox`` = ``[x, y, w, h]`` 0-based pixels).

The ground truth is a ``pycocotools`` COCO object whose ``bbox`` are 0-based ``[x, y, w, h]``
pixels, e.g. from :func:`icdistill.data.voc.load_voc` (which maps VOC's 1-based
``xmin, ymin, xmax, ymax`` to ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``).

Like detectron2, boxes are turned back into VOC's 1-based inclusive corners (``xmin = x + 1``,
``ymin = y + 1``, ``xmax = x + w``, ``ymax = y + h``; detectron2 adds 1 to the predicted
``x1, y1``) and the IoU uses VOC's ``+1`` pixel widths (``xmax - xmin + 1``). The two shifts
cancel: the IoU equals the plain continuous IoU of the 0-based boxes, and for VOC data it is the
IoU of detectron2's ``voc_eval`` exactly.

Metric per class and IoU threshold t (``voc_eval``): detections of the class over the processed
images, sorted by decreasing score, are matched greedily to the ground-truth box of the same
image they overlap most; IoU > t (strictly) with an unmatched box is a true positive, with an
already matched box a false positive, with a *difficult* box (``difficult: 1`` or ``iscrowd: 1``)
neither; IoU <= t (or no box) is a false positive. Difficult boxes do not count as positives.
AP is the 11-point interpolated AP (``use_07_metric``, VOC2007) or the area under the
monotone precision envelope (VOC2010+).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
from pycocotools.coco import COCO

from icdistill.evaluation.coco import COCOEvaluator, check_known_images

__all__ = ["IOU_THRESHOLDS", "VOCEvaluator", "voc_ap"]

logger = logging.getLogger(__name__)

#: IoU thresholds 0.50:0.95 (step 0.05), computed as detectron2 does (``thresh / 100.0``).
IOU_THRESHOLDS: tuple[float, ...] = tuple(t / 100.0 for t in range(50, 100, 5))
#: Recall points of the PR curves kept for the report (COCO's 101).
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = True) -> float:
    """Average precision (fraction in [0, 1]) of a precision/recall curve, as VOC computes it.

    Args:
        rec: recall after each detection (non-decreasing), float[K].
        prec: precision after each detection, float[K].
        use_07_metric: 11-point interpolation: the mean over t in ``np.arange(0, 1.1, 0.1)``
            of the highest precision at recall >= t (0 when none); reproduces detectron2
            bit for bit, including ``np.arange``'s rounding (0.3 is 0.30000000000000004).
            Otherwise the area under the precision envelope (precision made non-increasing
            from the right), summed where recall changes.
    """
    rec = np.asarray(rec, dtype=np.float64).reshape(-1)
    prec = np.asarray(prec, dtype=np.float64).reshape(-1)
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            mask = rec >= t
            p = float(np.max(prec[mask])) if mask.any() else 0.0
            ap += p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _xywh_to_voc(boxes: np.ndarray) -> np.ndarray:
    """0-based ``[x, y, w, h]`` float[N, 4] -> VOC 1-based inclusive ``[xmin, ymin, xmax, ymax]``."""
    out = np.empty_like(boxes, dtype=np.float64)
    out[:, 0] = boxes[:, 0] + 1.0
    out[:, 1] = boxes[:, 1] + 1.0
    out[:, 2] = boxes[:, 0] + boxes[:, 2]
    out[:, 3] = boxes[:, 1] + boxes[:, 3]
    return out


def _voc_iou(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of one VOC box float[4] with VOC boxes float[N, 4], with ``+1`` widths (voc_eval)."""
    ixmin = np.maximum(gts[:, 0], box[0])
    iymin = np.maximum(gts[:, 1], box[1])
    ixmax = np.minimum(gts[:, 2], box[2])
    iymax = np.minimum(gts[:, 3], box[3])
    iw = np.maximum(ixmax - ixmin + 1.0, 0.0)
    ih = np.maximum(iymax - iymin + 1.0, 0.0)
    inters = iw * ih
    uni = ((box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
           + (gts[:, 2] - gts[:, 0] + 1.0) * (gts[:, 3] - gts[:, 1] + 1.0) - inters)
    return inters / uni


class VOCEvaluator(COCOEvaluator):
    """Accumulates detections and scores them with the Pascal VOC metric.

    Args:
        coco_gt: ground truth of the evaluated split (``pycocotools.coco.COCO``, ``bbox``
            0-based ``[x, y, w, h]`` pixels); annotations with ``difficult: 1`` or
            ``iscrowd: 1`` are difficult (ignored).
        contiguous_to_cat_id: COCO category id of each contiguous class 0..C-1.
        class_names: name of each contiguous class (for the per-class keys); defaults to the
            category names in ``coco_gt``.
        use_07_metric: 11-point AP (VOC2007, detectron2's default for 2007 test) if True, else
            area under the interpolated precision/recall curve.

    ``process`` (inherited from :class:`COCOEvaluator`) takes per image
    ``{"boxes": float[K, 4] xyxy pixels of the resized image, "scores": float[K],
    "labels": int64[K] contiguous ids}`` plus the resized and original (h, w), and stores COCO
    results in original-image pixels. Only processed images are evaluated; ground truth of
    other images and of categories outside ``contiguous_to_cat_id`` is ignored.
    """

    def __init__(
        self,
        coco_gt: COCO,
        contiguous_to_cat_id: Sequence[int],
        class_names: Sequence[str] | None = None,
        *,
        use_07_metric: bool = True,
    ) -> None:
        super().__init__(coco_gt, contiguous_to_cat_id, class_names)
        self.use_07_metric = bool(use_07_metric)

    def per_class_ap(self) -> dict[str, list[float] | None]:
        """AP in percent of each class at each of :data:`IOU_THRESHOLDS`, by class name;
        ``None`` for a class without non-difficult ground truth in the processed images.
        Also sets ``self.pr_curves`` (the COCO evaluator's format, :func:`_pr_data`)."""
        img_ids = sorted({p["image_id"] for p in self._predictions})
        check_known_images(self.coco_gt, img_ids)
        cat_index = {c: k for k, c in enumerate(self.contiguous_to_cat_id)}
        num_classes = len(self.contiguous_to_cat_id)

        # Ground truth per class: {image id: (VOC boxes float[N, 4], difficult bool[N])}.
        gt_boxes: list[dict[int, list[list[float]]]] = [{} for _ in range(num_classes)]
        gt_diff: list[dict[int, list[bool]]] = [{} for _ in range(num_classes)]
        for ann in self.coco_gt.loadAnns(self.coco_gt.getAnnIds(imgIds=img_ids)):
            k = cat_index.get(int(ann["category_id"]))
            if k is None:
                continue
            img = int(ann["image_id"])
            gt_boxes[k].setdefault(img, []).append([float(v) for v in ann["bbox"]])
            gt_diff[k].setdefault(img, []).append(
                bool(ann.get("difficult", 0)) or bool(ann.get("iscrowd", 0)))

        # Detections per class: image ids, scores, VOC boxes.
        det_img: list[list[int]] = [[] for _ in range(num_classes)]
        det_score: list[list[float]] = [[] for _ in range(num_classes)]
        det_box: list[list[list[float]]] = [[] for _ in range(num_classes)]
        for p in self._predictions:
            for inst in p["instances"]:
                k = cat_index[int(inst["category_id"])]
                det_img[k].append(int(inst["image_id"]))
                det_score[k].append(float(inst["score"]))
                det_box[k].append([float(v) for v in inst["bbox"]])

        out: dict[str, list[float] | None] = {}
        curves: dict[str, list[np.ndarray]] = {}  # per class, precision at RECALL_POINTS per IoU threshold
        for k, name in enumerate(self.class_names):
            gts = {img: (_xywh_to_voc(np.asarray(b, dtype=np.float64).reshape(-1, 4)),
                         np.asarray(gt_diff[k][img], dtype=bool))
                   for img, b in gt_boxes[k].items()}
            npos = int(sum((~d).sum() for _, d in gts.values()))
            if npos == 0:
                out[name] = None
                continue
            scores = np.asarray(det_score[k], dtype=np.float64)
            order = np.argsort(-scores, kind="stable")
            imgs = [det_img[k][i] for i in order]
            boxes = _xywh_to_voc(np.asarray(det_box[k], dtype=np.float64).reshape(-1, 4))[order]
            # Best overlap of each detection, over all boxes of its image (difficult included):
            # it does not depend on the threshold.
            ovmax = np.full(len(imgs), -np.inf)
            jmax = np.zeros(len(imgs), dtype=np.int64)
            for d, (img, box) in enumerate(zip(imgs, boxes)):
                g = gts.get(img)
                if g is not None and len(g[0]):
                    ious = _voc_iou(box, g[0])
                    jmax[d] = int(np.argmax(ious))
                    ovmax[d] = float(ious[jmax[d]])
            aps, curves[name] = [], []
            for thresh in IOU_THRESHOLDS:
                rec, prec = _match(imgs, ovmax, jmax, gts, thresh, npos)
                aps.append(voc_ap(rec, prec, self.use_07_metric) * 100.0)
                curves[name].append(precision_at_recall(rec, prec))
            out[name] = aps
        self.pr_curves = {"bbox": _pr_data(curves, self.class_names)}
        return out

    def evaluate(self) -> dict[str, float]:
        """Score the processed images.

        Returns:
            Flat metrics in percent: ``bbox/AP`` (mean over classes of the mean AP over IoU
            0.50:0.95), ``bbox/AP50``, ``bbox/AP75`` (means over classes), and per class
            ``bbox/AP50-<name>`` and ``bbox/AP-<name>``. A class with no non-difficult ground
            truth in the processed images has NaN per-class values and is left out of the
            means (detectron2 would divide by zero positives); if no class has ground truth the
            means are NaN. A class with ground truth but no detection has AP 0. A text table
            is kept in ``self.summary``.

        Raises:
            ValueError: a processed image id is not in the ground truth.
        """
        per_class = self.per_class_ap()
        i50, i75 = IOU_THRESHOLDS.index(0.5), IOU_THRESHOLDS.index(0.75)
        metrics: dict[str, float] = {}
        scored = [v for v in per_class.values() if v is not None]
        metrics["bbox/AP"] = _mean([float(np.mean(v)) for v in scored])
        metrics["bbox/AP50"] = _mean([v[i50] for v in scored])
        metrics["bbox/AP75"] = _mean([v[i75] for v in scored])
        for name, v in per_class.items():
            metrics[f"bbox/AP50-{name}"] = v[i50] if v is not None else float("nan")
            metrics[f"bbox/AP-{name}"] = float(np.mean(v)) if v is not None else float("nan")
        kind = "11-point (VOC2007)" if self.use_07_metric else "area (VOC2010+)"
        lines = [f"Pascal VOC bbox AP, {kind} metric, {len(scored)}/{len(per_class)} classes "
                 f"with ground truth",
                 f"{'class':<24} {'AP':>6} {'AP50':>6} {'AP75':>6}"]
        for name, v in per_class.items():
            if v is None:
                lines.append(f"{name:<24} {'n/a':>6} {'n/a':>6} {'n/a':>6}")
            else:
                lines.append(f"{name:<24} {np.mean(v):6.2f} {v[i50]:6.2f} {v[i75]:6.2f}")
        lines.append(f"{'mean':<24} {_fmt(metrics['bbox/AP'])} {_fmt(metrics['bbox/AP50'])} "
                     f"{_fmt(metrics['bbox/AP75'])}")
        self.summary = "\n".join(lines) + "\n"
        logger.info("VOC bbox evaluation:\n%s", self.summary)
        return metrics


def _match(imgs: list[int], ovmax: np.ndarray, jmax: np.ndarray, gts: dict, thresh: float,
           npos: int) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) after each detection (sorted by score) at IoU ``thresh``: ``voc_eval``'s
    greedy matching (see the module docstring); ``gts``: image -> (boxes, difficult)."""
    used = {img: np.zeros(len(g[1]), dtype=bool) for img, g in gts.items()}
    tp = np.zeros(len(imgs))
    fp = np.zeros(len(imgs))
    for d, img in enumerate(imgs):
        if ovmax[d] > thresh:
            j = jmax[d]
            if not gts[img][1][j]:
                if not used[img][j]:
                    tp[d] = 1.0
                    used[img][j] = True
                else:
                    fp[d] = 1.0
        else:
            fp[d] = 1.0
    tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
    return tp_c / float(npos), tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)


def precision_at_recall(rec: np.ndarray, prec: np.ndarray) -> np.ndarray:
    """The monotone precision envelope at :data:`RECALL_POINTS` (0 beyond the reached recall),
    as COCOeval samples it: float[101]."""
    out = np.zeros(len(RECALL_POINTS))
    if len(rec):
        envelope = np.maximum.accumulate(np.asarray(prec, dtype=np.float64)[::-1])[::-1]
        idx = np.searchsorted(rec, RECALL_POINTS, side="left")
        out[idx < len(rec)] = envelope[idx[idx < len(rec)]]
    return out


def _pr_data(curves: dict[str, list[np.ndarray]], class_names: Sequence[str]) -> dict:
    """``{"recall": [101], "classes": {name: {"AP50": [101], "AP": [101]} | None}}`` (``AP``: mean
    over IoU 0.50:0.95; None: no ground truth), as :func:`icdistill.evaluation.coco.pr_curve_data`."""
    i50 = IOU_THRESHOLDS.index(0.5)
    classes = {name: None if name not in curves else {
        "AP50": [round(float(v), 4) for v in curves[name][i50]],
        "AP": [round(float(v), 4) for v in np.mean(curves[name], axis=0)]} for name in class_names}
    return {"recall": [round(float(r), 4) for r in RECALL_POINTS], "classes": classes}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _fmt(v: float) -> str:
    return f"{'n/a':>6}" if math.isnan(v) else f"{v:6.2f}"
