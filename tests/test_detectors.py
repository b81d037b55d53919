"""Detector adapters, builders and weight handling, on tiny CPU models (resnet18 / MobileNet, narrow FPN)."""

from __future__ import annotations

import math
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from icdistill.detectors import (
    BACKBONES,
    FAMILIES,
    DetectorAdapter,
    build_detector,
    freeze_as_teacher,
    load_detector_state,
)
from icdistill.errors import ConfigError, ModelMismatchError, WeightsUnavailableError

NUM_CLASSES = 3
SMALL_ANCHORS = (16, 32, 64, 128, 256)
FAMILY_LEVELS = {
    "retinanet": (("p3", "p4", "p5", "p6", "p7"), (8, 16, 32, 64, 128)),
    "fcos": (("p3", "p4", "p5", "p6", "p7"), (8, 16, 32, 64, 128)),
    "faster_rcnn": (("p2", "p3", "p4", "p5", "p6"), (4, 8, 16, 32, 64)),
}
LOSS_KEYS = {
    "retinanet": {"classification", "bbox_regression"},
    "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
    "faster_rcnn": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"},
}
CASES = [
    ("retinanet", "resnet18"),
    ("fcos", "resnet18"),
    ("faster_rcnn", "resnet18"),
    ("retinanet", "mobilenet_v3_large"),
    ("faster_rcnn", "mobilenet_v2"),
]
FAMILY_NAMES = ["retinanet", "fcos", "faster_rcnn"]


def tiny(family: str, backbone: str = "resnet18", **kwargs) -> DetectorAdapter:
    kwargs.setdefault("fpn_channels", 32)
    kwargs.setdefault("anchor_sizes", SMALL_ANCHORS)
    return build_detector(family, backbone=backbone, num_classes=NUM_CLASSES, **kwargs)


