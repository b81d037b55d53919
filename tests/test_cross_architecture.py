"""Teachers of another family than the student (the paper's Table 9): FCOS -> RetinaNet and
Mask R-CNN -> Faster R-CNN distil whenever the distilled levels align; inheriting copies what
matches and reports the rest; misaligned pairs and mask families without masks are reported
before any training step. In-process; the CLI runs of a cross-architecture pair (Cascade Mask
R-CNN -> Faster R-CNN) and of a misaligned pair are in test_cascade.py and test_c4_dc5.py."""

from __future__ import annotations


import pytest
import torch

from icdistill.cli import main
from icdistill.config import DataConfig, distill_config
from icdistill.data.prior import DatasetPrior
from icdistill.detectors import build_detector, freeze_as_teacher
from icdistill.detectors.data_needs import require_masks
from icdistill.distill.build import build_distiller
from icdistill.distill.core.distiller import check_alignment
from icdistill.distill.inherit import inherit_weights
from icdistill.errors import ConfigError, ModelMismatchError

NUM_CLASSES = 3
PRIOR = DatasetPrior(names=["a", "b", "c"], freq=[1.0, 1.0, 0.5], w_mean=[0.3] * 3, w_std=[0.1] * 3,
                     h_mean=[0.3] * 3, h_std=[0.1] * 3, num_images=10)


def tiny(family: str, width: int = 32, **kw):
    return build_detector(family, backbone="resnet18", num_classes=NUM_CLASSES, fpn_channels=width,
                          anchor_sizes=(16, 32, 64, 128, 256), **kw)


def batch():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 96)
    targets = [
        {"boxes": torch.tensor([[4.0, 4, 40, 30]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[10.0, 10, 30, 50], [40, 5, 60, 25]]), "labels": torch.tensor([1, 2])},
    ]
    return images, [(64, 96), (60, 70)], targets


@pytest.mark.parametrize("teacher_family,student_family", [("fcos", "retinanet"), ("mask_rcnn", "faster_rcnn")])
def test_icd_across_families_distils_in_one_step(teacher_family, student_family):
    """ICD between different heads on the shared pyramid: the student's detection losses, ICD's
    losses, gradients into the student; inheriting copies the matching neck/head tensors."""
    torch.manual_seed(0)
    teacher = freeze_as_teacher(tiny(teacher_family, width=64))
    student = tiny(student_family)
    dcfg = distill_config(method="icd", inherit=True, warmup_iters=0, icd={"decoder_warmup_iters": 0, "hidden_dim": 64})
    distiller, report = build_distiller(dcfg, student, teacher, prior=PRIOR)
    assert distiller.levels == student.level_names == teacher.level_names
    assert report is not None and report.skipped  # the FPN widths differ (64 vs 32): reported
    images, sizes, targets = batch()
    losses = distiller.train()(images, sizes, targets, teacher=teacher, iteration=0)
    assert any(k.startswith("det/") for k in losses) and "distill/icd/feature" in losses
    sum(losses.values()).backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.model.backbone.body.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_inheriting_mask_rcnn_into_faster_rcnn_copies_all_and_lists_the_mask_head():
    teacher, student = tiny("mask_rcnn"), tiny("faster_rcnn")
    report = inherit_weights(teacher, student)
    assert not report.skipped  # every neck/head tensor of the student has a teacher twin
    assert "roi_heads.box_head.fc6.weight" in report.copied and "backbone.fpn.layer_blocks.0.0.weight" in report.copied
    assert report.unused and all(name.startswith("roi_heads.mask_") for name in report.unused)
    assert "no student counterpart: roi_heads.mask_head" in report.summary()
    for name in report.copied:
        assert torch.equal(student.model.state_dict()[name], teacher.model.state_dict()[name]), name


def test_inheriting_fcos_into_retinanet_copies_the_fpn_and_reports_the_heads():
    report = inherit_weights(tiny("fcos"), tiny("retinanet"))
    assert all(n.startswith("backbone.fpn.") for n in report.copied) and report.copied
    skipped = dict(report.skipped)
    assert skipped["head.classification_head.cls_logits.weight"].startswith("shape")  # 1 point vs 9 anchors
    assert "head.regression_head.bbox_ctrness.weight" in report.unused  # FCOS's centre-ness branch


def test_inheriting_a_c4_teacher_copies_res5_in_the_box_head():
    teacher = build_detector("faster_rcnn_c4", backbone="resnet18", num_classes=NUM_CLASSES)
    student = build_detector("faster_rcnn_c4", backbone="resnet18", num_classes=NUM_CLASSES)
    report = inherit_weights(teacher, student)
    assert not report.skipped and not report.unused
    assert any(n.startswith("roi_heads.box_head.res5.") for n in report.copied)
    assert not any(n.startswith("backbone.body.") for n in report.copied)


