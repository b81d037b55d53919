"""Our adapters are equivalent to torchvision's own ``forward`` of the model they wrap.

Every adapter (:mod:`icdistill.detectors`) recomposes the pieces torchvision's ``forward`` uses but
skips ``GeneralizedRCNNTransform`` (our data pipeline normalises, resizes and pads). Here that
transform is made a no-op -- mean 0 / std 1, ``min_size``/``max_size`` equal to the images' short /
long sides so the resize factor is exactly 1, and images whose sides are multiples of 32 so the
padding matches -- and the test checks (not assumes) that it then hands torchvision's layers the
very tensor, sizes and targets the adapter gets. On top of that, for each family of ``FAMILIES``:

* eval mode: ``adapter.detect(images, sizes, adapter.features(images))`` equals
  ``adapter.model(list_of_images)``: boxes, scores, labels (ours + 1 == torchvision's) and, for
  Mask R-CNN, the pasted masks; the same weights give the same detections, and there are some.
* train mode: ``adapter.losses(...)`` equals ``adapter.model(list_of_images, targets)`` loss for
  loss (same names, same values), with the RPN / RoI samplers drawing the same random samples, and
  back-propagating either gives the same gradient on every parameter after the ResNet body (FPN,
  heads), which catches a missing or extra ``detach``.

Images of three shapes (64x96, 96x64 and 64x64, padded to 96x96) cover per-image sizes, the
zero padding and, in training, an image without boxes. Tiny random models (resnet18, 32-channel
FPN) keep this on CPU in seconds.
"""

from __future__ import annotations

import copy

import pytest
import torch

from icdistill.detectors import FAMILIES, DetectorAdapter, build_detector

