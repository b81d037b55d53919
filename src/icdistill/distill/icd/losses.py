"""ICD's losses and encodings as pure tensor functions (docs/method.md: "Query", "Auxiliary task", "Distillation loss").

Nothing here knows about detectors: each function takes tensors and returns tensors, so each can be
tested on hand-made inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_SCALE_BINS = 5


def sine_encoding(u: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine code of normalised coordinates.

    For u in [0, 1] and j = 0..num_feats/2-1, ω_j = temperature^(−2j/num_feats):
    [sin(2π·u·ω_j) for j] followed by [cos(2π·u·ω_j) for j].

    Args:
        u: float Tensor[...].
    Returns:
        float Tensor[..., num_feats]; u = 0 gives num_feats/2 zeros then num_feats/2 ones.
    """
    half = num_feats // 2
    j = torch.arange(half, dtype=torch.float32, device=u.device)
    omega = temperature ** (-2 * j / num_feats)
    angle = 2 * math.pi * u.float().unsqueeze(-1) * omega
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


def scale_bins(size_px: Tensor) -> Tensor:
    """bin(x) = clamp(floor(log2(x) − 5), 0, 4): edges at 64, 128, 256, 512 px.

    Args:
        size_px: float Tensor[...], a box side in pixels of its own image.
    Returns:
        int64 Tensor[...] in [0, 4].
    """
    return torch.floor(torch.log2(size_px.clamp_min(1e-6)) - 5).clamp(0, NUM_SCALE_BINS - 1).long()


def instance_descriptor(
    labels: Tensor, centres: Tensor, size_px: Tensor, num_classes: int, pos_feats: int = 128
) -> Tensor:
    """Descriptor e = [one-hot class | sine(cx') | sine(cy') | one-hot bin(w) | one-hot bin(h)].

    Args:
        labels: int64 Tensor[B, K] contiguous class ids.
        centres: float Tensor[B, K, 2] jittered normalised centres.
        size_px: float Tensor[B, K, 2] box (w, h) in pixels of its own image.
    Returns:
        float Tensor[B, K, C + 2·pos_feats + 10] (346 for C = 80).
    """
    return torch.cat(
        [
            F.one_hot(labels, num_classes).float(),
            sine_encoding(centres[..., 0], pos_feats),
            sine_encoding(centres[..., 1], pos_feats),
            F.one_hot(scale_bins(size_px[..., 0]), NUM_SCALE_BINS).float(),
            F.one_hot(scale_bins(size_px[..., 1]), NUM_SCALE_BINS).float(),
        ],
        dim=-1,
    )


def _sine_code(embed: Tensor, num_feats: int, temperature: float) -> Tensor:
    """DETR's interleaved code of angles ``embed`` [...]: float Tensor[..., num_feats]."""
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=embed.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos = embed[..., None] / dim_t
    return torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=-1).flatten(-2)


