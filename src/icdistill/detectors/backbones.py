"""Backbone + FPN construction with a configurable FPN width and fixed, named pyramid levels.

Two pyramid layouts (:mod:`.levels`) exist, chosen by the detector family so that a teacher and a
student of different backbones still produce the same level names at the same strides:
``P3_P7`` (RetinaNet, FCOS: ``LastLevelP6P7`` computed from P5) and ``P2_P6`` (Faster R-CNN:
``LastLevelMaxPool``).

torchvision's ``_resnet_fpn_extractor`` / ``_mobilenet_extractor`` hard-code 256 FPN channels, and
the MobileNet extractor returns two levels that are *both* at stride 32, so we build
:class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN` ourselves with the same
freezing rules. For ResNet-50 with 256 channels the module tree and parameter names are identical to
torchvision's builders, so torchvision's COCO checkpoints load unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch import Tensor, nn
from torchvision import models
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from ..errors import ConfigError, ModelMismatchError
from .levels import LevelSpec

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
MOBILENETS = ("mobilenet_v2", "mobilenet_v3_large")
BACKBONES = RESNETS + MOBILENETS


def extra_block(spec: LevelSpec, fpn_channels: int) -> ExtraFPNBlock:
    """The FPN's extra-level block of a layout."""
    if spec.max_pool_extra_level:
        return LastLevelMaxPool()
    # in_channels == out_channels makes LastLevelP6P7 use P5 (not C5) as its input, like
    # torchvision's retinanet_resnet50_fpn / fcos_resnet50_fpn.
    return LastLevelP6P7(fpn_channels, fpn_channels)


def rename_levels(features: "OrderedDict[str, Tensor]", spec: LevelSpec) -> "OrderedDict[str, Tensor]":
    """FPN output keyed ``'0','1',...`` -> the same tensors keyed by ``spec.names``."""
    if tuple(features.keys()) != spec.fpn_keys:
        raise RuntimeError(f"FPN returned levels {list(features.keys())}, expected {list(spec.fpn_keys)}")
    return OrderedDict((name, features[key]) for name, key in zip(spec.names, spec.fpn_keys))


def fpn_levels(features: "OrderedDict[str, Tensor]", spec: LevelSpec) -> "OrderedDict[str, Tensor]":
    """Inverse of :func:`rename_levels`: public names -> torchvision's FPN keys.

    Raises ValueError when ``features`` does not hold exactly ``spec.names`` (e.g. features of a
    different family were passed)."""
    if tuple(features.keys()) != spec.names:
        raise ValueError(f"expected feature levels {list(spec.names)}, got {list(features.keys())}")
    return OrderedDict((key, features[name]) for name, key in zip(spec.names, spec.fpn_keys))


def validate_backbone_name(backbone: str) -> None:
    if backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(BACKBONES)}")


def check_trainable_layers(
    trainable_layers: int | None, *, is_pretrained: bool, max_value: int, default: int = 3
) -> int:
    """Number of trainable body stages, counted from the last one (torchvision's rule).

    Without pretrained weights everything trains (freezing random layers makes no sense), so any
    requested value is ignored, as torchvision does.
    """
    if not is_pretrained:
        return max_value
    value = default if trainable_layers is None else trainable_layers
    if not 0 <= value <= max_value:
        raise ConfigError(f"trainable_backbone_layers must be in [0, {max_value}], got {value}")
    return value


def build_body(backbone: str, norm_layer: Callable[..., nn.Module]) -> nn.Module:
    """An un-initialised-by-download torchvision classification network (weights are loaded by the
    caller so that download errors are handled in one place)."""
    validate_backbone_name(backbone)
    return getattr(models, backbone)(weights=None, norm_layer=norm_layer)


def norm_layer_for(is_pretrained: bool) -> Callable[..., nn.Module]:
    """FrozenBatchNorm2d with pretrained weights (small detection batches would wreck BN
    statistics), BatchNorm2d when training from scratch -- torchvision's rule."""
    return misc_nn_ops.FrozenBatchNorm2d if is_pretrained else nn.BatchNorm2d


def freeze_resnet_stages(body: models.ResNet, trainable_layers: int) -> None:
    """Freeze all but the last ``trainable_layers`` stages of ``body`` (layer4, layer3, layer2,
    layer1, conv1+bn1) in place: torchvision's rule in ``_resnet_fpn_extractor``."""
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for name, parameter in body.named_parameters():
        if all(not name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)


def resnet_fpn(
    body: models.ResNet, spec: LevelSpec, fpn_channels: int, trainable_layers: int
) -> BackboneWithFPN:
    """ResNet body + FPN over the stages at ``spec.body_strides`` (layer1 = stride 4 ... layer4 = 32)."""
    freeze_resnet_stages(body, trainable_layers)
    stage_of_stride = {4: 1, 8: 2, 16: 3, 32: 4}
    returned = [stage_of_stride[s] for s in spec.body_strides]
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned)}
    in_channels_stage2 = body.inplanes // 8  # 64 for BasicBlock nets, 256 for Bottleneck nets
    in_channels_list = [in_channels_stage2 * 2 ** (i - 1) for i in returned]
    return BackboneWithFPN(
        body, return_layers, in_channels_list, fpn_channels, extra_blocks=extra_block(spec, fpn_channels)
    )


