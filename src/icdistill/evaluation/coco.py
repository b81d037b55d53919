"""COCO-style bbox and instance-mask (segm) evaluation of torchvision detector outputs.

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
import torch.nn.functional as F
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

logger = logging.getLogger(__name__)

# Order of COCOeval.stats[0:6] for the bbox task.
SUMMARY_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
DEFAULT_TABLE_KEYS: tuple[str, ...] = tuple(f"bbox/{k}" for k in SUMMARY_KEYS)
# COCOeval iouTypes the evaluator can score; metric keys are prefixed with the task name.
TASKS: tuple[str, ...] = ("bbox", "segm")
# Masks are resized to the original image in chunks of this many instances (bounds memory).
_MASK_CHUNK = 16


def _to_numpy(x: Any, dtype: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def encode_masks(masks: Any, orig_size: tuple[int, int], threshold: float = 0.5) -> list[dict[str, Any]]:
    """Per-detection mask probabilities in resized-image pixels -> COCO RLEs in original pixels.

    Args:
        masks: float Tensor/array [K, 1, h, w] (or [K, h, w]) of probabilities over the resized,
            unpadded image.
        orig_size: (H, W) of the image on disk.
        threshold: probability at which a pixel (after bilinear resizing) belongs to the mask.

    Returns:
        K RLE dicts ``{"size": [H, W], "counts": str}`` (``counts`` decoded to str, so the
        records are JSON-serialisable), in the order of ``masks``.
    """
    m = masks if isinstance(masks, torch.Tensor) else torch.as_tensor(np.asarray(masks))
    if m.dim() == 3:
        m = m[:, None]
    if m.dim() != 4 or m.shape[1] != 1:
        raise ValueError(f"masks must be [K, 1, h, w], got {tuple(m.shape)}")
    oh, ow = int(orig_size[0]), int(orig_size[1])
    rles: list[dict[str, Any]] = []
    for start in range(0, m.shape[0], _MASK_CHUNK):
        chunk = m[start : start + _MASK_CHUNK].detach().float()
        if tuple(chunk.shape[-2:]) != (oh, ow):
            chunk = F.interpolate(chunk, size=(oh, ow), mode="bilinear", align_corners=False)
        binary = (chunk[:, 0] > threshold).to(torch.uint8).cpu().numpy()  # [k, H, W]
        encoded = mask_util.encode(np.asfortranarray(binary.transpose(1, 2, 0)))  # takes [H, W, k]
        for rle in encoded:
            rle["counts"] = rle["counts"].decode("ascii")
            rles.append(rle)
    return rles


class COCOEvaluator:
    """Accumulates detections over a dataset and scores them with pycocotools (bbox and/or segm).

    Args:
        coco_gt: ground truth of the evaluated split (``pycocotools.coco.COCO``).
        contiguous_to_cat_id: ``contiguous_to_cat_id[c]`` is the COCO category id of the model's
            contiguous class ``c`` (0..C-1).
        class_names: name of each contiguous class, used in the per-class keys
            ``bbox/AP-<name>``; defaults to the category names in ``coco_gt``.
        tasks: COCOeval iouTypes to score, a non-empty subset of ("bbox", "segm"). "segm" needs
            ``masks`` in every detection passed to :meth:`process` and ``segmentation`` in the
            ground-truth annotations (polygons or RLE).

    Stored predictions are one record per processed image,
    ``{"image_id": int, "instances": [COCO result dicts]}``, so images with no detection still
    count in the evaluation (every processed image is evaluated, not only those with detections).
    Only the categories in ``contiguous_to_cat_id`` are scored. With "segm" each instance also
    holds ``"segmentation"``: an RLE ``{"size": [H, W], "counts": str}`` in original pixels.
    """

    def __init__(
        self,
        coco_gt: COCO,
        contiguous_to_cat_id: Sequence[int],
        class_names: Sequence[str] | None = None,
        tasks: Sequence[str] = ("bbox",),
    ) -> None:
        if isinstance(tasks, str):
            tasks = (tasks,)
        tasks = tuple(dict.fromkeys(str(t) for t in tasks))
        if not tasks or any(t not in TASKS for t in tasks):
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {tasks}")
        self.tasks: tuple[str, ...] = tasks
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
        # Per task, the precision/recall curves of the last evaluate() (see pr_curve_data).
        self.pr_curves: dict[str, dict[str, Any]] = {}
        self._predictions: list[dict[str, Any]] = []

    def reset(self) -> None:
        """Forget every processed prediction (call before each evaluation pass)."""
        self._predictions = []
        self.summary = ""
        self.pr_curves = {}

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
                arrays, any device). With the "segm" task also ``"masks": float[K, 1, h, w]``
                probabilities over the resized, unpadded image; they are resized bilinearly to
                the original size, thresholded at 0.5 and RLE-encoded.

        Raises:
            ValueError: mismatched lengths, labels out of range, or (segm) missing or
                wrongly shaped ``masks``.
        """
        segm = "segm" in self.tasks
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
            rles: list[dict[str, Any]] | None = None
            if segm:
                rles = self._encode_masks(img_id, det, len(labels), (int(h), int(w)), (int(oh), int(ow)))
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
            if rles is not None:
                for inst, rle in zip(instances, rles):
                    inst["segmentation"] = rle
            self._predictions.append({"image_id": int(img_id), "instances": instances})

    @staticmethod
    def _encode_masks(
        img_id: int, det: Mapping[str, Any], k: int, size: tuple[int, int], orig_size: tuple[int, int]
    ) -> list[dict[str, Any]]:
        """Validate one image's ``masks`` (float[K, 1, h, w]) and encode them (see :func:`encode_masks`)."""
        if "masks" not in det:
            raise ValueError(
                f"image {img_id}: the 'segm' task needs 'masks' (float[K, 1, h, w]) in every detection "
                "dict; use a mask-predicting detector (mask_rcnn) or evaluate tasks=('bbox',)"
            )
        masks = det["masks"]
        shape = tuple(masks.shape)
        if len(shape) == 3:
            shape = (shape[0], 1, *shape[1:])
        if len(shape) != 4 or shape != (k, 1, *size):
            raise ValueError(
                f"image {img_id}: masks must be [K, 1, h, w] = [{k}, 1, {size[0]}, {size[1]}] "
                f"(one per box, resized-image pixels), got {tuple(masks.shape)}"
            )
        return encode_masks(masks, orig_size) if k else []

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
        """Run COCOeval for every task over the processed images.

        Returns:
            Flat metrics in percent, per task ``t`` in ``tasks`` ("bbox", "segm"): ``t/AP``,
            ``t/AP50``, ``t/AP75``, ``t/APs``, ``t/APm``, ``t/APl`` and ``t/AP-<classname>`` per
            class. A metric that pycocotools cannot define (it reports -1, e.g. ``APl`` when the
            processed images contain no large object, or a class with no ground truth) is
            ``float('nan')``. With no detections at all every metric is 0.0 (pycocotools'
            ``loadRes`` cannot take an empty list). The pycocotools summary text is kept in
            ``self.summary`` (one section per task, headed ``[segm]`` etc., when several tasks
            are evaluated). Segm area ranges (APs/APm/APl) use mask areas, as in detectron2.
        """
        img_ids = sorted({p["image_id"] for p in self._predictions})
        results = [inst for p in self._predictions for inst in p["instances"]]
        self.pr_curves = {}
        if not results:
            logger.warning(
                "COCOEvaluator: no detections on %d processed images; all metrics are 0",
                len(img_ids),
            )
            self.summary = "no detections"
            return {k: 0.0 for task in self.tasks for k in self._metric_keys(task)}

        check_known_images(self.coco_gt, img_ids)

        metrics: dict[str, float] = {}
        summaries = []
        for task in self.tasks:
            task_metrics, summary = self._evaluate_task(task, img_ids, results)
            metrics.update(task_metrics)
            summaries.append(summary if len(self.tasks) == 1 else f"[{task}]\n{summary}")
        self.summary = "\n".join(summaries)
        return metrics

    def _metric_keys(self, task: str) -> list[str]:
        return [f"{task}/{k}" for k in SUMMARY_KEYS] + [f"{task}/AP-{n}" for n in self.class_names]

    def _evaluate_task(
        self, task: str, img_ids: list[int], results: list[dict[str, Any]]
    ) -> tuple[dict[str, float], str]:
        """COCOeval(iouType=task) on ``results``; returns (metrics, summary text)."""
        if task == "segm":
            # Drop the box so loadRes takes its segmentation branch: area (for APs/APm/APl) and
            # bbox then come from the mask, as detectron2 does.
            task_results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
            missing = sum("segmentation" not in r for r in task_results)
            if missing:
                raise ValueError(f"{missing} processed detections have no 'segmentation' for the segm task")
        else:
            task_results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]

        buf = io.StringIO()
        # pycocotools prints progress and the summary table; keep stdout clean but keep the text.
        with contextlib.redirect_stdout(buf):
            # loadRes mutates the results (adds area/id), so give it copies.
            coco_dt = self.coco_gt.loadRes(copy.deepcopy(task_results))
            coco_eval = COCOeval(self.coco_gt, coco_dt, iouType=task)
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
        summary = summary_buf.getvalue()
        logger.info("COCO %s evaluation:\n%s", task, summary)

        metrics: dict[str, float] = {}
        for key, value in zip(SUMMARY_KEYS, coco_eval.stats[: len(SUMMARY_KEYS)]):
            metrics[f"{task}/{key}"] = _percent_or_nan(float(value))

        # precision: [T iou thresholds, R recall points, K categories, A area ranges, M maxDets];
        # area index 0 is "all", the last maxDets is 100.
        precision = coco_eval.eval["precision"]
        cat_ids = list(coco_eval.params.catIds)
        self.pr_curves[task] = pr_curve_data(precision, coco_eval.params, self.class_names, self.contiguous_to_cat_id)
        for name, cat_id in zip(self.class_names, self.contiguous_to_cat_id):
            if cat_id not in cat_ids:
                metrics[f"{task}/AP-{name}"] = float("nan")
                continue
            p = precision[:, :, cat_ids.index(cat_id), 0, -1]
            p = p[p > -1]
            metrics[f"{task}/AP-{name}"] = float(np.mean(p)) * 100.0 if p.size else float("nan")
        return metrics, summary


