"""Pretrained weights: name resolution, offline-friendly fetching, checkpoint loading, teacher freezing.

Downloads go through torchvision's own ``WeightsEnum.get_state_dict`` (i.e. ``torch.hub``'s
``load_state_dict_from_url``), which reads ``<torch.hub.get_dir()>/checkpoints/<file>`` first, so
offline use works whenever the file has been placed there. Every failure becomes a
:class:`~icdistill.errors.WeightsUnavailableError` that names the weights and says what to do.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import OrderedDict
from typing import Any, Collection, Mapping
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor
from torchvision import models
from torchvision.models import WeightsEnum
from torchvision.models.detection import (
    FasterRCNN_ResNet50_FPN_Weights,
    FCOS_ResNet50_FPN_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    RetinaNet_ResNet50_FPN_Weights,
)

from ..errors import ConfigError, DataError, ModelMismatchError, UnsafeFileError, WeightsUnavailableError
from ..files import load_torch_file
from .base import DetectorAdapter
from .extras import escape_inference_mode

logger = logging.getLogger(__name__)

# Detection checkpoints torchvision ships whose architecture our builders reproduce exactly
# (ResNet-50, 256-channel FPN, v1 heads). The *_V2 weights use other heads/necks and cannot load.
DETECTION_WEIGHTS: dict[tuple[str, str], type[WeightsEnum]] = {
    ("retinanet", "resnet50"): RetinaNet_ResNet50_FPN_Weights,
    ("fcos", "resnet50"): FCOS_ResNet50_FPN_Weights,
    ("faster_rcnn", "resnet50"): FasterRCNN_ResNet50_FPN_Weights,
    ("mask_rcnn", "resnet50"): MaskRCNN_ResNet50_FPN_Weights,
}
# These old checkpoints were trained with FrozenBatchNorm2d eps=0 (torchvision's builders do the same).
ZERO_EPS_WEIGHTS = {
    RetinaNet_ResNet50_FPN_Weights.COCO_V1,
    FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
    MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
}
# Layers whose shape depends on the number of classes; skipped when the class count differs.
CLASS_DEPENDENT_PREFIXES = (
    "head.classification_head.cls_logits.",
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_predictor.mask_fcn_logits.",
)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def is_checkpoint_path(name: str) -> bool:
    """Whether a weights string names a local file rather than a torchvision weights enum."""
    return name.endswith(_CHECKPOINT_SUFFIXES) or os.sep in name or os.path.isfile(name)


def resolve_detection_weights(family: str, backbone: str, name: str, *, fpn_channels: int) -> WeightsEnum:
    """``"COCO_V1"``, ``"DEFAULT"`` or ``"RetinaNet_ResNet50_FPN_Weights.COCO_V1"`` -> the enum member.

    Raises ConfigError when torchvision ships no such weights for this family/backbone/FPN width.
    """
    supported = ", ".join(f"{f}+{b}" for f, b in DETECTION_WEIGHTS)
    enum_cls = DETECTION_WEIGHTS.get((family, backbone))
    if enum_cls is None:
        raise ConfigError(
            f"torchvision ships no {family} detection weights for backbone {backbone!r} that fit this "
            f"architecture (available: {supported}); use weights: null or a checkpoint path"
        )
    if fpn_channels != 256:
        raise ConfigError(f"COCO weights {name!r} need fpn_channels=256, got {fpn_channels}")
    member = name.split(".", 1)[1] if "." in name else name
    if "." in name and name.split(".", 1)[0] != enum_cls.__name__:
        raise ConfigError(
            f"weights {name!r} do not fit {family}+{backbone}; use {enum_cls.__name__}.<name> "
            f"({', '.join(enum_cls.__members__)})"
        )
    try:
        return enum_cls[member]
    except KeyError:
        raise ConfigError(
            f"unknown weights {name!r} for {family}+{backbone}; valid: {', '.join(enum_cls.__members__)}"
        ) from None


def resolve_backbone_weights(backbone: str, name: str) -> WeightsEnum:
    """``"imagenet"`` (= IMAGENET1K_V1), an enum member name or a full enum name -> the enum member."""
    enum_cls = models.get_model_weights(backbone)
    if name.lower() == "imagenet":
        return enum_cls["IMAGENET1K_V1"]
    member = name
    if "." in name:
        prefix, member = name.split(".", 1)
        if prefix != enum_cls.__name__:
            raise ConfigError(f"backbone_weights {name!r} do not fit backbone {backbone!r}; use {enum_cls.__name__}.<name>")
    try:
        return enum_cls[member]
    except KeyError:
        raise ConfigError(
            f"unknown backbone_weights {name!r} for {backbone}; valid: imagenet, {', '.join(enum_cls.__members__)}"
        ) from None


def cached_weights_path(weights: WeightsEnum) -> str:
    """Where ``torch.hub`` looks for (and stores) the file of ``weights``."""
    filename = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def fetch_state_dict(weights: WeightsEnum) -> dict[str, Tensor]:
    """State dict of torchvision ``weights`` from the hub cache, downloading if absent.

    Raises WeightsUnavailableError (never a raw URLError) when the file is neither cached nor
    downloadable, or when the cached file is corrupt.
    """
    path = cached_weights_path(weights)
    cached = os.path.isfile(path)
    try:
        # torchvision's own path: load_state_dict_from_url reads the cache before downloading.
        return weights.get_state_dict(progress=False, check_hash=True)
    except (URLError, OSError, ConnectionError, TimeoutError) as exc:
        raise WeightsUnavailableError(
            f"cannot load pretrained weights {weights!r}: download of {weights.url} failed ({exc}). "
            f"If this machine is offline, download that file elsewhere and place it at {path} "
            f"(torch.hub.get_dir()/checkpoints), or pass a local checkpoint path instead"
        ) from exc
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        where = f"cached file {path}" if cached else f"file downloaded from {weights.url}"
        raise WeightsUnavailableError(
            f"cannot load pretrained weights {weights!r}: the {where} is unreadable or corrupt ({exc}); "
            f"delete it and download it again"
        ) from exc


# What a refused backbone or detector weights file needs (these keys have no opt-in).
PLAIN_STATE_DICT_HINT = "re-save it as a plain state dict (torch.save(model.state_dict(), path)) in a Python session"


def load_checkpoint_file(path: str) -> dict[str, Tensor]:
    """A detector state dict from a local file: a raw ``state_dict`` (like ``detector.pt``) or a
    training checkpoint holding one under ``"model"`` or ``"state_dict"``."""
    if not os.path.isfile(path):
        raise WeightsUnavailableError(f"checkpoint file {path!r} does not exist")
    try:
        # Weights only: a file that needs unpickling is refused (UnsafeFileError propagates).
        obj: Any = load_torch_file(path, opt_in=PLAIN_STATE_DICT_HINT)
    except UnsafeFileError:
        raise
    except DataError as exc:
        raise WeightsUnavailableError(f"cannot read checkpoint {path!r}: {exc}") from exc
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsUnavailableError(
            f"checkpoint {path!r} holds no state dict (expected name -> tensor, or one under 'model')"
        )
    return dict(obj)


def _shape(t: Tensor) -> str:
    return "(" + ",".join(str(s) for s in t.shape) + ")"


def _first(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def describe_mismatch(
    model_state: Mapping[str, Tensor], state_dict: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[str], str]:
    """(missing, unexpected, shape-mismatched descriptions, hint about the likely wrong config field)."""
    missing = sorted(k for k in model_state if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in model_state)
    shapes = sorted(
        f"{k}: checkpoint {_shape(state_dict[k])} vs model {_shape(model_state[k])}"
        for k in model_state
        if k in state_dict and tuple(state_dict[k].shape) != tuple(model_state[k].shape)
    )
    hints = []
    head_names = ("head.", "rpn.", "roi_heads.")
    model_heads = {p for p in head_names if any(k.startswith(p) for k in model_state)}
    ckpt_heads = {p for p in head_names if any(k.startswith(p) for k in state_dict)}
    if model_heads != ckpt_heads:
        hints.append("`family` (the checkpoint has other detection heads)")
    if any(s.startswith(CLASS_DEPENDENT_PREFIXES) for s in shapes):
        hints.append("`num_classes` (classification layer shapes differ)")
    if any(
        s.startswith(("backbone.fpn.", "head.", "rpn.", "roi_heads.box_head", "roi_heads.mask_head"))
        and not s.startswith(CLASS_DEPENDENT_PREFIXES)
        for s in shapes
    ):
        hints.append("`fpn_channels` (neck/head widths differ)")
    if any(k.startswith("backbone.body.") for k in missing + unexpected) or any(
        s.startswith("backbone.body.") for s in shapes
    ):
        hints.append("`backbone` (backbone layers differ)")
    return missing, unexpected, shapes, " or ".join(hints) if hints else "the model config"


def load_detector_state(
    adapter: DetectorAdapter, state_dict: Mapping[str, Tensor], *, source: str, strict: bool = True
) -> Any:
    """Load ``state_dict`` into ``adapter.model`` (torchvision parameter names, e.g. ``detector.pt``).

    Args:
        adapter: the detector to fill.
        state_dict: name -> tensor, as ``adapter.model.state_dict()`` produces.
        source: where the weights come from (file path, weights name); named in errors.
        strict: require an exact key match. Shape mismatches are errors either way.

    Returns:
        torch's ``_IncompatibleKeys`` (empty when ``strict``).

    Raises:
        ModelMismatchError: naming ``source``, with counts and first names of missing, unexpected
            and shape-mismatched keys, and the config field that is likely wrong.
    """
    try:
        return adapter.model.load_state_dict(state_dict, strict=strict)
    except RuntimeError:
        pass  # re-described below in config terms instead of torch's wall of key names
    missing, unexpected, shapes, hint = describe_mismatch(adapter.model.state_dict(), state_dict)
    parts = []
    if strict and missing:
        parts.append(f"{len(missing)} missing ({_first(missing)})")
    if strict and unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_first(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} with a different shape ({_first(shapes, 2)})")
    raise ModelMismatchError(
        f"weights from {source} do not fit the {adapter.family} model "
        f"(backbone/num_classes={adapter.num_classes}/fpn_channels={adapter.out_channels}): "
        f"{'; '.join(parts) or 'incompatible state dict'}. Check {hint}."
    )


def load_pretrained_detector(adapter: DetectorAdapter, state_dict: Mapping[str, Tensor], *, source: str) -> list[str]:
    """Load a detection checkpoint, keeping the model's own (fresh) classification layers when the
    class count differs. Returns the names of the skipped tensors (empty when all loaded)."""
    model_state = adapter.model.state_dict()
    filtered: "OrderedDict[str, Tensor]" = OrderedDict(state_dict)
    # Keep torchvision's per-module version info (RetinaNet's v1 -> v2 head key conversion uses it).
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        filtered._metadata = metadata  # type: ignore[attr-defined]
    skipped = []
    for key, value in state_dict.items():
        if key.startswith(CLASS_DEPENDENT_PREFIXES) and key in model_state:
            if tuple(value.shape) != tuple(model_state[key].shape):
                filtered[key] = model_state[key]
                skipped.append(key)
    load_detector_state(adapter, filtered, source=source, strict=True)
    if skipped:
        logger.warning(
            "loaded %s except %d class-dependent tensors (checkpoint class count differs from "
            "num_classes=%d; these stay freshly initialised): %s",
            source, len(skipped), adapter.num_classes, ", ".join(skipped),
        )
    return skipped


class FrozenTeacher(DetectorAdapter):
    """A detector adapter that stays frozen: eval mode forever, no gradients.

    ``train()`` / ``train(True)`` on it (or on any module containing it) leave it in eval mode, so a
    trainer that calls ``model.train()`` on everything cannot flip BatchNorm or the RPN/RoI heads
    into training behaviour. ``features`` runs under ``torch.no_grad``.
    """

    def __init__(self, adapter: DetectorAdapter) -> None:
        super().__init__()
        self.adapter = adapter
        self.family = adapter.family
        self.level_names = adapter.level_names
        self.strides = adapter.strides
        self.out_channels = adapter.out_channels
        self.num_classes = adapter.num_classes
        self.eval()

    @property
    def model(self) -> torch.nn.Module:  # type: ignore[override]
        """The wrapped torchvision detector."""
        return self.adapter.model

    def train(self, mode: bool = True) -> "FrozenTeacher":
        # Whatever is asked, stay (and keep every child) in eval mode.
        return super().train(False)

    def features(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        """Same as the wrapped adapter's, without building an autograd graph."""
        with torch.no_grad():
            return self.adapter.features(images)

    def forward_train(self, images, image_sizes, features, targets, extras=()):  # noqa: D102
        raise RuntimeError("a frozen teacher has no training losses; compute losses on the student")

    @property
    def supported_extras(self) -> frozenset[str]:  # type: ignore[override]
        return self.adapter.supported_extras

    def extras(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
        names: Collection[str],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> dict[str, Any]:
        """The wrapped adapter's extras, computed under ``inference_mode`` with the random
        generators left as they were, and returned as ordinary tensors (a method's loss may save
        them for backward)."""
        # Samplers inside (e.g. the RPN's anchor sampler) must not move the training stream.
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            out = self.adapter.extras(images, image_sizes, features, names, targets)
        return escape_inference_mode(out)

    def box_head(
        self, features: "OrderedDict[str, Tensor]", boxes: list[Tensor], image_sizes: list[tuple[int, int]]
    ) -> tuple[Tensor, Tensor]:
        """The wrapped adapter's box head on given boxes, under ``inference_mode``."""
        with torch.inference_mode():
            out = self.adapter.box_head(features, boxes, image_sizes)
        return escape_inference_mode(out)

    def detect(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        features: "OrderedDict[str, Tensor]",
    ) -> list[dict[str, Tensor]]:
        """The wrapped adapter's detections (the teacher is always in eval mode)."""
        return self.adapter.detect(images, image_sizes, features)


def freeze_as_teacher(adapter: DetectorAdapter) -> FrozenTeacher:
    """Freeze ``adapter`` for use as a teacher; use the returned object from then on.

    Puts it in eval mode, sets ``requires_grad=False`` on every parameter and wraps it in a
    :class:`FrozenTeacher` whose ``train()`` keeps it in eval mode.
    """
    if isinstance(adapter, FrozenTeacher):
        return adapter
    adapter.eval()
    adapter.requires_grad_(False)
    return FrozenTeacher(adapter)