def _mobilenet_stage_ends(features: nn.Sequential) -> dict[int, tuple[int, int]]:
    """stride -> (index of the last block at that stride, its channels), found by a probe forward.

    Probing (instead of reading ``_is_cn`` flags) also gets the stride of the stem right and works
    for any width multiplier. Eval mode keeps BatchNorm statistics untouched.
    """
    was_training = features.training
    features.eval()
    ends: dict[int, tuple[int, int]] = {}
    size = 64
    with torch.no_grad():
        x = torch.zeros(1, 3, size, size)
        for i, block in enumerate(features):
            x = block(x)
            ends[size // x.shape[-1]] = (i, int(x.shape[1]))
    features.train(was_training)
    return ends


def mobilenet_fpn(
    body: nn.Module, backbone: str, spec: LevelSpec, fpn_channels: int, trainable_layers: int
) -> BackboneWithFPN:
    """MobileNet ``features`` + FPN over the *last* block of each stage at ``spec.body_strides``."""
    features = body.features
    ends = _mobilenet_stage_ends(features)
    missing = [s for s in spec.body_strides if s not in ends]
    if missing:
        raise ConfigError(
            f"backbone {backbone!r} has no feature stage at stride(s) {missing} (it has "
            f"{sorted(ends)}); this family needs body strides {list(spec.body_strides)}"
        )
    # Freezing as torchvision's _mobilenet_extractor: stages start at the stem, at every
    # down-sampling block and at the last block; the last `trainable_layers` stages train.
    stage_indices = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
    num_stages = len(stage_indices)
    if trainable_layers > num_stages:
        raise ConfigError(f"trainable_backbone_layers must be in [0, {num_stages}] for {backbone}, got {trainable_layers}")
    freeze_before = len(features) if trainable_layers == 0 else stage_indices[num_stages - trainable_layers]
    for block in features[:freeze_before]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
    return_layers = {str(ends[s][0]): str(v) for v, s in enumerate(spec.body_strides)}
    in_channels_list = [ends[s][1] for s in spec.body_strides]
    return BackboneWithFPN(
        features, return_layers, in_channels_list, fpn_channels, extra_blocks=extra_block(spec, fpn_channels)
    )


def max_trainable_layers(backbone: str) -> int:
    """Upper bound of ``trainable_backbone_layers`` for a backbone (torchvision's values)."""
    return 5 if backbone in RESNETS else 6


def load_body_state(body: nn.Module, backbone: str, body_state_dict: dict[str, Tensor]) -> None:
    """Load classification-network weights into ``body``; its ``fc``/``classifier`` keys are
    ignored (not part of a detector), everything else must match (ModelMismatchError)."""
    head_prefixes = ("fc.", "classifier.")
    filtered = {k: v for k, v in body_state_dict.items() if not k.startswith(head_prefixes)}
    expected = {k for k in body.state_dict() if not k.startswith(head_prefixes)}
    try:
        result = body.load_state_dict(filtered, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        raise ModelMismatchError(f"backbone weights do not fit {backbone}: {exc}; check `backbone`") from None
    missing = sorted(set(result.missing_keys) & expected)
    if missing or result.unexpected_keys:
        raise ModelMismatchError(
            f"backbone weights do not fit {backbone}: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)}); "
            "check `backbone`"
        )


def build_backbone_fpn(
    backbone: str,
    spec: LevelSpec,
    *,
    fpn_channels: int,
    body_state_dict: dict[str, Tensor] | None = None,
    is_pretrained: bool = False,
    trainable_layers: int | None = None,
) -> BackboneWithFPN:
    """Body (optionally with ImageNet weights) + FPN producing ``spec.fpn_keys``.

    Args:
        backbone: one of :data:`BACKBONES`.
        spec: pyramid layout (:data:`P3_P7` or :data:`P2_P6`).
        fpn_channels: FPN width, i.e. channels of every returned level.
        body_state_dict: classification-network weights to load into the body before the FPN is
            attached (its ``fc``/``classifier`` keys are ignored).
        is_pretrained: whether any pretrained weights (body or full detector) will be present; picks
            FrozenBatchNorm2d and enables partial freezing.
        trainable_layers: trainable body stages counted from the last; default 3 when pretrained.
    """
    validate_backbone_name(backbone)
    if fpn_channels <= 0:
        raise ConfigError(f"fpn_channels must be positive, got {fpn_channels}")
    is_pretrained = is_pretrained or body_state_dict is not None
    body = build_body(backbone, norm_layer_for(is_pretrained))
    if body_state_dict is not None:
        load_body_state(body, backbone, body_state_dict)
    trainable = check_trainable_layers(
        trainable_layers, is_pretrained=is_pretrained, max_value=max_trainable_layers(backbone)
    )
    if backbone in RESNETS:
        return resnet_fpn(body, spec, fpn_channels, trainable)
    return mobilenet_fpn(body, backbone, spec, fpn_channels, trainable)
