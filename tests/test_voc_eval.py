"""VOCEvaluator against hand-computed Pascal VOC APs."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from icdistill.data import CocoDetection, load_voc
from icdistill.evaluation import VOCEvaluator
from icdistill.evaluation.voc import IOU_THRESHOLDS, voc_ap


def _coco(images: list[tuple[int, int, int]], anns: list[dict], names=("cell",)) -> COCO:
    """GT from ``(id, width, height)`` images and ``{"image_id", "bbox", ...}`` annotations."""
    data = {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": w, "height": h}
                   for i, w, h in images],
        "annotations": [{"id": k + 1, "category_id": 1, "iscrowd": 0,
                         "area": a["bbox"][2] * a["bbox"][3], **a} for k, a in enumerate(anns)],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)],
    }
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _det(boxes, scores, labels=None) -> dict:
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.zeros(len(boxes), dtype=torch.int64) if labels is None else torch.tensor(labels)
    return {"boxes": boxes, "scores": torch.tensor(scores, dtype=torch.float32), "labels": labels}


# One 100x80 image: two ordinary boxes and one difficult box (COCO xywh, 0-based).
GT = [
    {"image_id": 1, "bbox": [0.0, 0.0, 20.0, 20.0]},                    # G1
    {"image_id": 1, "bbox": [50.0, 0.0, 20.0, 20.0]},                   # G2
    {"image_id": 1, "bbox": [0.0, 50.0, 20.0, 20.0], "difficult": 1},   # G3 difficult
]
# Detections in xyxy pixels of a half-size (50x40) resized image, so process() must scale x2.
DETS = _det(
    [[0, 0, 10, 10],       # s=.9: G1 exactly (IoU 1)             -> TP
     [40, 30, 45, 35],     # s=.8: overlaps nothing               -> FP
     [0, 25, 10, 35],      # s=.7: G3 exactly (difficult)         -> ignored
     [25, 0, 35, 8]],      # s=.6: G2 with IoU 16/20 = 0.8        -> TP (at 0.5)
    [0.9, 0.8, 0.7, 0.6],
)


def _evaluator(use_07: bool) -> VOCEvaluator:
    ev = VOCEvaluator(_coco([(1, 100, 80)], GT), [1], use_07_metric=use_07)
    ev.process([1], [(40, 50)], [(80, 100)], [DETS])
    return ev


def test_hand_computed_ap50():
    # At IoU 0.5: TP, FP, (ignored), TP over npos = 2 positives (the difficult box is not one).
    # cumulative tp = 1, 1, 1, 2; fp = 0, 1, 1, 1
    rec = [1 / 2, 1 / 2, 1 / 2, 2 / 2]
    prec = [1 / 1, 1 / 2, 1 / 2, 2 / 3]
    # 11-point: recall thresholds 0, .1, ..., .5 (6 of them) reach precision 1; .6 .. 1.0 (5)
    # are only reached by the last point, precision 2/3.
    ap07 = (6 * 1.0 + 5 * (2 / 3)) / 11
    # area: recall 0 -> .5 at envelope precision 1, then .5 -> 1 at envelope precision 2/3.
    ap_area = 0.5 * 1.0 + 0.5 * (2 / 3)
    assert voc_ap(np.array(rec), np.array(prec), True) == pytest.approx(ap07)
    assert voc_ap(np.array(rec), np.array(prec), False) == pytest.approx(ap_area)

    m07 = _evaluator(True).evaluate()
    assert m07["bbox/AP50"] == pytest.approx(100 * ap07)
    assert m07["bbox/AP50-cell"] == pytest.approx(100 * ap07)
    m_area = _evaluator(False).evaluate()
    assert m_area["bbox/AP50"] == pytest.approx(100 * ap_area)

    # From IoU 0.8 only the first detection is a TP: rec .5, .5, .5, .5; prec 1, .5, .5, 1/3.
    # 11-point: 6 thresholds at precision 1 -> 6/11; area: .5 * 1.
    ev = _evaluator(True)
    per_class = ev.per_class_ap()["cell"]
    for t, ap in zip(IOU_THRESHOLDS, per_class):
        expected = ap07 if t < 0.8 else 6 / 11   # IoU 0.8 is not > 0.8: a FP from 0.80 up
        assert ap == pytest.approx(100 * expected), t
    assert m07["bbox/AP"] == pytest.approx(np.mean(per_class))
    assert m07["bbox/AP75"] == pytest.approx(100 * ap07)
    assert ev.evaluate() == pytest.approx(m07, nan_ok=True) and "cell" in ev.summary


def test_perfect_detections_and_skipped_class():
    gt = _coco([(1, 48, 32), (2, 48, 32)],
               [{"image_id": 1, "bbox": [2.0, 3.0, 10.0, 12.0]},
                {"image_id": 2, "bbox": [20.0, 4.0, 25.5, 20.0]},
                {"image_id": 2, "bbox": [0.0, 0.0, 5.0, 5.0], "iscrowd": 1}],
               names=("cell", "ghost"))
    ev = VOCEvaluator(gt, [1, 2])
    ev.process([1, 2], [(32, 48), (32, 48)], [(32, 48), (32, 48)],
               [_det([[2, 3, 12, 15]], [0.5]), _det([[20, 4, 45.5, 24]], [0.7])])
    m = ev.evaluate()
    assert m["bbox/AP"] == pytest.approx(100.0) and m["bbox/AP50"] == pytest.approx(100.0)
    assert m["bbox/AP75"] == pytest.approx(100.0) and m["bbox/AP-cell"] == pytest.approx(100.0)
    # "ghost" has no ground truth: NaN and left out of the means
    assert math.isnan(m["bbox/AP-ghost"]) and math.isnan(m["bbox/AP50-ghost"])

    # gathered predictions give the same result; reset forgets them
    other = VOCEvaluator(gt, [1, 2], use_07_metric=False)
    other.add_predictions(ev.predictions())
    assert other.evaluate()["bbox/AP"] == pytest.approx(100.0)
    other.reset()
    other.process([1], [(32, 48)], [(32, 48)], [_det([], [])])
    assert other.evaluate()["bbox/AP50"] == 0.0  # class with GT, no detection: AP 0


def test_ap_between_iou_thresholds():
    # GT 10x10 box, detection covering 10 x 6.25 of it: IoU = 62.5 / 100 = 0.625, strictly
    # between the thresholds 0.60 and 0.65: a TP at 0.50, 0.55, 0.60 (AP 100), a FP above (AP 0).
    gt = _coco([(1, 48, 32)], [{"image_id": 1, "bbox": [10.0, 10.0, 10.0, 10.0]}])
    for use_07 in (True, False):
        ev = VOCEvaluator(gt, [1], ["cell"], use_07_metric=use_07)
        ev.process([1], [(32, 48)], [(32, 48)], [_det([[10, 10, 20, 16.25]], [0.9])])
        m = ev.evaluate()
        assert m["bbox/AP50"] == pytest.approx(100.0) and m["bbox/AP75"] == pytest.approx(0.0)
        assert m["bbox/AP"] == pytest.approx(100.0 * 3 / 10)
        assert m["bbox/AP-cell"] == pytest.approx(30.0)


def test_voc_loader_to_evaluator(tmp_path):
    """VOC data -> CocoDetection.from_dict -> VOCEvaluator: boxes mapped back give 100."""
    root = tmp_path / "voc"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "JPEGImages").mkdir()
    Image.new("RGB", (48, 32)).save(root / "JPEGImages" / "x.jpg")
    (root / "Annotations" / "x.xml").write_text(
        "<annotation><size><width>48</width><height>32</height></size>"
        "<object><name>blob</name><bndbox><xmin>3</xmin><ymin>4</ymin><xmax>20</xmax>"
        "<ymax>30</ymax></bndbox></object>"
        "<object><name>blob</name><difficult>1</difficult><bndbox><xmin>30</xmin><ymin>1"
        "</ymin><xmax>40</xmax><ymax>9</ymax></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("x\n")
    ds = CocoDetection.from_dict(*load_voc(root, ("test",)))
    _, target = ds[0]
    ev = VOCEvaluator(ds.coco, ds.contiguous_to_cat_id, ds.class_names)
    ev.process([target["image_id"]], [(32, 48)], [target["orig_size"]],
               [{"boxes": target["boxes"], "scores": torch.ones(1), "labels": target["labels"]}])
    m = ev.evaluate()
    assert target["boxes"].tolist() == [[2.0, 3.0, 20.0, 30.0]]
    assert m["bbox/AP"] == pytest.approx(100.0) and m["bbox/AP50-blob"] == pytest.approx(100.0)
