"""CondInst's mask pieces (Tian et al., ECCV 2020), as pure tensor functions plus the mask branch.

* :class:`MaskBranch`: P3 (stride 8) -> 8-channel mask features (the paper's basic version on P3;
  AdelaiDet fuses P3-P5 first).
* The dynamic mask head: 3 layers of 1x1 convs (8 channels, ReLU between) whose weights are one
  instance's 169 controller outputs, run on the mask features plus 2 relative-coordinate channels
  (:func:`dynamic_mask_logits`).
* :func:`aligned_bilinear` (AdelaiDet's upsampling), :func:`dice_loss`, :func:`gt_bitmasks`
  (ground-truth masks at stride 4, every 4th pixel from 2, as AdelaiDet's ``add_bitmasks``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MASK_FEAT_CHANNELS = 8  # mask-branch output = the dynamic head's input (besides the coordinates)
HEAD_CHANNELS = 8
HEAD_LAYERS = 3
BRANCH_CHANNELS = 128
BRANCH_CONVS = 4
MASK_OUT_STRIDE = 4  # the mask output and its ground truth


def dynamic_param_counts(in_channels: int = MASK_FEAT_CHANNELS + 2, channels: int = HEAD_CHANNELS,
                         layers: int = HEAD_LAYERS) -> tuple[list[int], list[int]]:
    """(weight counts, bias counts) per layer of the dynamic head: (10*8, 8*8, 8*1), (8, 8, 1)."""
    ins = [in_channels] + [channels] * (layers - 1)
    outs = [channels] * (layers - 1) + [1]
    return [i * o for i, o in zip(ins, outs)], outs


NUM_DYNAMIC_PARAMS = sum(sum(c) for c in dynamic_param_counts())  # 169


class MaskBranch(nn.Module):
    """float[B, C_fpn, H3, W3] (P3) -> mask features float[B, 8, H3, W3].

    Four 3x3 convs of 128 channels, each with GroupNorm(32) and ReLU, then a 1x1 conv to 8
    channels. GroupNorm is ours (AdelaiDet's branch uses BatchNorm): torchvision's FCOS head is
    GroupNorm throughout and per-GPU batches here are 1-2 images without synchronised BatchNorm.
    Convs are initialised as AdelaiDet's ``conv_with_kaiming_uniform`` (kaiming uniform, a=1; bias 0).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(BRANCH_CONVS):
            layers += [nn.Conv2d(in_channels if i == 0 else BRANCH_CHANNELS, BRANCH_CHANNELS, 3, padding=1),
                       nn.GroupNorm(32, BRANCH_CHANNELS), nn.ReLU()]
        layers.append(nn.Conv2d(BRANCH_CHANNELS, MASK_FEAT_CHANNELS, 1))
        self.tower = nn.Sequential(*layers)
        for m in self.tower.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, p3: Tensor) -> Tensor:
        return self.tower(p3)


def split_dynamic_params(params: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """params float[N, 169] -> per layer weights float[N, out, in] and biases float[N, out]
    (AdelaiDet's ``parse_dynamic_params`` order: all weights first, then all biases)."""
    weight_counts, bias_counts = dynamic_param_counts()
    parts = torch.split_with_sizes(params, weight_counts + bias_counts, dim=1)
    weights, biases = parts[: len(weight_counts)], parts[len(weight_counts):]
    return [w.reshape(len(params), b.shape[1], -1) for w, b in zip(weights, biases)], list(biases)


def dynamic_mask_logits(params: Tensor, mask_feats: Tensor, image_index: Tensor, points: Tensor, soi: Tensor,
                        stride: int) -> Tensor:
    """Each instance's dynamic head on its image's mask features.

    Args:
        params: float[N, 169], one controller output per instance.
        mask_feats: float[B, 8, H, W], the mask branch's output at ``stride``.
        image_index: int64[N], the image of each instance.
        points: float[N, 2] (x, y) pixels, the location that predicted the instance.
        soi: float[N], the size of interest of that location's level (the upper end of its FCOS
            scale range: 64, 128, ..., 1024), which normalises the relative coordinates.
        stride: of ``mask_feats``; cell (i, j) lies at pixel (j * stride, i * stride), the
            convention of torchvision's anchor points, so an instance's own cell is at offset 0.
    Returns:
        mask logits float[N, H, W] at ``stride``.
    """
    n, (_, c, h, w) = params.shape[0], mask_feats.shape
    ys = torch.arange(h, device=params.device, dtype=params.dtype) * stride
    xs = torch.arange(w, device=params.device, dtype=params.dtype) * stride
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy")).reshape(2, h * w)  # (x, y) per cell
    relative = (points[:, :, None].to(params.dtype) - grid[None]) / soi[:, None, None].to(params.dtype)
    x = torch.cat([relative, mask_feats[image_index].reshape(n, c, h * w)], dim=1)  # [N, 10, HW]
    weights, biases = split_dynamic_params(params)
    for k, (weight, bias) in enumerate(zip(weights, biases)):
        x = torch.baddbmm(bias[:, :, None], weight, x)
        if k < len(weights) - 1:
            x = F.relu(x)
    return x.reshape(n, h, w)


def aligned_bilinear(x: Tensor, factor: int) -> Tensor:
    """AdelaiDet's ``aligned_bilinear``: float[N, C, H, W] -> float[N, C, factor*H, factor*W],
    bilinear with corners aligned after a one-pixel replicate pad, shifted by factor // 2."""
    if factor == 1:
        return x
    h, w = x.shape[-2:]
    x = F.pad(x, (0, 1, 0, 1), mode="replicate")
    x = F.interpolate(x, size=(factor * h + 1, factor * w + 1), mode="bilinear", align_corners=True)
    x = F.pad(x, (factor // 2, 0, factor // 2, 0), mode="replicate")
    return x[:, :, : factor * h, : factor * w]


def dice_loss(scores: Tensor, targets: Tensor, eps: float = 1e-5) -> Tensor:
    """1 - 2|x∩y| / (|x|² + |y|²) per instance (AdelaiDet's ``dice_coefficient``).

    scores: float[N, H, W] probabilities; targets: float[N, H, W] in {0, 1}. Returns float[N]."""
    x, y = scores.flatten(1), targets.flatten(1).to(scores.dtype)
    return 1.0 - 2.0 * (x * y).sum(1) / ((x * x).sum(1) + (y * y).sum(1) + eps)


def gt_bitmasks(masks: Tensor, padded_size: tuple[int, int], stride: int = MASK_OUT_STRIDE) -> Tensor:
    """masks uint8/bool[N, h, w] at the unpadded image size -> float[N, Hp/stride, Wp/stride]:
    zero-padded to the batch's ``padded_size`` (Hp, Wp), then every ``stride``-th pixel from
    ``stride // 2``."""
    hp, wp = padded_size
    full = F.pad(masks.float(), (0, wp - masks.shape[-1], 0, hp - masks.shape[-2]))
    start = stride // 2
    return full[:, start::stride, start::stride]
