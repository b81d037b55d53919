"""Inheriting strategy: copy matching neck/head tensors from teacher to student, report the rest."""

from __future__ import annotations

import torch

from icdistill.detectors import build_detector
from icdistill.distill.inherit import INHERITED_PREFIXES, inherit_weights

ANCHORS = (16, 32, 64, 128, 256)


def make(family="retinanet", backbone="resnet18", num_classes=3, fpn_channels=32, seed=0):
    torch.manual_seed(seed)
    return build_detector(
        family, backbone=backbone, num_classes=num_classes, fpn_channels=fpn_channels, anchor_sizes=ANCHORS
    )


def snapshot(adapter):
    return {k: v.clone() for k, v in adapter.model.state_dict().items()}


def test_same_architecture_copies_all_neck_and_head_tensors():
    for family in ("retinanet", "fcos", "faster_rcnn"):
        teacher, student = make(family, seed=1), make(family, seed=2)
        # Make buffers differ too, so the test sees that buffers are copied as well as parameters.
        for name, buf in teacher.model.named_buffers():
            if name.startswith(INHERITED_PREFIXES) and buf.is_floating_point():
                buf.add_(1.0)
        before = snapshot(student)
        report = inherit_weights(teacher, student)
        assert report.skipped == []
        t_state, s_state = teacher.model.state_dict(), student.model.state_dict()
        neck_head = [k for k in s_state if k.startswith(INHERITED_PREFIXES)]
        assert sorted(report.copied) == sorted(neck_head) and neck_head
        assert any(k.startswith("backbone.fpn.") for k in report.copied)
        for k in neck_head:
            assert torch.equal(s_state[k], t_state[k]), k
        body = [k for k in s_state if k.startswith("backbone.body.")]
        assert body and all(torch.equal(s_state[k], before[k]) for k in body)
        assert any(not torch.equal(s_state[k], t_state[k]) for k in body if s_state[k].is_floating_point())
        assert report.summary().startswith(f"copied {len(neck_head)} tensors, skipped 0")


def test_copies_into_live_parameters():
    teacher, student = make(seed=1), make(seed=2)
    inherit_weights(teacher, student)
    t = dict(teacher.model.named_parameters())
    for name, param in student.model.named_parameters():
        if name.startswith("head."):
            assert torch.equal(param, t[name]), name


def test_different_fpn_widths_skip_with_reasons():
    teacher, student = make(fpn_channels=48), make(fpn_channels=32)
    report = inherit_weights(teacher, student)
    reasons = dict(report.skipped)
    assert reasons["backbone.fpn.layer_blocks.0.0.weight"] == "shape (48,48,3,3) vs (32,32,3,3)"
    assert reasons["head.regression_head.bbox_reg.weight"].startswith("shape (36,48,3,3)")
    # Only width-independent tensors (none here besides nothing) may be copied.
    assert all(teacher.model.state_dict()[k].shape == student.model.state_dict()[k].shape for k in report.copied)
    assert "skipped" in report.summary() and "shape (48,48,3,3)" in report.summary(max_listed=100)


def test_different_num_classes_skip_only_classification_layer():
    teacher, student = make(num_classes=80), make(num_classes=3)
    report = inherit_weights(teacher, student)
    assert {name for name, _ in report.skipped} == {
        "head.classification_head.cls_logits.weight",
        "head.classification_head.cls_logits.bias",
    }
    assert "head.classification_head.conv.0.0.weight" in report.copied
    assert "head.regression_head.bbox_reg.weight" in report.copied

    teacher, student = make("faster_rcnn", num_classes=80), make("faster_rcnn", num_classes=3)
    report = inherit_weights(teacher, student)
    assert {name for name, _ in report.skipped} == {
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
    }
    assert any(k.startswith("rpn.") for k in report.copied)
    assert "roi_heads.box_head.fc6.weight" in report.copied


def test_different_backbones_and_families_never_crash():
    # A MobileNet student: FPN lateral 1x1 convs see other input channels, output convs match.
    teacher, student = make(backbone="resnet18"), make(backbone="mobilenet_v2")
    body_before = {k: v.clone() for k, v in student.model.backbone.body.state_dict().items()}
    report = inherit_weights(teacher, student)
    skipped = dict(report.skipped)
    assert skipped["backbone.fpn.inner_blocks.0.0.weight"].startswith("shape (32,128,1,1)")
    assert "backbone.fpn.layer_blocks.0.0.weight" in report.copied
    assert all(torch.equal(v, body_before[k]) for k, v in student.model.backbone.body.state_dict().items())

    # RetinaNet teacher -> FCOS student: the FPN matches, head names mostly do not.
    report = inherit_weights(make("retinanet"), make("fcos"))
    assert any(k.startswith("backbone.fpn.") for k in report.copied)
    assert any(reason == "not in teacher" for _, reason in report.skipped)
