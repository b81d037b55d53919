"""Instance masks through the data pipeline: decoding, transforms, sanitising, collate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from icdistill.data import CocoDetection, build_transforms
from icdistill.errors import DataError
from icdistill.structures import collate_batch

# a.png is 40x30 (w x h), b.png 24x16


def _rle_rect(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> dict:
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _uncompressed_rle(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> dict:
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    flat = m.flatten(order="F")  # column-major, as COCO RLE
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = int(v), 1
    counts.append(run)
    return {"size": [h, w], "counts": counts}


ANNOTATIONS = [
    # image a (id 1): rectangle polygon, triangle polygon, crowd, no segmentation
    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 15],
     "segmentation": [[5, 5, 15, 5, 15, 20, 5, 20]]},
    {"id": 2, "image_id": 1, "category_id": 2, "bbox": [20, 2, 18, 10],
     "segmentation": [[20, 2, 38, 2, 38, 12]]},
    {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "iscrowd": 1,
     "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
    {"id": 4, "image_id": 1, "category_id": 2, "bbox": [2, 22, 6, 5]},
    # image b (id 2): compressed RLE, a thin box (degenerate after halving), a box leaving
    # the image (repaired, keeps its mask), an uncompressed RLE
    {"id": 5, "image_id": 2, "category_id": 1, "bbox": [3, 4, 8, 6],
     "segmentation": _rle_rect(16, 24, 3, 4, 11, 10)},
    {"id": 6, "image_id": 2, "category_id": 2, "bbox": [14, 2, 1.5, 10],
     "segmentation": [[14, 2, 15.5, 2, 15.5, 12, 14, 12]]},
    {"id": 7, "image_id": 2, "category_id": 1, "bbox": [18, 8, 10, 10],
     "segmentation": [[18, 8, 28, 8, 28, 18, 18, 18]]},
    {"id": 8, "image_id": 2, "category_id": 2, "bbox": [0, 12, 4, 4],
     "segmentation": _uncompressed_rle(16, 24, 0, 12, 4, 16)},
]


@pytest.fixture()
def mask_coco(tmp_path) -> tuple[Path, Path]:
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(img_dir / "a.png")
    Image.new("RGB", (24, 16), (200, 10, 30)).save(img_dir / "b.png")
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                   {"id": 2, "file_name": "b.png", "width": 24, "height": 16}],
        "categories": [{"id": 1, "name": "blob"}, {"id": 2, "name": "tri"}],
        "annotations": ANNOTATIONS,
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return img_dir, ann


def _extent(mask: torch.Tensor) -> list[float]:
    """xyxy pixel extent of a 0/1 mask [h, w] (x1, y1 exclusive)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]


def _assert_aligned(target: dict, h: int, w: int, tol: float) -> None:
    masks, boxes = target["masks"], target["boxes"]
    assert masks.dtype == torch.uint8
    assert masks.shape == (boxes.shape[0], h, w)
    assert set(masks.unique().tolist()) <= {0, 1}
    for m, b in zip(masks, boxes):
        assert m.any()
        ext = _extent(m)
        assert np.allclose(ext, b.tolist(), atol=tol), (ext, b.tolist())


def test_masks_decoded_and_aligned(mask_coco):
    img_dir, ann = mask_coco
    ds = CocoDetection(img_dir, ann, with_masks=True)
    assert ds.with_masks
    img, t = ds[0]
    assert t["labels"].tolist() == [0, 1, 1]  # crowd left out
    _assert_aligned(t, 30, 40, tol=1.0)
    # the annotation without a segmentation is filled from its box, exactly
    assert _extent(t["masks"][2]) == [2.0, 22.0, 8.0, 27.0]
    assert int(t["masks"][2].sum()) == 6 * 5
    # the triangle covers about half its box
    assert 0.3 < t["masks"][1].float().mean() * 40 * 30 / (18 * 10) < 0.7

    img, t = ds[1]
    assert ds.report["counts"]["repaired_boxes"] == 1
    assert t["boxes"][2].tolist() == [18.0, 8.0, 24.0, 16.0]  # clipped box keeps its mask
    _assert_aligned(t, 16, 24, tol=1.0)
    assert int(t["masks"][0].sum()) == 8 * 6  # compressed RLE
    assert int(t["masks"][3].sum()) == 4 * 4  # uncompressed RLE
    assert ds.load_masks(1).shape == (4, 16, 24)


