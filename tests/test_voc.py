"""VOC and YOLO readers: tiny fixtures written in tmp_path, plus one check on the real BCCD set."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from icdistill.data import CocoDetection, load_voc, load_voc_folder, load_yolo
from icdistill.data.voc import VOC_CLASSES
from icdistill.errors import DataError

W, H = 48, 32
BCCD = Path("/work/shared/data/bccd")


def _xml(filename: str, objects: list[tuple[str, tuple[int, int, int, int], int]],
         size: bool = True) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects)
    sz = f"<size><width>{W}</width><height>{H}</height><depth>3</depth></size>" if size else ""
    return f"<annotation><filename>{filename}</filename>{sz}{objs}</annotation>"


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (120, 30, 200)).save(path)


# id -> objects (name, 1-based VOC box, difficult)
OBJECTS = {
    "a": [("cat", (1, 1, 10, 20), 0), ("dog", (5, 6, 40, 30), 1)],
    "b": [("dog", (11, 3, 30, 12), 0)],
    "c": [("cat", (2, 2, 48, 32), 0)],
}


def _write_voc(root: Path, objects=OBJECTS, splits=None) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for stem, objs in objects.items():
        _image(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(_xml(f"{stem}.jpg", objs))
    splits = splits or {"train": ["a", "b"], "test": ["c"]}
    for name, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture
def voc_root(tmp_path) -> Path:
    return _write_voc(tmp_path / "voc")


def test_load_voc_boxes_classes_difficult(voc_root):
    coco, image_root = load_voc(voc_root, ("train",))
    assert image_root == voc_root / "JPEGImages"
    # cat and dog are VOC names, so the 20 VOC classes are used, ids 1..20
    assert [c["name"] for c in coco["categories"]] == list(VOC_CLASSES)
    assert [c["id"] for c in coco["categories"]] == list(range(1, 21))
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        (1, "a.jpg", W, H), (2, "b.jpg", W, H)]
    anns = coco["annotations"]
    assert len(anns) == 3
    cat_id, dog_id = VOC_CLASSES.index("cat") + 1, VOC_CLASSES.index("dog") + 1
    # VOC (1, 1, 10, 20) 1-based inclusive -> x1 = 0, y1 = 0, x2 = 10, y2 = 20 -> xywh
    assert anns[0]["bbox"] == [0.0, 0.0, 10.0, 20.0] and anns[0]["category_id"] == cat_id
    assert anns[0]["area"] == 200.0 and anns[0]["iscrowd"] == 0 and anns[0]["difficult"] == 0
    assert anns[1]["bbox"] == [4.0, 5.0, 36.0, 25.0] and anns[1]["category_id"] == dog_id
    assert anns[1]["iscrowd"] == 1 and anns[1]["difficult"] == 1
    assert anns[2]["bbox"] == [10.0, 2.0, 20.0, 10.0] and anns[2]["image_id"] == 2

    kept, _ = load_voc(voc_root, "train", keep_difficult=True)
    assert kept["annotations"][1]["iscrowd"] == 0 and kept["annotations"][1]["difficult"] == 1

    # several splits joined; a custom class list (ids in its order) drops other classes
    both, _ = load_voc(voc_root, ("train", "test"), class_names=["dog"])
    assert [i["file_name"] for i in both["images"]] == ["a.jpg", "b.jpg", "c.jpg"]
    assert both["categories"] == [{"id": 1, "name": "dog", "supercategory": "none"}]
    assert [a["bbox"] for a in both["annotations"]] == [[4.0, 5.0, 36.0, 25.0],
                                                         [10.0, 2.0, 20.0, 10.0]]


def test_non_voc_names_sorted_over_all_xmls(tmp_path):
    objs = {"a": [("zebra", (1, 1, 5, 5), 0)], "b": [("ant", (1, 1, 5, 5), 0)]}
    root = _write_voc(tmp_path / "v", objs, {"train": ["a"], "test": ["b"]})
    train, _ = load_voc(root, ("train",))
    test, _ = load_voc(root, ("test",))
    assert [c["name"] for c in train["categories"]] == ["ant", "zebra"]
    assert train["categories"] == test["categories"]


def test_from_dict_excludes_difficult(voc_root):
    coco, image_root = load_voc(voc_root, ("train",))
    ds = CocoDetection.from_dict(coco, image_root, source=f"{voc_root} train")
    assert ds.ann_file is None and ds.source == f"{voc_root} train"
    assert len(ds) == 2 and ds.num_classes == 20 and ds.report["counts"]["crowd"] == 1
    img, t = ds[0]
    assert img.shape == (3, H, W) and img.dtype == torch.float32
    assert t["boxes"].tolist() == [[0.0, 0.0, 10.0, 20.0]]  # the difficult dog is not a target
    assert t["labels"].tolist() == [VOC_CLASSES.index("cat")]
    assert t["image_id"] == 1 and t["orig_size"] == (H, W)
    # the difficult box stays in the evaluation ground truth, as a crowd region
    assert len(ds.coco.getAnnIds(imgIds=[1], iscrowd=None)) == 2
    # the caller's dict is not modified
    assert "id" in coco["annotations"][0] and coco == load_voc(voc_root, ("train",))[0]
    with pytest.raises(DataError, match="my-source"):
        CocoDetection.from_dict({"images": [], "categories": []}, image_root, source="my-source")


def test_voc_errors(voc_root, tmp_path):
    with pytest.raises(DataError, match="val.txt"):
        load_voc(voc_root, ("val",))
    (voc_root / "Annotations" / "b.xml").write_text("<annotation><size>")
    with pytest.raises(DataError, match="b.xml"):
        load_voc(voc_root, ("train",))
    (voc_root / "Annotations" / "b.xml").write_text(_xml("b.jpg", [], size=False))
    with pytest.raises(DataError, match=r"b\.xml.*size"):
        load_voc(voc_root, ("train",))
    (voc_root / "Annotations" / "b.xml").unlink()
    with pytest.raises(DataError, match=r"'b'.*b\.xml"):
        load_voc(voc_root, ("train",))
    bare = tmp_path / "bare"
    (bare / "ImageSets" / "Main").mkdir(parents=True)
    with pytest.raises(DataError, match="Annotations"):
        load_voc(bare)


def test_vocdevkit_07_plus_12(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    _write_voc(devkit / "VOC2007", {"000001": [("cat", (1, 1, 10, 10), 0)],
                                    "000002": [("dog", (2, 2, 9, 9), 0)]},
               {"trainval": ["000001", "000002"]})
    _write_voc(devkit / "VOC2012", {"2008_000001": [("person", (3, 3, 20, 20), 1)],
                                    "000001": [("bird", (1, 1, 4, 4), 0)]},
               {"trainval": ["2008_000001", "000001"]})
    coco, image_root = load_voc(devkit, ("trainval",), years=("2007", "2012"))
    assert image_root == devkit
    assert [i["file_name"] for i in coco["images"]] == [
        "VOC2007/JPEGImages/000001.jpg", "VOC2007/JPEGImages/000002.jpg",
        "VOC2012/JPEGImages/2008_000001.jpg", "VOC2012/JPEGImages/000001.jpg"]
    # the same VOC id in two years stays two images with distinct ids
    assert [i["voc_id"] for i in coco["images"]][1:] == [
        "VOC2007/000002", "VOC2012/2008_000001", "VOC2012/000001"]
    assert [i["id"] for i in coco["images"]] == [1, 2, 3, 4]
    assert len(coco["annotations"]) == 4 and coco["annotations"][2]["iscrowd"] == 1
    ds = CocoDetection.from_dict(coco, image_root)
    assert len(ds) == 4 and ds[3][1]["boxes"].tolist() == [[0.0, 0.0, 4.0, 4.0]]
    with pytest.raises(DataError, match="VOC2010"):
        load_voc(devkit, ("trainval",), years=("2010",))


def test_voc_folder_split(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for k in range(10):
        _image(root / f"img{k:02d}.png")
        (root / f"img{k:02d}.xml").write_text(
            _xml(f"img{k:02d}.png", [("wbc" if k % 2 else "rbc", (1, 1, 8, 8), 0)]))
    train, image_root = load_voc_folder(root, split="train", test_fraction=0.3, seed=3)
    test, _ = load_voc_folder(root, split="test", test_fraction=0.3, seed=3)
    everything, _ = load_voc_folder(root, split="all")
    assert image_root == root
    tr = {i["file_name"] for i in train["images"]}
    te = {i["file_name"] for i in test["images"]}
    assert len(te) == 3 and len(tr) == 7 and not tr & te
    assert tr | te == {i["file_name"] for i in everything["images"]}
    assert [c["name"] for c in train["categories"]] == ["rbc", "wbc"] == [
        c["name"] for c in test["categories"]]
    # deterministic for a seed, different for another
    again, _ = load_voc_folder(root, split="test", test_fraction=0.3, seed=3)
    assert again == test
    other = {frozenset(i["file_name"] for i in load_voc_folder(
        root, split="test", test_fraction=0.3, seed=s)[0]["images"]) for s in range(6)}
    assert len(other) > 1
    # ids are positions in file-name order, the same in every split
    ids = {i["file_name"]: i["id"] for i in everything["images"]}
    assert all(ids[i["file_name"]] == i["id"] for i in test["images"])
    ds = CocoDetection.from_dict(test, image_root)
    assert len(ds) == 3 and ds[0][1]["boxes"].tolist() == [[0.0, 0.0, 8.0, 8.0]]
    with pytest.raises(DataError, match="split"):
        load_voc_folder(root, split="val")


# ---------------------------------------------------------------------------------------------
# YOLO


def _write_yolo(root: Path, labels: dict[str, str], names: str = "classes.txt") -> Path:
    for stem in ("p", "q", "r"):
        _image(root / "images" / "train" / f"{stem}.{'png' if stem == 'q' else 'jpg'}")
    (root / "labels" / "train").mkdir(parents=True)
    for stem, text in labels.items():
        (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    if names == "classes.txt":
        (root / "classes.txt").write_text("rbc\nwbc\n")
    elif names == "data.yaml":
        (root / "data.yaml").write_text("path: .\nnames:\n  0: rbc\n  1: wbc\n")
    return root


def test_yolo_round_trip(tmp_path):
    # a 12x8 px box whose top-left corner is (6, 4) on a 48x32 image
    line = f"1 {(6 + 6) / W} {(4 + 4) / H} {12 / W} {8 / H}\n"
    root = _write_yolo(tmp_path / "y", {"p": line + "\n0 0.5 0.5 1 1\n", "q": ""})
    coco, image_root = load_yolo(root, split="train")
    assert image_root == root / "images" / "train"
    assert [c["name"] for c in coco["categories"]] == ["rbc", "wbc"]
    assert [(i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        ("p.jpg", W, H), ("q.png", W, H), ("r.jpg", W, H)]  # r has no label file: no object
    a0, a1 = coco["annotations"]
    assert a0["bbox"] == pytest.approx([6.0, 4.0, 12.0, 8.0]) and a0["category_id"] == 2
    assert a1["bbox"] == pytest.approx([0.0, 0.0, W, H]) and a1["category_id"] == 1
    ds = CocoDetection.from_dict(coco, image_root)
    assert ds[0][1]["boxes"].flatten().tolist() == pytest.approx([6, 4, 18, 12, 0, 0, W, H])
    assert ds[0][1]["labels"].tolist() == [1, 0] and len(ds[2][1]["boxes"]) == 0

    yaml_root = _write_yolo(tmp_path / "yy", {"p": line}, names="data.yaml")
    assert [c["name"] for c in load_yolo(yaml_root)[0]["categories"]] == ["rbc", "wbc"]


def test_yolo_errors(tmp_path):
    root = _write_yolo(tmp_path / "bad", {"p": "0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n"})
    with pytest.raises(DataError, match=r"p\.txt:2"):
        load_yolo(root)
    (root / "labels" / "train" / "p.txt").write_text("0 0.5 0.5 0.2 0.2\n\n2 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"p\.txt:3.*out of range"):
        load_yolo(root)
    (root / "labels" / "train" / "p.txt").write_text("x 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"p\.txt:1"):
        load_yolo(root)
    (root / "classes.txt").unlink()
    with pytest.raises(DataError, match="classes.txt"):
        load_yolo(root)
    with pytest.raises(DataError, match="val"):
        load_yolo(root, split="val", names_file="whatever.txt")


# ---------------------------------------------------------------------------------------------
# Real data


@pytest.mark.skipif(not (BCCD / "ImageSets" / "Main" / "trainval.txt").is_file(),
                    reason="BCCD data set not available")
def test_bccd_trainval_counts():
    ids = [s.strip() for s in (BCCD / "ImageSets/Main/trainval.txt").read_text().splitlines()
           if s.strip()]
    coco, image_root = load_voc(BCCD, ("trainval",))
    names = [c["name"] for c in coco["categories"]]
    assert sorted(names) == ["Platelets", "RBC", "WBC"] and names == sorted(names)
    assert len(coco["images"]) == len(ids) == 292
    assert all((image_root / i["file_name"]).is_file() for i in coco["images"])
    direct: Counter[str] = Counter()
    for stem in ids:
        for obj in ET.parse(BCCD / "Annotations" / f"{stem}.xml").getroot().iter("object"):
            direct[obj.findtext("name").strip()] += 1
    name_of = {c["id"]: c["name"] for c in coco["categories"]}
    loaded = Counter(name_of[a["category_id"]] for a in coco["annotations"])
    assert loaded == direct
    ds = CocoDetection.from_dict(coco, image_root, source="bccd trainval")
    assert len(ds) == 292 and ds.class_names == names
