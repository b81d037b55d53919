"""``build_detector``: the family -> builder table (:data:`BUILDERS`, the one place that lists
them) and what every build shares: argument checks, pretrained weights, RoI counts.

Each family's builder lives in its family's module beside its adapter. It assembles a torchvision
detector (backbone + FPN from :mod:`.backbones`, anchors, heads) exactly as torchvision's
``*_resnet50_fpn`` builders do, but with any backbone, FPN width and class count, then wraps it in
its adapter. Pretrained weights are fetched *before* the model is built so a missing download fails
fast. Adding a family: its facts in :mod:`.families`, its module (adapter + builder), one line here.
"""

from __future__ import annotations

import logging
from typing import Callable

from torch import Tensor
from torchvision.models.detection._utils import overwrite_eps

from ..errors import ConfigError
from .backbones import build_backbone_fpn, validate_backbone_name
from .base import DetectorAdapter
from .cascade import cascade_mask_rcnn, cascade_rcnn
from .condinst import condinst
from .families import FAMILY_TABLE, family_facts
from .faster_rcnn import faster_rcnn
from .faster_rcnn_single import faster_rcnn_c4, faster_rcnn_dc5
from .fcos import fcos
from .mask_rcnn import mask_rcnn
from .resnet_trunks import build_resnet_parts
from .retinanet import retinanet
from .weights import (
    ZERO_EPS_WEIGHTS,
    fetch_state_dict,
    is_checkpoint_path,
    load_checkpoint_file,
    load_pretrained_detector,
    resolve_backbone_weights,
    resolve_detection_weights,
)

logger = logging.getLogger(__name__)

NUM_LEVELS = 5
HEAD_NORMS = (None, "gn")

# family -> builder ``(backbone, num_classes, anchor_sizes, detections_per_image, score_thresh,
# head_norm=None) -> adapter``. The facts about each family (levels, stages, defaults) are in .families.
BUILDERS: dict[str, Callable[..., DetectorAdapter]] = {
    "retinanet": retinanet,
    "fcos": fcos,
    "faster_rcnn": faster_rcnn,
    "mask_rcnn": mask_rcnn,
    "faster_rcnn_c4": faster_rcnn_c4,
    "faster_rcnn_dc5": faster_rcnn_dc5,
    "cascade_rcnn": cascade_rcnn,
    "cascade_mask_rcnn": cascade_mask_rcnn,
    "condinst": condinst,
}
# family -> backbone builder, for the families without an FPN (default: build_backbone_fpn).
BACKBONE_BUILDERS: dict[str, Callable[..., object]] = {
    "faster_rcnn_c4": build_resnet_parts,
    "faster_rcnn_dc5": build_resnet_parts,
}
FPN_FREE_FAMILIES = frozenset(BACKBONE_BUILDERS)  # their `fpn_channels` is ignored
if set(BUILDERS) != set(FAMILY_TABLE):  # a family added to one table and not the other
    raise ImportError(f"detectors: families without a builder or facts: {sorted(set(BUILDERS) ^ set(FAMILY_TABLE))}")


def build_detector(
    family: str,
    *,
    backbone: str,
    num_classes: int,
    fpn_channels: int = 256,
    weights: str | None = None,
    backbone_weights: str | None = None,
    trainable_backbone_layers: int | None = None,
    anchor_sizes: tuple[int, ...] | None = None,
    detections_per_image: int = 100,
    score_thresh: float = 0.05,
    head_norm: str | None = None,
    box_batch_size_per_image: int | None = None,
    rpn_post_nms_top_n_test: int | None = None,
) -> DetectorAdapter:
    """Build a torchvision detector wrapped in its adapter.

    Args:
        family: "retinanet" | "fcos" | "faster_rcnn" | "mask_rcnn" (Faster R-CNN plus a mask
            branch; its training targets need ``masks``).
        backbone: resnet18 | resnet34 | resnet50 | resnet101 | mobilenet_v2 | mobilenet_v3_large.
        num_classes: C data classes, without background (the model gets C + 1).
        fpn_channels: FPN width = channels of every feature level.
        weights: full-detector weights: None (scratch), a torchvision COCO weights name
            ("COCO_V1", "DEFAULT", "RetinaNet_ResNet50_FPN_Weights.COCO_V1"; ResNet-50 with
            fpn_channels=256 only), or a local checkpoint path (a ``model.state_dict()``). When the
            class count differs, the classification layers stay fresh and are listed in
            ``adapter.weights_skipped``.
        backbone_weights: None | "imagenet" (IMAGENET1K_V1) | a weights enum name of ``backbone`` |
            a local file. Ignored when ``weights`` is given (it covers the backbone).
        trainable_backbone_layers: trainable body stages counted from the last (default 3 when
            pretrained; all when from scratch).
        anchor_sizes: base anchor size per level, 5 values (finest level first). RetinaNet adds
            the 2^(1/3), 2^(2/3) octave scales; FCOS uses the size to set the regression ranges;
            Faster/Mask R-CNN use one size x 3 ratios per level.
        detections_per_image: detections kept per image after NMS.
        score_thresh: minimum score of a returned detection.
        head_norm: RetinaNet only: None for torchvision's v1 head (what COCO_V1 weights fit),
            "gn" for GroupNorm in the head towers (torchvision's v2 head; trains from scratch and
            with narrow FPNs). FCOS's head always has GroupNorm.
        box_batch_size_per_image, rpn_post_nms_top_n_test: two-stage only: sampled training RoIs
            and test-time proposals per image (None: torchvision's 512 / 1000).

    Returns:
        The adapter, in train mode. BatchNorm2d in the body when nothing is pretrained,
        FrozenBatchNorm2d otherwise (torchvision's rule).

    Raises:
        ConfigError: unknown family/backbone/weights name, bad sizes.
        WeightsUnavailableError: weights could not be read or downloaded.
        ModelMismatchError: a checkpoint does not fit the configured model.
    """
    facts = family_facts(family)
    anchor_sizes = _check_build_args(family, backbone, num_classes, fpn_channels, anchor_sizes,
                                     detections_per_image, head_norm)
    roi_counts = _check_roi_counts(family, box_batch_size_per_image, rpn_post_nms_top_n_test)
    # Fetch first: a missing download should fail before minutes of model construction.
    det_state, det_source, zero_eps = _detector_weights(family, backbone, weights, fpn_channels)
    if det_state is not None and backbone_weights is not None:
        logger.info("backbone_weights=%s ignored: weights=%s already cover the backbone", backbone_weights, weights)
    body_state = _backbone_weights(backbone, backbone_weights) if det_state is None else None
    body_fpn = BACKBONE_BUILDERS.get(family, build_backbone_fpn)(
        backbone,
        facts.levels,
        fpn_channels=fpn_channels,
        body_state_dict=body_state,
        is_pretrained=det_state is not None or body_state is not None,
        trainable_layers=trainable_backbone_layers,
    )
    adapter = BUILDERS[family](body_fpn, num_classes, anchor_sizes, detections_per_image, score_thresh,
                               head_norm=head_norm)
    _set_roi_counts(adapter, *roi_counts)
    adapter.weights_skipped = []
    if det_state is not None:
        adapter.weights_skipped = load_pretrained_detector(adapter, det_state, source=det_source)
        if zero_eps:
            # These checkpoints were trained with FrozenBatchNorm2d eps=0, as torchvision restores.
            overwrite_eps(adapter.model, 0.0)
    return adapter