@pytest.mark.parametrize("teacher_family,student_family", [
    ("faster_rcnn_c4", "faster_rcnn"),  # c4 (16) vs p2..p6
    ("faster_rcnn_dc5", "faster_rcnn_c4"),  # same stride, other map (res5 vs res4)
    ("retinanet", "faster_rcnn"),  # p3..p7 vs p2..p6
])
def test_misaligned_pairs_name_both_level_lists_with_strides(teacher_family, student_family):
    kw = {} if teacher_family.endswith(("c4", "dc5")) else {"fpn_channels": 32}
    teacher = build_detector(teacher_family, backbone="resnet18", num_classes=NUM_CLASSES, **kw)
    student = tiny(student_family) if not student_family.endswith("c4") else build_detector(
        student_family, backbone="resnet18", num_classes=NUM_CLASSES)
    with pytest.raises(ModelMismatchError) as err:
        check_alignment(teacher, student, student.level_names)
    message = str(err.value)
    for det in (teacher, student):
        assert det.family in message
        for name, stride in zip(det.level_names, det.strides):
            assert f"{name} ({stride})" in message


def test_aligned_pairs_return_their_strides():
    assert check_alignment(tiny("fcos"), tiny("retinanet"), ("p3", "p4", "p5", "p6", "p7")) == [8, 16, 32, 64, 128]
    assert check_alignment(tiny("mask_rcnn"), tiny("faster_rcnn"), ("p2", "p3")) == [4, 8]
    assert check_alignment(tiny("cascade_mask_rcnn"), tiny("faster_rcnn"), ("p2", "p6")) == [4, 64]


def test_inheriting_a_cascade_teacher_into_faster_rcnn_copies_fpn_and_rpn():
    """Table 9's Cascade Mask R-CNN teacher: the neck and the RPN match; the stages' heads do not
    share Faster R-CNN's names and are reported on both sides."""
    report = inherit_weights(tiny("cascade_mask_rcnn"), tiny("faster_rcnn"))
    assert any(n.startswith("backbone.fpn.") for n in report.copied) and any(n.startswith("rpn.") for n in report.copied)
    assert dict(report.skipped)["roi_heads.box_head.fc6.weight"] == "not in teacher"
    assert any(n.startswith("roi_heads.stages.2.") for n in report.unused)


def test_a_mask_family_without_masks_names_the_dataset(tmp_path, tiny_overrides, empty_config, capsys):
    with pytest.raises(ConfigError, match=r"data\.with_masks.*coco data /d/train\.json"):
        require_masks("mask_rcnn", DataConfig(train_ann="/d/train.json", with_masks=False))
    require_masks("faster_rcnn", DataConfig(with_masks=False))  # box families need none
    sets = [f"--set={s}" for s in [*tiny_overrides, "model.family=mask_rcnn", "data.with_masks=false"]]
    assert main(["--no-progress", "train", str(empty_config), "--out", str(tmp_path / "run"), *sets]) == 2
    err = capsys.readouterr().err
    assert "shapes data" in err and "with_masks" in err
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def _box_only_coco(root, n_images: int = 3, with_one_segmentation: bool = False):
    """A COCO json of 64x96 images with one box each and (by default) no segmentation at all."""
    import json

    from PIL import Image

    images, anns = [], []
    for i in range(n_images):
        Image.new("RGB", (96, 64), (40 * i, 80, 120)).save(root / f"im{i}.jpg")
        images.append({"id": i + 1, "file_name": f"im{i}.jpg", "width": 96, "height": 64})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [10, 10, 30, 20], "iscrowd": 0})
    if with_one_segmentation:
        anns[0]["segmentation"] = [[10, 10, 40, 10, 40, 30]]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                               "categories": [{"id": 1, "name": "a"}]}))
    return root / "ann.json"


def test_a_mask_family_on_data_without_any_segmentation_is_a_config_error(tmp_path, tiny_overrides, empty_config,
                                                                          capsys):
    """Box-only data (VOC, YOLO, a box-only COCO json) would train the mask head on filled boxes:
    training stops before any step with an error naming the data set; one real segmentation is
    enough, and box families need none."""
    from icdistill.data.coco import CocoDetection
    from icdistill.detectors.data_needs import require_segmentations

    ann = _box_only_coco(tmp_path)
    sets = [f"--set={s}" for s in [
        *tiny_overrides, "data.format=coco", f"data.train_ann={ann}", f"data.train_images={tmp_path}",
        f"data.test_ann={ann}", f"data.test_images={tmp_path}", "model.family=mask_rcnn"]]
    assert main(["--no-progress", "train", str(empty_config), "--out", str(tmp_path / "run"), *sets]) == 2
    err = capsys.readouterr().err
    assert "has no segmentation in any of its 3 training annotations" in err and str(ann) in err
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()

    cfg = DataConfig(train_ann=str(ann), train_images=str(tmp_path))
    require_segmentations("faster_rcnn", cfg, CocoDetection(tmp_path, ann))  # box families need none
    (tmp_path / "one").mkdir()
    one = _box_only_coco(tmp_path / "one", with_one_segmentation=True)
    require_segmentations("mask_rcnn", cfg, CocoDetection(tmp_path / "one", one, with_masks=True))
