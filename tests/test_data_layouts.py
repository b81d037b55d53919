"""Folders as people have them: VOC-XML layouts and split folders, what annotation tools write as
COCO, Ultralytics data.yaml, the error when nothing is recognised, and ``icdistill stats``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_voc import H, W, _image, _xml

from icdistill.cli import main
from icdistill.config import DataConfig, VOCFolderDataConfig, YoloDataConfig
from icdistill.data import CocoDetection, build_datasets, data_report, load_voc_folder
from icdistill.errors import ConfigError, DataError

SIZES = dict(min_sizes=(32,), max_size=64, test_size=32)


def _voc_set(folder: Path, image_dir: str, ann_dir: str, stems: str, ext: str = "jpg") -> None:
    """One image + XML per stem: class ``wbc`` for stems in upper case, else ``rbc``."""
    for s in stems:
        _image(folder / image_dir / f"{s}.{ext}")
        (folder / ann_dir).mkdir(parents=True, exist_ok=True)
        (folder / ann_dir / f"{s}.xml").write_text(
            _xml(f"{s}.{ext}", [("wbc" if s.isupper() else "rbc", (2, 3, 12, 9), 0)]))


def _build(root: Path, **keys):
    return build_datasets(DataConfig(format="voc_folder", voc_folder=VOCFolderDataConfig(
        root=str(root), **keys), **SIZES), with_masks=False, progress=False)


@pytest.mark.parametrize("image_dir,ann_dir,kind", [
    ("images", "annotations", "separate"),  # labelImg
    ("JPEGImages", "Annotations", "separate"),  # VOC without ImageSets
    (".", ".", "mixed"),  # images and XMLs in one folder
    ("Images", "XML", "separate"),  # names matched case-insensitively
])
def test_one_folder_layouts_get_the_seeded_split(tmp_path, image_dir, ann_dir, kind):
    _voc_set(tmp_path, image_dir, ann_dir, "abcdefghiJ")
    train, test = _build(tmp_path, test_fraction=0.3)
    assert (len(train), len(test)) == (7, 3)
    assert train.class_names == ["rbc", "wbc"] == test.class_names
    assert train[0][1]["boxes"].shape == (1, 4)
    reader = data_report(train, test)["train"]["reader"]
    assert reader["format"] == "voc_folder" and kind in reader["layout"]
    assert reader["split"].startswith("seeded") and "3 of 10" in reader["split"]


def test_split_folders_give_the_split(tmp_path):
    # each split folder in its own layout, as export services and hand-made sets have it
    _voc_set(tmp_path / "train", "images", "annotations", "abcD")
    _voc_set(tmp_path / "valid", ".", ".", "ef")
    _voc_set(tmp_path / "test", "JPEGImages", "Annotations", "ghi", ext="png")
    train, test = _build(tmp_path)
    assert (len(train), len(test)) == (4, 3)  # test/ is the test split; valid/ is left out
    assert {r["file_name"] for r in test._images} == {f"test/JPEGImages/{s}.png" for s in "ghi"}
    assert len({*train.image_ids, *test.image_ids}) == 7  # ids run over both splits
    report = data_report(train, test)
    assert report["test"]["reader"]["split"] == \
        "split folders: train <- train/, test <- test/ (valid/ not used)"
    assert report["train"]["reader"]["layout"] == \
        "train/images/ + train/annotations/ (separate image and XML folders)"
    assert report["test"]["reader"]["layout"].startswith("test/JPEGImages/ + test/Annotations/")
    # the config can pick and join split folders
    train, test = _build(tmp_path, train_splits=("train", "test"), test_splits=("valid",))
    assert (len(train), len(test)) == (7, 2)
    with pytest.raises(DataError, match=r"data\.voc_folder\.test_splits: no folder 'holdout'.*test, train, valid"):
        _build(tmp_path, test_splits=("holdout",))


def test_train_val_test_folders_and_val_only(tmp_path):
    for split, stems in (("train", "abc"), ("val", "de")):
        _voc_set(tmp_path / split, ".", ".", stems)
    train, test = _build(tmp_path)  # no test/: val/ is the test split
    assert (len(train), len(test)) == (3, 2)
    assert "test <- val/" in data_report(train, test)["test"]["reader"]["split"]


def test_folders_of_any_name_found_by_what_they_hold(tmp_path):
    # the one XML folder and the one image folder, whatever their names; the layout says so
    _voc_set(tmp_path / "only", "pics", "annots", "abcde")
    train, test = _build(tmp_path / "only")
    assert len(train) + len(test) == 5
    assert data_report(train, test)["train"]["reader"]["layout"] == \
        "pics/ + annots/ (found by content: the only folders holding images and XML files)"
    _voc_set(tmp_path / "named_images", "images", "annots", "ab")
    layout = data_report(*_build(tmp_path / "named_images"))["train"]["reader"]["layout"]
    assert layout == "images/ + annots/ (found by content: the only folder holding XML files)"
    # two XML folders: no guess, the error names both and the key to set
    _voc_set(tmp_path / "two", "pics", "annots", "ab")
    _voc_set(tmp_path / "two", "pics", "annots_old", "ab")
    with pytest.raises(DataError, match=r"several folders hold XML files \(annots/, annots_old/\): "
                                        r"set data\.voc_folder\.ann_dir"):
        _build(tmp_path / "two")


def test_image_dir_and_ann_dir_keys(tmp_path):
    _voc_set(tmp_path, "pics", "boxes_out", "abcde")
    (tmp_path / "old_boxes").mkdir()
    for xml in (tmp_path / "boxes_out").glob("*.xml"):
        (tmp_path / "old_boxes" / xml.name).write_bytes(xml.read_bytes())
    with pytest.raises(DataError) as err:
        _build(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "folders: boxes_out/, old_boxes/, pics/" in msg
    assert "data.voc_folder.image_dir" in msg and "data.voc_folder.ann_dir" in msg
    train, test = _build(tmp_path, image_dir="pics", ann_dir="boxes_out")
    assert len(train) + len(test) == 5
    assert "as configured" in data_report(train, test)["train"]["reader"]["layout"]
    with pytest.raises(DataError, match=r"data\.voc_folder\.image_dir: folder not found: .*nope"):
        _build(tmp_path, image_dir="nope", ann_dir="boxes_out")
    # inside split folders the keys name each split's folders
    for split in ("train", "test"):
        _voc_set(tmp_path / "split" / split, "pics", "boxes_out", "ab")
    train, test = _build(tmp_path / "split", image_dir="pics", ann_dir="boxes_out")
    assert (len(train), len(test)) == (2, 2)


def test_nothing_recognised_says_what_is_there(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "raw").mkdir()
    with pytest.raises(DataError) as err:
        _build(tmp_path)
    msg = str(err.value)
    assert "no VOC annotation (*.xml) found in" in msg
    assert "3 files (2 .jpg, 1 .txt: a.jpg, b.jpg, c.txt)" in msg and "folders: raw/" in msg
    assert "data.voc_folder.image_dir" in msg and "data.format" in msg
    # XMLs without any image
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "a.xml").write_text(_xml("a.jpg", []))
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).unlink()
    with pytest.raises(DataError, match="no image"):
        _build(tmp_path)


def test_images_without_xml_are_reported(tmp_path):
    _voc_set(tmp_path, "images", "annotations", "abcd")
    _image(tmp_path / "images" / "unlabelled.png")
    for junk in ("images/._a.jpg", "annotations/._a.xml"):  # macOS archive litter: not files of the set
        (tmp_path / junk).write_bytes(b"\x00\x05\x16\x07")
    train, test = _build(tmp_path, test_fraction=0.5)
    report = data_report(train, test)
    assert report["train"]["counts"]["images_without_xml"] == 1
    assert report["train"]["files"]["images_without_xml"] == ["unlabelled.png"]
    assert "images without xml" in train.report_summary()
    # the functional API keeps its shape
    coco, root = load_voc_folder(tmp_path, split="all")
    assert root == tmp_path / "images" and len(coco["images"]) == 4


def test_sizes_from_images_and_the_cli_error(tmp_path, empty_config, capsys):
    _voc_set(tmp_path / "d", ".", ".", "abc")
    # some tools write a zero size or none at all: the image header gives it
    (tmp_path / "d" / "a.xml").write_text(_xml("a.jpg", [("rbc", (2, 3, 12, 9), 0)]).replace(
        f"<width>{W}</width>", "<width>0</width>"))
    (tmp_path / "d" / "b.xml").write_text(_xml("b.jpg", [("rbc", (2, 3, 12, 9), 0)], size=False))
    train, test = _build(tmp_path / "d", test_fraction=0.0)
    assert [r["width"] for r in train._images] == [W, W, W]
    assert train.report["files"]["sizes_from_images"] == ["a.jpg", "b.jpg"]
    (tmp_path / "d" / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"b\.xml: missing or malformed image size.*b\.jpg"):
        _build(tmp_path / "d")
    # through the CLI: one line naming the folder and what it holds, exit status 2
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("x")
    sets = ["--set=data.format=voc_folder", f"--set=data.voc_folder.root={tmp_path / 'e'}"]
    assert main(["--no-progress", "stats", str(empty_config), *sets]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 file (1 .txt: notes.txt)" in err and "data.voc_folder.ann_dir" in err


# ---------------------------------------------------------------------------------------------
# COCO as annotation tools export it


def _coco_export(tmp_path: Path, categories, annotations, images=None) -> tuple[Path, Path]:
    img_dir = tmp_path / "export"
    for name in ("sub/a.jpg", "sub/deeper/b.jpg"):
        _image(img_dir / name)
    images = images if images is not None else [
        {"id": 0, "file_name": "sub/a.jpg", "width": W, "height": H},
        {"id": 1, "file_name": "sub/deeper/b.jpg", "width": W, "height": H}]
    ann = tmp_path / "export.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return img_dir, ann


def _ann(i, image_id, cat, **extra):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": [2, 3, 10, 6], **extra}


def test_coco_exports_ids_from_zero_subfolders_and_empty_segmentation(tmp_path):
    cats = [{"id": 0, "name": "rbc"}, {"id": 1, "name": "wbc"}]
    anns = [_ann(1, 0, 0, segmentation=[]), _ann(2, 1, 1), _ann(3, 1, 0, segmentation=[[]])]
    img_dir, ann = _coco_export(tmp_path, cats, anns)
    ds = CocoDetection(img_dir, ann, with_masks=True)
    assert ds.class_names == ["rbc", "wbc"] and ds.contiguous_to_cat_id == [0, 1]
    image, target = ds[1]
    assert target["labels"].tolist() == [1, 0] and image.shape == (3, H, W)
    # no segmentation ([] / missing / empty polygon): the box is the mask
    assert target["masks"].shape == (2, H, W) and int(target["masks"][0].sum()) == 60
    assert ds.report["counts"]["degenerate_boxes"] == 0


def test_coco_sparse_ids_grouping_category_sizes_and_windows_paths(tmp_path):
    # Roboflow: category 0 is the data set's name, the supercategory of every real class
    cats = [{"id": 0, "name": "cells", "supercategory": "none"},
            {"id": 3, "name": "rbc", "supercategory": "cells"},
            {"id": 7, "name": "wbc", "supercategory": "cells"}]
    images = [{"id": 5, "file_name": "sub\\a.jpg"},  # no size: read from the header
              {"id": 9, "file_name": "sub/deeper/b.jpg", "width": W, "height": H}]
    img_dir, ann = _coco_export(tmp_path, cats, [_ann(1, 5, 7), _ann(2, 9, 3)], images)
    ds = CocoDetection(img_dir, ann)
    assert ds.class_names == ["rbc", "wbc"] and ds.report["grouping_category"] == "cells"
    assert [t["labels"].tolist() for _, t in (ds[0], ds[1])] == [[1], [0]]
    assert ds.coco.imgs[5]["width"] == W and ds.coco.imgs[5]["file_name"] == "sub/a.jpg"
    # a category without boxes that groups nothing stays a class
    cats[0]["name"] = "platelets"
    assert CocoDetection(img_dir, _coco_export(tmp_path, cats, [_ann(1, 5, 7)], images)[1]).num_classes == 3


# ---------------------------------------------------------------------------------------------
# Ultralytics data.yaml


def _yolo_split(folder: Path, stems: str, line: str = "0 0.5 0.5 0.25 0.5\n") -> None:
    for s in stems:
        _image(folder / "images" / f"{s}.jpg")
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        if s != "z":  # z: a background image without a label file
            (folder / "labels" / f"{s}.txt").write_text(line)


def _yolo(root: str = "", **keys):
    return build_datasets(DataConfig(format="yolo", yolo=YoloDataConfig(root=root, **keys), **SIZES),
                          with_masks=False, progress=False)


def test_ultralytics_yaml(tmp_path):
    ds_dir = tmp_path / "coco8"
    _yolo_split(ds_dir / "train", "abz")  # images/labels under split folders, as Roboflow
    _yolo_split(ds_dir / "val", "c")
    (ds_dir / "train" / "images" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS litter
    (ds_dir / "data.yaml").write_text(
        "path: .\ntrain: train/images\nval: val/images\nnames:\n  0: rbc\n  1: wbc\n")
    train, test = _yolo(str(ds_dir))
    assert (len(train), len(test)) == (3, 1) and train.class_names == ["rbc", "wbc"]
    assert train[0][1]["boxes"].tolist() == [[18.0, 8.0, 30.0, 24.0]]
    reader = data_report(train, test)["train"]["reader"]
    assert reader["split"] == "data file keys: train" and reader["images_without_labels"] == 1
    # names_file alone reaches it; test_splits picks the yaml key
    train, test = _yolo(names_file=str(ds_dir / "data.yaml"), test_splits=("valid",))
    assert (len(train), len(test)) == (3, 1)
    with pytest.raises(DataError, match=r"no 'holdout' images.*it gives train, val"):
        _yolo(str(ds_dir), test_splits=("holdout",))
    (ds_dir / "names.txt").write_text("rbc\nwbc\n")
    with pytest.raises(ConfigError, match=r"'data\.yolo\.root' is required .*names\.txt is not one"):
        _yolo(names_file=str(ds_dir / "names.txt"))


def test_roboflow_yaml_with_parent_paths_list_names_and_polygons(tmp_path):
    root = tmp_path / "export"
    _yolo_split(root / "train", "ab", line="1 0.1 0.25 0.5 0.25 0.5 0.75\n")  # a triangle
    _yolo_split(root / "valid", "c")
    _yolo_split(root / "test", "de")
    (root / "data.yaml").write_text(  # path: where it was written, not here
        "path: /content/datasets/cells\ntrain: ../train/images\nval: ../valid/images\n"
        "test: ../test/images\nnc: 2\nnames: ['rbc', 'wbc']\n")
    train, test = _yolo(str(root))
    assert (len(train), len(test)) == (2, 2)  # the yaml has test images: they are the test split
    box = next(train.annotation_records())[2][0].tolist()  # (ds[i] flips training images)
    assert box == pytest.approx([0.1 * W, 0.25 * H, 0.5 * W, 0.75 * H])
    assert train.coco.anns[1]["segmentation"][0] == pytest.approx(
        [0.1 * W, 0.25 * H, 0.5 * W, 0.25 * H, 0.5 * W, 0.75 * H])
    (root / "data.yaml").write_text("train: train/images\nval: valid/images\nnc: 3\nnames: [rbc, wbc]\n")
    with pytest.raises(DataError, match=r"data\.yaml: 'nc' is 3 but 'names' has 2"):
        _yolo(str(root))
    # an image list file instead of a folder
    (root / "train.txt").write_text("./train/images/a.jpg\ntrain/images/b.jpg\n")
    (root / "data.yaml").write_text("train: train.txt\nval: valid/images\nnames: [rbc, wbc]\n")
    assert len(_yolo(str(root))[0]) == 2


# ---------------------------------------------------------------------------------------------
# icdistill stats


def test_stats_prints_the_class_table_and_the_data_report(tmp_path, empty_config, capsys):
    for split, stems in (("train", "abcD"), ("test", "eF")):
        _voc_set(tmp_path / "data" / split, "images", "annotations", stems)
    # a broken box (xmax < xmin) is reported as degenerate
    (tmp_path / "data" / "train" / "annotations" / "a.xml").write_text(
        _xml("a.jpg", [("rbc", (2, 3, 12, 9), 0), ("rbc", (20, 3, 12, 9), 0)]))
    out = tmp_path / "prior.json"
    sets = [f"--set=data.{k}" for k in ("format=voc_folder", f"voc_folder.root={tmp_path / 'data'}")]
    assert main(["--no-progress", "stats", str(empty_config), "--out", str(out), *sets]) == 0
    text = capsys.readouterr().out
    assert "| rbc | 3 | 3 | 1 | 1 | 11 x 7 | 100% / 0% / 0% |" in text
    assert "| wbc | 1 | 1 | 1 | 1 |" in text and "| (all) | 4 | 4 | 2 | 2 |" in text
    assert "split: split folders: train <- train/, test <- test/" in text
    assert "degenerate boxes: 1 (train/images/a.jpg)" in text
    assert json.loads(out.read_text())["num_images"] == 4
