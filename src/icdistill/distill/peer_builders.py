"""Builders ``(cfg.distill, MethodContext) -> DistillMethod`` of FitNet, Li et al. 2017
(``mimic``), FGFI and Chen et al. 2017: each reads its own ``distill.<method>`` section plus the
shared ``loss_weight`` (null: the method's default) and checks the family (METHODS_SPEC §10).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icdistill.config import DistillConfig
from icdistill.detectors.families import FAMILY_TABLE, family_facts
from icdistill.detectors.taps import LastStageTap
from icdistill.distill.chen2017 import Chen2017
from icdistill.distill.fgfi import DEFAULT_WEIGHT as FGFI_WEIGHTS
from icdistill.distill.fgfi import FGFI
from icdistill.distill.fitnet import FitNet
from icdistill.distill.method import STUDENT_SGD, MethodOptim
from icdistill.distill.mimic import TWO_STAGE_POOL_LEVELS, Mimic
from icdistill.distill.peer_parts import ADAPT, NATIVE, check_adapter, check_family, check_same_kind
from icdistill.errors import ConfigError

if TYPE_CHECKING:
    from icdistill.distill.build import MethodContext

# METHODS_SPEC §10: where each method is defined; [ADAPT] = this project's adaptation.
FAMILY_SUPPORT: dict[str, dict[str, str]] = {
    # FitNet needs only the feature maps: every family of the family table.
    "fitnet": {name: NATIVE for name in FAMILY_TABLE},
    "mimic": {"faster_rcnn": NATIVE, "mask_rcnn": NATIVE, "retinanet": ADAPT, "fcos": ADAPT},
    "fgfi": {"retinanet": NATIVE, "faster_rcnn": NATIVE, "mask_rcnn": NATIVE, "fcos": ADAPT},
    "chen2017": {"faster_rcnn": NATIVE, "mask_rcnn": NATIVE, "retinanet": ADAPT, "fcos": ADAPT},
}
TWO_STAGE = {name: facts.two_stage for name, facts in FAMILY_TABLE.items()}
STUDENT_OPTIM = MethodOptim(kind=STUDENT_SGD)


def _weight(dcfg: DistillConfig, default: float) -> float:
    return dcfg.loss_weight if dcfg.loss_weight is not None else default


def build_fitnet(dcfg: DistillConfig, ctx: "MethodContext") -> FitNet:
    """FitNet full-map imitation (``distill.fitnet``; weight default 1)."""
    cfg = dcfg.fitnet
    check_family("fitnet", ctx.student.family, FAMILY_SUPPORT["fitnet"])
    check_adapter("fitnet", cfg.adapter, ctx.student.out_channels, ctx.teacher.out_channels)
    optim = STUDENT_OPTIM if cfg.adapter_optim == STUDENT_SGD else MethodOptim(
        lr=dcfg.lr, weight_decay=dcfg.weight_decay, clip_norm=dcfg.grad_clip_norm)
    return FitNet(
        student_channels=ctx.student.out_channels, teacher_channels=ctx.teacher.out_channels,
        num_levels=len(ctx.levels), adapter=cfg.adapter, adapter_init=cfg.adapter_init,
        normalize=cfg.normalize, loss_weight=_weight(dcfg, 1.0), optim=optim,
    )


def build_mimic(dcfg: DistillConfig, ctx: "MethodContext") -> Mimic:
    """Li et al. 2017 (``distill.mimic``; weight default 1). Faster R-CNN pools p2–p5."""
    cfg = dcfg.mimic
    family = ctx.student.family
    check_family("mimic", family, FAMILY_SUPPORT["mimic"])
    if cfg.regions == "proposals":
        check_same_kind("mimic", ctx.teacher.family, family, TWO_STAGE)
    two_stage = family_facts(family).two_stage
    pool = tuple(n for n in ctx.levels if n in TWO_STAGE_POOL_LEVELS) if two_stage else ctx.levels
    return Mimic(
        two_stage=two_stage, student_channels=ctx.student.out_channels, teacher_channels=ctx.teacher.out_channels,
        regions=cfg.regions, proposal_source=cfg.proposal_source, max_proposals=cfg.max_proposals,
        pre_nms_top_n=cfg.pre_nms_top_n, nms_thresh=cfg.nms_thresh, pool_levels=pool or ctx.levels,
        loss_weight=_weight(dcfg, 1.0), optim=STUDENT_OPTIM,
    )


def build_fgfi(dcfg: DistillConfig, ctx: "MethodContext") -> FGFI:
    """FGFI (``distill.fgfi``; weight default 3 with ``norm: defeat``, 0.01 with ``paper``)."""
    cfg = dcfg.fgfi
    how = check_family("fgfi", ctx.student.family, FAMILY_SUPPORT["fgfi"])
    return FGFI(
        student_channels=ctx.student.out_channels, teacher_channels=ctx.teacher.out_channels,
        num_levels=len(ctx.levels), virtual=how == ADAPT, psi=cfg.psi, level_mode=cfg.level_mode,
        norm=cfg.norm, adapter_init=cfg.adapter_init, adapter_relu=cfg.adapter_relu,
        loss_weight=_weight(dcfg, FGFI_WEIGHTS[cfg.norm]), optim=STUDENT_OPTIM,
    )


def build_chen2017(dcfg: DistillConfig, ctx: "MethodContext") -> Chen2017:
    """Chen et al. 2017 (``distill.chen2017``; weight default 1 on every KD term)."""
    cfg = dcfg.chen2017
    family = ctx.student.family
    check_family("chen2017", family, FAMILY_SUPPORT["chen2017"])
    check_same_kind("chen2017", ctx.teacher.family, family, TWO_STAGE)
    if not TWO_STAGE[family] and ctx.teacher.family != family:
        raise ConfigError(
            f"distill.method 'chen2017' on one-stage detectors compares the heads anchor by anchor: the "
            f"teacher must be a {family} too, got {ctx.teacher.family}"
        )
    taps = (LastStageTap(ctx.teacher), LastStageTap(ctx.student)) if cfg.hint_layer == "c5" else None
    widths = (taps[1].channels, taps[0].channels) if taps else (ctx.student.out_channels, ctx.teacher.out_channels)
    return Chen2017(
        two_stage=family_facts(family).two_stage, student_channels=widths[0], teacher_channels=widths[1],
        num_levels=1 if taps else len(ctx.levels), taps=taps, mu=cfg.mu,
        temperature=cfg.temperature, margin=cfg.margin, nu=cfg.nu, hint_weight=cfg.hint_weight,
        bg_weight=cfg.bg_weight, loss_weight=_weight(dcfg, 1.0), optim=STUDENT_OPTIM,
    )
