"""Builders ``(cfg.distill, MethodContext) -> DistillMethod`` of the three 2021 methods: Zhang &
Ma (``fbkd``), GID (``gid``) and DeFeat (``defeat``). Each reads its own ``distill.<method>``
section plus the shared ``loss_weight`` (null: 1, a multiplier of the method's default term
weights) and checks the families (METHODS_SPEC §10).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from icdistill.config import DistillConfig
from icdistill.detectors.families import family_facts
from icdistill.distill.defeat import DeFeat
from icdistill.distill.fbkd import COLUMNS, FBKD
from icdistill.distill.gid import GID
from icdistill.distill.peer_parts import NATIVE, check_family
from icdistill.errors import ConfigError

if TYPE_CHECKING:
    from icdistill.distill.build import MethodContext

PAPER = "paper [2nd]"
PAPER_RPN = "paper [2nd] / [ADAPT] (GISM on the RPN)"
NECK_ONLY = "neck only"
# METHODS_SPEC §10: where each method is defined.
FAMILY_SUPPORT: dict[str, dict[str, str]] = {
    "fbkd": {"faster_rcnn": NATIVE, "mask_rcnn": NATIVE, "retinanet": NATIVE, "fcos": NATIVE},
    "gid": {"retinanet": NATIVE, "fcos": PAPER, "faster_rcnn": PAPER_RPN, "mask_rcnn": PAPER_RPN},
    "defeat": {"faster_rcnn": NATIVE, "mask_rcnn": NATIVE, "retinanet": NECK_ONLY, "fcos": NECK_ONLY},
}
# torchvision's RoI pooler and MMRazor's FBKD use p2-p5 of the two-stage pyramid (its p6 is a
# max-pool of p5).
TWO_STAGE_LEVELS = ("p2", "p3", "p4", "p5")


def _scale(dcfg: DistillConfig) -> float:
    return dcfg.loss_weight if dcfg.loss_weight is not None else 1.0


def _levels(dcfg: DistillConfig, ctx: "MethodContext", two_stage: bool) -> tuple[str, ...]:
    """``distill.levels`` if given, else p2–p5 on two-stage detectors and every level otherwise."""
    if dcfg.levels or not two_stage:
        return ctx.levels
    return tuple(n for n in ctx.levels if n in TWO_STAGE_LEVELS) or ctx.levels


def build_fbkd(dcfg: DistillConfig, ctx: "MethodContext") -> FBKD:
    """Zhang & Ma (``distill.fbkd``): the one-stage column for RetinaNet/FCOS, the two-stage
    column (p2–p5) for Faster/Mask R-CNN; every null takes the column's value."""
    cfg = dcfg.fbkd
    check_family("fbkd", ctx.student.family, FAMILY_SUPPORT["fbkd"])
    two_stage = family_facts(ctx.student.family).two_stage
    column = COLUMNS["two" if two_stage else "one"]
    overrides = {k: getattr(cfg, k) for k in ("temperature", "channel_temperature", "channel_mask",
                                              "am_weight", "at_weight", "nld_weight") if getattr(cfg, k) is not None}
    return FBKD(
        levels=_levels(dcfg, ctx, two_stage), student_channels=ctx.student.out_channels,
        teacher_channels=ctx.teacher.out_channels, column=replace(column, **overrides), scale=_scale(dcfg),
        faithful_padding=cfg.faithful_padding,
    )


def build_gid(dcfg: DistillConfig, ctx: "MethodContext") -> GID:
    """GID (``distill.gid``). GISM compares both detectors anchor by anchor: the teacher is of
    the student's family (either two-stage family with a two-stage student)."""
    cfg = dcfg.gid
    family = ctx.student.family
    check_family("gid", family, FAMILY_SUPPORT["gid"])
    two_stage = family_facts(family).two_stage
    same = ctx.teacher.family == family or (two_stage and family_facts(ctx.teacher.family).two_stage)
    if not same:
        raise ConfigError(
            f"distill.method 'gid' compares the teacher's and the student's scores anchor by anchor: the teacher "
            f"must be a {family} too (or any two-stage family for a two-stage student), got {ctx.teacher.family}"
        )
    if not cfg.adapter and ctx.student.out_channels != ctx.teacher.out_channels:
        raise ConfigError(
            f"config key 'distill.gid.adapter' is false but the student's FPN has {ctx.student.out_channels} "
            f"channels and the teacher's {ctx.teacher.out_channels}; valid choices here: true"
        )
    return GID(family=family, levels=_levels(dcfg, ctx, two_stage), student_channels=ctx.student.out_channels,
               teacher_channels=ctx.teacher.out_channels, settings=cfg, scale=_scale(dcfg))


def build_defeat(dcfg: DistillConfig, ctx: "MethodContext") -> DeFeat:
    """DeFeat (``distill.defeat``): the neck on every distilled level; ``roi_cls`` needs a
    two-stage student and teacher."""
    cfg = dcfg.defeat
    check_family("defeat", ctx.student.family, FAMILY_SUPPORT["defeat"])
    if cfg.roi_cls:
        two = [name for name, how in FAMILY_SUPPORT["defeat"].items() if how == NATIVE]
        kinds = {ctx.student.family, ctx.teacher.family}
        if not all(family_facts(f).two_stage for f in kinds):
            raise ConfigError(
                f"config key 'distill.defeat.roi_cls' is true, but the RoI classification term needs a two-stage "
                f"student and teacher ({', '.join(two)}); got student {ctx.student.family}, teacher "
                f"{ctx.teacher.family} ({', '.join(f for f in FAMILY_SUPPORT['defeat'] if f not in two)}: neck only)"
            )
    return DeFeat(levels=ctx.levels, student_channels=ctx.student.out_channels,
                  teacher_channels=ctx.teacher.out_channels, settings=cfg, scale=_scale(dcfg))
