"""The detector adapter contract: one small class per torchvision family.

An adapter recomposes the public pieces torchvision's own ``forward`` uses (backbone+FPN, head,
anchors, loss, postprocess) but skips ``GeneralizedRCNNTransform``: resizing and normalisation
happen once in the data pipeline (:mod:`icdistill.structures`), so teacher and student see the same
padded grid.

Labels: the data uses contiguous ids 0..C-1 with no background. torchvision's detectors reserve
label 0 for background (Faster R-CNN needs it; RetinaNet/FCOS COCO weights keep it unused), so every
adapter builds its model with ``num_classes = C + 1`` and converts with :func:`to_model_labels` /
:func:`from_model_labels` -- the one place where that offset lives.

Mode rules (all adapters, :func:`require_mode`): ``losses`` requires train mode and ``detect``
requires eval mode; the wrong mode raises ``RuntimeError`` instead of silently computing something
else (Faster R-CNN's RPN and RoI heads switch behaviour on ``self.training``, and BatchNorm would
update statistics). The helpers every adapter shares are here too: :func:`model_targets`,
:func:`model_detections`, :func:`image_list`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any, Collection

from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

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
        family: a key of :data:`.families.FAMILY_TABLE`.
        model: the wrapped torchvision detector (its ``state_dict`` is what ``detector.pt`` holds).
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

    # Extras (see :mod:`.extras`) this family can capture during ``forward_train`` and compute
    # with ``extras``.
    supported_extras: frozenset[str] = frozenset()

    @abstractmethod
    def forward_train(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
        targets: list[dict[str, Tensor]],
        extras: Collection[str] = (),
    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """Detection losses and, from the same pass, the named ``extras`` a distillation method
        asked for (see :mod:`.extras`; a name outside ``supported_extras`` is a ValueError).

        Losses are scalar tensors with un-prefixed torchvision names such as ``classification``,
        ``bbox_regression``. targets: boxes xyxy pixels, contiguous labels. Train mode only."""

    def losses(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        """The detection losses of :meth:`forward_train`, without extras."""
        return self.forward_train(images, image_sizes, features, targets)[0]

    def extras(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
        names: Collection[str],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Any]:
        """The named extras computed on given ``features`` without losses (the teacher's side;
        ``roi_samples`` needs ``targets``). Call under ``torch.inference_mode`` for a frozen
        detector."""
        check_extras(self, names)  # a family without extras accepts only an empty request
        return {}

    def box_head(
        self, features: "OrderedDict[str, Tensor]", boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """Two-stage only: RoI pooling + box head + predictor on given boxes (per image float
        [R_b, 4] xyxy) -> class_logits float[R, C+1] (column 0 background) and box_regression
        float[R, 4(C+1)], boxes in image order."""
        raise ValueError(f"the {self.family} family has no box head (it is not a two-stage detector)")

    @abstractmethod
    def detect(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
    ) -> list[dict[str, Tensor]]:
        """Detections per image: ``boxes`` float[K, 4] xyxy in pixels of the resized image,
        ``scores`` float[K], ``labels`` int64[K] contiguous 0..C-1. Eval mode."""


def check_extras(adapter: DetectorAdapter, names: Collection[str]) -> None:
    """ValueError naming the extras ``adapter``'s family cannot provide."""
    missing = sorted(set(names) - adapter.supported_extras)
    if missing:
        raise ValueError(
            f"the {adapter.family} family cannot provide {', '.join(missing)} "
            f"(it provides: {', '.join(sorted(adapter.supported_extras)) or 'nothing beyond features'})"
        )


def require_mode(adapter: DetectorAdapter, *, training: bool, call: str) -> None:
    """Raise a clear RuntimeError when ``adapter`` is not in the mode ``call`` needs."""
    if adapter.training != training:
        want, have = ("train", "eval") if training else ("eval", "train")
        fix = "adapter.train()" if training else "adapter.eval()"
        raise RuntimeError(
            f"{type(adapter).__name__}.{call}() needs {want} mode but the adapter is in {have} mode; "
            f"call {fix} first"
        )


def model_targets(targets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Data targets (contiguous labels) -> torchvision targets (background-shifted labels).

    Images without boxes get ``boxes`` of shape [0, 4], which every torchvision loss supports.
    """
    out = []
    for t in targets:
        boxes = t["boxes"].reshape(-1, 4).float()
        labels = to_model_labels(t["labels"].reshape(-1).long())
        out.append({"boxes": boxes, "labels": labels})
    return out


def model_detections(detections: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """torchvision detections -> ``boxes``/``scores``/``labels`` with contiguous labels."""
    return [
        {"boxes": d["boxes"], "scores": d["scores"], "labels": from_model_labels(d["labels"]).long()}
        for d in detections
    ]


def image_list(images: Tensor, image_sizes: list[tuple[int, int]]) -> ImageList:
    """Wrap an already normalised, padded batch; no GeneralizedRCNNTransform involved."""
    if images.dim() != 4 or len(image_sizes) != images.shape[0]:
        raise ValueError(
            f"images must be Tensor[B, 3, Hp, Wp] with one (h, w) per image; got {tuple(images.shape)} "
            f"and {len(image_sizes)} sizes"
        )
    return ImageList(images, [(int(h), int(w)) for h, w in image_sizes])
