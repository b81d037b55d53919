"""COCOEvaluator against hand-made ground truth and direct pycocotools runs."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from coco_reference import reference_stats

from icdistill.evaluation import COCOEvaluator, format_metrics_table

CAT_IDS = [1, 3, 7]  # non-contiguous on purpose
NAMES = ["person", "car", "dog"]
# image id -> (orig (h, w), resized (h, w)); image 3 has different x and y scales.
SIZES = {
    1: ((480, 640), (240, 320)),
    2: ((200, 320), (100, 160)),
    3: ((400, 500), (200, 300)),
}
# image id -> list of (category id, xywh); small < 32², medium, large > 96² pixels of area.
GT = {
    1: [(1, (10, 20, 20, 20)), (3, (100, 100, 50, 60)), (7, (300, 200, 150, 160))],
    2: [(1, (5, 5, 16, 24)), (3, (60, 40, 40, 45)), (1, (200, 100, 60, 50))],
    3: [(7, (50, 60, 120, 110)), (3, (300, 250, 25, 20)), (1, (200, 30, 70, 80))],
}


def make_gt() -> COCO:
    images = [{"id": i, "height": o[0], "width": o[1], "file_name": f"{i}.jpg"}
              for i, (o, _) in SIZES.items()]
    anns = []
    for img_id, objs in GT.items():
        for cat, (x, y, w, h) in objs:
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat,
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": c, "name": n} for c, n in zip(CAT_IDS, NAMES)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def to_resized(img_id: int, xywh: tuple[float, ...]) -> list[float]:
    """xywh in original pixels -> xyxy in the resized frame."""
    (oh, ow), (h, w) = SIZES[img_id]
    x, y, bw, bh = xywh
    sx, sy = w / ow, h / oh
    return [x * sx, y * sy, (x + bw) * sx, (y + bh) * sy]


def detections_for(img_id: int, items: list[tuple[int, tuple[float, ...], float]]) -> dict:
    """items: (category id, xywh original pixels, score) -> detector output in resized frame."""
    if not items:
        return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                "labels": torch.zeros(0, dtype=torch.int64)}
    return {
        "boxes": torch.tensor([to_resized(img_id, b) for _, b, _ in items], dtype=torch.float32),
        "scores": torch.tensor([s for _, _, s in items], dtype=torch.float32),
        "labels": torch.tensor([CAT_IDS.index(c) for c, _, _ in items], dtype=torch.int64),
    }


def run(evaluator: COCOEvaluator, per_image: dict[int, list]) -> None:
    ids = list(per_image)
    evaluator.process(
        ids,
        [SIZES[i][1] for i in ids],
        [SIZES[i][0] for i in ids],
        [detections_for(i, per_image[i]) for i in ids],
    )


def perfect() -> dict[int, list]:
    return {i: [(c, b, 1.0) for c, b in objs] for i, objs in GT.items()}


def test_perfect_detections_score_100():
    ev = COCOEvaluator(make_gt(), CAT_IDS)
    run(ev, perfect())
    m = ev.evaluate()
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert m[f"bbox/{key}"] == pytest.approx(100.0), key
    for name in NAMES:
        assert m[f"bbox/AP-{name}"] == pytest.approx(100.0)
    assert "Average Precision" in ev.summary


def test_wrong_labels_score_zero():
    ev = COCOEvaluator(make_gt(), CAT_IDS, class_names=["a", "b", "c"])
    wrong = {i: [(CAT_IDS[(CAT_IDS.index(c) + 1) % 3], b, s) for c, b, s in items]
             for i, items in perfect().items()}
    run(ev, wrong)
    m = ev.evaluate()
    assert m["bbox/AP"] == 0.0 and m["bbox/AP50"] == 0.0
    assert set(m) >= {"bbox/AP-a", "bbox/AP-b", "bbox/AP-c"}


def test_empty_detections_give_zeros(capsys):
    ev = COCOEvaluator(make_gt(), CAT_IDS)
    run(ev, {1: [], 2: []})
    m = ev.evaluate()
    assert len(m) == 6 + 3
    assert all(v == 0.0 for v in m.values())
    # And with nothing processed at all.
    ev.reset()
    assert all(v == 0.0 for v in ev.evaluate().values())
    assert capsys.readouterr().out == ""


def test_restricted_to_processed_images_and_nan_for_undefined():
    ev = COCOEvaluator(make_gt(), CAT_IDS)
    run(ev, {2: perfect()[2]})  # image 2 only: no large object, no dog
    m = ev.evaluate()
    assert m["bbox/AP"] == pytest.approx(100.0)
    assert math.isnan(m["bbox/APl"])
    assert math.isnan(m["bbox/AP-dog"])
    assert m["bbox/AP-person"] == pytest.approx(100.0)


def partial_case() -> dict[int, list]:
    rng = np.random.default_rng(0)
    out: dict[int, list] = {}
    for img_id, objs in GT.items():
        items = []
        for k, (c, (x, y, w, h)) in enumerate(objs):
            if (img_id + k) % 4 == 0:
                continue  # a miss
            j = rng.uniform(-0.15, 0.15, size=4) * np.array([w, h, w, h])
            items.append((c, (x + j[0], y + j[1], w + j[2], h + j[3]), float(rng.uniform(0.3, 1))))
        items.append((CAT_IDS[img_id % 3], (30.0, 30.0, 80.0, 60.0), 0.9))  # false positive
        out[img_id] = items
    return out


def test_parity_with_pycocotools():
    gt = make_gt()
    ev = COCOEvaluator(gt, CAT_IDS)
    case = partial_case()
    run(ev, case)
    m = ev.evaluate()

    results = [{"image_id": i, "category_id": c, "bbox": [float(v) for v in b], "score": s}
               for i, items in case.items() for c, b, s in items]
    for key, ref in reference_stats(gt, results, "bbox").items():
        assert m[f"bbox/{key}"] == pytest.approx(ref, abs=1e-4, nan_ok=True), key
    assert 0.0 < m["bbox/AP"] < 100.0


def test_gathered_predictions_match_single_process():
    case = partial_case()
    whole = COCOEvaluator(make_gt(), CAT_IDS)
    run(whole, case)
    rank0, rank1 = COCOEvaluator(make_gt(), CAT_IDS), COCOEvaluator(make_gt(), CAT_IDS)
    run(rank0, {1: case[1]})
    run(rank1, {2: case[2], 3: case[3]})
    rank0.add_predictions(rank1.predictions())
    a, b = whole.evaluate(), rank0.evaluate()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], nan_ok=True)


def test_process_validates_lengths():
    ev = COCOEvaluator(make_gt(), CAT_IDS)
    with pytest.raises(ValueError):
        ev.process([1, 2], [(10, 10)], [(10, 10)], [detections_for(1, [])])


def test_format_metrics_table():
    table = format_metrics_table({
        "teacher": {"bbox/AP": 40.21, "bbox/AP50": 60.0, "bbox/AP75": 43.0, "bbox/APs": 24.0,
                    "bbox/APm": 44.0, "bbox/APl": float("nan")},
        "student + ICD": {"bbox/AP": 38.5},
    })
    lines = table.strip().splitlines()
    assert lines[0] == "| Model | AP | AP50 | AP75 | APs | APm | APl |"
    assert len(lines) == 4
    assert "| teacher | 40.2 | 60.0 | 43.0 | 24.0 | 44.0 | n/a |" in lines
    assert lines[3].startswith("| student + ICD | 38.5 | - |")


def test_class_subset_scores_only_modelled_categories():
    ev = COCOEvaluator(make_gt(), [1, 3])  # the model knows person and car only
    case = {i: [(c, b, s) for c, b, s in items if c != 7] for i, items in perfect().items()}
    ids = list(case)
    ev.process(ids, [SIZES[i][1] for i in ids], [SIZES[i][0] for i in ids],
               [detections_for(i, case[i]) for i in ids])
    m = ev.evaluate()
    assert m["bbox/AP"] == pytest.approx(100.0)
    assert set(k for k in m if k.startswith("bbox/AP-")) == {"bbox/AP-person", "bbox/AP-car"}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parity_on_random_detections_with_crowd_regions_and_empty_images(seed):
    """Randomised detections over ground truth with crowd (ignore) regions and images without
    annotations: our numbers equal pycocotools' COCOeval on the same detections."""
    rng = np.random.default_rng(seed)
    images, anns, per_image = [], [], {}
    for img_id in range(1, 9):
        oh, ow = int(rng.integers(200, 500)), int(rng.integers(200, 600))
        images.append({"id": img_id, "height": oh, "width": ow, "file_name": f"{img_id}.jpg"})
        objs = [] if img_id in (3, 7) else [  # two images without any annotation
            (int(rng.choice(CAT_IDS)), rng.uniform(0, 0.6) * ow, rng.uniform(0, 0.6) * oh,
             rng.uniform(8, 0.4 * ow), rng.uniform(8, 0.4 * oh), int(rng.random() < 0.15))
            for _ in range(int(rng.integers(1, 7)))
        ]
        for c, x, y, w, h, crowd in objs:
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": crowd})
        dets = []
        for c, x, y, w, h, _ in objs:  # jittered hits with random scores and sometimes wrong class
            j = rng.normal(0, 0.1, 4) * [w, h, w, h]
            cat = c if rng.random() > 0.2 else int(rng.choice(CAT_IDS))
            dets.append((cat, (x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1)), float(rng.random())))
        for _ in range(int(rng.integers(0, 4))):  # false positives, also on the empty images
            dets.append((int(rng.choice(CAT_IDS)), (rng.uniform(0, ow / 2), rng.uniform(0, oh / 2), 30.0, 40.0),
                         float(rng.random())))
        per_image[img_id] = ((oh, ow), dets)
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c, "name": n} for c, n in zip(CAT_IDS, NAMES)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()

    ev = COCOEvaluator(gt, CAT_IDS)
    results = []
    for img_id, ((oh, ow), dets) in per_image.items():
        h, w = oh // 2, ow // 2  # the detector saw a half-size image
        boxes = torch.tensor([[x * w / ow, y * h / oh, (x + bw) * w / ow, (y + bh) * h / oh]
                              for _, (x, y, bw, bh), _ in dets], dtype=torch.float32).reshape(-1, 4)
        ev.process([img_id], [(h, w)], [(oh, ow)], [{
            "boxes": boxes, "scores": torch.tensor([s for *_, s in dets], dtype=torch.float32),
            "labels": torch.tensor([CAT_IDS.index(c) for c, _, _ in dets], dtype=torch.int64)}])
        # the reference gets the same boxes after our float32 round trip to the original frame
        back = boxes.clone()
        back[:, 0::2] *= ow / w
        back[:, 1::2] *= oh / h
        results += [{"image_id": img_id, "category_id": c, "score": s,
                     "bbox": [float(back[k, 0]), float(back[k, 1]), float(back[k, 2] - back[k, 0]), float(back[k, 3] - back[k, 1])]}
                    for k, (c, _, s) in enumerate(dets)]
    m = ev.evaluate()
    for key, ref in reference_stats(gt, results, "bbox").items():
        assert m[f"bbox/{key}"] == pytest.approx(ref, abs=1e-3, nan_ok=True), key
