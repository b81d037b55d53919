"""What a detector can hand a distillation method besides its features ("extras").

A method asks for extras by name (``DistillMethod.requires``). The student's come from the
training forward pass it already runs (``DetectorAdapter.forward_train(..., extras=...)``);
the teacher's from :meth:`DetectorAdapter.extras` on its frozen features.

Names:
    ``anchors``      per image float Tensor[N, 4] xyxy pixels: the dense head's anchors (points
                     for FCOS) or the RPN's, all levels concatenated finest first, location-major
                     (row-major y, x), then anchor.
    ``dense``        :class:`DenseOutputs` of a one-stage head.
    ``rpn``          :class:`RPNOutputs` of a two-stage detector.
    ``roi_samples``  :class:`RoISamples`: the RoI heads' sampled training RoIs (two-stage).

    ``head_hold``    :class:`~icdistill.detectors.head_split.HeadHolds` of a dense one-stage
                     head: each tower's activation at every layer (the tower's input, then each
                     layer after its conv and norm, before its ReLU), per level.

Call-style extras (given boxes, not captured): ``box_head`` (two-stage adapters'
:meth:`box_head`) and :func:`roi_align` (any family). ``head_from`` (dense one-stage
families): :func:`icdistill.detectors.head_split.head_from` runs a detector's head from a
given tower layer on given tensors, with autograd on (a frozen teacher's head on a student's
held features).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Sequence

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign

ANCHORS, DENSE, RPN, ROI_SAMPLES = "anchors", "dense", "rpn", "roi_samples"
HEAD_HOLD, HEAD_FROM = "head_hold", "head_from"
EXTRA_NAMES: tuple[str, ...] = (ANCHORS, DENSE, RPN, ROI_SAMPLES, HEAD_HOLD, HEAD_FROM)


def float32_shapes(levels: Sequence[Tensor]) -> list[Tensor]:
    """Stand-ins for feature maps handed to torchvision's anchor generators, which read only their
    shape, device and dtype: float32 views of one zero with each level's shape (no memory).

    Under autocast (``solver.amp``) the features are bf16 / fp16, and torchvision would build the
    anchors in that dtype (and keep its base anchors rounded to it): bf16's 8 significant bits
    put coordinates beyond 1024 px on an 8 px grid, so box targets and proposals would be off by
    pixels. Anchors are built in float32 whatever the features' dtype (mmdetection, too, keeps
    anchors and box coding in fp32 under mixed precision)."""
    return [torch.zeros((), dtype=torch.float32, device=level.device).expand(level.shape) for level in levels]


def float32_outputs(outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """A head's floating outputs in float32 (bf16 / fp16 under autocast), for box coding and losses."""
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in outputs.items()}


@dataclass
class DenseOutputs:
    """A one-stage head's raw outputs over all anchors (B images, N anchors, K = C + 1 classes;
    column 0 is the unused background slot of torchvision's sigmoid heads).

    Attributes:
        cls_logits: float Tensor[B, N, K].
        bbox_regression: float Tensor[B, N, 4], deltas (RetinaNet) or ltrb distances (FCOS) in
            the box coder's encoding.
        ctrness: float Tensor[B, N, 1] (FCOS) or None.
        anchors: per image float Tensor[N, 4] xyxy pixels.
        num_anchors_per_level: N split by level, finest first.
        box_coder: the model's box coder (see :meth:`decode`).
    """

    cls_logits: Tensor
    bbox_regression: Tensor
    ctrness: Tensor | None
    anchors: list[Tensor]
    num_anchors_per_level: list[int]
    box_coder: Any

    def decode(self) -> Tensor:
        """Predicted boxes, float Tensor[B, N, 4] xyxy pixels."""
        # RetinaNet's BoxCoder decodes one image with decode_single; FCOS's BoxLinearCoder's
        # decode takes [N, 4] codes and boxes directly.
        decode = getattr(self.box_coder, "decode_single", self.box_coder.decode)
        return torch.stack([decode(deltas, anchors) for deltas, anchors in zip(self.bbox_regression, self.anchors)])


