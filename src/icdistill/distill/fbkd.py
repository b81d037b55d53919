"""Zhang & Ma 2021, "Improve Object Detection with Feature-based Knowledge Distillation: Towards
Accurate and Efficient Detectors" (ICLR 2021; "FBKD" in MMRazor): attention-guided and
non-local feature distillation.

Per distilled FPN level, with F = [C, H, W] one image's map:

* masks: spatial M^S = HW·softmax_hw(mean_c|F| / T), channel M^C = C·softmax_c(mean_hw|F| / T_c),
  each the average of the teacher's and the student's, detached;
* ``am``:  L_AM = sqrt(Σ_{b,c,h,w} (t − A(s))² · M^S · M^C) (one-stage; the two-stage column drops
  M^C), A a 1x1 conv C_s → C_t;
* ``at``:  L_AT = ‖mean_hw(t) − Lin(mean_hw(s))‖₂ + ‖mean_c(t) − Conv3x3(mean_c(s))‖₂ (signed
  means, plain L2 over the batch tensors);
* ``nld``: L_NLD = ‖A_nl(NL_s(s)) − NL_t(t)‖₂ with two trainable non-local blocks (the
  teacher's lives here, in the method, and trains).

The level terms are summed over levels. Defaults (weights, temperatures, the channel mask) are
the supplement's one-stage column for RetinaNet/FCOS and MMRazor's two-stage column for
Faster/Mask R-CNN (:data:`COLUMNS`). Padding: by default masks, means and norms use valid
(unpadded) tokens only; ``faithful_padding`` includes padding as the originals do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icdistill.config import require_number
from icdistill.detectors.families import family_facts
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.inputs import DistillInputs
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, register_method
from icdistill.distill.methods._parts import pooled_levels
from icdistill.distill.core.method import DistillMethod, MethodOptim, STUDENT_SGD


@dataclass(frozen=True)
class FBKDColumn:
    """One column of the defaults: the supplement's one-stage or MMRazor's two-stage."""

    temperature: float
    channel_temperature: float
    channel_mask: bool
    am_weight: float
    at_weight: float
    nld_weight: float


# The supplement's single_stage.py multiplies every weight by 6; MMRazor's two-stage config
# states the weights without it and drops the channel mask ("not used in the FBKD source code").
COLUMNS = {
    "one": FBKDColumn(0.1, 0.1, True, 7e-5 * 6, 4e-3 * 6, 7e-5 * 6),
    "two": FBKDColumn(0.5, 0.5, False, 7e-5, 4e-3, 7e-5),
}
# Non-local layout per level index (inter channels as a fraction of C, max-pool stride): the
# supplement's 64/8, 64/4, then 128/2 at C = 256.
NL_LAYOUT = ((4, 8), (4, 4))
NL_REST = (2, 2)


def safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with value and gradient 0 at 0 (plain sqrt's gradient is infinite there)."""
    positive = x > 0
    return torch.where(positive, x.clamp_min(torch.finfo(x.dtype).tiny).sqrt(), torch.zeros_like(x))


def spatial_mask(feat: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """M^S = n·softmax over valid tokens of mean_c|F| / T, 0 on padding (n = valid tokens).

    feat float[B, C, H, W], valid bool[B, H, W] -> float[B, H, W]."""
    logits = (feat.abs().mean(dim=1) / temperature).flatten(1)
    keep = valid.flatten(1)
    soft = logits.masked_fill(~keep, float("-inf")).softmax(dim=1)
    return (soft * keep.sum(dim=1, keepdim=True)).view_as(valid)


def valid_mean(x: Tensor, valid: Tensor) -> Tensor:
    """Mean over valid tokens: x float[B, C, H, W], valid bool[B, H, W] -> float[B, C]."""
    w = valid.unsqueeze(1).to(x.dtype)
    return (x * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3)).clamp_min(1)