def axis_position_codes(valid: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> tuple[Tensor, Tensor]:
    """The two halves of :func:`level_position_encoding`, one per axis.

    The 2-D code of a valid token (y, x) is [code_y(b, y) | code_x(b, x)], so a linear map of
    it splits into a row term plus a column term; ICD projects H_l + W_l codes per image and
    level instead of H_l·W_l.

    Args:
        valid: bool Tensor[B, H_l, W_l], True inside the image (a top-left rectangle).
    Returns:
        (code_y float Tensor[B, H_l, num_feats], code_x float Tensor[B, W_l, num_feats]); rows
        and columns beyond the image carry the code of its last row / column (they only ever
        meet padded tokens, which attention masks out).
    """
    eps, scale = 1e-6, 2 * math.pi
    rows = valid[:, :, 0].float().cumsum(1)  # column 0 is inside every image
    cols = valid[:, 0, :].float().cumsum(1)
    rows = rows / (rows.amax(dim=1, keepdim=True) + eps) * scale
    cols = cols / (cols.amax(dim=1, keepdim=True) + eps) * scale
    return _sine_code(rows, num_feats, temperature), _sine_code(cols, num_feats, temperature)


def point_position_code(centres: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """The keys' 2-D sine code evaluated at points: [code_y | code_x] of normalised (cx, cy).

    A token whose code is :func:`axis_position_codes`' [code_y(y) | code_x(x)] sits at the
    normalised position ((x + 1) / n_x, (y + 1) / n_y) of its level, so a query at the centre
    (cx, cy) is coded with the angles 2π·cy and 2π·cx (this project's position prior, see
    :class:`~icdistill.distill.icd.module.DecoderLayer`).

    Args:
        centres: float Tensor[..., 2] normalised (cx, cy).
    Returns:
        float Tensor[..., 2·num_feats].
    """
    scale = 2 * math.pi
    return torch.cat([_sine_code(centres[..., 1].float() * scale, num_feats, temperature),
                      _sine_code(centres[..., 0].float() * scale, num_feats, temperature)], dim=-1)


def level_position_encoding(valid: Tensor, num_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """DETR-style 2-D sine position encoding over the valid region of one level.

    Coordinates are cumulative counts of valid cells normalised to (0, 2π] per image and level.

    Args:
        valid: bool Tensor[B, H_l, W_l], True inside the image.
    Returns:
        float Tensor[B, H_l, W_l, 2·num_feats]: num_feats channels for y, then num_feats for x.
    """
    not_mask = valid.float()
    y_embed = not_mask.cumsum(1)
    x_embed = not_mask.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    # The valid region is a top-left rectangle, so the largest count is its height (width).
    y_embed = y_embed / (y_embed.amax(dim=(1, 2), keepdim=True) + eps) * scale
    x_embed = x_embed / (x_embed.amax(dim=(1, 2), keepdim=True) + eps) * scale
    return torch.cat([_sine_code(y_embed, num_feats, temperature), _sine_code(x_embed, num_feats, temperature)], dim=3)


def identification_loss(logits: Tensor, is_real: Tensor, valid: Tensor) -> Tensor:
    """L_idf: BCE-with-logits averaged over all valid (real + fake) slots of the batch.

    Args:
        logits: float Tensor[B, K] identification logits ζ.
        is_real, valid: bool Tensor[B, K].
    """
    loss = F.binary_cross_entropy_with_logits(logits, is_real.float(), reduction="none")
    return (loss * valid).sum() / valid.sum().clamp_min(1)


def regression_targets(boxes: Tensor, centres: Tensor) -> Tensor:
    """(l, t, r, b) = (cx' − x1, cy' − y1, x2 − cx', y2 − cy') in normalised units.

    Args:
        boxes: float Tensor[..., 4] normalised xyxy. centres: float Tensor[..., 2].
    Returns:
        float Tensor[..., 4].
    """
    return torch.cat([centres - boxes[..., :2], boxes[..., 2:] - centres], dim=-1)


def regression_loss(pred_logits: Tensor, boxes: Tensor, centres: Tensor, is_real: Tensor) -> Tensor:
    """L_reg = (1/N_r) Σ_real (|l−p_l|/w + |t−p_t|/h + |r−p_r|/w + |b−p_b|/h), p = sigmoid(ρ).

    Args:
        pred_logits: float Tensor[B, K, 4] regression logits ρ.
        boxes: float Tensor[B, K, 4] normalised xyxy. centres: float Tensor[B, K, 2] jittered.
        is_real: bool Tensor[B, K].
    """
    target = regression_targets(boxes, centres)
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp_min(1e-7)
    norm = torch.cat([wh, wh], dim=-1)  # (w, h, w, h) pairs with (l, t, r, b)
    err = ((target - pred_logits.sigmoid()).abs() / norm).sum(dim=-1)
    return (err * is_real).sum() / is_real.sum().clamp_min(1)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """float Tensor[B, S, d] -> Tensor[B, H, S, d/H]."""
    b, s, d = x.shape
    return x.view(b, s, num_heads, d // num_heads).transpose(1, 2)


def attention_weighted_distill_loss(
    student: Tensor, teacher: Tensor, weights: Tensor, num_heads: int, loss_weight: float = 1.0
) -> Tensor:
    """L_distill = λ/(B·H) Σ_b Σ_h Σ_s w·δ / max(Σ_s w, 1e-6).

    δ[b,h,s] is the mean over the head's channels of the squared difference of the per-head
    layer-normalised (no affine, eps 1e-5) student and teacher vectors.

    Args:
        student: float Tensor[B, S, d], adapter(student tokens).
        teacher: float Tensor[B, S, d], W_V·(teacher tokens); should be detached by the caller.
        weights: float Tensor[B, H, S], summed attention of each image's real instances (detached).
        num_heads: H; d must be divisible by H.
    Returns:
        Scalar tensor. An image without real instances contributes 0 but still counts in B.
    """
    b, s, d = student.shape
    d_h = d // num_heads
    # [B, S, H, d_h] is a free view of [B, S, d] (heads are channel blocks); normalising there
    # and moving only δ [B, S, H] to [B, H, S] avoids copying the token-wide tensors.
    s_norm = F.layer_norm(student.view(b, s, num_heads, d_h), (d_h,), eps=1e-5)
    t_norm = F.layer_norm(teacher.reshape(b, s, num_heads, d_h), (d_h,), eps=1e-5)
    delta = (s_norm - t_norm).square().mean(dim=-1).transpose(1, 2)  # [B, H, S]
    per_head = (weights * delta).sum(dim=-1) / weights.sum(dim=-1).clamp_min(1e-6)
    return loss_weight * per_head.mean()
