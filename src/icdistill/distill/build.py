"""From ``cfg.distill`` and the two detectors to the trainable whole (student + one method).

The method comes from the registry (:mod:`icdistill.distill.core.registry`): its spec's
capability check runs first, then its builder gets its own section ``distill.<name>`` and a
:class:`~icdistill.distill.core.context.MethodContext`. ``none`` means plain training.
"""

from __future__ import annotations

from icdistill.config import DistillConfig
from icdistill.data.prior import DatasetPrior
from icdistill.detectors.base import DetectorAdapter
from icdistill.detectors.weights import FrozenTeacher
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.distiller import Distiller, check_alignment
from icdistill.distill.core.method import DistillMethod, MethodOptim
from icdistill.distill.core.registry import NO_METHOD, check_capability, method_spec
from icdistill.distill.inherit import InheritReport, inherit_weights
from icdistill.errors import ConfigError

__all__ = ["DEFAULT_METHOD", "NO_METHOD", "build_distiller", "build_method", "warmup_iters"]

# What `icdistill distill` runs when the config leaves distill.method at none.
DEFAULT_METHOD = "icd"


def warmup_iters(dcfg: DistillConfig) -> int:
    """``distill.warmup_iters``, or the method's default (its spec's) when it is null."""
    if dcfg.warmup_iters is not None:
        return dcfg.warmup_iters
    return 0 if dcfg.method == NO_METHOD else method_spec(dcfg.method).warmup_iters


def build_method(dcfg: DistillConfig, ctx: MethodContext) -> DistillMethod:
    """The method ``dcfg.method`` names, built from its own section ``distill.<name>`` once the
    detectors are checked to provide what it needs; ConfigError naming what is wrong otherwise."""
    spec = method_spec(dcfg.method)
    check_capability(spec, ctx.student, ctx.teacher)
    section = getattr(dcfg, spec.name, None)
    if section is None:  # a DistillConfig made without the registered sections
        section = spec.section()
    return spec.build(section, ctx)


def method_context(
    dcfg: DistillConfig, student: DetectorAdapter, teacher: FrozenTeacher, prior: DatasetPrior, seed: int = 0,
) -> MethodContext:
    """The :class:`MethodContext` of ``dcfg``: the distilled levels (``distill.levels`` or all
    the student's), checked to align between teacher and student; ``seed``: ``solver.seed``."""
    levels = tuple(dcfg.levels or student.level_names)
    strides = tuple(check_alignment(teacher, student, levels))
    own_optim = MethodOptim(lr=dcfg.lr, weight_decay=dcfg.weight_decay, clip_norm=dcfg.grad_clip_norm)
    return MethodContext(teacher, student, prior, levels, strides, weight_scale=dcfg.weight_scale,
                         levels_configured=bool(dcfg.levels), own_optim=own_optim, seed=seed)


def build_distiller(
    dcfg: DistillConfig,
    student: DetectorAdapter,
    teacher: FrozenTeacher | None,
    *,
    prior: DatasetPrior,
    fresh_start: bool = True,
    seed: int = 0,
) -> tuple[Distiller, InheritReport | None]:
    """Student + the configured method, checked against the teacher; at a fresh start with
    ``distill.inherit`` the student first inherits the teacher's neck and heads. ``seed``
    (``solver.seed``) reaches the method's builder in its :class:`MethodContext`."""
    if dcfg.method == NO_METHOD:
        return Distiller(student), None
    if teacher is None:
        raise ConfigError(f"distill.method {dcfg.method!r} needs a teacher (the 'teacher' section)")
    ctx = method_context(dcfg, student, teacher, prior, seed)
    report = inherit_weights(teacher, student) if dcfg.inherit and fresh_start else None
    method = build_method(dcfg, ctx)
    return Distiller(student, method, levels=ctx.levels, strides=ctx.strides, warmup_iters=warmup_iters(dcfg)), report
