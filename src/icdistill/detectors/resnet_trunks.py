"""ResNet backbones without an FPN, for the FPN-free Faster R-CNN variants (detectron2's names).

* **C4** (``faster_rcnn_c4``): the ResNet up to res4 (``layer3``, stride 16) is the backbone and
  its one map ``c4`` feeds the RPN and the RoI pooling; res5 (``layer4``, stride 2) runs on each
  pooled 14x14 RoI as the box head (:func:`res5_box_head`), followed by global average pooling.
* **DC5** (``faster_rcnn_dc5``): the whole ResNet with res5 dilated (stride 1, dilation 2, as
  torchvision's ``replace_stride_with_dilation=[False, False, True]``), so its one map ``c5`` has
  stride 16.

Both map names double as torchvision's feature keys (``LevelSpec.fpn_keys == names``), so the
Faster R-CNN adapter's renaming is the identity. Channels are the ResNet's own: c4 = 1024 and
c5 = 2048 for ResNet-50/101, 256 and 512 for ResNet-18/34. Parameter names (``backbone.body.*``,
res5 under ``roi_heads.box_head.res5.*`` for C4) keep ImageNet weights loadable as for the FPN
backbones; body freezing follows torchvision's rule on the whole ResNet (res5 included).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter

from ..errors import ConfigError
from .backbones import (
    RESNETS,
    build_body,
    check_trainable_layers,
    freeze_resnet_stages,
    load_body_state,
    max_trainable_layers,
    norm_layer_for,
)
from .levels import C4, DC5, LevelSpec



class ResNetTrunk(nn.Module):
    """A ResNet body returning one map: images float[B, 3, Hp, Wp] -> ``{name: float[B,
    out_channels, ceil(Hp/16), ceil(Wp/16)]}``.

    ``body`` is torchvision's :class:`IntermediateLayerGetter`, which keeps the stem and the
    stages up to the returned one (C4 drops ``layer4``, ``avgpool`` and ``fc``)."""

    def __init__(self, body: nn.Module, last_stage: str, name: str, out_channels: int) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(body, {last_stage: name})
        self.out_channels = int(out_channels)

    def forward(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        return self.body(images)


@dataclass
class ResNetParts:
    """What a single-map Faster R-CNN builder gets: the ``trunk`` (the backbone) and, for C4,
    ``res5`` (``layer4``, moved into the box head); ``res5_channels`` its output width."""

    trunk: ResNetTrunk
    res5: nn.Module | None
    res5_channels: int


def res5_box_head(res5: nn.Module) -> nn.Sequential:
    """C4's box head: pooled RoIs float[R, C4, 14, 14] -> res5 (stride 2) -> float[R, C5, 7, 7]
    -> global average pooling -> float[R, C5]. A plain ``nn.Sequential`` so that ``detector.pt``
    rebuilds with torch and torchvision alone."""
    return nn.Sequential(OrderedDict(res5=res5, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1)))


def dilate_res5(body: nn.Module) -> None:
    """Turn res5 (``layer4``) of a torchvision ResNet into stride 1 with dilation 2, in place.

    The same layer as torchvision's ``replace_stride_with_dilation=[False, False, True]``: the
    first block keeps dilation 1 with its stride (3x3 conv and 1x1 shortcut) set to 1, every later
    block's 3x3 convs get dilation 2 and padding 2. Unlike that flag it also works for BasicBlock
    nets (ResNet-18/34, which torchvision refuses to dilate); the weights' shapes do not change.
    """
    blocks = list(body.layer4)
    for conv in (m for m in blocks[0].modules() if isinstance(m, nn.Conv2d)):
        conv.stride = (1, 1)
    for block in blocks[1:]:
        for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
            if conv.kernel_size == (3, 3):
                conv.dilation, conv.padding = (2, 2), (2, 2)


def build_resnet_parts(
    backbone: str,
    spec: LevelSpec,
    *,
    fpn_channels: int = 256,
    body_state_dict: dict[str, Tensor] | None = None,
    is_pretrained: bool = False,
    trainable_layers: int | None = None,
) -> ResNetParts:
    """The C4 or DC5 backbone (``spec`` is :data:`C4` or :data:`DC5`), with the same arguments as
    :func:`.backbones.build_backbone_fpn` (``fpn_channels`` is ignored: there is no FPN).

    Raises:
        ConfigError: a MobileNet backbone (these variants are defined on ResNets).
    """
    if backbone not in RESNETS:
        raise ConfigError(
            f"the FPN-free Faster R-CNN variants (C4, DC5) need a ResNet backbone "
            f"({', '.join(RESNETS)}), got {backbone!r}"
        )
    is_pretrained = is_pretrained or body_state_dict is not None
    body = build_body(backbone, norm_layer_for(is_pretrained))
    if body_state_dict is not None:
        load_body_state(body, backbone, body_state_dict)
    freeze_resnet_stages(body, check_trainable_layers(
        trainable_layers, is_pretrained=is_pretrained, max_value=max_trainable_layers(backbone)))
    res5_channels = body.inplanes  # 512 (BasicBlock nets) or 2048 (Bottleneck nets)
    if spec == C4:
        return ResNetParts(ResNetTrunk(body, "layer3", "c4", res5_channels // 2), body.layer4, res5_channels)
    if spec == DC5:
        dilate_res5(body)
        return ResNetParts(ResNetTrunk(body, "layer4", "c5", res5_channels), None, res5_channels)
    raise ValueError(f"no FPN-free ResNet layout for levels {spec.names}")
