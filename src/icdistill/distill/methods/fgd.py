"""FGD: focal and global distillation of FPN features (Yang et al., "Focal and Global Knowledge
Distillation for Detectors", CVPR 2022; official code: yzd-v/FGD, Apache-2.0).

Per distilled level, with t = the teacher's map float[B, C_t, H, W] and s' = the student's map
after ``align`` (a 1x1 conv C_s -> C_t with bias, only when the widths differ; everything below
uses the aligned map, the student's attention and global term included):

* **Masks** from the ground-truth boxes (:func:`focal_masks`): fg = 1/(h_r·w_r) on the cells of
  box r (the smallest box wins where boxes overlap), bg = 1/N_bg on the N_bg other cells.
* **Attention** with temperature T (:func:`attention_maps`): spatial A^S = H·W·softmax_hw(mean_c
  |F| / T), channel A^C = C·softmax_c(mean_hw |F| / T).
* **Focal feature terms**, with the *teacher's* attention (:func:`focal_feature_losses`):
  fg = Σ_{b,c,h,w} fg·A^S_t·A^C_t·(s' − t)² / B, bg the same with the bg mask.
* **Attention term** (:func:`attention_loss`): (Σ|A^C_s − A^C_t| + Σ|A^S_s − A^S_t|) / B.
* **Global term** (:func:`global_loss`): Σ (R_s(s') − R_t(t))² / B, with two separate, trainable
  GcBlocks R (:class:`GlobalContextBlock`). The teacher-side block lives in the method and is
  trained by this loss; its input, the teacher's map, carries no gradient.

Sums over C, H and W divided by the batch size only are the original's reductions: magnitudes
grow with C·H·W, which is why its weights are small and differ per family. The method returns
α·fg, β·bg, γ·att and λ·global, each summed over levels (every level carries the full weight),
times ``distill.weight_scale``.

Defaults (:data:`WEIGHT_ROWS`): the official configs' α, β, γ, λ and T per family group: RetinaNet
(anchor-based one-stage), FCOS (anchor-free one-stage, T = 0.8) and Faster/Mask R-CNN
(two-stage), on P3–P7 (one-stage) and P2–P5 (two-stage: torchvision's p6 is a max-pool of p5,
which the original does not distil).

Where this module differs from the original by default (each switch restores the original):

* ``faithful_box_scaling: false``: boxes map to a level as x/stride. The original maps x·W/w_img
  with W the *padded* map width and w_img the un-padded image width, which stretches the boxes of
  an image padded in a larger batch (by up to ~2x); both agree when the image fills the map.
* ``faithful_padding: false``: padded cells get fg and bg weight 0 and N_bg counts valid cells
  only. The softmaxes of the attention and of the GcBlock, the attention term and the global term
  cover the whole padded map, as the original's do.
* ``box_range: inclusive`` *is* the original's rule (rows floor(y1')..ceil(y2') and columns
  floor(x1')..ceil(x2'), both ends included, so a grid-aligned box covers one extra row and
  column); ``exact`` ([ADAPT]) stops at ceil(x2') − 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from icdistill.config import require_number
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.inputs import DistillInputs
from icdistill.distill.core.method import STUDENT_SGD, DistillMethod, MethodOptim
from icdistill.distill.core.registry import ONE_STAGE, TWO_STAGE, MethodSpec, family_kind, register_method
from icdistill.errors import ConfigError

NAME = "fgd"
PAPER = "Yang et al., Focal and Global Knowledge Distillation for Detectors, CVPR 2022"
# FGD reads only the FPN features and the ground-truth boxes, which every adapter provides.
NEEDS: Mapping[str, frozenset[str]] = {ONE_STAGE: frozenset(), TWO_STAGE: frozenset()}
# Families of the official configs (students: RetinaNet, FCOS, Faster and Mask R-CNN; Cascade Mask
# R-CNN FPN as the teacher, its features distilled exactly like Faster R-CNN's). Every other family
# (CondInst, the FPN-free C4 / DC5 Faster R-CNN) is this project's adaptation.
NATIVE_FAMILIES = frozenset({"retinanet", "fcos", "faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn"})
BOX_RANGES = ("inclusive", "exact")
# torchvision's two-stage FPN adds p6 as a max-pool of p5 (for the RPN); the original distils the
# four FPN conv outputs P2–P5 of its two-stage detectors.
TWO_STAGE_SKIPPED_LEVEL = "p6"


@dataclass(frozen=True)
class FGDWeights:
    """One row of the official configs: the term weights and the attention temperature.

    Attributes:
        fg_weight: α, the foreground feature term.
        bg_weight: β, the background feature term.
        attention_weight: γ, the attention term.
        global_weight: λ, the global (GcBlock relation) term.
        temperature: T of both attention softmaxes.
    """

    fg_weight: float
    bg_weight: float
    attention_weight: float
    global_weight: float
    temperature: float


RETINANET_ROW = FGDWeights(1e-3, 5e-4, 5e-4, 5e-6, 0.5)  # also the official GFL config's
FCOS_ROW = FGDWeights(1.6e-3, 8e-4, 8e-4, 8e-6, 0.8)
TWO_STAGE_ROW = FGDWeights(5e-5, 2.5e-5, 5e-5, 5e-7, 0.5)  # Faster and Mask R-CNN
# Per student family; a family not listed takes its kind's row (:func:`default_weights`).
# CondInst takes the FCOS row, as it is FCOS plus mask heads ([ADAPT]).
WEIGHT_ROWS: Mapping[str, FGDWeights] = {
    "retinanet": RETINANET_ROW, "fcos": FCOS_ROW, "condinst": FCOS_ROW, "faster_rcnn": TWO_STAGE_ROW,
    "mask_rcnn": TWO_STAGE_ROW,
}
KIND_ROWS: Mapping[str, FGDWeights] = {ONE_STAGE: RETINANET_ROW, TWO_STAGE: TWO_STAGE_ROW}


def default_weights(family: str) -> FGDWeights:
    """The official row of ``family``, else the row of its kind (two-stage: Faster R-CNN's;
    one-stage: RetinaNet's)."""
    return WEIGHT_ROWS.get(family) or KIND_ROWS[family_kind(family)]


@dataclass(frozen=True)
class FGDConfig:
    """``distill.fgd``: FGD (Yang et al., CVPR 2022; docs/method.md).

    ``fg_weight`` α, ``bg_weight`` β, ``attention_weight`` γ, ``global_weight`` λ and
    ``temperature`` T: null takes the official config's value for the student's family
    (RetinaNet 1e-3, 5e-4, 5e-4, 5e-6, T 0.5; FCOS 1.6e-3, 8e-4, 8e-4, 8e-6, T 0.8; Faster/Mask
    R-CNN 5e-5, 2.5e-5, 5e-5, 5e-7, T 0.5; CondInst: FCOS's [ADAPT]; other two-stage families:
    Faster R-CNN's). ``distill.weight_scale`` multiplies all four. Levels: ``distill.levels``, or
    when null every level without p6 on two-stage detectors (the original's P2–P5).
    ``faithful_box_scaling``: map boxes by the padded map over the un-padded image size (the
    original's stretch) instead of by the stride ([ADAPT] when false); ``faithful_padding``:
    padded cells in the bg term and its count (the original; [ADAPT] when false); ``box_range``:
    ``inclusive`` (the original's floor..ceil cell range) or ``exact`` ([ADAPT]: floor..ceil − 1)."""

    fg_weight: Optional[float] = None
    bg_weight: Optional[float] = None
    attention_weight: Optional[float] = None
    global_weight: Optional[float] = None
    temperature: Optional[float] = None
    faithful_box_scaling: bool = False
    faithful_padding: bool = False
    box_range: str = "inclusive"

    def __post_init__(self) -> None:
        for key in ("fg_weight", "bg_weight", "attention_weight", "global_weight"):
            require_number(f"distill.{NAME}", key, getattr(self, key))
        require_number(f"distill.{NAME}", "temperature", self.temperature, positive=True)
        if self.box_range not in BOX_RANGES:
            raise ConfigError(f"config key 'distill.{NAME}.box_range' is {self.box_range!r}; valid choices: {', '.join(BOX_RANGES)}")

    def weights(self, family: str) -> FGDWeights:
        """The family's official row with this section's non-null values in its place."""
        fields = ("fg_weight", "bg_weight", "attention_weight", "global_weight", "temperature")
        overrides = {k: getattr(self, k) for k in fields if getattr(self, k) is not None}
        return replace(default_weights(family), **overrides)


def box_cells(boxes: Tensor, scale_x: float, scale_y: float, box_range: str = "inclusive") -> Tensor:
    """The cell range of each box on a level, both ends included.

    Args:
        boxes: float Tensor[N, 4], xyxy pixels.
        scale_x, scale_y: pixels -> cells (1/stride, or the original's W/w_img and H/h_img).
        box_range: ``inclusive`` (floor(x1')..ceil(x2'), the original's) or ``exact``
            (floor(x1')..ceil(x2') − 1, at least one cell).
    Returns:
        int64 Tensor[N, 4]: (col_min, row_min, col_max, row_max), not clipped to the map.
    """
    scale = boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
    mapped = boxes * scale
    low = mapped[:, :2].floor()
    high = mapped[:, 2:].ceil()
    if box_range == "exact":
        high = torch.maximum(high - 1, low)
    return torch.cat([low, high], dim=1).long()


def focal_masks(
    boxes_per_image: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]], stride: int, valid: Tensor, *,
    faithful_box_scaling: bool = False, faithful_padding: bool = False, box_range: str = "inclusive",
) -> tuple[Tensor, Tensor]:
    """FGD's foreground and background masks of one level.

    Args:
        boxes_per_image: per image float Tensor[N_b, 4], xyxy pixels of the resized image.
        image_sizes: (h, w) of each un-padded image.
        stride: the level's stride in pixels.
        valid: bool Tensor[B, H, W], False on padding.
        faithful_box_scaling, faithful_padding, box_range: see the module docstring.
    Returns:
        (fg, bg), float Tensor[B, H, W] each. fg = max over the boxes covering a cell of
        1/(rows·cols of the box's cell range, counted before clipping to the map, as the
        original does); bg = 1/N_bg on the N_bg cells with fg = 0 (an image without boxes:
        1/(H·W) everywhere); without ``faithful_padding`` padded cells are 0 in both and N_bg
        counts valid cells only.
    """
    batch, height, width = valid.shape
    fg = torch.zeros(valid.shape, device=valid.device)
    rows = torch.arange(height, device=valid.device)[None, :, None]
    cols = torch.arange(width, device=valid.device)[None, None, :]
    for i, boxes in enumerate(boxes_per_image):
        if boxes.numel() == 0:
            continue
        img_h, img_w = image_sizes[i]
        scale_x, scale_y = (width / img_w, height / img_h) if faithful_box_scaling else (1 / stride, 1 / stride)
        x0, y0, x1, y1 = box_cells(boxes.float(), scale_x, scale_y, box_range).to(valid.device).T[:, :, None, None]
        area = 1.0 / ((y1 - y0 + 1) * (x1 - x0 + 1)).float()  # [N, 1, 1]
        inside = (rows >= y0) & (rows <= y1) & (cols >= x0) & (cols <= x1)  # [N, H, W]
        fg[i] = (inside * area).amax(dim=0)
    region = torch.ones_like(valid) if faithful_padding else valid
    fg = fg * region
    background = (fg == 0) & region
    bg = background.float() / background.sum(dim=(1, 2), keepdim=True).clamp_min(1)
    return fg, bg