def test_flip_and_resize_move_masks(mask_coco):
    img_dir, ann = mask_coco
    plain = CocoDetection(img_dir, ann, with_masks=True)
    tf = build_transforms(train=True, min_sizes=[60], max_size=1000, flip_prob=1.0)
    ds = CocoDetection(img_dir, ann, transforms=tf, with_masks=True)
    img, t = ds[0]
    assert img.shape == (3, 60, 80)
    _assert_aligned(t, 60, 80, tol=2.0)
    # the rectangle [5, 5, 15, 20] is doubled and mirrored: [80 - 30, 10, 80 - 10, 40]
    assert np.allclose(_extent(t["masks"][0]), [50, 10, 70, 40], atol=2)
    # the flipped mask is the original mask, resized and mirrored
    orig = plain[0][1]["masks"][0]
    up = orig.repeat_interleave(2, 0).repeat_interleave(2, 1).flip(-1)
    assert (up != t["masks"][0]).float().mean() < 0.02

    img, t = ds[1]
    assert img.shape == (3, 60, 90)
    _assert_aligned(t, 60, 90, tol=2.0)


def test_degenerate_box_drops_its_mask(mask_coco):
    img_dir, ann = mask_coco
    tf = build_transforms(train=False, min_sizes=[8], max_size=1000)
    ds = CocoDetection(img_dir, ann, transforms=tf, with_masks=True)
    img, t = ds[1]
    assert img.shape == (3, 8, 12)
    # the 1.5 px wide box (id 6, label 1) becomes 0.75 px wide and is dropped with its mask
    assert t["boxes"].shape == (3, 4)
    assert t["labels"].tolist() == [0, 0, 1]
    assert t["masks"].shape == (3, 8, 12)
    _assert_aligned(t, 8, 12, tol=1.0)


def test_collate_keeps_masks(mask_coco):
    img_dir, ann = mask_coco
    tf = build_transforms(train=True, min_sizes=[40], max_size=1000, flip_prob=0.5)
    ds = CocoDetection(img_dir, ann, transforms=tf, with_masks=True)
    batch = collate_batch([ds[(0, 1)], ds[(1, 2)]])
    assert batch.image_sizes == [(40, 53), (40, 60)]
    for tgt, (h, w) in zip(batch.targets, batch.image_sizes):
        assert tgt["masks"].dtype == torch.uint8
        assert tgt["masks"].shape == (tgt["boxes"].shape[0], h, w)  # not padded
    moved = batch.to("cpu")
    assert torch.equal(moved.targets[1]["masks"], batch.targets[1]["masks"])


def test_without_masks_unchanged(mask_coco):
    img_dir, ann = mask_coco
    tf = build_transforms(train=True, min_sizes=[40], max_size=1000, flip_prob=1.0)
    ds = CocoDetection(img_dir, ann, transforms=tf)
    assert not ds.with_masks
    img, t = ds[0]
    assert set(t) == {"boxes", "labels", "image_id", "orig_size"}
    batch = collate_batch([ds[0], ds[1]])
    assert all(set(tgt) == {"boxes", "labels"} for tgt in batch.targets)
    with pytest.raises(DataError, match="with_masks=True"):
        ds.load_masks(0)
    # same boxes with and without masks
    tm = CocoDetection(img_dir, ann, transforms=tf, with_masks=True)[0][1]
    assert torch.equal(tm["boxes"], t["boxes"]) and torch.equal(tm["labels"], t["labels"])


def test_malformed_segmentation_names_image(mask_coco, tmp_path):
    img_dir, ann = mask_coco
    data = json.loads(ann.read_text())
    data["annotations"][4]["segmentation"] = {"size": [5, 5], "counts": "abc"}
    with pytest.raises(DataError, match=r"annotation id 5 of image b\.png.*RLE size"):
        CocoDetection.from_dict(data, img_dir, with_masks=True, source="bad")
    data["annotations"][4]["segmentation"] = [[1, 2, "x", 4, 5, 6]]
    with pytest.raises(DataError, match="non-numeric"):
        CocoDetection.from_dict(data, img_dir, with_masks=True, source="bad")
    # without masks the segmentation is not looked at
    assert len(CocoDetection.from_dict(data, img_dir, source="bad")) == 2