def channel_mask(feat: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """M^C = C·softmax_c(mean over valid tokens of |F| / T_c): float[B, C, H, W] -> float[B, C]."""
    return feat.shape[1] * (valid_mean(feat.abs(), valid) / temperature).softmax(dim=1)


def attention_masks(
    t: Tensor, s: Tensor, s_adapted: Tensor, valid: Tensor, temperature: float, channel_temperature: float,
    use_channel: bool,
) -> tuple[Tensor, Tensor | None]:
    """The averaged, detached masks (M^S [B, H, W], M^C [B, C_t] or None): the code's
    ½(M(t) + M(s)), not the paper's softmax of the summed attention (docs/method.md, "Zhang & Ma 2021"), on the raw
    student map s as the supplement does. With C_s != C_t the student's channel mask is taken on
    its adapted map A(s) (this project's adaptation: M^C must have C_t entries)."""
    t, s = t.detach(), s.detach()
    ms = 0.5 * (spatial_mask(t, valid, temperature) + spatial_mask(s, valid, temperature))
    if not use_channel:
        return ms, None
    s_c = s if s.shape[1] == t.shape[1] else s_adapted.detach()
    mc = 0.5 * (channel_mask(t, valid, channel_temperature) + channel_mask(s_c, valid, channel_temperature))
    return ms, mc


def masked_feature_loss(t: Tensor, s_adapted: Tensor, ms: Tensor, mc: Tensor | None) -> Tensor:
    """L_AM = sqrt(Σ (t − A(s))² M^S M^C) over the whole batch: t, s_adapted [B, C, H, W]."""
    weight = ms.unsqueeze(1)
    if mc is not None:
        weight = weight * mc[:, :, None, None]
    return safe_sqrt(((t - s_adapted).pow(2) * weight).sum())


def attention_transfer_loss(
    t: Tensor, s: Tensor, valid: Tensor, channel_fc: nn.Linear, spatial_conv: nn.Conv2d,
) -> tuple[Tensor, Tensor]:
    """(channel, spatial) L_AT terms: ‖mean_hw t − Lin(mean_hw s)‖₂, ‖(mean_c t − Conv(mean_c s))·valid‖₂."""
    channel = safe_sqrt((valid_mean(t, valid) - channel_fc(valid_mean(s, valid))).pow(2).sum())
    diff = (t.mean(dim=1, keepdim=True) - spatial_conv(s.mean(dim=1, keepdim=True))) * valid.unsqueeze(1)
    return channel, safe_sqrt(diff.pow(2).sum())


class NonLocal2d(nn.Module):
    """Embedded dot-product non-local block: z = x + BN(W·(θᵀφ / N)·g), φ and g max-pooled by
    ``pool`` (shrunk to the map for small maps); BN's γ and β start at 0, so z = x at init.

    x float[B, C, H, W] -> float[B, C, H, W]."""

    def __init__(self, channels: int, inter: int, pool: int) -> None:
        super().__init__()
        self.pool = pool
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.g = nn.Conv2d(channels, inter, 1)
        self.out = nn.Conv2d(inter, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        k = max(1, min(self.pool, h, w))
        theta = self.theta(x).flatten(2)  # [B, i, HW]
        phi = F.max_pool2d(self.phi(x), k, k).flatten(2)  # [B, i, N]
        g = F.max_pool2d(self.g(x), k, k).flatten(2)  # [B, i, N]
        f = theta.transpose(1, 2) @ phi / phi.shape[-1]  # [B, HW, N]
        y = (f @ g.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
        z = self.out(y)
        # One value per channel (batch 1 on a 1x1 map) has no batch statistics: use the running ones.
        train_stats = self.training and b * h * w > 1
        z = F.batch_norm(z, self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                         training=train_stats, momentum=self.bn.momentum, eps=self.bn.eps)
        return x + z


class FBKDLevel(nn.Module):
    """The trainable parts of one level: A, Lin, Conv3x3(1→1), NL_s, NL_t, A_nl."""

    def __init__(self, index: int, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        frac, pool = NL_LAYOUT[index] if index < len(NL_LAYOUT) else NL_REST
        self.adapter = nn.Conv2d(student_channels, teacher_channels, 1)
        self.channel_fc = nn.Linear(student_channels, teacher_channels)
        self.spatial_conv = nn.Conv2d(1, 1, 3, padding=1)
        self.student_nl = NonLocal2d(student_channels, max(1, student_channels // frac), pool)
        self.teacher_nl = NonLocal2d(teacher_channels, max(1, teacher_channels // frac), pool)
        self.nl_adapter = nn.Conv2d(student_channels, teacher_channels, 1)


def level_losses(
    parts: FBKDLevel, t: Tensor, s: Tensor, valid: Tensor, column: FBKDColumn,
) -> dict[str, Tensor]:
    """The unweighted ``am``, ``at`` and ``nld`` terms of one level (t [B, C_t, H, W] detached,
    s [B, C_s, H, W], valid bool[B, H, W])."""
    adapted = parts.adapter(s)
    ms, mc = attention_masks(t, s, adapted, valid, column.temperature, column.channel_temperature,
                             column.channel_mask)
    am = masked_feature_loss(t, adapted, ms, mc)
    at_channel, at_spatial = attention_transfer_loss(t, s, valid, parts.channel_fc, parts.spatial_conv)
    nl_diff = (parts.nl_adapter(parts.student_nl(s)) - parts.teacher_nl(t)) * valid.unsqueeze(1)
    return {"am": am, "at": at_channel + at_spatial, "nld": safe_sqrt(nl_diff.pow(2).sum())}


class FBKD(DistillMethod):
    """``distill.method: fbkd``.

    Args:
        levels: the level names it distils (a subset of the distiller's, finest first).
        student_channels, teacher_channels: C_s, C_t.
        column: temperatures, channel mask and weights (:data:`COLUMNS` or overridden).
        scale: ``distill.weight_scale`` (multiplies every term; 1 by default).
        faithful_padding: include padded tokens in masks, means and norms (the originals).
    """

    name = "fbkd"

    def __init__(
        self, *, levels: Sequence[str], student_channels: int, teacher_channels: int, column: FBKDColumn,
        scale: float = 1.0, faithful_padding: bool = False,
    ) -> None:
        # The supplement's parts are modules of the student detector: its SGD trains them.
        super().__init__(MethodOptim(kind=STUDENT_SGD))
        self.levels = tuple(levels)
        self.column = column
        self.scale = scale
        self.faithful_padding = faithful_padding
        self.parts = nn.ModuleList(FBKDLevel(i, student_channels, teacher_channels) for i in range(len(levels)))

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/fbkd/am", "distill/fbkd/at", "distill/fbkd/nld"}, weighted and summed over levels."""
        if not inputs.has_student:
            return {}
        totals = {"am": 0.0, "at": 0.0, "nld": 0.0}
        for parts, name in zip(self.parts, self.levels):
            i = inputs.levels.index(name)
            t, s, valid = inputs.teacher_levels[i], inputs.student_levels[i], inputs.valid_masks[i]
            if self.faithful_padding:
                valid = torch.ones_like(valid)
            for term, value in level_losses(parts, t, s, valid, self.column).items():
                totals[term] = totals[term] + value
        weights = {"am": self.column.am_weight, "at": self.column.at_weight, "nld": self.column.nld_weight}
        return {f"distill/fbkd/{k}": self.scale * weights[k] * v for k, v in totals.items()}


@dataclass(frozen=True)
class FBKDConfig:
    """``distill.fbkd``. Nulls take the student's column: one-stage (the supplement: T = T_c =
    0.1, channel mask on, weights am 4.2e-4, at 0.024, nld 4.2e-4) or two-stage (MMRazor: T =
    0.5, no channel mask, 7e-5, 4e-3, 7e-5). ``faithful_padding`` includes padded tokens in the
    masks and norms as the originals do (default: valid tokens only). This project's
    adaptations [ADAPT]: adapters for C_s != C_t, the non-local width C/4, C/2 at any C, the
    max-pool shrunk on small maps (docs/method.md)."""

    temperature: Optional[float] = None
    channel_temperature: Optional[float] = None
    channel_mask: Optional[bool] = None
    am_weight: Optional[float] = None
    at_weight: Optional[float] = None
    nld_weight: Optional[float] = None
    faithful_padding: bool = False

    def __post_init__(self) -> None:
        for name in ("temperature", "channel_temperature"):
            require_number("distill.fbkd", name, getattr(self, name), positive=True)
        for name in ("am_weight", "at_weight", "nld_weight"):
            require_number("distill.fbkd", name, getattr(self, name))


def build_fbkd(cfg: FBKDConfig, ctx: MethodContext) -> FBKD:
    """FBKD from ``distill.fbkd``: the one-stage column for one-stage students, the two-stage
    column (p2–p5) for two-stage ones; every null takes the column's value."""
    two_stage = family_facts(ctx.student.family).two_stage
    column = COLUMNS["two" if two_stage else "one"]
    overrides = {k: getattr(cfg, k) for k in ("temperature", "channel_temperature", "channel_mask",
                                              "am_weight", "at_weight", "nld_weight") if getattr(cfg, k) is not None}
    return FBKD(
        levels=pooled_levels(ctx, two_stage), student_channels=ctx.student.out_channels,
        teacher_channels=ctx.teacher.out_channels, column=replace(column, **overrides), scale=ctx.weight_scale,
        faithful_padding=cfg.faithful_padding,
    )


SPEC = register_method(MethodSpec(
    name="fbkd", section=FBKDConfig, build=build_fbkd,
    # The feature maps only.
    needs={ONE_STAGE: frozenset(), TWO_STAGE: frozenset()},
    native=frozenset({"faster_rcnn", "mask_rcnn", "retinanet", "fcos"}),
    paper="Zhang & Ma, Improve Object Detection with Feature-based Knowledge Distillation, ICLR 2021",
))