def attention_maps(feat: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """FGD's spatial and channel attention over the whole (padded) map.

    Args:
        feat: float Tensor[B, C, H, W].
        temperature: T.
    Returns:
        spatial float Tensor[B, H, W] = H·W·softmax over the H·W cells of mean_c |F| / T;
        channel float Tensor[B, C] = C·softmax over channels of mean_{h,w} |F| / T.
    """
    batch, channels, height, width = feat.shape
    value = feat.abs()
    spatial = (value.mean(dim=1) / temperature).flatten(1).softmax(dim=1).view(batch, height, width)
    channel = (value.mean(dim=(2, 3)) / temperature).softmax(dim=1)
    return height * width * spatial, channels * channel


def focal_feature_losses(
    teacher: Tensor, student: Tensor, fg: Tensor, bg: Tensor, spatial: Tensor, channel: Tensor,
) -> tuple[Tensor, Tensor]:
    """The unweighted fg and bg terms: Σ mask·A^S·A^C·(s' − t)² / B.

    Args:
        teacher: float Tensor[B, C, H, W] (no gradient).
        student: the aligned student map, same shape.
        fg, bg: float Tensor[B, H, W] (:func:`focal_masks`).
        spatial, channel: the teacher's attention, float Tensor[B, H, W] and [B, C].
    Returns:
        (fg, bg) scalar tensors.
    """
    per_cell = ((student - teacher).pow(2) * channel[:, :, None, None]).sum(dim=1) * spatial  # [B, H, W]
    batch = teacher.shape[0]
    return (per_cell * fg).sum() / batch, (per_cell * bg).sum() / batch


def attention_loss(
    spatial_teacher: Tensor, channel_teacher: Tensor, spatial_student: Tensor, channel_student: Tensor,
) -> Tensor:
    """The unweighted attention term (Σ|A^C_s − A^C_t| + Σ|A^S_s − A^S_t|) / B on maps float
    Tensor[B, H, W] (spatial) and [B, C] (channel): a scalar tensor."""
    batch = spatial_teacher.shape[0]
    channel = (channel_student - channel_teacher).abs().sum()
    spatial = (spatial_student - spatial_teacher).abs().sum()
    return (channel + spatial) / batch


class GlobalContextBlock(nn.Module):
    """The GcBlock of FGD's global term:
    R(F) = F + W_v2(ReLU(LN(W_v1(Σ_j softmax_j(W_k F)·F_j)))).

    W_k: 1x1 conv C -> 1 (kaiming-normal, fan-in, bias 0); W_v1: 1x1 C -> C/2 (PyTorch's init);
    LN over [C/2, 1, 1]; W_v2: 1x1 C/2 -> C with weight and bias 0, so R(F) = F at init. The
    hidden width is at least 1 (the original's C/2 is 0 for C = 1).

    x float Tensor[B, C, H, W] -> float Tensor[B, C, H, W].
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(1, channels // 2)
        self.context_logits = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1), nn.LayerNorm([hidden, 1, 1]), nn.ReLU(),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.context_logits.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.context_logits.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def context(self, x: Tensor) -> Tensor:
        """Σ_j softmax_j(W_k x)·x_j: float Tensor[B, C, H, W] -> float Tensor[B, C, 1, 1]."""
        batch, channels = x.shape[:2]
        weights = self.context_logits(x).flatten(2).softmax(dim=2)  # [B, 1, HW]
        return (x.flatten(2) @ weights.transpose(1, 2)).view(batch, channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.transform(self.context(x))


def global_loss(teacher: Tensor, student: Tensor, teacher_block: GlobalContextBlock,
                student_block: GlobalContextBlock) -> Tensor:
    """The unweighted global term Σ (R_s(s') − R_t(t))² / B over the whole map: teacher and
    aligned student float Tensor[B, C, H, W]; a scalar tensor."""
    return (student_block(student) - teacher_block(teacher)).pow(2).sum() / teacher.shape[0]


class FGDLevel(nn.Module):
    """The trainable parts of one level: ``align`` (1x1 conv C_s -> C_t with bias, PyTorch's
    init, identity when the widths match) and the two GcBlocks on C_t channels."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.align = (nn.Identity() if student_channels == teacher_channels
                      else nn.Conv2d(student_channels, teacher_channels, kernel_size=1))
        self.student_global = GlobalContextBlock(teacher_channels)
        self.teacher_global = GlobalContextBlock(teacher_channels)


TERMS = ("fg", "bg", "att", "global")


class FGD(DistillMethod):
    """``distill.method: fgd``.

    Args:
        levels: the level names it distils (a subset of the distiller's, finest first).
        student_channels, teacher_channels: C_s and C_t.
        weights: α, β, γ, λ and T (:class:`FGDWeights`).
        weight_scale: ``distill.weight_scale``, multiplies every term.
        faithful_box_scaling, faithful_padding, box_range: see the module docstring.

    Its parts are trained by the student's SGD, as the original's are.
    """

    name = NAME

    def __init__(
        self, *, levels: Sequence[str], student_channels: int, teacher_channels: int, weights: FGDWeights,
        weight_scale: float = 1.0, faithful_box_scaling: bool = False, faithful_padding: bool = False,
        box_range: str = "inclusive",
    ) -> None:
        super().__init__(MethodOptim(kind=STUDENT_SGD))
        if box_range not in BOX_RANGES:
            raise ValueError(f"box_range must be one of {BOX_RANGES}, got {box_range!r}")
        self.levels = tuple(levels)
        self.weights = weights
        self.weight_scale = weight_scale
        self.faithful_box_scaling = faithful_box_scaling
        self.faithful_padding = faithful_padding
        self.box_range = box_range
        self.parts = nn.ModuleList(FGDLevel(student_channels, teacher_channels) for _ in self.levels)

    def level_terms(self, parts: FGDLevel, teacher: Tensor, student: Tensor, valid: Tensor, stride: int,
                    boxes: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
        """The unweighted terms of one level (teacher float[B, C_t, H, W], student float[B, C_s,
        H, W], valid bool[B, H, W], boxes per image float[N_b, 4] xyxy pixels)."""
        # The sums run over C·H·W cells (millions at P2): keep them in float32 under autocast.
        teacher = teacher.detach().float()
        aligned = parts.align(student).float()
        spatial_t, channel_t = attention_maps(teacher, self.weights.temperature)
        spatial_s, channel_s = attention_maps(aligned, self.weights.temperature)
        fg_mask, bg_mask = focal_masks(
            boxes, image_sizes, stride, valid, faithful_box_scaling=self.faithful_box_scaling,
            faithful_padding=self.faithful_padding, box_range=self.box_range)
        fg, bg = focal_feature_losses(teacher, aligned, fg_mask, bg_mask, spatial_t, channel_t)
        return {
            "fg": fg, "bg": bg,
            "att": attention_loss(spatial_t, channel_t, spatial_s, channel_s),
            "global": global_loss(teacher, aligned, parts.teacher_global, parts.student_global),
        }

    def forward(self, inputs: DistillInputs) -> dict[str, Tensor]:
        """{"distill/fgd/fg", "distill/fgd/bg", "distill/fgd/att", "distill/fgd/global"}, weighted
        and summed over levels; {} without student features (nothing of FGD's runs without them)."""
        if not inputs.has_student:
            return {}
        boxes = [target["boxes"] for target in inputs.targets]
        totals: dict[str, Tensor | float] = dict.fromkeys(TERMS, 0.0)
        for parts, name in zip(self.parts, self.levels):
            i = inputs.levels.index(name)
            terms = self.level_terms(parts, inputs.teacher_levels[i], inputs.student_levels[i],
                                     inputs.valid_masks[i], inputs.strides[i], boxes, inputs.image_sizes)
            for term, value in terms.items():
                totals[term] = totals[term] + value
        w = self.weights
        weight = {"fg": w.fg_weight, "bg": w.bg_weight, "att": w.attention_weight, "global": w.global_weight}
        return {f"distill/{NAME}/{term}": self.weight_scale * weight[term] * totals[term] for term in TERMS}


def default_levels(levels: Sequence[str], kind: str) -> tuple[str, ...]:
    """The original's levels among the distiller's: all of them on one-stage detectors, all but
    p6 on two-stage ones (P2–P5); the distiller's when that leaves none (C4 / DC5's one map)."""
    if kind != TWO_STAGE:
        return tuple(levels)
    return tuple(n for n in levels if n != TWO_STAGE_SKIPPED_LEVEL) or tuple(levels)


def build_fgd(section: FGDConfig, ctx: MethodContext) -> FGD:
    """FGD from ``distill.fgd`` and the detectors: the student family's official weights (or the
    section's) on ``distill.levels``, or when null the original's levels (:func:`default_levels`)."""
    family = ctx.student.family
    levels = ctx.levels if ctx.levels_configured else default_levels(ctx.levels, family_kind(family))
    return FGD(
        levels=levels, student_channels=ctx.student.out_channels, teacher_channels=ctx.teacher.out_channels,
        weights=section.weights(family), weight_scale=ctx.weight_scale,
        faithful_box_scaling=section.faithful_box_scaling, faithful_padding=section.faithful_padding,
        box_range=section.box_range,
    )


SPEC = register_method(MethodSpec(
    name=NAME, section=FGDConfig, build=build_fgd, needs=NEEDS, native=NATIVE_FAMILIES, paper=PAPER,
))
