"""Cascade R-CNN and Cascade Mask R-CNN: the three stages (IoU, box coder weights, loss weights),
losses and gradients of every stage, test-time averaged scores on the last stage's boxes, masks,
and train / distil from the CLI (the paper's Table 9 teacher: Cascade Mask R-CNN -> Faster R-CNN)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from icdistill.cli import main
from icdistill.detectors import build_detector
from icdistill.detectors.cascade import CascadeRoIHeads, agnostic_loss
from icdistill.detectors.families import family_facts

NUM_CLASSES = 3
STAGE_LOSSES = {f"loss_{n}_s{k}" for n in ("classifier", "box_reg") for k in (1, 2, 3)}


def tiny(family: str):
    torch.manual_seed(0)
    return build_detector(family, backbone="resnet18", num_classes=NUM_CLASSES, fpn_channels=32,
                          anchor_sizes=(16, 32, 64, 128, 256), box_batch_size_per_image=64, rpn_post_nms_top_n_test=30,
                          detections_per_image=20, score_thresh=0.0)


def batch(with_masks: bool = False):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 64, 96)
    sizes = [(64, 96), (64, 80)]
    targets = [
        {"boxes": torch.tensor([[8.0, 6.0, 50.0, 40.0], [40.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    if with_masks:
        for t, (h, w) in zip(targets, sizes):
            masks = torch.zeros(len(t["boxes"]), h, w, dtype=torch.uint8)
            for j, (x1, y1, x2, y2) in enumerate(t["boxes"].long().tolist()):
                masks[j, y1 + 2 : y2 - 2, x1 + 2 : x2 - 2] = 1
            t["masks"] = masks
    return images, sizes, targets


def test_three_stages_as_the_cascade_paper():
    heads = tiny("cascade_rcnn").model.roi_heads
    assert isinstance(heads, CascadeRoIHeads) and len(heads.stages) == 3
    assert [s.proposal_matcher.high_threshold for s in heads.stages] == [0.5, 0.6, 0.7]
    assert [s.box_coder.weights for s in heads.stages] == [(10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15)]
    assert all(s.box_predictor.bbox_pred.out_features == 4 for s in heads.stages)  # class-agnostic
    assert heads.fg_bg_sampler.batch_size_per_image == 64
    for family, masks in (("cascade_rcnn", False), ("cascade_mask_rcnn", True)):
        facts = family_facts(family)
        assert facts.levels == family_facts("faster_rcnn").levels and facts.two_stage and facts.masks == masks


@pytest.mark.parametrize("family", ["cascade_rcnn", "cascade_mask_rcnn"])
def test_losses_of_every_stage_and_gradients_everywhere(family):
    adapter = tiny(family).train()
    images, sizes, targets = batch(with_masks=family == "cascade_mask_rcnn")
    feats = adapter.features(images)
    losses, extras = adapter.forward_train(images, sizes, feats, targets, extras=("rpn", "roi_samples"))
    expected = {"loss_objectness", "loss_rpn_box_reg", *STAGE_LOSSES} | ({"loss_mask"} if "mask" in family else set())
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    samples = extras["roi_samples"]
    rois = sum(len(b) for b in samples.boxes)
    assert samples.class_logits.shape == (rois, NUM_CLASSES + 1) and samples.box_regression.shape == (rois, 4 * (NUM_CLASSES + 1))
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert not [n for n, p in trainable if p.grad is None], "parameters without a gradient"
    parts = ["backbone.body.", "backbone.fpn.", "rpn.head."] + [f"roi_heads.stages.{k}." for k in range(3)]
    parts += ["roi_heads.mask_head.", "roi_heads.mask_predictor."] if "mask" in family else []
    for part in parts:
        assert any(float(p.grad.abs().sum()) > 0 for n, p in trainable if n.startswith(part)), part


def test_stage_loss_weights_are_one_half_quarter():
    """Stage k's losses are w_k times the class-agnostic Fast R-CNN loss of its own RoIs."""
    adapter = tiny("cascade_rcnn").train()
    images, sizes, targets = batch()
    feats = adapter.features(images)
    heads, captured = adapter.model.roi_heads, []
    original = heads.run_stage

    def spy(k, *args):
        out = original(k, *args)
        captured.append(out[:2])
        return out

    heads.run_stage = spy
    matches = []
    original_match = heads.match
    heads.match = lambda stage, boxes, t: matches.append(original_match(stage, boxes, t)) or matches[-1]
    torch.manual_seed(3)
    losses = adapter.losses(images, sizes, feats, targets)
    assert len(captured) == 3
    # the stage-1 match is of the sampled RoIs (the last of its two calls); stages 2, 3 one each
    stage_matches = [matches[1], matches[2], matches[3]]
    for k, ((logits, deltas), (_, labels, regression)), weight in zip(range(3), zip(captured, stage_matches), (1.0, 0.5, 0.25)):
        cls, reg = agnostic_loss(logits, deltas, labels, regression)
        torch.testing.assert_close(losses[f"loss_classifier_s{k + 1}"], weight * cls)
        torch.testing.assert_close(losses[f"loss_box_reg_s{k + 1}"], weight * reg)


