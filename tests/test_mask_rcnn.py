"""Mask R-CNN adapter on a tiny CPU model (resnet18, 32-channel FPN, 64x96 images)."""

from __future__ import annotations

import math
from urllib.error import URLError

import pytest
import torch
import torchvision

from icdistill.detectors import FAMILIES, MaskRCNNAdapter, build_detector
from icdistill.detectors.weights import DETECTION_WEIGHTS
from icdistill.errors import WeightsUnavailableError

NUM_CLASSES = 3
SMALL_ANCHORS = (16, 32, 64, 128, 256)
LOSS_KEYS = {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}


def tiny(**kwargs) -> MaskRCNNAdapter:
    kwargs.setdefault("fpn_channels", 32)
    kwargs.setdefault("anchor_sizes", SMALL_ANCHORS)
    return build_detector("mask_rcnn", backbone="resnet18", num_classes=NUM_CLASSES, **kwargs)


def box_masks(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """uint8[N, h, w]: an ellipse inscribed in each box (0/1)."""
    ys = torch.arange(h, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, :] + 0.5
    out = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.tolist()):
        cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
        out[i] = (((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1).to(torch.uint8)
    return out


def tiny_batch():
    """B=2: a 64x96 image with two boxes and a 96x64 image with none, padded to 96x96."""
    torch.manual_seed(0)
    images = torch.zeros(2, 3, 96, 96)
    images[0, :, :64, :96] = torch.randn(3, 64, 96)
    images[1, :, :96, :64] = torch.randn(3, 96, 64)
    sizes = [(64, 96), (96, 64)]
    boxes = torch.tensor([[8.0, 6.0, 50.0, 40.0], [40.0, 20.0, 90.0, 60.0]])
    targets = [
        {"boxes": boxes, "labels": torch.tensor([0, 2]), "masks": box_masks(boxes, 64, 96)},
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 96, 64, dtype=torch.uint8),
        },
    ]
    return images, sizes, targets


def test_family_registered_with_p2_p6():
    adapter = tiny()
    assert isinstance(adapter, MaskRCNNAdapter) and "mask_rcnn" in FAMILIES
    assert adapter.family == "mask_rcnn"
    assert adapter.level_names == ("p2", "p3", "p4", "p5", "p6") and adapter.strides == (4, 8, 16, 32, 64)
    assert adapter.out_channels == 32 and adapter.num_classes == NUM_CLASSES
    assert isinstance(adapter.model, torchvision.models.detection.MaskRCNN)
    assert adapter.model.roi_heads.mask_predictor.mask_fcn_logits.out_channels == NUM_CLASSES + 1
    images, _, _ = tiny_batch()
    feats = adapter.features(images)
    assert list(feats) == list(adapter.level_names)
    for name, stride in zip(adapter.level_names, adapter.strides):
        side = math.ceil(96 / stride)
        assert feats[name].shape == (2, 32, side, side), name


def test_losses_include_mask_and_backward_with_empty_image():
    adapter = tiny()
    adapter.train()
    images, sizes, targets = tiny_batch()
    losses = adapter.losses(images, sizes, adapter.features(images), targets)
    assert set(losses) == LOSS_KEYS
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    assert losses["loss_mask"] > 0
    sum(losses.values()).backward()
    named = dict(adapter.model.named_parameters())
    mask_grad = named["roi_heads.mask_predictor.mask_fcn_logits.weight"].grad
    assert mask_grad is not None and torch.isfinite(mask_grad).all() and mask_grad.abs().sum() > 0
    fpn_grads = [p.grad for n, p in named.items() if n.startswith("backbone.fpn.")]
    assert fpn_grads and all(g is not None and torch.isfinite(g).all() for g in fpn_grads)


