"""Builders from a config section: icdistill.data.build and icdistill.evaluation.build."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from icdistill.config import CocoDataConfig, DataConfig, EvalConfig, ShapesConfig, VOCDataConfig
from icdistill.data import CocoDetection, build_datasets, data_report, resolve_with_masks
from icdistill.errors import ConfigError, DataError, ModelMismatchError
from icdistill.evaluation import COCOEvaluator, VOCEvaluator, build_evaluator

SIZES = {"min_sizes": (64,), "max_size": 128, "test_size": 64}


def _shapes_cfg(root: Path, **kw) -> DataConfig:
    shapes = ShapesConfig(root=str(root), num_train=4, num_test=2, image_height=48, image_width=64)
    return DataConfig(format="shapes", shapes=shapes, **SIZES, **kw)


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes_build")


def _coco_files(tmp: Path, categories: list[dict], images: int = 2) -> tuple[Path, Path]:
    """An image folder of 32x48 PNGs and a COCO json with one box per image."""
    img_dir = tmp / "images"
    img_dir.mkdir(exist_ok=True)
    imgs, anns = [], []
    for i in range(images):
        Image.new("RGB", (48, 32), (10 * i, 50, 90)).save(img_dir / f"{i}.png")
        imgs.append({"id": i + 1, "file_name": f"{i}.png", "width": 48, "height": 32})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": categories[0]["id"],
                     "bbox": [2, 3, 20, 10]})
    ann = tmp / f"ann_{len(list(tmp.glob('ann_*.json')))}.json"
    ann.write_text(json.dumps({"images": imgs, "annotations": anns, "categories": categories}))
    return img_dir, ann


def test_shapes_datasets_and_report(shapes_dir):
    train, test = build_datasets(_shapes_cfg(shapes_dir), with_masks=False, progress=False)
    assert isinstance(train, CocoDetection) and isinstance(test, CocoDetection)
    assert (len(train), len(test)) == (4, 2)
    assert train.class_names == test.class_names == ["circle", "square", "triangle", "cross"]
    assert not train.with_masks
    image, target = test[0]
    assert image.dtype == torch.float32 and image.shape[0] == 3 and min(image.shape[1:]) == 64
    assert target["boxes"].shape[1] == 4 and "masks" not in target

    report = data_report(train, test)
    assert set(report) == {"train", "test"}
    assert report["train"]["source"] == str(shapes_dir / "annotations" / "train.json")
    assert report["train"]["classes"] == train.class_names
    assert report["test"]["num_images"] == 2
    assert report["train"]["counts"] == train.report["counts"]


def test_shapes_with_masks(shapes_dir):
    train, test = build_datasets(_shapes_cfg(shapes_dir), with_masks=True, progress=False)
    assert train.with_masks and test.with_masks
    image, target = train[(0, 7)]
    assert target["masks"].dtype == torch.uint8
    assert target["masks"].shape == (len(target["boxes"]), *image.shape[1:])


def test_coco_missing_key_is_named(tmp_path):
    img_dir, ann = _coco_files(tmp_path, [{"id": 1, "name": "a"}])
    cfg = DataConfig(format="coco", coco=CocoDataConfig(train_images=str(img_dir), train_ann=str(ann),
                                                        test_images=str(img_dir)))
    with pytest.raises(ConfigError, match=r"config key 'data\.coco\.test_ann' is required for data\.format 'coco'"):
        build_datasets(cfg, with_masks=False, progress=False)
    with pytest.raises(ConfigError, match=r"'data\.coco\.train_images'"):
        build_datasets(DataConfig(format="coco"), with_masks=False, progress=False)


@pytest.mark.parametrize("fmt", ["voc", "voc_folder", "yolo", "cityscapes"])
def test_root_required(fmt):
    with pytest.raises(ConfigError, match=rf"config key 'data\.{fmt}\.root' is required for data\.format '{fmt}'"):
        build_datasets(DataConfig(format=fmt), with_masks=False, progress=False)


def test_coco_format_checks(tmp_path):
    img_dir, train_ann = _coco_files(tmp_path, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    _, test_ann = _coco_files(tmp_path, [{"id": 1, "name": "a"}])
    def coco(train_ann: Path, test_ann: Path, **keys) -> DataConfig:
        files = CocoDataConfig(train_images=str(img_dir), test_images=str(img_dir),
                               train_ann=str(train_ann), test_ann=str(test_ann))
        return DataConfig(format="coco", coco=files, **SIZES, **keys)

    train, test = build_datasets(coco(train_ann, train_ann), with_masks=False, progress=False)
    assert train.class_names == ["a", "b"] and len(train) == len(test) == 2
    with pytest.raises(ModelMismatchError, match=r"training classes \['a', 'b'\] differ from test classes \['a'\]"):
        build_datasets(coco(train_ann, test_ann), with_masks=False, progress=False)

    (img_dir / "1.png").write_bytes(b"broken")
    cfg = coco(train_ann, train_ann)
    with pytest.raises(DataError, match=r"missing or unreadable: .*1\.png"):
        build_datasets(cfg, with_masks=False, progress=False)
    train, _ = build_datasets(dataclasses.replace(cfg, validate_images=False), with_masks=False, progress=False)
    assert len(train) == 2
    train, _ = build_datasets(dataclasses.replace(cfg, skip_unreadable=True), with_masks=False, progress=False)
    assert len(train) == 1 and train.report["counts"]["unreadable_images"] == 1


def test_filter_empty_and_empty_training_set(tmp_path):
    img_dir, ann = _coco_files(tmp_path, [{"id": 1, "name": "a"}])
    data = json.loads(ann.read_text())
    data["annotations"] = data["annotations"][:1]
    ann.write_text(json.dumps(data))
    cfg = DataConfig(format="coco", coco=CocoDataConfig(train_images=str(img_dir), train_ann=str(ann),
                                                        test_images=str(img_dir), test_ann=str(ann)),
                     **SIZES)
    train, test = build_datasets(cfg, with_masks=False, progress=False)
    assert (len(train), len(test)) == (2, 2)
    train, test = build_datasets(dataclasses.replace(cfg, filter_empty=True), with_masks=False, progress=False)
    assert (len(train), len(test)) == (1, 2)
    assert train.report["counts"]["empty_images_dropped"] == 1

    data["annotations"] = []
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"the training set .* has no images"):
        build_datasets(dataclasses.replace(cfg, filter_empty=True), with_masks=False, progress=False)


def _voc_tree(root: Path) -> Path:
    """A VOC folder: train has rbc + wbc, test only rbc (it must still get both classes)."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    objects = {"a": ["rbc", "wbc"], "b": ["wbc"], "c": ["rbc"]}
    for stem, names in objects.items():
        Image.new("RGB", (48, 32)).save(root / "JPEGImages" / f"{stem}.jpg")
        objs = "".join(f"<object><name>{n}</name><bndbox><xmin>2</xmin><ymin>2</ymin><xmax>20</xmax>"
                       f"<ymax>20</ymax></bndbox></object>" for n in names)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><size><width>48</width><height>32</height></size>{objs}</annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("c\n")
    return root