def tiny_batch():
    """B=2: a 64x96 image with two boxes and a 96x64 image with none, padded to 96x96."""
    torch.manual_seed(0)
    images = torch.zeros(2, 3, 96, 96)
    images[0, :, :64, :96] = torch.randn(3, 64, 96)
    images[1, :, :96, :64] = torch.randn(3, 96, 64)
    sizes = [(64, 96), (96, 64)]
    targets = [
        {"boxes": torch.tensor([[8.0, 6.0, 50.0, 40.0], [40.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    return images, sizes, targets


@pytest.mark.parametrize("family,backbone", CASES)
def test_features_names_strides_shapes(family, backbone):
    adapter = tiny(family, backbone)
    names, strides = FAMILY_LEVELS[family]
    assert adapter.family == family
    assert adapter.level_names == names and adapter.strides == strides
    assert adapter.out_channels == 32 and adapter.num_classes == NUM_CLASSES
    images, _, _ = tiny_batch()
    feats = adapter.features(images)
    assert list(feats) == list(names)
    for name, stride in zip(names, strides):
        side = math.ceil(96 / stride)
        assert feats[name].shape == (2, 32, side, side), name


@pytest.mark.parametrize("family,backbone", CASES)
def test_losses_finite_and_backward_with_empty_image(family, backbone):
    adapter = tiny(family, backbone)
    adapter.train()
    images, sizes, targets = tiny_batch()
    losses = adapter.losses(images, sizes, adapter.features(images), targets)
    assert set(losses) == LOSS_KEYS[family]
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    sum(losses.values()).backward()
    grads = [p.grad for n, p in adapter.model.named_parameters() if n.startswith("backbone.fpn.")]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_detect_eval_outputs(family):
    # score_thresh=0 lets untrained heads output detections, so keys/dtypes/labels get exercised;
    # it also checks that the background slot never surfaces as a label.
    adapter = tiny(family, score_thresh=0.0, detections_per_image=20)
    adapter.eval()
    images, sizes, _ = tiny_batch()
    with torch.no_grad():
        dets = adapter.detect(images, sizes, adapter.features(images))
    assert len(dets) == 2
    for det, (h, w) in zip(dets, sizes):
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].dtype == torch.float32 and det["boxes"].shape[1] == 4
        assert det["scores"].dtype == torch.float32 and det["labels"].dtype == torch.int64
        k = det["boxes"].shape[0]
        assert 0 < k <= 20 and det["scores"].shape == (k,) and det["labels"].shape == (k,)
        assert ((det["labels"] >= 0) & (det["labels"] < NUM_CLASSES)).all()
        boxes = det["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_wrong_mode_raises(family):
    adapter = tiny(family)
    images, sizes, targets = tiny_batch()
    adapter.eval()
    with pytest.raises(RuntimeError, match="train mode"):
        adapter.losses(images, sizes, adapter.features(images), targets)
    adapter.train()
    with pytest.raises(RuntimeError, match="eval mode"):
        adapter.detect(images, sizes, adapter.features(images))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_overfits_single_image(family):
    torch.manual_seed(0)
    # FCOS heads use GroupNorm(32, C): 64 channels keep >1 value per group on the 1x1 P7 of batch 1.
    adapter = tiny(family, fpn_channels=64 if family == "fcos" else 32)
    adapter.train()
    images, sizes, targets = tiny_batch()
    images, sizes, targets = images[:1], sizes[:1], targets[:1]
    params = [p for p in adapter.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    history = []
    for _ in range(12):
        loss = sum(adapter.losses(images, sizes, adapter.features(images), targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    assert min(history[-3:]) < 0.9 * history[0], history


def test_fpn_channels_respected():
    adapter = tiny("faster_rcnn", fpn_channels=48)
    assert adapter.out_channels == 48
    feats = adapter.features(torch.zeros(1, 3, 64, 64))
    assert all(f.shape[1] == 48 for f in feats.values())


def test_unknown_family_and_backbone_list_valid_names():
    with pytest.raises(ConfigError) as exc:
        build_detector("yolo", backbone="resnet18", num_classes=2)
    assert all(name in str(exc.value) for name in FAMILIES)
    with pytest.raises(ConfigError) as exc:
        build_detector("retinanet", backbone="vgg16", num_classes=2)
    assert all(name in str(exc.value) for name in BACKBONES)
    with pytest.raises(ConfigError, match="anchor_sizes"):
        build_detector("retinanet", backbone="resnet18", num_classes=2, anchor_sizes=(16, 32))
    with pytest.raises(ConfigError, match="divisible by 32"):
        build_detector("fcos", backbone="resnet18", num_classes=2, fpn_channels=48)
    with pytest.raises(ConfigError, match="available"):
        build_detector("retinanet", backbone="resnet18", num_classes=2, weights="COCO_V1")


def test_norm_layer_follows_pretraining(monkeypatch, tmp_path):
    scratch = tiny("retinanet")
    assert any(isinstance(m, nn.BatchNorm2d) for m in scratch.model.backbone.body.modules())
    # Fake the ImageNet download with a random resnet18 state dict (no network).
    fake = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda url, *a, **k: fake)
    pretrained = tiny("retinanet", backbone_weights="imagenet")
    body = pretrained.model.backbone.body
    assert not any(isinstance(m, nn.BatchNorm2d) for m in body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in body.modules())
    assert torch.equal(body.conv1.weight, fake["conv1.weight"])
    # torchvision's default of 3 trainable stages: conv1 and layer1 frozen, layer2..4 train.
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad


@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"weights": "COCO_V1"}, "RetinaNet_ResNet50_FPN_Weights.COCO_V1"),
        ({"weights": "RetinaNet_ResNet50_FPN_Weights.DEFAULT"}, "RetinaNet_ResNet50_FPN_Weights.COCO_V1"),
        ({"backbone_weights": "imagenet"}, "ResNet50_Weights.IMAGENET1K_V1"),
    ],
)
def test_offline_weights_raise_clear_error(monkeypatch, tmp_path, kwargs, name):
    requested = []

    def offline(url, *args, **kw):  # stands in for torch.hub's download: the network is down
        requested.append(url)
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as exc:
        build_detector("retinanet", backbone="resnet50", num_classes=NUM_CLASSES, **kwargs)
    message = str(exc.value)
    assert name in message and str(tmp_path / "checkpoints") in message
    assert len(requested) == 1 and requested[0].startswith("https://download.pytorch.org/")


@pytest.mark.parametrize(
    "family,tv_builder",
    [
        ("retinanet", torchvision.models.detection.retinanet_resnet50_fpn),
        ("faster_rcnn", torchvision.models.detection.fasterrcnn_resnet50_fpn),
    ],
)
def test_coco_checkpoint_loads_except_class_layers(monkeypatch, tmp_path, family, tv_builder):
    # A state dict with the exact layout of torchvision's 91-class COCO checkpoint, served as if
    # it came from the hub cache: everything but the class-dependent layers must load.
    coco = tv_builder(weights=None, weights_backbone=None, num_classes=91).state_dict()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda url, *a, **k: coco)
    adapter = build_detector(family, backbone="resnet50", num_classes=NUM_CLASSES, weights="COCO_V1")
    expected_skips = {
        "retinanet": {"head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias"},
        "faster_rcnn": {
            "roi_heads.box_predictor.cls_score.weight",
            "roi_heads.box_predictor.cls_score.bias",
            "roi_heads.box_predictor.bbox_pred.weight",
            "roi_heads.box_predictor.bbox_pred.bias",
        },
    }[family]
    assert set(adapter.weights_skipped) == expected_skips
    state = adapter.model.state_dict()
    for key in ("backbone.body.layer4.2.conv3.weight", "backbone.fpn.layer_blocks.0.0.weight"):
        assert torch.equal(state[key], coco[key])


def test_load_detector_state_mismatch_names_source_and_hint():
    source = tiny("retinanet").model.state_dict()
    other_classes = build_detector(
        "retinanet", backbone="resnet18", num_classes=5, fpn_channels=32, anchor_sizes=SMALL_ANCHORS
    )
    with pytest.raises(ModelMismatchError) as exc:
        load_detector_state(other_classes, source, source="runs/a/student.pt")
    assert "runs/a/student.pt" in str(exc.value) and "num_classes" in str(exc.value)
    with pytest.raises(ModelMismatchError, match="fpn_channels"):
        load_detector_state(tiny("retinanet", fpn_channels=48), source, source="x.pt")
    with pytest.raises(ModelMismatchError, match="family"):
        load_detector_state(tiny("faster_rcnn"), source, source="x.pt")


def test_checkpoint_path_roundtrip(tmp_path):
    original = tiny("fcos")
    path = tmp_path / "detector.pt"
    torch.save(original.model.state_dict(), path)
    restored = tiny("fcos", weights=str(path))
    assert restored.weights_skipped == []
    original.eval()
    restored.eval()
    images, _, _ = tiny_batch()
    with torch.no_grad():
        a, b = original.features(images), restored.features(images)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        tiny("fcos", weights=str(tmp_path / "missing.pt"))


def test_frozen_teacher_stays_eval():
    teacher = freeze_as_teacher(tiny("faster_rcnn"))
    assert isinstance(teacher, DetectorAdapter)
    assert teacher.level_names == ("p2", "p3", "p4", "p5", "p6") and teacher.model is teacher.adapter.model
    teacher.train()
    container = nn.ModuleDict({"teacher": teacher})
    container.train()
    assert not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    images, sizes, targets = tiny_batch()
    feats = teacher.features(images)
    assert not any(f.requires_grad for f in feats.values())
    with pytest.raises(RuntimeError, match="frozen teacher"):
        teacher.losses(images, sizes, feats, targets)
    assert len(teacher.detect(images, sizes, feats)) == 2


def test_the_family_table_is_the_one_list_of_families():
    """A family is added in detectors/ only: the builders and the config's choices follow the
    family table, and the config reads it without loading torch."""
    import subprocess
    import sys

    from icdistill import config
    from icdistill.detectors.builders import BUILDERS
    from icdistill.detectors.families import FAMILIES, FAMILY_TABLE

    assert list(BUILDERS) == list(FAMILY_TABLE)
    assert config.CHOICES["model.family"] == config.CHOICES["teacher.family"] == FAMILIES
    code = "import sys, icdistill.config; assert 'torch' not in sys.modules, 'the config loaded torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
