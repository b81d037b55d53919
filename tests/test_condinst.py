"""CondInst (``condinst``): the controller and the 169-parameter dynamic mask head, the mask branch
on P3, dice loss against stride-4 ground truth, gradients into every part, masks out in the Mask
R-CNN format, and train / ICD distil from the CLI with ``bbox/AP`` and ``segm/AP`` (also a CondInst
teacher -> FCOS student). The FCOS part equals torchvision's FCOS: test_adapter_equivalence.py."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from icdistill.cli import main
from icdistill.config import distill_config
from icdistill.distill.icd.build import ICDFamilyDefaults, family_defaults
from icdistill.detectors import CondInstAdapter, build_detector, family_facts, freeze_as_teacher
from icdistill.detectors.condinst_mask import (
    NUM_DYNAMIC_PARAMS, aligned_bilinear, dice_loss, dynamic_mask_logits, gt_bitmasks, split_dynamic_params,
)
from icdistill.distill.build import build_distiller
from icdistill.distill.inherit import inherit_weights
from icdistill.errors import ConfigError, ExportError
from icdistill.export.deploy import check_exportable
from test_cross_architecture import PRIOR

NUM_CLASSES = 3
FCOS_LOSSES = {"classification", "bbox_regression", "bbox_ctrness"}


def tiny(family: str = "condinst", **kw):
    torch.manual_seed(0)
    return build_detector(family, backbone="resnet18", num_classes=NUM_CLASSES, fpn_channels=32,
                          anchor_sizes=(16, 32, 64, 128, 256), **kw)


def batch():
    """Two images padded to 64x96: one with two masked boxes, one without any."""
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    sizes = [(64, 96), (64, 80)]
    boxes = torch.tensor([[8.0, 6.0, 50.0, 40.0], [40.0, 20.0, 90.0, 60.0]])
    masks = torch.zeros(2, 64, 96, dtype=torch.uint8)
    masks[0, 9:37, 11:47] = 1
    masks[1, 23:57, 43:87] = 1
    targets = [{"boxes": boxes, "labels": torch.tensor([0, 2]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 64, 80, dtype=torch.uint8)}]
    return images, sizes, targets


def test_the_papers_architecture():
    adapter = tiny()
    facts = family_facts("condinst")
    assert isinstance(adapter, CondInstAdapter) and adapter.family == "condinst"
    assert facts.levels == family_facts("fcos").levels and facts.masks and not facts.two_stage
    assert family_defaults("condinst") == family_defaults("fcos") == ICDFamilyDefaults(8.0, 300)
    assert NUM_DYNAMIC_PARAMS == (8 + 2) * 8 + 8 + 8 * 8 + 8 + 8 * 1 + 1 == 169
    head = adapter.model.head
    assert head.controller.out_channels == 169 and head.controller.kernel_size == (3, 3)
    convs = [m for m in head.mask_branch.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128] * 4 + [8] and convs[-1].kernel_size == (1, 1)
    assert adapter.max_proposals == 500


def test_losses_and_gradients_reach_every_part():
    adapter = tiny().train()
    images, sizes, targets = batch()
    losses, extras = adapter.forward_train(images, sizes, adapter.features(images), targets, extras=("dense",))
    assert set(losses) == FCOS_LOSSES | {"loss_mask"} and all(torch.isfinite(v) for v in losses.values())
    assert 0 < float(losses["loss_mask"].detach()) < 1
    assert extras["dense"].cls_logits.shape[:2] == extras["dense"].ctrness.shape[:2]
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert not [n for n, p in trainable if p.grad is None], "parameters without a gradient"
    for part in ("backbone.body.", "backbone.fpn.", "head.classification_head.", "head.regression_head.",
                 "head.controller.", "head.mask_branch."):
        assert any(float(p.grad.abs().sum()) > 0 for n, p in trainable if n.startswith(part)), part


def test_at_most_max_proposals_instances_train_the_masks():
    adapter = tiny().train()
    adapter.max_proposals = 3
    seen = []
    original = adapter.instance_masks
    adapter.instance_masks = lambda feats, params, index, anchors: seen.append(len(params)) or original(
        feats, params, index, anchors)
    images, sizes, targets = batch()
    adapter.losses(images, sizes, adapter.features(images), targets)
    assert seen == [3]
    # No boxes at all: a zero loss that still back-propagates.
    empty = [{**targets[1]}, {**targets[1], "masks": torch.zeros(0, 64, 96, dtype=torch.uint8)}]
    loss = adapter.losses(images, [(64, 80), (64, 96)], adapter.features(images), empty)["loss_mask"]
    assert float(loss.detach()) == 0 and loss.requires_grad


def test_detect_returns_pasted_masks_in_the_mask_rcnn_format():
    adapter = tiny(score_thresh=0.0, detections_per_image=7).eval()
    images, sizes, _ = batch()
    with torch.no_grad():
        dets = adapter.detect(images, sizes, adapter.features(images))
    for d, (h, w) in zip(dets, sizes):
        assert len(d["boxes"]) == 7 and d["masks"].shape == (7, 1, h, w)
        assert float(d["masks"].min()) >= 0 and float(d["masks"].max()) <= 1
        assert ((d["labels"] >= 0) & (d["labels"] < NUM_CLASSES)).all()


def test_dice_loss_on_constructed_masks():
    a = torch.zeros(2, 16, 16)
    a[0, :8], a[1, 4:12, 4:12] = 1, 1
    assert torch.allclose(dice_loss(a, a), torch.zeros(2), atol=1e-6)
    assert torch.allclose(dice_loss(a, 1 - a), torch.ones(2), atol=1e-6)
    half = torch.zeros(1, 16, 16)
    half[0, :4] = 1  # half of a[0]: 1 - 2*64 / (64 + 128)
    assert torch.allclose(dice_loss(half, a[:1]), torch.tensor([1 / 3]), atol=1e-6)


def test_dynamic_head_is_adelaidets_grouped_convolution():
    """The 169 parameters read as AdelaiDet's parse_dynamic_params + grouped 1x1 convs (groups =
    instances) on [rel. coords / soi, mask features]."""
    torch.manual_seed(0)
    params, feats = torch.randn(3, 169), torch.randn(2, 8, 5, 6)
    index, points, soi = torch.tensor([0, 1, 1]), torch.tensor([[8.0, 16.0], [0.0, 0.0], [40.0, 24.0]]), torch.tensor([64.0, 128.0, 64.0])
    ours = dynamic_mask_logits(params, feats, index, points, soi, stride=8)
    weights, biases = split_dynamic_params(params)
    ys, xs = torch.meshgrid(torch.arange(5.0) * 8, torch.arange(6.0) * 8, indexing="ij")
    rel = (points[:, :, None, None] - torch.stack([xs, ys])[None]) / soi[:, None, None, None]
    x = torch.cat([rel, feats[index]], 1).reshape(1, -1, 5, 6)
    for k, (w, b) in enumerate(zip(weights, biases)):
        x = F.conv2d(x, w.reshape(-1, w.shape[2], 1, 1), b.reshape(-1), groups=3)
        x = F.relu(x) if k < 2 else x
    torch.testing.assert_close(ours, x.reshape(3, 5, 6))


def test_upsampling_and_ground_truth_sampling():
    x = torch.randn(1, 1, 4, 5)
    up = aligned_bilinear(x, 2)
    assert up.shape == (1, 1, 8, 10) and torch.equal(aligned_bilinear(x, 1), x)
    torch.testing.assert_close(up[0, 0, 1::2, 1::2], x[0, 0])  # the input grid, shifted by factor // 2
    masks = torch.arange(12 * 20).reshape(1, 12, 20) % 2
    bits = gt_bitmasks(masks.to(torch.uint8), (16, 24))
    assert bits.shape == (1, 4, 6) and torch.equal(bits[0, :3, :5], masks[0, 2::4, 2::4].float())
    assert float(bits[0, 3].abs().sum()) == 0  # the padding


def test_methods_on_condinst_and_no_onnx():
    teacher, student = freeze_as_teacher(tiny()), tiny("fcos")
    # A CondInst teacher distils an FCOS student (same p3-p7); inheriting copies FCOS's head.
    assert inherit_weights(tiny(), student).unused  # the controller and mask branch: no twin
    for method in ("icd", "fitnet"):
        distiller, _ = build_distiller(distill_config(method=method, icd={"hidden_dim": 64}), tiny(), teacher, prior=PRIOR)
        assert distiller.levels == ("p3", "p4", "p5", "p6", "p7")
    # An FCOS teacher's dense head is what GID compares anchor by anchor: a CondInst student may
    # not take it, a CondInst teacher it may (the capability check passes on condinst).
    with pytest.raises(ConfigError, match="teacher must be a condinst"):
        build_distiller(distill_config(method="gid"), tiny(), freeze_as_teacher(tiny("fcos")), prior=PRIOR)
    with pytest.raises(ExportError, match="condinst.*--format torchvision"):
        check_exportable(tiny())


def test_train_and_distil_condinst_from_the_cli(tmp_path, tiny_overrides, empty_config):
    """A CondInst teacher (bbox and segm AP) -> ICD into a CondInst student and into an FCOS one."""
    cheap = ["model.family=condinst", "model.detections_per_image=20", "eval.viz_images=0", "solver.max_iter=2"]
    teacher = tmp_path / "teacher"
    sets = [f"--set={s}" for s in [*tiny_overrides, *cheap]]
    assert main(["--no-progress", "train", str(empty_config), "--out", str(teacher), *sets]) == 0
    metrics = json.loads((teacher / "metrics.json").read_text())
    assert {"bbox/AP", "segm/AP"} <= set(metrics)
    distil = [*cheap, "solver.max_iter=1", "distill.method=icd", "distill.warmup_iters=0",
              "distill.icd.decoder_warmup_iters=0", "distill.icd.hidden_dim=64", "teacher.family=condinst",
              "teacher.backbone=resnet18", "teacher.fpn_channels=32", "teacher.anchor_sizes=[16, 32, 64, 128, 256]",
              f"teacher.weights={teacher / 'detector.pt'}"]
    for student, metric in (("condinst", "segm/AP"), ("fcos", "bbox/AP")):
        out = tmp_path / student
        sets = [f"--set={s}" for s in [*tiny_overrides, *distil, f"model.family={student}"]]
        assert main(["--no-progress", "distill", str(empty_config), "--out", str(out), *sets]) == 0, student
        assert metric in json.loads((out / "metrics.json").read_text()), student
        log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert any("distill/icd/feature" in e for e in log), student
        assert any("det/loss_mask" in e for e in log) == (student == "condinst")


def test_data_without_masks_is_a_config_error_naming_the_dataset():
    from icdistill.config import DataConfig
    from icdistill.detectors.data_needs import require_masks

    with pytest.raises(ConfigError, match="model.family condinst predicts instance masks.*coco data train.json"):
        require_masks("condinst", DataConfig(format="coco", train_ann="train.json", with_masks=False))


def test_cityscapes_recipes_are_table_8s():
    from icdistill.config import load_config
    from icdistill.demo import demo_config_path

    root = demo_config_path("student").parents[1] / "cityscapes"
    icd = load_config(root / "condinst_mbv2_icd.yaml")
    assert (icd.model.family, icd.model.backbone, icd.teacher.family, icd.teacher.backbone) == (
        "condinst", "mobilenet_v2", "condinst", "resnet50")
    assert icd.solver.max_iter == 24000 and icd.distill.icd.decoder_warmup_iters == 6000 and icd.distill.method == "icd"
    assert load_config(root / "condinst_R50_teacher.yaml").model.backbone == "resnet50"
    assert load_config(root / "condinst_mbv2_icd_inherit.yaml").distill.inherit
