"""FPN-free Faster R-CNN (C4, DC5): one stride-16 map, forward/backward, detection, the dilated
res5 against torchvision's, and `icdistill train` / `distill` from the CLI.

Tiny: resnet18 (c4 = 256, c5 = 512 channels), few RoIs (C4 runs res5 on each one)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torchvision

from icdistill.cli import main
from icdistill.config import ModelConfig
from icdistill.data.synthetic import SHAPE_CLASSES
from icdistill.files import detector_file, save_checkpoint
from icdistill.detectors import build_detector
from icdistill.detectors.families import family_facts
from icdistill.detectors.resnet_trunks import build_resnet_parts, DC5
from icdistill.errors import ConfigError

NUM_CLASSES = 3
FAMILIES = {"faster_rcnn_c4": ("c4", 256), "faster_rcnn_dc5": ("c5", 512)}
LOSSES = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
FEW_ROIS = ["model.box_batch_size_per_image=16", "model.rpn_post_nms_top_n_test=20", "model.detections_per_image=20"]


def tiny(family: str):
    torch.manual_seed(0)
    return build_detector(family, backbone="resnet18", num_classes=NUM_CLASSES, anchor_sizes=(16, 32, 64, 128, 256),
                          box_batch_size_per_image=16, rpn_post_nms_top_n_test=20)


def batch():
    """B=2 padded to 64x96: one image with two boxes, one without any."""
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    sizes = [(64, 96), (64, 80)]
    targets = [
        {"boxes": torch.tensor([[8.0, 6.0, 50.0, 40.0], [40.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, sizes, targets


@pytest.mark.parametrize("family", FAMILIES)
def test_one_stride_16_map_in_the_family_table(family):
    name, channels = FAMILIES[family]
    facts = family_facts(family)
    assert facts.levels.names == (name,) and facts.levels.strides == (16,) and facts.two_stage and not facts.masks
    adapter = tiny(family)
    assert adapter.family == family and adapter.level_names == (name,) and adapter.strides == (16,)
    assert adapter.out_channels == channels
    # 5 sizes x 3 ratios on the one level.
    assert adapter.model.rpn.anchor_generator.num_anchors_per_location() == [15]
    feats = adapter.features(batch()[0])
    assert list(feats) == [name] and feats[name].shape == (2, channels, 4, 6)


@pytest.mark.parametrize("family", FAMILIES)
def test_losses_extras_and_gradients_reach_every_trainable_part(family):
    adapter = tiny(family).train()
    images, sizes, targets = batch()
    feats = adapter.features(images)
    losses, extras = adapter.forward_train(images, sizes, feats, targets, extras=("anchors", "rpn", "roi_samples"))
    assert set(losses) == LOSSES and all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    h, w = feats[adapter.level_names[0]].shape[-2:]
    assert extras["anchors"][0].shape == (h * w * 15, 4)
    assert extras["rpn"].objectness.shape == (2, h * w * 15)
    assert all(len(b) <= 16 for b in extras["roi_samples"].boxes)
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert trainable
    no_grad = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, no_grad
    # Every part gets a non-zero gradient: backbone, RPN, box head (res5 for C4), predictor.
    for part in ("backbone.body.", "rpn.head.", "roi_heads.box_head.", "roi_heads.box_predictor."):
        assert any(float(p.grad.abs().sum()) > 0 for n, p in trainable if n.startswith(part)), part
    if family == "faster_rcnn_c4":
        assert any(n.startswith("roi_heads.box_head.res5.") for n, _ in trainable)
        assert not any(n.startswith("backbone.body.layer4") for n, _ in trainable)
    # The call-style extra: box head on given boxes.
    logits, deltas = adapter.box_head(feats, [targets[0]["boxes"], torch.tensor([[0.0, 0, 30, 30]])], sizes)
    assert logits.shape == (3, NUM_CLASSES + 1) and deltas.shape == (3, 4 * (NUM_CLASSES + 1))


@pytest.mark.parametrize("family", FAMILIES)
def test_detect_in_eval_mode(family):
    adapter = tiny(family).eval()
    images, sizes, _ = batch()
    dets = adapter.detect(images, sizes, adapter.features(images))
    assert len(dets) == 2
    for det, (h, w) in zip(dets, sizes):
        assert det["boxes"].shape[1] == 4 and len(det["boxes"]) == len(det["scores"]) == len(det["labels"])
        assert ((det["labels"] >= 0) & (det["labels"] < NUM_CLASSES)).all()
        assert (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()
    with pytest.raises(RuntimeError, match="train mode"):
        adapter.losses(images, sizes, adapter.features(images), batch()[2])


def test_dilated_res5_equals_torchvision_dilation_on_resnet50():
    """Our dilation (which also works for BasicBlock nets) is torchvision's
    ``replace_stride_with_dilation=[False, False, True]`` on a Bottleneck net: same weights, same
    map; 2048 channels at stride 16."""
    torch.manual_seed(0)
    parts = build_resnet_parts("resnet50", DC5)
    reference = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True])
    state = {k: v for k, v in parts.trunk.body.state_dict().items()}
    reference.load_state_dict(state, strict=False)
    parts.trunk.eval(), reference.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = parts.trunk(x)["c5"]
        body = torch.nn.Sequential(*list(reference.children())[:-2])
        theirs = body(x)
    assert ours.shape == (1, 2048, 4, 4) and parts.trunk.out_channels == 2048
    torch.testing.assert_close(ours, theirs)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="ResNet"):
        build_detector("faster_rcnn_c4", backbone="mobilenet_v2", num_classes=2)
    with pytest.raises(ConfigError, match="two-stage"):
        build_detector("retinanet", backbone="resnet18", num_classes=2, fpn_channels=32, box_batch_size_per_image=8)
    with pytest.raises(ConfigError, match="positive"):
        build_detector("faster_rcnn_dc5", backbone="resnet18", num_classes=2, rpn_post_nms_top_n_test=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_train_and_icd_distill_from_the_cli(family, tmp_path, tiny_overrides, empty_config):
    """A few-iteration teacher run, then ICD on the single map from it, both from the CLI."""
    name, _ = FAMILIES[family]
    common = [*tiny_overrides, f"model.family={family}", *FEW_ROIS, "solver.max_iter=2", "eval.viz_images=0"]
    teacher = tmp_path / "teacher"
    sets = [f"--set={s}" for s in common]
    assert main(["--no-progress", "train", str(empty_config), "--out", str(teacher), *sets]) == 0
    metrics = json.loads((teacher / "metrics.json").read_text())
    assert "bbox/AP" in metrics and not math.isnan(metrics["time/train_s"])
    student = tmp_path / "icd"
    distill = [*common, "solver.max_iter=1", "distill.method=icd", "distill.warmup_iters=0", "distill.icd.decoder_warmup_iters=1",
               f"teacher.family={family}", "teacher.backbone=resnet18", f"teacher.weights={teacher / 'detector.pt'}",
               "teacher.anchor_sizes=[16, 32, 64, 128, 256]", "distill.inherit=true"]
    sets = [f"--set={s}" for s in distill]
    assert main(["--no-progress", "distill", str(empty_config), "--out", str(student), *sets]) == 0
    assert "bbox/AP" in json.loads((student / "metrics.json").read_text())
    log = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert any("distill/icd/feature" in entry for entry in log)
    assert "det/loss_box_reg" in log[-1]


def test_a_c4_teacher_for_an_fpn_student_is_reported_before_training(tmp_path, tiny_overrides, empty_config, capsys):
    """Both level lists with their strides, exit status 2, no step taken."""
    teacher = build_detector("faster_rcnn_c4", backbone="resnet18", num_classes=len(SHAPE_CLASSES))
    model_config = ModelConfig(family="faster_rcnn_c4", backbone="resnet18").__dict__
    save_checkpoint(tmp_path / "c4.pt", detector_file(teacher.model.state_dict(), model_config, list(SHAPE_CLASSES)))
    sets = [f"--set={s}" for s in [*tiny_overrides, "model.family=faster_rcnn", "distill.method=icd",
                                   "teacher.family=faster_rcnn_c4", "teacher.backbone=resnet18",
                                   f"teacher.weights={tmp_path / 'c4.pt'}"]]
    assert main(["--no-progress", "distill", str(empty_config), "--out", str(tmp_path / "run"), *sets]) == 2
    err = capsys.readouterr().err
    assert "c4 (16)" in err and "p2 (4), p3 (8), p4 (16), p5 (32), p6 (64)" in err
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()
