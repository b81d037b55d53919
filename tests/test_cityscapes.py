"""Cityscapes polygon reader: a tiny two-city fixture tree written in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icdistill.data import CITYSCAPES_CLASSES, CocoDetection, load_cityscapes
from icdistill.errors import DataError

W, H = 64, 32

# city -> stem -> objects (label, polygon)
TREE = {
    "aachen": {
        "aachen_000000_000019": [
            ("road", [[0, 20], [63, 20], [63, 31], [0, 31]]),
            ("car", [[4, 10], [20, 10], [20, 22], [4, 22]]),
            ("person", [[30, 2], [36, 2], [36, 18], [30, 18]]),
            ("cargroup", [[40, 12], [60, 12], [60, 24], [40, 24]]),
        ],
    },
    "bochum": {
        "bochum_000000_000313": [
            ("person", [[10, 5], [18, 3], [16, 25]]),
            ("sky", [[0, 0], [63, 0], [63, 4]]),
        ],
    },
}


def _write_tree(root: Path, split: str = "train") -> Path:
    for city, stems in TREE.items():
        img_dir = root / "leftImg8bit" / split / city
        gt_dir = root / "gtFine" / split / city
        img_dir.mkdir(parents=True)
        gt_dir.mkdir(parents=True)
        for stem, objs in stems.items():
            Image.new("RGB", (W, H), (90, 90, 90)).save(img_dir / f"{stem}_leftImg8bit.png")
            data = {"imgHeight": H, "imgWidth": W,
                    "objects": [{"label": lab, "polygon": poly} for lab, poly in objs]}
            (gt_dir / f"{stem}_gtFine_polygons.json").write_text(json.dumps(data))
    return root


@pytest.fixture
def cs_root(tmp_path) -> Path:
    return _write_tree(tmp_path / "cityscapes")


def test_load_cityscapes(cs_root):
    coco, image_root = load_cityscapes(cs_root, "train")
    assert image_root == cs_root / "leftImg8bit" / "train"
    assert [c["name"] for c in coco["categories"]] == list(CITYSCAPES_CLASSES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, 9))
    assert [im["file_name"] for im in coco["images"]] == [
        "aachen/aachen_000000_000019_leftImg8bit.png",
        "bochum/bochum_000000_000313_leftImg8bit.png",
    ]
    assert all((image_root / im["file_name"]).is_file() for im in coco["images"])
    assert [(im["width"], im["height"]) for im in coco["images"]] == [(W, H), (W, H)]
    anns = coco["annotations"]
    # road and sky are ignored
    got = [(a["image_id"], a["category_id"], a["iscrowd"]) for a in anns]
    car, person = 1 + CITYSCAPES_CLASSES.index("car"), 1 + CITYSCAPES_CLASSES.index("person")
    assert got == [(1, car, 0), (1, person, 0), (1, car, 1), (2, person, 0)]
    assert [a["id"] for a in anns] == [1, 2, 3, 4]
    assert anns[0]["bbox"] == [4, 10, 16, 12]
    assert anns[0]["segmentation"] == [[4, 10, 20, 10, 20, 22, 4, 22]]
    assert anns[2]["bbox"] == [40, 12, 20, 12]
    assert anns[3]["bbox"] == [10, 3, 8, 22]  # triangle: extent of its vertices
    # pycocotools polygon area: about the geometric area
    assert abs(anns[0]["area"] - 16 * 12) <= 16 + 12
    tri = 0.5 * abs((18 - 10) * (25 - 5) - (16 - 10) * (3 - 5))
    assert abs(anns[3]["area"] - tri) < 0.25 * tri


def test_cityscapes_dataset_with_masks(cs_root):
    coco, image_root = load_cityscapes(cs_root)
    ds = CocoDetection.from_dict(coco, image_root, with_masks=True, source="cs train")
    assert ds.class_names == list(CITYSCAPES_CLASSES)
    assert ds.report["counts"]["crowd"] == 1
    img, t = ds[0]
    assert img.shape == (3, H, W)
    assert t["labels"].tolist() == [CITYSCAPES_CLASSES.index("car"),
                                    CITYSCAPES_CLASSES.index("person")]
    assert t["masks"].shape == (2, H, W) and t["masks"].dtype == torch.uint8
    for m, b in zip(t["masks"], t["boxes"]):
        ys, xs = torch.nonzero(m, as_tuple=True)
        ext = [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
        assert np.allclose(ext, b.tolist(), atol=1.0), (ext, b.tolist())
    # the COCO ground truth keeps the crowd region for evaluation
    assert len(ds.coco.getAnnIds(imgIds=[1])) == 3


def test_cityscapes_errors(cs_root, tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_cityscapes(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"leftImg8bit[/\\]val"):
        load_cityscapes(cs_root, "val")
    bare = tmp_path / "bare"
    (bare / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"gtFine[/\\]train"):
        load_cityscapes(bare)

    broken = cs_root / "gtFine" / "train" / "bochum" / "bochum_000000_000313_gtFine_polygons.json"
    good = broken.read_text()
    broken.write_text("{not json")
    with pytest.raises(DataError, match="bochum_000000_000313_gtFine_polygons.json"):
        load_cityscapes(cs_root)
    broken.write_text(json.dumps({"imgHeight": H, "imgWidth": W,
                                  "objects": [{"label": "car", "polygon": [[1, 2], [3]]}]}))
    with pytest.raises(DataError, match="bochum_000000_000313_gtFine_polygons.json"):
        load_cityscapes(cs_root)
    broken.write_text(good)

    broken.unlink()
    with pytest.raises(DataError, match="bochum_000000_000313_leftImg8bit.png.*no polygon"):
        load_cityscapes(cs_root)