def test_detections_average_the_stages_scores_on_the_last_stages_boxes():
    adapter = tiny("cascade_rcnn").eval()
    images, sizes, _ = batch()
    heads = adapter.model.roi_heads
    seen = []
    original = heads.postprocess
    heads.postprocess = lambda boxes, scores, size: seen.append((boxes, scores)) or original(boxes, scores, size)
    with torch.no_grad():
        feats = adapter.features(images)
        dets = adapter.detect(images, sizes, feats)
        # By hand: each stage on the previous stage's boxes.
        from icdistill.detectors.backbones import fpn_levels
        from icdistill.detectors.retinanet import image_list

        tv = fpn_levels(feats, adapter.spec)
        proposals, _ = adapter.model.rpn(image_list(images, sizes), tv)
        boxes, probs = proposals, []
        for stage in heads.stages:
            logits, deltas = stage(heads.box_roi_pool(tv, boxes, sizes))
            probs.append(F.softmax(logits, -1))
            decoded = stage.box_coder.decode(deltas, boxes).reshape(-1, 4).split([len(b) for b in boxes])
            boxes = [b.clamp(min=0).minimum(torch.tensor([w, h, w, h])) for b, (h, w) in zip(decoded, sizes)]
    mean = ((probs[0] + probs[1] + probs[2]) / 3).split([len(b) for b in boxes])
    for (b_seen, s_seen), b, s in zip(seen, boxes, mean):
        torch.testing.assert_close(b_seen, b)
        torch.testing.assert_close(s_seen, s)
    assert sum(len(d["boxes"]) for d in dets) > 0
    for d in dets:
        assert ((d["labels"] >= 0) & (d["labels"] < NUM_CLASSES)).all() and len(d["boxes"]) <= 20


def test_cascade_mask_rcnn_detects_pasted_masks():
    adapter = tiny("cascade_mask_rcnn").eval()
    images, sizes, _ = batch()
    with torch.no_grad():
        dets = adapter.detect(images, sizes, adapter.features(images))
    for d, (h, w) in zip(dets, sizes):
        assert d["masks"].shape == (len(d["boxes"]), 1, h, w)
        assert float(d["masks"].min()) >= 0 and float(d["masks"].max()) <= 1


def test_train_and_distil_cascade_families_from_the_cli(tmp_path, tiny_overrides, empty_config):
    """Cascade Mask R-CNN teacher (segm AP) -> Cascade Mask R-CNN, -> Faster R-CNN (Table 9's pair)
    and, after its own teacher run, a Cascade R-CNN student."""
    cheap = ["model.box_batch_size_per_image=32", "model.rpn_post_nms_top_n_test=20", "model.detections_per_image=20",
             "model.anchor_sizes=[8, 16, 32, 64, 128]", "eval.viz_images=0", "solver.max_iter=2"]
    teacher = tmp_path / "cascade_mask"
    sets = [f"--set={s}" for s in [*tiny_overrides, *cheap, "model.family=cascade_mask_rcnn"]]
    assert main(["--no-progress", "train", str(empty_config), "--out", str(teacher), *sets]) == 0
    assert {"bbox/AP", "segm/AP"} <= set(json.loads((teacher / "metrics.json").read_text()))
    distil = [*cheap, "solver.max_iter=1", "distill.method=icd", "distill.warmup_iters=0", "distill.icd.decoder_warmup_iters=0",
              "teacher.family=cascade_mask_rcnn", "teacher.backbone=resnet18", "teacher.fpn_channels=32",
              "teacher.anchor_sizes=[8, 16, 32, 64, 128]", f"teacher.weights={teacher / 'detector.pt'}"]
    for student, metric in (("cascade_mask_rcnn", "segm/AP"), ("faster_rcnn", "bbox/AP"), ("cascade_rcnn", "bbox/AP")):
        out = tmp_path / student
        sets = [f"--set={s}" for s in [*tiny_overrides, *distil, f"model.family={student}"]]
        assert main(["--no-progress", "distill", str(empty_config), "--out", str(out), *sets]) == 0, student
        assert metric in json.loads((out / "metrics.json").read_text()), student
        log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert any("distill/icd/feature" in e for e in log), student
    own = tmp_path / "cascade_teacher"
    sets = [f"--set={s}" for s in [*tiny_overrides, *cheap, "model.family=cascade_rcnn", "solver.max_iter=1"]]
    assert main(["--no-progress", "train", str(empty_config), "--out", str(own), *sets]) == 0
    assert "bbox/AP" in json.loads((own / "metrics.json").read_text())