NUM_CLASSES = 3
SMALL_ANCHORS = (16, 32, 64, 128, 256)
SIZES = [(64, 96), (96, 64), (64, 64)]  # (h, w); short sides 64, long sides <= 96, multiples of 32
PAD = 96  # the padded batch side
MIN_SIZE, MAX_SIZE = 64, 96
DETECTIONS_PER_IMAGE = 6
LOSS_KEYS = {
    "retinanet": {"classification", "bbox_regression"},
    "fcos": {"classification", "bbox_regression", "bbox_ctrness"},
    "faster_rcnn": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"},
    "mask_rcnn": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"},
    # The FPN-free variants have no torchvision builder of their own, but they are torchvision
    # FasterRCNN models (custom backbone and box head), so their own forward is the reference.
    "faster_rcnn_c4": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"},
    "faster_rcnn_dc5": {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"},
    # Cascade: torchvision FasterRCNN models whose roi_heads is ours (detectors/cascade.py), so
    # this checks the adapter's recomposition against torchvision's forward, not the cascade.
    "cascade_rcnn": {"loss_objectness", "loss_rpn_box_reg", *(f"loss_{n}_s{k}" for n in ("classifier", "box_reg") for k in (1, 2, 3))},
    "cascade_mask_rcnn": {"loss_objectness", "loss_rpn_box_reg", "loss_mask",
                          *(f"loss_{n}_s{k}" for n in ("classifier", "box_reg") for k in (1, 2, 3))},
    # CondInst: a torchvision FCOS whose head is ours (detectors/condinst.py); its forward is the
    # reference of the FCOS part (boxes, FCOS's losses). Its masks and loss_mask have no
    # torchvision reference: tests/test_condinst.py checks them.
    "condinst": {"classification", "bbox_regression", "bbox_ctrness"},
}
# C4 runs res5 on every RoI: fewer of them keeps it at CPU seconds.
ROI_COUNTS = {"faster_rcnn_c4": (16, 20)}  # family -> (sampled RoIs per image, test proposals)


def test_every_family_is_covered():
    """The tests below run over ``FAMILIES``; this table of expected loss names must not go stale."""
    assert set(LOSS_KEYS) == set(FAMILIES)


def make_adapter(family: str, seed: int) -> DetectorAdapter:
    """A tiny detector with seeded random weights whose classifiers produce detections.

    The score threshold is low and the (non-background) classification biases of the dense heads
    are spread out so scores are distinct and plenty pass the threshold. The dense heads' background
    slot (model label 0) gets bias -1e4, i.e. score 0: the adapter masks that slot out on purpose
    (so it can never surface as data label -1) while torchvision's ``forward`` does not, so it must
    not be able to pass the threshold for the two to be comparable.
    """
    torch.manual_seed(seed)
    adapter = build_detector(
        family, backbone="resnet18", num_classes=NUM_CLASSES, fpn_channels=32, anchor_sizes=SMALL_ANCHORS,
        detections_per_image=DETECTIONS_PER_IMAGE, score_thresh=0.01,
    )
    model = adapter.model
    with torch.no_grad():
        if family in ("retinanet", "fcos", "condinst"):
            bias = model.head.classification_head.cls_logits.bias.view(-1, NUM_CLASSES + 1)
            bias[:, 1:] = torch.randn(bias.shape[0], NUM_CLASSES) - 2.0
            bias[:, 0] = -1e4
        else:
            stages = getattr(model.roi_heads, "stages", [model.roi_heads])  # a cascade has three
            for stage in stages:
                stage.box_predictor.cls_score.bias.copy_(torch.randn_like(stage.box_predictor.cls_score.bias))
            # Fewer proposals and sampled RoIs than torchvision's defaults, only to save CPU time:
            # the adapter reads these same attributes.
            model.rpn._pre_nms_top_n = {"training": 600, "testing": 300}
            sampled, test_proposals = ROI_COUNTS.get(family, (64, 100))
            model.rpn._post_nms_top_n = {"training": 300, "testing": test_proposals}
            model.roi_heads.fg_bg_sampler.batch_size_per_image = sampled
    # Make GeneralizedRCNNTransform a no-op on these images: no normalisation, resize factor
    # min(MIN_SIZE / short, MAX_SIZE / long) == 1 for every image of SIZES.
    model.transform.image_mean = [0.0, 0.0, 0.0]
    model.transform.image_std = [1.0, 1.0, 1.0]
    model.transform.min_size = (MIN_SIZE,)
    model.transform.max_size = MAX_SIZE
    assert model.transform.size_divisible == 32
    return adapter


def make_batch(seed: int, family: str):
    """(padded images Tensor[3, 3, 96, 96], their unpadded crops, sizes, contiguous-label targets).

    Image 0 has two boxes, image 1 one, image 2 none; Mask R-CNN targets carry uint8 masks.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(len(SIZES), 3, PAD, PAD)
    for i, (h, w) in enumerate(SIZES):
        images[i, :, :h, :w] = torch.randn(3, h, w, generator=g)
    crops = [images[i, :, :h, :w].clone() for i, (h, w) in enumerate(SIZES)]
    boxes = [
        torch.tensor([[8.0, 6.0, 50.0, 40.0], [40.0, 20.0, 90.0, 60.0]]),
        torch.tensor([[10.0, 20.0, 55.0, 85.0]]),
        torch.zeros(0, 4),
    ]
    labels = [torch.tensor([0, 2]), torch.tensor([1]), torch.zeros(0, dtype=torch.int64)]
    targets = [{"boxes": b, "labels": l} for b, l in zip(boxes, labels)]
    if family in ("mask_rcnn", "cascade_mask_rcnn", "condinst"):
        for t, (h, w) in zip(targets, SIZES):
            masks = torch.zeros(len(t["boxes"]), h, w, dtype=torch.uint8)
            for j, (x1, y1, x2, y2) in enumerate(t["boxes"].round().long().tolist()):
                masks[j, y1 + 3 : y2 - 3, x1 + 3 : x2 - 3] = 1  # a box shrunk by 3 px: not the box itself
            t["masks"] = masks
    return images, crops, list(SIZES), targets


def tv_targets(targets):
    """Our targets -> torchvision's: labels shifted by one (0 is background), masks as they are."""
    return [{**t, "labels": t["labels"] + 1} for t in targets]


def check_transform_is_identity(model, images, sizes, targets=None):
    """Hook torchvision's transform: assert at its output that torchvision's layers get exactly
    our padded batch, sizes (and targets). Returns the hook handle."""

    def hook(module, args, output):
        image_list, out_targets = output
        assert torch.equal(image_list.tensors, images), "the transform changed the pixels or the padding"
        assert [tuple(s) for s in image_list.image_sizes] == sizes
        if targets is not None:
            for ours, theirs in zip(targets, out_targets):
                assert ours.keys() == theirs.keys()
                for key in ours:
                    assert torch.equal(ours[key], theirs[key]), key

    return model.transform.register_forward_hook(hook)


@pytest.mark.parametrize("family", FAMILIES)
def test_detect_matches_torchvision_forward(family):
    """Eval mode: the adapter's detections (boxes, scores, labels, Mask R-CNN masks) on a padded
    batch equal those of torchvision's ``model.forward`` on the unpadded images, labels offset by
    the background slot; at least one image has detections, so this cannot pass vacuously."""
    adapter = make_adapter(family, seed=0).eval()
    images, crops, sizes, _ = make_batch(0, family)
    with torch.no_grad():
        ours = adapter.detect(images, sizes, adapter.features(images))
        handle = check_transform_is_identity(adapter.model, images, sizes)
        theirs = adapter.model(crops)
        handle.remove()
    assert len(ours) == len(theirs) == len(SIZES)
    assert sum(len(d["boxes"]) for d in ours) > 0, "no detections: the comparison would be vacuous"
    for i, (o, t) in enumerate(zip(ours, theirs)):
        assert len(o["boxes"]) == len(t["boxes"]), f"image {i}: {len(o['boxes'])} vs {len(t['boxes'])} detections"
        torch.testing.assert_close(o["boxes"], t["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(o["scores"], t["scores"], atol=1e-5, rtol=1e-5)
        assert o["labels"].dtype == torch.int64
        assert torch.equal(o["labels"] + 1, t["labels"]), f"image {i}: labels differ"
        assert ((o["labels"] >= 0) & (o["labels"] < NUM_CLASSES)).all()
        if family in ("mask_rcnn", "cascade_mask_rcnn"):
            h, w = sizes[i]
            assert o["masks"].shape == t["masks"].shape == (len(t["boxes"]), 1, h, w)
            torch.testing.assert_close(o["masks"], t["masks"], atol=1e-5, rtol=0)
        elif family == "condinst":  # torchvision's FCOS forward gives no masks
            assert o["masks"].shape == (len(o["boxes"]), 1, *sizes[i]) and "masks" not in t
        else:
            assert "masks" not in o


@pytest.mark.parametrize("family", FAMILIES)
def test_losses_match_torchvision_forward(family):
    """Train mode: with the same weights, images, targets and random seed, the adapter's losses
    equal torchvision's ``model.forward(images, targets)`` loss for loss -- the RPN's and RoI
    heads' samplers draw the same samples -- and so do the gradients of their sum on every
    FPN / head parameter. The two passes run on deep copies, so BatchNorm statistics updated by one pass
    cannot leak into the other."""
    adapter = make_adapter(family, seed=1).train()
    # The backbone body (ResNet) needs no gradient check: both passes run it as
    # ``model.backbone(images)``. Freezing it keeps backward cheap; BatchNorm still trains.
    adapter.model.backbone.body.requires_grad_(False)
    reference = copy.deepcopy(adapter)
    images, crops, sizes, targets = make_batch(1, family)
    seed = 1234

    torch.manual_seed(seed)
    ours = adapter.losses(images, sizes, adapter.features(images), targets)
    if family == "condinst":
        ours.pop("loss_mask")  # no torchvision reference (see LOSS_KEYS)

    def reseed(module, args, output) -> None:
        # In training the transform draws one random number per image (its random choice of
        # min_size, here among one value); re-seed after it, where the adapter's pass begins.
        torch.manual_seed(seed)

    handle = check_transform_is_identity(reference.model, images, sizes, tv_targets(targets))
    reseed_handle = reference.model.transform.register_forward_hook(reseed)
    torch.manual_seed(seed)
    theirs = reference.model(crops, tv_targets(targets))
    handle.remove()
    reseed_handle.remove()

    assert set(ours) == set(theirs) == LOSS_KEYS[family]
    for key in ours:
        assert ours[key].dim() == 0 and torch.isfinite(ours[key]), key
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-7, msg=lambda m: f"{key}: {m}")
    assert any(float(v.detach()) > 0 for v in ours.values())

    sum(ours.values()).backward()
    sum(theirs.values()).backward()
    theirs_params = dict(reference.model.named_parameters())
    n_grads = 0
    for name, p in adapter.model.named_parameters():
        q = theirs_params[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:
            n_grads += 1
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"grad of {name}: {m}")
    assert n_grads > 0
