"""Wang, Yuan, Zhang, Feng 2019, FGFI "Distilling Object Detectors with Fine-grained Feature
Imitation" (CVPR 2019).

The student imitates the teacher only at the locations near objects: for each ground-truth box g
take the IoU of g with the anchors, M_g its maximum; a location is in g's mask when any of its
anchors has IoU > ψ·M_g (strict, ψ = 0.5); the mask is the OR over boxes.

* ``level_mode: assigned`` (default, DeFeat's FPN port): each box goes to one level by the
  base-56 rule (64×64 → the finest level) and is matched against that level's anchors only;
  ``joint`` (the original's single map, LD's port): IoU over the anchors of all levels at once.
* Anchors: RetinaNet's own (9 per location), Faster R-CNN's RPN anchors (3 per location); a
  head whose anchors are points (FCOS, CondInst) [ADAPT]: a *virtual* anchor per location, a
  square of side 8·stride on the location's centre (a point has no IoU to threshold).
* Loss per level: Σ I·Σ_c (A_l(s) − t)² / max(1, 2·N_p·C) (``norm: defeat``, weight 3, the FPN
  setting a peer ran) or / max(1, 2·N_p) (``norm: paper``, the original's, weight 0.01); mean
  over levels. A_l is a per-level 3×3 conv, init N(0,1).fmod(2)·1e-4 and no ReLU (DeFeat's;
  ``adapter_relu: true`` adds the original's ReLU), trained with the student's SGD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from icdistill.config import choice, require_at_most_one, require_number
from icdistill.detectors.extras import ANCHORS
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.inputs import STUDENT, DistillInputs
from icdistill.distill.core.method import STUDENT_SGD, DistillMethod, MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, register_method
from icdistill.distill.methods._parts import (
    ADAPTER_INITS, LevelAdapters, anchors_are_points, gt_level_index, level_hw, split_anchors,
)

LEVEL_MODES = ("assigned", "joint")
NORMS = ("defeat", "paper")
DEFAULT_WEIGHT = {"defeat": 3.0, "paper": 0.01}


@dataclass(frozen=True)
class FGFIConfig:
    """``distill.fgfi``. ``psi``: the mask's relative IoU threshold; ``level_mode``:
    ``assigned`` (one level per box, DeFeat's FPN port) or ``joint`` (all levels at once);
    ``norm``: ``defeat`` (÷2·N_p·C) or ``paper`` (÷2·N_p); per-level 3×3 adapters with
    ``adapter_init`` and, if ``adapter_relu``, the original's ReLU; ``loss_weight`` null: 3 with
    ``norm: defeat``, 0.01 with ``paper``. Heads whose anchors are points use virtual anchors
    (8·stride squares), this project's adaptation [ADAPT]."""

    psi: float = 0.5
    level_mode: str = choice("assigned", LEVEL_MODES)
    norm: str = choice("defeat", NORMS)
    adapter_init: str = choice("trunc1e-4", ADAPTER_INITS)
    adapter_relu: bool = False
    loss_weight: Optional[float] = None

    def __post_init__(self) -> None:
        require_number("distill.fgfi", "psi", self.psi, positive=True)
        require_at_most_one("distill.fgfi", "psi", self.psi)
        require_number("distill.fgfi", "loss_weight", self.loss_weight)


def fgfi_masks(level_anchors: Sequence[Tensor], boxes: Tensor, *, psi: float = 0.5, mode: str = "assigned") -> list[Tensor]:
    """FGFI's imitation mask of one image.

    Args:
        level_anchors: per level float[H_l, W_l, A, 4] xyxy pixels, finest first.
        boxes: float[M, 4] xyxy pixels (M may be 0).
        psi: the relative threshold ψ.
        mode: ``assigned`` (one level per box, base-56 rule) or ``joint`` (all levels at once).
    Returns:
        per level bool[H_l, W_l].
    """
    masks = [torch.zeros(a.shape[:2], dtype=torch.bool, device=a.device) for a in level_anchors]
    if boxes.numel() == 0:
        return masks
    boxes = boxes.to(level_anchors[0])
    ious = [box_iou(boxes, a.reshape(-1, 4)).view(len(boxes), *a.shape[:3]) for a in level_anchors]  # [M, H, W, A]
    if mode == "joint":
        best = torch.stack([iou.flatten(1).amax(dim=1) for iou in ious]).amax(dim=0)  # [M]
        owns = [torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)] * len(ious)
    else:
        level = gt_level_index(boxes, len(level_anchors))
        owns = [level == i for i in range(len(ious))]
        best = torch.stack([iou.flatten(1).amax(dim=1) for iou in ious])[level, torch.arange(len(boxes))]
    for i, (iou, own) in enumerate(zip(ious, owns)):
        if own.any():
            hit = iou[own] > psi * best[own][:, None, None, None]  # strict, as the original
            masks[i] = hit.any(dim=-1).any(dim=0)
    return masks


