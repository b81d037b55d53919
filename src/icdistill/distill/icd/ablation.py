"""ICD's ablation weights (``distill.icd.ablation_weights``; this project's ablation switch, not a
method): the distillation loss of ICD with another token weighting than the decoder's attention.

The paper's main ablation compares ICD's instance-conditional attention against simpler
weightings of the same loss. Each replaces w[b,h,s] = Σ_{i real} softmax_s(a[b,h,i,s]) of
:meth:`~icdistill.distill.icd.module.DecoderLayer.real_instance_weights` and keeps its scale
(Σ_s w[b,h,s] = n_b, the image's real instances), so only where the weight goes differs:

* ``uniform``: every valid token of an image with n_b > 0 gets n_b / (valid tokens): the loss
  becomes a plain imitation of the whole (unpadded) map, over images that have instances.
* ``gt_box``: each real instance puts weight 1 on the tokens whose cell centre lies inside its box
  (normalised to sum 1 over those tokens, like one softmax), summed over instances; the token
  whose cell holds the box centre always counts, on every level, so a box smaller than a
  stride still has tokens. The same for every head.

The auxiliary task (decoder, identification and regression losses) trains unchanged.

Shapes: B images, K instance slots, S tokens (levels flattened row-major and concatenated in
token order), H heads.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import Tensor

from icdistill.distill.icd.sampling import Instances

ABLATION_WEIGHTS = ("uniform", "gt_box")


def uniform_weights(valid: Tensor, is_real: Tensor, num_heads: int) -> Tensor:
    """w[b,h,s] = n_b·valid[b,s] / Σ_s valid[b,s].

    Args:
        valid: bool Tensor[B, S], False on padded tokens.
        is_real: bool Tensor[B, K], the real instance slots.
    Returns:
        float Tensor[B, H, S] with Σ_s w = n_b (0 for an image without real instances).
    """
    v = valid.float()
    per_image = is_real.sum(dim=1).float() / v.sum(dim=1).clamp_min(1.0)  # [B]
    return (v * per_image[:, None])[:, None].expand(-1, num_heads, -1).contiguous()


def token_centres(level_shapes: Sequence[tuple[int, int]], strides: Sequence[int],
                  image_sizes: Sequence[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Each token's cell centre in normalised image coordinates: x and y, float Tensor[B, S] each
    (cell (y, x) of a stride-s level has its centre at ((x+0.5)·s / w_b, (y+0.5)·s / h_b))."""
    xs, ys = [], []
    sizes = torch.tensor(image_sizes, dtype=torch.float32, device=device)  # [B, 2] (h, w)
    for (h, w), stride in zip(level_shapes, strides):
        cols = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride
        rows = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride
        xs.append((cols[None, None, :] / sizes[:, 1, None, None]).expand(-1, h, -1).flatten(1))
        ys.append((rows[None, :, None] / sizes[:, 0, None, None]).expand(-1, -1, w).flatten(1))
    return torch.cat(xs, dim=1), torch.cat(ys, dim=1)


def centre_cells(inst: Instances, level_shapes: Sequence[tuple[int, int]], strides: Sequence[int],
                 image_sizes: Sequence[tuple[int, int]]) -> Tensor:
    """bool Tensor[B, K, S]: on every level, the token whose cell holds the (unjittered) box centre."""
    sizes = torch.tensor(image_sizes, dtype=torch.float32, device=inst.boxes.device)  # [B, 2] (h, w)
    cx = (inst.boxes[..., 0] + inst.boxes[..., 2]) / 2 * sizes[:, 1, None]  # [B, K] pixels
    cy = (inst.boxes[..., 1] + inst.boxes[..., 3]) / 2 * sizes[:, 0, None]
    per_level = []
    for (h, w), stride in zip(level_shapes, strides):
        col = (cx / stride).floor().long().clamp(0, w - 1)
        row = (cy / stride).floor().long().clamp(0, h - 1)
        hit = torch.zeros(*cx.shape, h * w, dtype=torch.bool, device=cx.device)
        hit.scatter_(-1, (row * w + col)[..., None], True)
        per_level.append(hit)
    return torch.cat(per_level, dim=-1)


def gt_box_weights(inst: Instances, valid: Tensor, level_shapes: Sequence[tuple[int, int]],
                   strides: Sequence[int], image_sizes: Sequence[tuple[int, int]], num_heads: int) -> Tensor:
    """w[b,h,s] = Σ_{i real} m[b,i,s] / Σ_s m[b,i,s], m = valid token inside instance i's box.

    Args:
        inst: the batch's instances (``boxes`` normalised xyxy; real slots first).
        valid: bool Tensor[B, S]; level_shapes / strides: the distilled levels in token order;
        image_sizes: (h, w) of each unpadded image.
    Returns:
        float Tensor[B, H, S] with Σ_s w = n_b, zero on tokens outside every real box.
    """
    # Real slots are [0, n_b): only the first max_b n_b are looked at (memory B·n·S, not B·K·S).
    real = int(inst.num_real.max()) if inst.is_real.numel() else 0
    inst = Instances(*(getattr(inst, f.name)[:, :real] for f in dataclasses.fields(inst)))
    x, y = token_centres(level_shapes, strides, image_sizes, valid.device)  # [B, S]
    boxes = inst.boxes[:, :, None, :]  # [B, n, 1, 4]
    inside = ((x[:, None] >= boxes[..., 0]) & (x[:, None] <= boxes[..., 2])
              & (y[:, None] >= boxes[..., 1]) & (y[:, None] <= boxes[..., 3]))  # [B, n, S]
    inside |= centre_cells(inst, level_shapes, strides, image_sizes)
    mask = (inside & valid[:, None] & inst.is_real[..., None]).float()
    per_instance = mask / mask.sum(dim=-1, keepdim=True).clamp_min(1.0)
    return per_instance.sum(dim=1)[:, None].expand(-1, num_heads, -1).contiguous()


def ablation_weights(mode: str, inst: Instances, valid: Tensor, level_shapes: Sequence[tuple[int, int]],
                     strides: Sequence[int], image_sizes: Sequence[tuple[int, int]], num_heads: int) -> Tensor:
    """The weights of ablation ``mode`` (one of :data:`ABLATION_WEIGHTS`), float Tensor[B, H, S]."""
    if mode == "uniform":
        return uniform_weights(valid, inst.is_real, num_heads)
    if mode == "gt_box":
        return gt_box_weights(inst, valid, level_shapes, strides, image_sizes, num_heads)
    raise ValueError(f"unknown ablation weights {mode!r}; valid: {', '.join(ABLATION_WEIGHTS)}")