@dataclass
class RPNOutputs:
    """The RPN of a two-stage detector (B images, N anchors over all levels).

    Attributes:
        objectness: float Tensor[B, N] logits.
        deltas: float Tensor[B, N, 4], box deltas (weights 1, 1, 1, 1).
        anchors: per image float Tensor[N, 4] xyxy pixels.
        num_anchors_per_level: N split by level, finest first.
        proposals: per image float Tensor[P_b, 4] xyxy, post-NMS with training-mode counts
            (torchvision: 2000 per image), in both the student and the teacher.
        labels: per image float Tensor[N], 1 foreground / 0 background / -1 ignored anchors
            (the RPN matcher, IoU 0.7 / 0.3); None without targets.
        regression_targets: per image float Tensor[N, 4] encoded targets; None without targets.
        sampled_positive, sampled_negative: per image bool Tensor[N], the anchors the
            fg/bg sampler drew for the loss (256 per image); None without targets.
    """

    objectness: Tensor
    deltas: Tensor
    anchors: list[Tensor]
    num_anchors_per_level: list[int]
    proposals: list[Tensor]
    labels: list[Tensor] | None = None
    regression_targets: list[Tensor] | None = None
    sampled_positive: list[Tensor] | None = None
    sampled_negative: list[Tensor] | None = None


@dataclass
class RoISamples:
    """The RoI heads' training samples (torchvision: 512 per image, 25 % positive, IoU 0.5;
    the ground-truth boxes are added to the proposals first).

    Attributes:
        boxes: per image float Tensor[R_b, 4] xyxy pixels.
        labels: per image int64 Tensor[R_b], model labels (0 background, 1..C the classes).
        matched_idxs: per image int64 Tensor[R_b], index of the matched ground-truth box.
        regression_targets: per image float Tensor[R_b, 4], encoded with weights (10, 10, 5, 5).
        class_logits: float Tensor[sum R_b, C+1], the box head's logits on these RoIs from the
            same training pass (the student's side; None on the teacher's, which has no pass).
        box_regression: float Tensor[sum R_b, 4(C+1)], likewise.
    """

    boxes: list[Tensor]
    labels: list[Tensor]
    matched_idxs: list[Tensor]
    regression_targets: list[Tensor]
    class_logits: Tensor | None = None
    box_regression: Tensor | None = None


def roi_align(
    features: "dict[str, Tensor]",
    boxes: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    *,
    levels: Sequence[str],
    output_size: int = 7,
    sampling_ratio: int = 2,
) -> Tensor:
    """RoIAlign of ``boxes`` from ``levels`` of ``features``, each box from the level that
    torchvision's FPN level mapper assigns it (k = floor(4 + log2(sqrt(area) / 224)), clamped
    to the given levels).

    Args:
        features: level name -> float Tensor[B, C, H_l, W_l].
        boxes: per image float Tensor[R_b, 4] xyxy pixels of the resized image.
        image_sizes: (h, w) of each image.
        levels: the level names to pool from, finest first.
    Returns:
        float Tensor[sum R_b, C, output_size, output_size], boxes in image order.
    """
    pooler = MultiScaleRoIAlign(list(levels), output_size, sampling_ratio)
    return pooler({name: features[name] for name in levels}, list(boxes), [tuple(s) for s in image_sizes])


def escape_inference_mode(value: Any) -> Any:
    """Clone the tensors in ``value`` (tensors, lists, tuples, dicts, dataclasses) made under
    ``torch.inference_mode``: outside it, an inference tensor may not be saved for backward,
    which a method's loss on teacher outputs would do."""
    if isinstance(value, Tensor):
        return value.clone() if value.is_inference() else value
    if isinstance(value, (list, tuple)):
        return type(value)(escape_inference_mode(v) for v in value)
    if isinstance(value, dict):
        return type(value)((k, escape_inference_mode(v)) for k, v in value.items())
    if is_dataclass(value) and not isinstance(value, type):
        return replace(value, **{f.name: escape_inference_mode(getattr(value, f.name)) for f in fields(value)})
    return value


__all__ = [
    "ANCHORS", "DENSE", "EXTRA_NAMES", "HEAD_FROM", "HEAD_HOLD", "ROI_SAMPLES", "RPN", "DenseOutputs", "RPNOutputs", "RoISamples",
    "escape_inference_mode", "roi_align",
]