def fgfi_loss(teacher_levels: Sequence[Tensor], adapted_student_levels: Sequence[Tensor],
              masks: Sequence[Tensor], *, norm: str = "defeat") -> Tensor:
    """Mean over levels of Σ I·Σ_c (A(s) − t)² / max(1, 2·N_p·(C if defeat else 1)).

    Args: levels float[B, C, H_l, W_l] each; masks bool[B, H_l, W_l] each. Returns a scalar."""
    per_level = []
    for t, s, m in zip(teacher_levels, adapted_student_levels, masks):
        err = (s - t.detach()).pow(2).sum(dim=1)  # [B, H, W], channels summed
        count = m.sum() * (s.shape[1] if norm == "defeat" else 1)
        per_level.append((err * m).sum() / (2 * count).clamp_min(1))
    return torch.stack(per_level).mean()


def virtual_anchors(points: Tensor, strides: Sequence[int]) -> list[Tensor]:
    """[ADAPT] FCOS: per level float[H, W, 1, 4] squares of side 8·stride centred on the given
    per-level point boxes float[H, W, 1, 4] (torchvision's FCOS anchors)."""
    out = []
    for p, stride in zip(points, strides):
        centre = (p[..., :2] + p[..., 2:]) / 2
        half = 4.0 * stride
        out.append(torch.cat([centre - half, centre + half], dim=-1))
    return out


class FGFI(DistillMethod):
    """``distill.method: fgfi``.

    Args:
        student_channels, teacher_channels: C_s, C_t.
        num_levels: distilled levels (one 3×3 adapter each).
        virtual: virtual anchors ([ADAPT]); None: when the student's anchors are points.
        psi, level_mode, norm: the mask and loss (module docstring).
        adapter_init, adapter_relu: the adapters' init and the original's ReLU.
        loss_weight: λ (null in the config: 3 with ``defeat``, 0.01 with ``paper``).
        optim: the adapters' optimisation (the student's SGD, as the originals train adapters).
    """

    name = "fgfi"
    requires = frozenset({ANCHORS})

    def __init__(
        self, *, student_channels: int, teacher_channels: int, num_levels: int, virtual: bool | None = None,
        psi: float = 0.5, level_mode: str = "assigned", norm: str = "defeat", adapter_init: str = "trunc1e-4",
        adapter_relu: bool = False, loss_weight: float = 3.0, optim: MethodOptim = MethodOptim(kind="student"),
    ) -> None:
        super().__init__(optim)
        if level_mode not in LEVEL_MODES or norm not in NORMS:
            raise ValueError(f"level_mode {level_mode!r} / norm {norm!r}; valid: {LEVEL_MODES} / {NORMS}")
        self.adapters = LevelAdapters("3x3", student_channels, teacher_channels, num_levels,
                                      init=adapter_init, relu=adapter_relu)
        self.virtual, self.psi, self.level_mode, self.norm = virtual, psi, level_mode, norm
        self.loss_weight = loss_weight

    def masks(self, inputs: DistillInputs) -> list[Tensor]:
        """Per distilled level bool[B, H_l, W_l] from the student's anchors and the targets."""
        all_levels = list(inputs.all_student_features)
        shapes = level_hw(list(inputs.all_student_features.values()))
        wanted = [all_levels.index(name) for name in inputs.levels]
        per_image = []
        for anchors, target in zip(inputs.extra(STUDENT, ANCHORS), inputs.targets):
            levels = split_anchors(anchors, shapes)
            levels = [levels[i] for i in wanted]
            if self.virtual or (self.virtual is None and anchors_are_points(anchors)):
                levels = virtual_anchors(levels, inputs.strides)
            per_image.append(fgfi_masks(levels, target["boxes"].reshape(-1, 4).float(), psi=self.psi, mode=self.level_mode))
        return [torch.stack([m[i] for m in per_image]) for i in range(len(inputs.levels))]

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/fgfi/feature"}; {} in a method-only stage."""
        if not inputs.has_student:
            return {}
        with torch.no_grad():
            masks = self.masks(inputs)
        adapted = self.adapters(inputs.student_levels)
        loss = fgfi_loss(inputs.teacher_levels, adapted, masks, norm=self.norm)
        return {"distill/fgfi/feature": self.loss_weight * loss}


def build_fgfi(cfg: FGFIConfig, ctx: MethodContext) -> FGFI:
    """FGFI from ``distill.fgfi`` (``loss_weight`` null: the ``norm``'s default)."""
    weight = cfg.loss_weight if cfg.loss_weight is not None else DEFAULT_WEIGHT[cfg.norm]
    return FGFI(
        student_channels=ctx.student.out_channels, teacher_channels=ctx.teacher.out_channels,
        num_levels=len(ctx.levels), psi=cfg.psi, level_mode=cfg.level_mode, norm=cfg.norm,
        adapter_init=cfg.adapter_init, adapter_relu=cfg.adapter_relu,
        loss_weight=weight * ctx.weight_scale, optim=MethodOptim(kind=STUDENT_SGD),
    )


SPEC = register_method(MethodSpec(
    name="fgfi", section=FGFIConfig, build=build_fgfi,
    # The student's anchors give the imitation mask (the teacher's features only).
    needs={ONE_STAGE: frozenset({ANCHORS}), TWO_STAGE: frozenset({ANCHORS})},
    native=frozenset({"retinanet", "faster_rcnn", "mask_rcnn"}),
    paper="Wang, Yuan, Zhang, Feng, Distilling Object Detectors with Fine-grained Feature Imitation, CVPR 2019",
    # The original's 400 iterations at batch 1, about 25 at batch 16.
    warmup_iters=25,
))