def test_voc_splits_share_classes(tmp_path):
    root = _voc_tree(tmp_path / "voc")
    cfg = DataConfig(format="voc", voc=VOCDataConfig(root=str(root), train_splits=("train",),
                                                     test_splits=("test",)), **SIZES)
    train, test = build_datasets(cfg, with_masks=False, progress=False)
    assert train.class_names == test.class_names == ["rbc", "wbc"]
    assert (len(train), len(test)) == (2, 1)
    assert train.source == f"{root} train" and test.source == f"{root} test"
    named = dataclasses.replace(cfg, voc=dataclasses.replace(cfg.voc, class_names=("wbc", "rbc")))
    train, test = build_datasets(named, with_masks=False, progress=False)
    assert train.class_names == test.class_names == ["wbc", "rbc"]


def test_resolve_with_masks():
    assert resolve_with_masks(DataConfig(), True) is True
    assert resolve_with_masks(DataConfig(), False) is False
    assert resolve_with_masks(DataConfig(with_masks=False), True) is False
    assert resolve_with_masks(DataConfig(with_masks=True), False) is True


def test_build_evaluator(shapes_dir):
    _, test = build_datasets(_shapes_cfg(shapes_dir), with_masks=False, progress=False)
    coco = build_evaluator(EvalConfig(), test, with_masks=False)
    assert type(coco) is COCOEvaluator and coco.tasks == ("bbox",)
    assert coco.class_names == test.class_names and coco.contiguous_to_cat_id == test.contiguous_to_cat_id
    assert build_evaluator(EvalConfig(evaluator="coco"), test, with_masks=True).tasks == ("bbox", "segm")

    voc = build_evaluator(EvalConfig(evaluator="voc", voc_07_metric=False), test, with_masks=True)
    assert isinstance(voc, VOCEvaluator) and voc.use_07_metric is False and voc.tasks == ("bbox",)
    assert build_evaluator(EvalConfig(evaluator="voc"), test, with_masks=False).use_07_metric is True
    assert voc.coco_gt is test.coco