def _check_build_args(
    family: str, backbone: str, num_classes: int, fpn_channels: int, anchor_sizes: tuple[int, ...] | None,
    detections_per_image: int, head_norm: str | None,
) -> tuple[int, ...] | None:
    """ConfigError for arguments no builder can take; returns the anchor sizes as ints."""
    validate_backbone_name(backbone)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if anchor_sizes is not None:
        anchor_sizes = tuple(int(s) for s in anchor_sizes)
        if len(anchor_sizes) != NUM_LEVELS or min(anchor_sizes) <= 0:
            raise ConfigError(f"anchor_sizes needs {NUM_LEVELS} positive sizes (one per level), got {anchor_sizes}")
    if detections_per_image < 1:
        raise ConfigError(f"detections_per_image must be >= 1, got {detections_per_image}")
    if head_norm not in HEAD_NORMS:
        raise ConfigError(f"head_norm must be null or 'gn', got {head_norm!r}")
    if head_norm is not None and family != "retinanet":
        raise ConfigError(f"head_norm applies to retinanet only ({family} keeps torchvision's head)")
    if head_norm == "gn" and (fpn_channels % 32 or fpn_channels < 64):
        # GroupNorm(32, C) needs C divisible by 32, and two channels per group so that a 1x1
        # P7 map of a single image still has more than one value per group.
        raise ConfigError(f"head_norm 'gn' needs fpn_channels a multiple of 32 and at least 64, got {fpn_channels}")
    return anchor_sizes


def _check_roi_counts(family: str, box_batch: int | None, post_nms_test: int | None) -> tuple[int | None, int | None]:
    """ConfigError unless the RoI/proposal counts are null or positive, and null for one-stage families."""
    for key, value in (("box_batch_size_per_image", box_batch), ("rpn_post_nms_top_n_test", post_nms_test)):
        if value is None:
            continue
        if not family_facts(family).two_stage:
            raise ConfigError(f"{key} applies to two-stage families only ({family} has no RoI heads)")
        if int(value) < 1:
            raise ConfigError(f"{key} must be a positive integer or null, got {value}")
    return box_batch, post_nms_test


def _set_roi_counts(adapter: DetectorAdapter, box_batch: int | None, post_nms_test: int | None) -> None:
    """Set the counts where torchvision's constructor stores ``box_batch_size_per_image`` and
    ``rpn_post_nms_top_n_test`` (the RoI sampler, the RPN's ``testing`` top-n)."""
    if box_batch is not None:
        adapter.model.roi_heads.fg_bg_sampler.batch_size_per_image = int(box_batch)
    if post_nms_test is not None:
        adapter.model.rpn._post_nms_top_n["testing"] = int(post_nms_test)


def _detector_weights(
    family: str, backbone: str, weights: str | None, fpn_channels: int
) -> tuple[dict[str, Tensor] | None, str, bool]:
    """(state dict, source name, whether FrozenBatchNorm needs eps 0) of full-detector weights."""
    if weights is None:
        return None, "", False
    if is_checkpoint_path(weights):
        return load_checkpoint_file(weights), weights, False
    enum = resolve_detection_weights(family, backbone, weights, fpn_channels=fpn_channels)
    return fetch_state_dict(enum), repr(enum), enum in ZERO_EPS_WEIGHTS


def _backbone_weights(backbone: str, backbone_weights: str | None) -> dict[str, Tensor] | None:
    """The backbone body's state dict: None, a local file or a torchvision weights name."""
    if backbone_weights is None:
        return None
    if is_checkpoint_path(backbone_weights):
        return load_checkpoint_file(backbone_weights)
    return fetch_state_dict(resolve_backbone_weights(backbone, backbone_weights))