def pr_curve_data(
    precision: np.ndarray, params: Any, class_names: Sequence[str], contiguous_to_cat_id: Sequence[int]
) -> dict[str, Any]:
    """Per-class precision/recall curves from COCOeval's accumulated ``precision``.

    Args:
        precision: ``coco_eval.eval["precision"]``, [T IoU thresholds, R recall points,
            K categories, A area ranges, M maxDets]; -1 where undefined.
        params: ``coco_eval.params`` (``recThrs``, ``iouThrs``, ``catIds``).

    Returns:
        ``{"recall": [R], "classes": {name: {"AP50": [R], "AP": [R]}}}``: precision at each
        recall point, area "all", the largest maxDets; ``AP50`` at IoU 0.5, ``AP`` the mean over
        IoU 0.50:0.95 (the curve whose mean is COCO AP). A class without ground truth (or not
        scored) is ``None`` instead of a list. Values are rounded to 4 decimals (a JSON file of
        them stays small).
    """
    cat_ids = list(params.catIds)
    iou50 = int(np.argmin(np.abs(np.asarray(params.iouThrs) - 0.5)))
    classes: dict[str, Any] = {}
    for name, cat_id in zip(class_names, contiguous_to_cat_id):
        p = precision[:, :, cat_ids.index(cat_id), 0, -1] if cat_id in cat_ids else None
        if p is None or (p < 0).all():
            classes[name] = None
            continue
        p = np.where(p < 0, np.nan, p)
        classes[name] = {"AP50": [_round_or_none(v) for v in p[iou50]],
                         "AP": [_round_or_none(v) for v in np.nanmean(p, axis=0)]}
    return {"recall": [round(float(r), 4) for r in params.recThrs], "classes": classes}


def _round_or_none(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 4)


def check_known_images(coco_gt: COCO, img_ids: Sequence[int]) -> None:
    """Raise ValueError if any processed image id is not in the ground truth ``coco_gt``."""
    known = set(coco_gt.getImgIds())
    unknown = [i for i in img_ids if i not in known]
    if unknown:
        raise ValueError(
            f"{len(unknown)} processed image ids are not in the ground truth, "
            f"e.g. {unknown[:5]}"
        )


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


def format_per_class_table(metrics: Mapping[str, float], class_names: Sequence[str], *, digits: int = 1) -> str:
    """Markdown table of the per-class metrics in ``metrics`` (keys ``bbox/AP-<name>``,
    ``bbox/AP50-<name>``, ``segm/AP-<name>`` ...), one row per class."""
    suffixes = sorted({k.split("/", 1)[0] + "/" + k.split("/", 1)[1].rsplit("-", 1)[0]
                       for k in metrics if any(k.endswith(f"-{n}") for n in class_names)})
    rows = {name: {s: metrics[f"{s}-{name}"] for s in suffixes if f"{s}-{name}" in metrics} for name in class_names}
    return format_metrics_table(rows, keys=suffixes, name_header="Class", digits=digits)
