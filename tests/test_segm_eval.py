"""COCOEvaluator's segm task against polygon ground truth and direct pycocotools runs."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from coco_reference import reference_stats

from icdistill.evaluation import COCOEvaluator
from icdistill.evaluation.coco import encode_masks

CAT_IDS = [2, 5]  # non-contiguous on purpose
NAMES = ["cell", "blob"]
# image id -> (orig (H, W), resized (h, w)): the detector sees every image at half resolution.
SIZES = {1: ((240, 320), (120, 160)), 2: ((200, 300), (100, 150))}
# image id -> (category id, polygon x0,y0,x1,y1,... in original pixels); medium/large objects so a
# half-resolution round trip stays far above IoU 0.95.
GT = {
    1: [
        (2, [20, 40, 80, 20, 130, 50, 120, 120, 60, 130, 15, 100]),
        (5, [180, 60, 300, 60, 300, 200, 240, 230, 180, 180]),
    ],
    2: [
        (5, [30, 30, 110, 40, 120, 150, 40, 140]),
        (2, [160, 50, 270, 40, 280, 120, 200, 170, 150, 120]),
    ],
}


def make_gt() -> COCO:
    images = [{"id": i, "height": o[0], "width": o[1], "file_name": f"{i}.jpg"} for i, (o, _) in SIZES.items()]
    anns = []
    for img_id, objs in GT.items():
        (oh, ow), _ = SIZES[img_id]
        for cat, poly in objs:
            rle = mask_util.merge(mask_util.frPyObjects([poly], oh, ow))
            anns.append({
                "id": len(anns) + 1, "image_id": img_id, "category_id": cat, "segmentation": [poly],
                "bbox": [float(v) for v in mask_util.toBbox(rle)], "area": float(mask_util.area(rle)),
                "iscrowd": 0,
            })
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": c, "name": n} for c, n in zip(CAT_IDS, NAMES)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def half_res(mask: np.ndarray) -> torch.Tensor:
    """uint8 [H, W] original-size mask -> float [1, H/2, W/2] probabilities (2x2 average)."""
    return F.avg_pool2d(torch.from_numpy(mask).float()[None, None], 2)[0]


def detections(gt: COCO, img_id: int, shift: tuple[int, int] | None = None, scores=None) -> dict:
    """Detector output in the resized frame for the GT objects of ``img_id``: exact boxes, masks
    rasterised from the GT polygons (moved by ``shift`` = (dy, dx) original pixels if given)."""
    (oh, ow), (h, w) = SIZES[img_id]
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[img_id]))
    masks, boxes = [], []
    for ann in anns:
        m = gt.annToMask(ann)
        if shift is not None:
            m = np.roll(m, shift, axis=(0, 1))
        masks.append(half_res(m))
        x, y, bw, bh = ann["bbox"]
        boxes.append([x * w / ow, y * h / oh, (x + bw) * w / ow, (y + bh) * h / oh])
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores or [1.0] * len(anns), dtype=torch.float32),
        "labels": torch.tensor([CAT_IDS.index(a["category_id"]) for a in anns], dtype=torch.int64),
        "masks": torch.stack(masks),  # [K, 1, h, w]
    }


def run(ev: COCOEvaluator, dets: dict[int, dict]) -> None:
    ids = list(dets)
    ev.process(ids, [SIZES[i][1] for i in ids], [SIZES[i][0] for i in ids], [dets[i] for i in ids])


def test_perfect_masks_score_100_through_resize():
    gt = make_gt()
    ev = COCOEvaluator(gt, CAT_IDS, tasks=("bbox", "segm"))
    run(ev, {i: detections(gt, i) for i in SIZES})
    m = ev.evaluate()
    for task in ("bbox", "segm"):
        assert m[f"{task}/AP"] >= 99.0 and m[f"{task}/AP50"] >= 99.0 and m[f"{task}/AP75"] >= 99.0, (task, m)
        for name in NAMES:
            assert m[f"{task}/AP-{name}"] >= 99.0, (task, name)
    assert np.isnan(m["segm/APs"])  # no small object in this ground truth
    assert "[segm]" in ev.summary and "[bbox]" in ev.summary
    # Records are JSON-serialisable (RLE counts are str) and masks are in original pixels.
    json.dumps(ev.predictions())
    inst = ev.predictions()[0]["instances"][0]
    assert inst["segmentation"]["size"] == list(SIZES[1][0])


def test_shifted_masks_score_zero_with_bbox_unaffected():
    gt = make_gt()
    dets = {i: detections(gt, i, shift=(SIZES[i][0][0] // 2, SIZES[i][0][1] // 2)) for i in SIZES}
    ev = COCOEvaluator(gt, CAT_IDS, tasks=("bbox", "segm"))
    run(ev, dets)
    # The shifted masks do not overlap any ground truth of their class enough to match.
    for p in ev.predictions():
        gts = gt.loadAnns(gt.getAnnIds(imgIds=[p["image_id"]]))
        ious = mask_util.iou([i["segmentation"] for i in p["instances"]], [gt.annToRLE(a) for a in gts], [0] * len(gts))
        assert np.max(ious) < 0.3
    m = ev.evaluate()
    assert m["segm/AP"] == 0.0 and m["segm/AP50"] == 0.0
    assert m["bbox/AP"] >= 99.0
    bbox_only = COCOEvaluator(gt, CAT_IDS)
    run(bbox_only, dets)
    b = bbox_only.evaluate()
    assert set(b) == {k for k in m if k.startswith("bbox/")}
    assert all(b[k] == pytest.approx(m[k], nan_ok=True) for k in b)


def test_parity_with_pycocotools_segm():
    gt = make_gt()
    ev = COCOEvaluator(gt, CAT_IDS, tasks=("segm",))
    d1 = detections(gt, 1, scores=[0.9, 0.6])
    d2 = detections(gt, 2, shift=(12, 9), scores=[0.8, 0.7])  # partial overlap: IoU between 0.5 and 0.95
    # A false positive in image 1: a copy of the first mask, moved far, with a mid score.
    fp = detections(gt, 1, shift=(0, 160), scores=[0.75, 0.1])
    d1 = {k: torch.cat([d1[k], fp[k][:1]]) for k in d1}
    run(ev, {1: d1, 2: d2})
    m = ev.evaluate()
    assert set(m) == {f"segm/{k}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")} | {
        f"segm/AP-{n}" for n in NAMES
    }

    results = [
        {"image_id": p["image_id"], "category_id": i["category_id"], "segmentation": i["segmentation"],
         "score": i["score"]}
        for p in ev.predictions() for i in p["instances"]
    ]
    for key, ref in reference_stats(gt, results, "segm").items():
        assert m[f"segm/{key}"] == pytest.approx(ref, abs=1e-4, nan_ok=True), key
    assert 0.0 < m["segm/AP"] < 100.0


def test_encode_masks_exact_at_original_size_and_resized_otherwise():
    gt = make_gt()
    ann = gt.loadAnns(gt.getAnnIds(imgIds=[1]))[0]
    full = gt.annToMask(ann)  # [240, 320]
    (rle,) = encode_masks(torch.from_numpy(full).float()[None, None], (240, 320))
    assert isinstance(rle["counts"], str)
    assert np.array_equal(mask_util.decode(rle), full)
    (rle_half,) = encode_masks(half_res(full)[None], (240, 320))
    decoded = mask_util.decode(rle_half)
    assert decoded.shape == (240, 320)
    assert mask_util.iou([rle_half], [rle], [0])[0, 0] > 0.95


def test_segm_validation_and_empty():
    gt = make_gt()
    with pytest.raises(ValueError, match="tasks"):
        COCOEvaluator(gt, CAT_IDS, tasks=("keypoints",))
    ev = COCOEvaluator(gt, CAT_IDS, tasks=("bbox", "segm"))
    det = detections(gt, 1)
    no_masks = {k: v for k, v in det.items() if k != "masks"}
    with pytest.raises(ValueError, match="masks"):
        run(ev, {1: no_masks})
    with pytest.raises(ValueError, match=r"\[K, 1, h, w\]"):
        run(ev, {1: dict(det, masks=det["masks"][:, :, :50])})
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 1, 120, 160)}
    ev.reset()
    run(ev, {1: empty})
    m = ev.evaluate()
    assert m["segm/AP"] == 0.0 and m["bbox/AP"] == 0.0 and "segm/AP-cell" in m
