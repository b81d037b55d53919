"""Parts the comparison methods share: feature adapters with the originals' inits, the checks
their builders make, the levels RoI pooling reads, and the mmdet-era ground-truth-to-level
mapping. (A module whose name starts with ``_`` is not a method: the registry skips it.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor, nn

from icdistill.detectors.families import family_facts
from icdistill.errors import ConfigError

if TYPE_CHECKING:
    from icdistill.distill.core.context import MethodContext

ADAPTER_KINDS = ("1x1", "3x3", "none")
ADAPTER_INITS = ("default", "trunc1e-4")


def trunc_small_init_(conv: nn.Conv2d) -> None:
    """DeFeat's / FGFI-FPN's adapter init: weights N(0, 1) wrapped by fmod(2), times 1e-4; the
    bias keeps PyTorch's default (the DeFeat release, ggjy/DeFeat.pytorch)."""
    with torch.no_grad():
        conv.weight.normal_().fmod_(2).mul_(1e-4)


class LevelAdapters(nn.Module):
    """Maps each student level float[B, C_s, H, W] to C_t channels.

    Args:
        kind: ``1x1``, ``3x3`` (padding 1) or ``none`` (identity; needs C_s == C_t).
        student_channels, teacher_channels: C_s and C_t.
        num_levels: number of levels (one conv each unless ``shared``).
        shared: one conv for every level.
        init: ``default`` (PyTorch's) or ``trunc1e-4`` (:func:`trunc_small_init_`).
        relu: a ReLU after the conv (the original FGFI's VGG adapter).
    """

    def __init__(
        self, kind: str, student_channels: int, teacher_channels: int, num_levels: int, *,
        shared: bool = False, init: str = "default", relu: bool = False,
    ) -> None:
        super().__init__()
        if kind not in ADAPTER_KINDS or init not in ADAPTER_INITS:
            raise ValueError(f"adapter kind {kind!r} / init {init!r}; valid: {ADAPTER_KINDS} / {ADAPTER_INITS}")
        if kind == "none" and student_channels != teacher_channels:
            raise ValueError(f"adapter 'none' needs equal widths, got student {student_channels}, teacher {teacher_channels}")
        self.kind, self.shared, self.relu = kind, shared, relu
        convs = []
        if kind != "none":
            k = 1 if kind == "1x1" else 3
            for _ in range(1 if shared else num_levels):
                conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=k, padding=k // 2)
                if init == "trunc1e-4":
                    trunc_small_init_(conv)
                convs.append(conv)
        self.convs = nn.ModuleList(convs)

    def forward(self, levels: Sequence[Tensor]) -> list[Tensor]:
        if self.kind == "none":
            return list(levels)
        out = [self.convs[0 if self.shared else i](x) for i, x in enumerate(levels)]
        return [torch.relu(x) for x in out] if self.relu else out

    def set_identity_(self) -> None:
        """Identity weights, zero bias (C_s == C_t, 1x1 or centre tap of 3x3): for checks."""
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.zero_()
                c, k = conv.weight.shape[0], conv.weight.shape[-1]
                conv.weight[torch.arange(c), torch.arange(c), k // 2, k // 2] = 1.0
                conv.bias.zero_()


def check_adapter(method: str, kind: str, student_channels: int, teacher_channels: int) -> None:
    """ConfigError for ``distill.<method>.adapter: none`` with different FPN widths."""
    if kind == "none" and student_channels != teacher_channels:
        raise ConfigError(
            f"config key 'distill.{method}.adapter' is 'none' but the student's FPN has {student_channels} "
            f"channels and the teacher's {teacher_channels}; valid choices here: 1x1, 3x3"
        )


def check_same_kind(method: str, teacher_family: str, student_family: str) -> None:
    """ConfigError unless teacher and student are both one-stage or both two-stage."""
    if family_facts(teacher_family).two_stage != family_facts(student_family).two_stage:
        raise ConfigError(
            f"distill.method {method!r} compares the heads of teacher and student, which must both be "
            f"one-stage or both two-stage; got teacher {teacher_family}, student {student_family}"
        )


# torchvision's RoI pooler (and MMRazor's FBKD) use p2-p5 of the two-stage pyramid: its p6 is
# a max-pool of p5 that only the RPN reads.
TWO_STAGE_POOL_LEVELS = ("p2", "p3", "p4", "p5")


def pooled_levels(ctx: "MethodContext", two_stage: bool) -> tuple[str, ...]:
    """``distill.levels`` if given, else p2–p5 on a two-stage pyramid (every level when it has
    none of them, as the single-map C4 / DC5 detectors) and every level otherwise."""
    if ctx.levels_configured or not two_stage:
        return ctx.levels
    return tuple(n for n in ctx.levels if n in TWO_STAGE_POOL_LEVELS) or ctx.levels


def anchors_are_points(anchors: Tensor) -> bool:
    """True when float[N, 4] xyxy anchors are zero-size points (FCOS-style heads' locations)."""
    return bool(anchors.numel()) and bool(((anchors[:, 2:] - anchors[:, :2]) == 0).all())


def gt_level_index(boxes: Tensor, num_levels: int) -> Tensor:
    """The mmdet-era peers' level of each box (DeFeat's and United-Perception's releases):
    k = floor(log2(sqrt((w+1)(h+1)) / 56) + 1e-6), clamped to [0, num_levels - 1], 0 = finest.

    Args: boxes float[M, 4] xyxy pixels. Returns int64[M]."""
    wh = (boxes[:, 2:] - boxes[:, :2] + 1).clamp_min(1e-6)
    scale = (wh[:, 0] * wh[:, 1]).sqrt()
    k = torch.floor(torch.log2(scale / 56) + 1e-6)
    return k.clamp(0, num_levels - 1).long()


def zero_loss(like: Sequence[Tensor]) -> Tensor:
    """A zero that keeps ``requires_grad`` (and the graph) of the first tensor in ``like``."""
    return like[0].sum() * 0.0


def level_hw(levels: Sequence[Tensor]) -> list[tuple[int, int]]:
    """(H_l, W_l) of each float[B, C, H_l, W_l] level."""
    return [(int(x.shape[-2]), int(x.shape[-1])) for x in levels]


def split_anchors(anchors: Tensor, level_shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """One image's anchors float[N, 4] (all levels, finest first, location-major) split into
    per-level float[H_l, W_l, A, 4]; A = N / sum(H_l W_l), the same at every level."""
    locations = sum(h * w for h, w in level_shapes)
    per_location = anchors.shape[0] // locations
    if per_location * locations != anchors.shape[0]:
        raise ValueError(f"{anchors.shape[0]} anchors do not split over levels {list(level_shapes)}")
    sizes = [h * w * per_location for h, w in level_shapes]
    return [a.view(h, w, per_location, 4) for a, (h, w) in zip(anchors.split(sizes), level_shapes)]
