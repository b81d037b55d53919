"""RetinaNet adapter and builder, and the dense one-stage base class that FCOS (and CondInst) reuse.

The mode rules and target / detection conversions every adapter follows are in :mod:`.base`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import OrderedDict
from functools import partial
from typing import Any, Collection

import torch
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead

from .backbones import fpn_levels, rename_levels
from .base import (
    DetectorAdapter,
    check_extras,
    image_list,
    model_detections,
    model_num_classes,
    model_targets,
    require_mode,
)
from .extras import ANCHORS, DENSE, HEAD_FROM, HEAD_HOLD, DenseOutputs, float32_outputs, float32_shapes
from .head_split import HeadHolds, capture_head_holds
from .levels import P3_P7, LevelSpec


class DenseAdapter(DetectorAdapter):
    """Shared logic of dense one-stage detectors (RetinaNet, FCOS) over the P3..P7 pyramid.

    The model's ``head`` maps a list of level tensors to ``{"cls_logits": Tensor[B, HWA, K+1],
    "bbox_regression": Tensor[B, HWA, 4], ...}`` and ``anchor_generator`` gives per image
    ``Tensor[HWA, 4]`` xyxy anchors; subclasses supply how the loss is called.
    """

    spec: LevelSpec = P3_P7

    def __init__(self, model: torch.nn.Module, num_classes: int, family: str) -> None:
        super().__init__()
        self._init_adapter(model, num_classes, family, self.spec.names, self.spec.strides)

    def features(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        """images: Tensor[B, 3, Hp, Wp] -> p3..p7, each Tensor[B, out_channels, ceil(Hp/s), ceil(Wp/s)]."""
        return rename_levels(self.model.backbone(images), self.spec)

    def _head_and_anchors(
        self, images: Tensor, image_sizes: list[tuple[int, int]], features: "OrderedDict[str, Tensor]"
    ) -> tuple[dict[str, Tensor], list[Tensor], list[Tensor], list[int]]:
        levels = list(fpn_levels(features, self.spec).values())
        # Box coding and losses in float32 under autocast (see float32_shapes): the head's
        # convolutions ran in the autocast dtype.
        head_outputs = float32_outputs(self.model.head(levels))
        anchors = self.model.anchor_generator(image_list(images, image_sizes), float32_shapes(levels))
        return head_outputs, anchors, levels, [x.size(2) * x.size(3) for x in levels]

    @abstractmethod
    def _compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        num_locations_per_level: list[int],
    ) -> dict[str, Tensor]:
        """The model's own loss on model-label targets and unsplit head outputs."""

    supported_extras = frozenset({ANCHORS, DENSE, HEAD_HOLD, HEAD_FROM})

    def forward_train(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
        targets: list[dict[str, Tensor]],
        extras: Collection[str] = (),
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Scalar losses keyed as torchvision names them, and the asked-for ``anchors`` /
        ``dense`` extras of the same head pass. targets: ``boxes`` float[N, 4] xyxy pixels (N may
        be 0), ``labels`` int64[N] contiguous. Train mode only."""
        require_mode(self, training=True, call="losses")
        check_extras(self, extras)
        with capture_head_holds(self.model.head, enabled=HEAD_HOLD in extras) as holds:
            head_outputs, anchors, _, per_level = self._head_and_anchors(images, image_sizes, features)
        losses = self._compute_loss(model_targets(targets), head_outputs, anchors, per_level)
        return losses, self._dense_extras(extras, head_outputs, anchors, per_level, holds)

    def extras(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
        names: Collection[str],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Any]:
        """``anchors`` / ``dense`` / ``head_hold`` on given features (the teacher's side); any mode."""
        check_extras(self, names)
        with capture_head_holds(self.model.head, enabled=HEAD_HOLD in names) as holds:
            head_outputs, anchors, _, per_level = self._head_and_anchors(images, image_sizes, features)
        return self._dense_extras(names, head_outputs, anchors, per_level, holds)

    def _dense_extras(
        self, names: Collection[str], head_outputs: dict[str, Tensor], anchors: list[Tensor], per_level: list[int],
        holds: HeadHolds | None = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if holds is not None:
            out[HEAD_HOLD] = holds
        if ANCHORS in names:
            out[ANCHORS] = anchors
        if DENSE in names:
            out[DENSE] = DenseOutputs(
                cls_logits=head_outputs["cls_logits"],
                bbox_regression=head_outputs["bbox_regression"],
                ctrness=head_outputs.get("bbox_ctrness"),
                anchors=anchors,
                num_anchors_per_level=self._anchors_per_level(per_level, head_outputs["cls_logits"]),
                box_coder=self.model.box_coder,
            )
        return out

    @torch.no_grad()
    def detect(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
    ) -> list[dict[str, Tensor]]:
        """Per image ``boxes`` float[K, 4] xyxy in resized-image pixels (clipped to (h, w)),
        ``scores`` float[K], ``labels`` int64[K] in 0..C-1. Eval mode only."""
        require_mode(self, training=False, call="detect")
        head_outputs, anchors, _, per_level = self._head_and_anchors(images, image_sizes, features)
        # The background slot (model label 0) is never a target, but mask it anyway so it can never
        # surface as data label -1 nor take a top-k / detections_per_img slot.
        logits = head_outputs["cls_logits"]
        head_outputs = dict(head_outputs)
        head_outputs["cls_logits"] = logits.index_fill(-1, torch.tensor([0], device=logits.device), float("-inf"))
        # Split per level exactly like RetinaNet.forward / FCOS.forward do.
        num_anchors_per_level = self._anchors_per_level(per_level, logits)
        split_outputs = {k: list(v.split(num_anchors_per_level, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(num_anchors_per_level)) for a in anchors]
        sizes = [(int(h), int(w)) for h, w in image_sizes]
        return model_detections(self.model.postprocess_detections(split_outputs, split_anchors, sizes))

    def _anchors_per_level(self, locations_per_level: list[int], cls_logits: Tensor) -> list[int]:
        return locations_per_level


class RetinaNetAdapter(DenseAdapter):
    """torchvision :class:`~torchvision.models.detection.RetinaNet` without its transform.

    Losses: ``classification`` (sigmoid focal loss), ``bbox_regression`` (L1 on box deltas).
    """

    def __init__(self, model: RetinaNet, num_classes: int) -> None:
        super().__init__(model, num_classes, family="retinanet")

    def _compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        num_locations_per_level: list[int],
    ) -> dict[str, Tensor]:
        return self.model.compute_loss(targets, head_outputs, anchors)

    def _anchors_per_level(self, locations_per_level: list[int], cls_logits: Tensor) -> list[int]:
        # A anchors per location: recovered from the head output as RetinaNet.forward does.
        anchors_per_location = cls_logits.size(1) // sum(locations_per_level)
        return [hw * anchors_per_location for hw in locations_per_level]


def retinanet(
    backbone: BackboneWithFPN, num_classes: int, anchor_sizes: tuple[int, ...] | None,
    detections_per_image: int, score_thresh: float, head_norm: str | None = None,
) -> RetinaNetAdapter:
    """RetinaNet on an FPN backbone: torchvision's anchors (3 octave scales x 3 ratios per level)
    and head (``head_norm`` "gn": its v2 head with GroupNorm towers)."""
    # torchvision's _default_anchorgen: 3 octave scales x 3 aspect ratios per level.
    sizes = anchor_sizes or (32, 64, 128, 256, 512)
    anchors = AnchorGenerator(
        tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in sizes),
        ((0.5, 1.0, 2.0),) * len(sizes),
    )
    head = None
    if head_norm == "gn":
        # torchvision's v2 head: GroupNorm after every tower conv. Without it the std-0.01 init
        # of a narrow tower (FPN width 64) shrinks the signal ~5x per conv and the classifier
        # starts out, and tends to stay, input-independent when trained from scratch.
        head = RetinaNetHead(
            backbone.out_channels, anchors.num_anchors_per_location()[0], model_num_classes(num_classes),
            norm_layer=partial(nn.GroupNorm, 32),
        )
    model = RetinaNet(
        backbone,
        model_num_classes(num_classes),
        anchor_generator=anchors,
        head=head,
        score_thresh=score_thresh,
        detections_per_img=detections_per_image,
    )
    return RetinaNetAdapter(model, num_classes)
