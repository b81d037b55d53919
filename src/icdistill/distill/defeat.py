"""Guo et al. 2021, DeFeat: "Distilling Object Detectors via Decoupled Features" (CVPR 2021).

* ``neck_fg`` / ``neck_bg``: per FPN level, the squared error between the teacher's map and a
  3x3 adapter of the student's (no ReLU, init N(0,1).fmod(2)·1e-4), summed separately inside
  and outside the ground-truth mask and each divided by 2 × its element count (channels
  included); averaged over levels, weighted α_obj and α_bg. Every box marks the cells it covers
  on the one level the mmdet base-56 rule gives it.
* ``roi_fg`` / ``roi_bg`` (two-stage, ``roi_cls: true``): the temperature KL between the
  student's and the teacher's RoI class logits on the teacher's sampled RoIs, split by the
  teacher's sampled labels (foreground / background), each averaged over its RoIs.

RetinaNet and FCOS get the neck term only (the released one-stage code is incomplete). The
weights ramp linearly over ``ramp_iters`` (United-Perception's COCO recipe).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from icdistill.config import require_number
from icdistill.detectors.extras import ROI_SAMPLES
from icdistill.detectors.families import family_facts
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.inputs import STUDENT, TEACHER, DistillInputs
from icdistill.distill.core.method import STUDENT_SGD, DistillMethod, MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, register_method
from icdistill.errors import ConfigError



@dataclass(frozen=True)
class DeFeatConfig:
    """``distill.defeat``. Neck weights ``fg_weight`` α_obj and ``bg_weight`` α_bg
    (United-Perception's COCO recipe, ramped linearly over ``ramp_iters``); ``roi_cls``
    (two-stage detectors only; one-stage ones are neck-only) adds the RoI classification KL on
    the teacher's sampled RoIs with weights β and temperatures T per foreground / background
    (the DeFeat VOC config's values, unverified). ``faithful_padding``: the background term
    includes padding."""

    fg_weight: float = 4.0
    bg_weight: float = 16.0
    roi_cls: bool = False
    roi_fg_weight: float = 2.0
    roi_bg_weight: float = 2.0
    roi_fg_temperature: float = 1.0
    roi_bg_temperature: float = 1.0
    ramp_iters: int = 2000
    faithful_padding: bool = False

    def __post_init__(self) -> None:
        for name in ("roi_fg_temperature", "roi_bg_temperature"):
            require_number("distill.defeat", name, getattr(self, name), positive=True)
        for name in ("fg_weight", "bg_weight", "roi_fg_weight", "roi_bg_weight", "ramp_iters"):
            require_number("distill.defeat", name, getattr(self, name))


FINEST_SCALE = 56


def gt_levels(boxes: Tensor, num_levels: int) -> Tensor:
    """mmdet's base-56 rule k = floor(log2(sqrt((w+1)(h+1)) / 56 + 1e-6)) clamped to
    [0, num_levels - 1] (0 = the finest level): boxes float[N, 4] xyxy -> int64[N]."""
    scale = ((boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)).clamp_min(0).sqrt()
    k = torch.floor(torch.log2(scale / FINEST_SCALE + 1e-6))
    return k.clamp(0, num_levels - 1).long()


def gt_masks(boxes: Sequence[Tensor], shapes: Sequence[tuple[int, int]], strides: Sequence[int]) -> list[Tensor]:
    """Per level the binary mask bool[B, H_l, W_l]: each box marks, on its level only, the cells
    [int(y1/s), int(y2/s)) x [int(x1/s), int(x2/s)), or the single cell (int(y1/s), int(x1/s))
    when that range is empty. boxes: per image float[N_b, 4] xyxy pixels."""
    device = boxes[0].device if len(boxes) else torch.device("cpu")
    masks = [torch.zeros((len(boxes), h, w), dtype=torch.bool, device=device) for h, w in shapes]
    for b, image_boxes in enumerate(boxes):
        if image_boxes.numel() == 0:
            continue
        for box, level in zip(image_boxes.tolist(), gt_levels(image_boxes, len(shapes)).tolist()):
            s, (h, w) = strides[level], shapes[level]
            x0, y0, x1, y1 = (int(v / s) for v in box)
            if x1 <= x0 or y1 <= y0:
                x1, y1 = x0 + 1, y0 + 1
            masks[level][b, max(y0, 0):min(y1, h), max(x0, 0):min(x1, w)] = True
    return masks


def decoupled_neck_loss(
    teacher: Sequence[Tensor], adapted: Sequence[Tensor], masks: Sequence[Tensor], valid: Sequence[Tensor],
) -> tuple[Tensor, Tensor]:
    """(mean over levels of fg, mean over levels of bg), per level
    fg = Σ M (A(s) − t)² / max(1, 2 Σ M C) and bg the same over valid tokens outside M.

    teacher, adapted: per level float[B, C, H, W]; masks, valid: per level bool[B, H, W]."""
    fg, bg = [], []
    for t, a, m, v in zip(teacher, adapted, masks, valid):
        err = (a - t.detach()).pow(2).sum(dim=1)  # [B, H, W]
        channels = t.shape[1]
        inside, outside = m.to(err.dtype), (~m & v).to(err.dtype)
        fg.append((err * inside).sum() / (2 * inside.sum() * channels).clamp_min(1))
        bg.append((err * outside).sum() / (2 * outside.sum() * channels).clamp_min(1))
    return torch.stack(fg).mean(), torch.stack(bg).mean()


def kl_per_roi(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T² Σ_c q_c (log q_c − log p_c), q = softmax(z_t/T), p = softmax(z_s/T): float[R, K] -> float[R]."""
    log_q = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    log_p = F.log_softmax(student_logits / temperature, dim=-1)
    return temperature ** 2 * (log_q.exp() * (log_q - log_p)).sum(dim=-1)


def roi_cls_losses(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, fg_temperature: float, bg_temperature: float,
) -> tuple[Tensor, Tensor]:
    """(Σ_fg KL_{T_obj} / K_obj, Σ_bg KL_{T_bg} / K_bg); labels int64[R], 0 = background."""
    fg = labels > 0
    kl_fg = kl_per_roi(student_logits[fg], teacher_logits[fg], fg_temperature)
    kl_bg = kl_per_roi(student_logits[~fg], teacher_logits[~fg], bg_temperature)
    return kl_fg.sum() / max(1, int(fg.sum())), kl_bg.sum() / max(1, int((~fg).sum()))


def defeat_adapter(student_channels: int, teacher_channels: int) -> nn.Conv2d:
    """3x3 conv C_s → C_t, weight N(0, 1).fmod(2) · 1e-4 (DeFeat's init), default bias."""
    conv = nn.Conv2d(student_channels, teacher_channels, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn_like(conv.weight).fmod(2) * 1e-4)
    return conv


class DeFeat(DistillMethod):
    """``distill.method: defeat``.

    Args:
        levels: the distilled level names (the base-56 rule runs over them, finest first).
        student_channels, teacher_channels: C_s, C_t.
        settings: ``distill.defeat`` (:class:`DeFeatConfig`; ``roi_cls`` only on two-stage
            detectors).
        scale: ``distill.weight_scale`` (multiplies every term; 1 by default).
    """

    name = "defeat"

    def __init__(
        self, *, levels: Sequence[str], student_channels: int, teacher_channels: int,
        settings: DeFeatConfig = DeFeatConfig(), scale: float = 1.0,
    ) -> None:
        # DeFeat's adapters are modules of the student detector: the student's SGD trains them.
        super().__init__(MethodOptim(kind=STUDENT_SGD))
        self.levels = tuple(levels)
        self.settings = settings
        self.scale = scale
        self.requires = frozenset({ROI_SAMPLES}) if settings.roi_cls else frozenset()
        self.adapters = nn.ModuleList(defeat_adapter(student_channels, teacher_channels) for _ in levels)

    def ramp(self, iteration: int) -> float:
        """The linear weight ramp: iteration / ramp_iters, at most 1 (1 without a ramp)."""
        n = self.settings.ramp_iters
        return min(1.0, iteration / n) if n > 0 else 1.0

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/defeat/neck_fg", ".../neck_bg"} (+ ".../roi_fg", ".../roi_bg" with roi_cls)."""
        if not inputs.has_student:
            return {}
        cfg = self.settings
        idx = [inputs.levels.index(name) for name in self.levels]
        t = [inputs.teacher_levels[i] for i in idx]
        a = [adapter(inputs.student_levels[i]) for adapter, i in zip(self.adapters, idx)]
        valid = [inputs.valid_masks[i] for i in idx]
        if cfg.faithful_padding:
            valid = [torch.ones_like(v) for v in valid]
        masks = gt_masks([tgt["boxes"].to(t[0].device) for tgt in inputs.targets],
                         [x.shape[-2:] for x in t], [inputs.strides[i] for i in idx])
        fg, bg = decoupled_neck_loss(t, a, masks, valid)
        k = self.scale * self.ramp(inputs.iteration)
        out = {"distill/defeat/neck_fg": k * cfg.fg_weight * fg, "distill/defeat/neck_bg": k * cfg.bg_weight * bg}
        if cfg.roi_cls:
            # The teacher's RPN proposals through the teacher's RoI sampler ("SampleTEA"), with the
            # teacher's sampled labels (the released code's student-label mismatch is fixed).
            samples = inputs.extra(TEACHER, ROI_SAMPLES)
            teacher_logits, _ = inputs.box_head(TEACHER, samples.boxes)
            student_logits, _ = inputs.box_head(STUDENT, samples.boxes)
            roi_fg, roi_bg = roi_cls_losses(student_logits, teacher_logits, torch.cat(samples.labels),
                                            cfg.roi_fg_temperature, cfg.roi_bg_temperature)
            out["distill/defeat/roi_fg"] = k * cfg.roi_fg_weight * roi_fg
            out["distill/defeat/roi_bg"] = k * cfg.roi_bg_weight * roi_bg
        return out


def build_defeat(cfg: DeFeatConfig, ctx: MethodContext) -> DeFeat:
    """DeFeat from ``distill.defeat``: the neck on every distilled level; ``roi_cls`` needs a
    two-stage student and teacher."""
    if cfg.roi_cls:
        one_stage = [f for f in (ctx.student.family, ctx.teacher.family) if not family_facts(f).two_stage]
        if one_stage:
            raise ConfigError(
                f"config key 'distill.defeat.roi_cls' is true, but the RoI classification term needs a two-stage "
                f"student and teacher (RoI heads); got student {ctx.student.family}, teacher {ctx.teacher.family} "
                f"({', '.join(sorted(set(one_stage)))}: one-stage, neck only); set it to false"
            )
        if ROI_SAMPLES not in ctx.teacher.supported_extras:
            raise ConfigError(f"config key 'distill.defeat.roi_cls' needs the teacher's sampled RoIs (roi_samples); "
                              f"the {ctx.teacher.family} teacher does not provide them; set it to false")
    return DeFeat(levels=ctx.levels, student_channels=ctx.student.out_channels,
                  teacher_channels=ctx.teacher.out_channels, settings=cfg, scale=ctx.weight_scale)


SPEC = register_method(MethodSpec(
    name="defeat", section=DeFeatConfig, build=build_defeat,
    # The neck term needs the feature maps only; roi_cls (two-stage) is checked by the builder.
    needs={ONE_STAGE: frozenset(), TWO_STAGE: frozenset()},
    native=frozenset({"faster_rcnn", "mask_rcnn"}),
    paper="Guo et al., Distilling Object Detectors via Decoupled Features, CVPR 2021",
))
