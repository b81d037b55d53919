"""The detector adapter contract: one small class per torchvision family.

An adapter recomposes the public pieces torchvision's own ``forward`` uses (backbone+FPN, head,
anchors, loss, postprocess) but skips ``GeneralizedRCNNTransform``: resizing and normalisation
happen once in the data pipeline (:mod:`icdistill.structures`), so teacher and student see the same
padded grid.

Labels: the data uses contiguous ids 0..C-1 with no background. torchvision's detectors reserve
label 0 for background (Faster R-CNN needs it; RetinaNet/FCOS COCO weights keep it unused), so every
adapter builds its model with ``num_classes = C + 1`` and converts with :func:`to_model_labels` /
:func:`from_model_labels` -- the one place where that offset lives.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict

from torch import Tensor, nn

BACKGROUND_OFFSET = 1


def to_model_labels(labels: Tensor) -> Tensor:
    """Contiguous data labels 0..C-1 -> torchvision labels 1..C (0 is background)."""
    return labels + BACKGROUND_OFFSET


def from_model_labels(labels: Tensor) -> Tensor:
    """torchvision labels 1..C -> contiguous data labels 0..C-1."""
    return labels - BACKGROUND_OFFSET


def model_num_classes(num_classes: int) -> int:
    """Number of classes a torchvision detector is built with for C data classes."""
    return num_classes + BACKGROUND_OFFSET


class DetectorAdapter(nn.Module, ABC):
    """A torchvision detector seen through three calls.

    Attributes:
        family: "retinanet" | "fcos" | "faster_rcnn".
        model: the wrapped torchvision detector (its ``state_dict`` is what ``student.pt`` holds).
        level_names: names of the feature levels ``features`` returns, finest first,
            e.g. ("p3", "p4", "p5", "p6", "p7") or ("p2", ..., "p6").
        strides: stride in pixels of each level, same order.
        out_channels: channels of every returned level (the FPN width).
        num_classes: C, data classes without background.
    """

    family: str
    level_names: tuple[str, ...]
    strides: tuple[int, ...]
    out_channels: int
    num_classes: int

    def _init_adapter(self, model: nn.Module, num_classes: int, family: str, level_names, strides) -> None:
        """Set the contract's attributes; the FPN width is read off ``model.backbone``."""
        self.model = model
        self.family = family
        self.num_classes = int(num_classes)
        self.level_names = tuple(level_names)
        self.strides = tuple(strides)
        self.out_channels = int(model.backbone.out_channels)

    @abstractmethod
    def features(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        """Backbone + FPN. images: Tensor[B, 3, Hp, Wp] (normalised, padded).

        Returns level name -> Tensor[B, out_channels, ceil(Hp/stride), ceil(Wp/stride)].
        """

    @abstractmethod
    def losses(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """Detection losses (scalar tensors, un-prefixed torchvision names such as
        ``classification``, ``bbox_regression``). targets: boxes xyxy pixels, contiguous labels.
        Must be called with the adapter in train mode."""

    @abstractmethod
    def detect(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
    ) -> list[dict[str, Tensor]]:
        """Detections per image: ``boxes`` float[K, 4] xyxy in pixels of the resized image,
        ``scores`` float[K], ``labels`` int64[K] contiguous 0..C-1. Eval mode."""