def test_detect_returns_pasted_mask_probabilities():
    adapter = tiny(score_thresh=0.0, detections_per_image=10)
    adapter.eval()
    images, sizes, _ = tiny_batch()
    dets = adapter.detect(images, sizes, adapter.features(images))
    assert len(dets) == 2
    for det, (h, w) in zip(dets, sizes):
        assert set(det) == {"boxes", "scores", "labels", "masks"}
        k = det["boxes"].shape[0]
        assert 0 < k <= 10
        assert det["masks"].shape == (k, 1, h, w) and det["masks"].dtype == torch.float32
        assert ((det["masks"] >= 0) & (det["masks"] <= 1)).all()
        assert ((det["labels"] >= 0) & (det["labels"] < NUM_CLASSES)).all()


def test_wrong_mode_and_missing_masks_raise():
    adapter = tiny()
    images, sizes, targets = tiny_batch()
    adapter.eval()
    with pytest.raises(RuntimeError, match="train mode"):
        adapter.losses(images, sizes, adapter.features(images), targets)
    adapter.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        adapter.detect(images, sizes, adapter.features(images))
    no_masks = [{k: v for k, v in t.items() if k != "masks"} for t in targets]
    with pytest.raises(ValueError, match="with_masks"):
        adapter.losses(images, sizes, adapter.features(images), no_masks)
    wrong_size = [dict(targets[0], masks=targets[0]["masks"][:, :32]), targets[1]]
    with pytest.raises(ValueError, match="masks must be"):
        adapter.losses(images, sizes, adapter.features(images), wrong_size)


def test_overfits_single_image():
    torch.manual_seed(0)
    adapter = tiny()
    # The 256-wide mask head dominates CPU time; 8 sampled positive RoIs keep each step cheap.
    adapter.model.roi_heads.fg_bg_sampler.batch_size_per_image = 32
    adapter.train()
    images, sizes, targets = tiny_batch()
    images, sizes, targets = images[:1], sizes[:1], targets[:1]
    params = [p for p in adapter.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9)
    history, mask_history = [], []
    for _ in range(6):
        losses = adapter.losses(images, sizes, adapter.features(images), targets)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        mask_history.append(losses["loss_mask"].item())
    assert all(math.isfinite(v) for v in history)
    assert min(history[-3:]) < 0.9 * history[0], history
    assert min(mask_history[-3:]) < mask_history[0], mask_history


def test_coco_weights_registered_and_offline_error(monkeypatch, tmp_path):
    assert DETECTION_WEIGHTS[("mask_rcnn", "resnet50")] is torchvision.models.detection.MaskRCNN_ResNet50_FPN_Weights
    requested = []

    def offline(url, *args, **kw):  # stands in for torch.hub's download: the network is down
        requested.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    for name in ("COCO_V1", "DEFAULT"):
        with pytest.raises(WeightsUnavailableError) as exc:
            build_detector("mask_rcnn", backbone="resnet50", num_classes=NUM_CLASSES, weights=name)
        message = str(exc.value)
        assert "MaskRCNN_ResNet50_FPN_Weights.COCO_V1" in message and str(tmp_path / "checkpoints") in message
    assert len(requested) == 2 and all(u.startswith("https://download.pytorch.org/") for u in requested)


def test_coco_checkpoint_loads_except_class_layers(monkeypatch, tmp_path):
    # torchvision's 91-class COCO layout served as if from the hub cache: everything but the
    # class-dependent box and mask predictor layers must load (and FrozenBN eps becomes 0).
    coco = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    coco = coco.state_dict()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda url, *a, **k: coco)
    adapter = build_detector("mask_rcnn", backbone="resnet50", num_classes=NUM_CLASSES, weights="COCO_V1")
    assert set(adapter.weights_skipped) == {
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.mask_predictor.mask_fcn_logits.weight",
        "roi_heads.mask_predictor.mask_fcn_logits.bias",
    }
    state = adapter.model.state_dict()
    for key in (
        "backbone.body.layer4.2.conv3.weight",
        "roi_heads.mask_head.0.0.weight",
        "roi_heads.mask_predictor.conv5_mask.weight",
    ):
        assert torch.equal(state[key], coco[key]), key
    assert adapter.model.backbone.body.bn1.eps == 0.0
