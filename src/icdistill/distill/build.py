"""From ``cfg.distill`` and the two detectors to the trainable whole (student + one method).

``METHODS`` is a plain dict from ``distill.method`` names to builders; ``none`` means plain
training. A builder takes the distill section and a :class:`MethodContext` and returns a
:class:`~icdistill.distill.method.DistillMethod`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from icdistill.config import DistillConfig
from icdistill.data.prior import DatasetPrior
from icdistill.detectors.base import DetectorAdapter
from icdistill.detectors.families import family_facts
from icdistill.detectors.weights import FrozenTeacher
from icdistill.distill.builders_2021 import build_defeat, build_fbkd, build_gid
from icdistill.distill.distiller import Distiller, check_alignment
from icdistill.distill.icd import ICDModule
from icdistill.distill.inherit import InheritReport, inherit_weights
from icdistill.distill.method import DistillMethod, MethodOptim
from icdistill.distill.peer_builders import build_chen2017, build_fgfi, build_fitnet, build_mimic
from icdistill.distill.sampling import PriorTensors
from icdistill.errors import ConfigError

NO_METHOD = "none"
# What `icdistill distill` runs when the config leaves distill.method at none.
DEFAULT_METHOD = "icd"
# distill.warmup_iters when null: ICD_SPEC §7 (the release's BYPASS_DISTILL = 1000); FGFI's
# 400 iterations at batch 1 ~ 25 at batch 16 (METHODS_SPEC §4); the other originals have none.
METHOD_WARMUP_ITERS = {"icd": 1000, "fgfi": 25}


def warmup_iters(dcfg: DistillConfig) -> int:
    """``distill.warmup_iters``, or the method's default when it is null."""
    return dcfg.warmup_iters if dcfg.warmup_iters is not None else METHOD_WARMUP_ITERS.get(dcfg.method, 0)


@dataclass(frozen=True)
class MethodContext:
    """What a method builder may read besides ``cfg.distill``: the detectors (checked to align
    at ``levels``), the training set's prior and the class count."""

    teacher: FrozenTeacher
    student: DetectorAdapter
    prior: DatasetPrior
    levels: tuple[str, ...]
    strides: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return self.student.num_classes


def prior_tensors(prior: DatasetPrior) -> PriorTensors:
    """The dataset prior as float32 tensors of shape [C] each."""
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    return PriorTensors(t(prior.freq), t(prior.w_mean), t(prior.w_std), t(prior.h_mean), t(prior.h_std))


def build_icd(dcfg: DistillConfig, ctx: MethodContext) -> ICDModule:
    """ICD (ICD_SPEC): λ and the instance cap default to the student family's (family table)."""
    facts = family_facts(ctx.student.family)
    return ICDModule(
        num_classes=ctx.num_classes,
        teacher_channels=ctx.teacher.out_channels,
        student_channels=ctx.student.out_channels,
        prior=prior_tensors(ctx.prior),
        hidden_dim=dcfg.hidden_dim,
        num_heads=dcfg.num_heads,
        num_layers=dcfg.num_layers,
        fake_ratio=dcfg.fake_ratio,
        max_instances=dcfg.max_instances or facts.max_instances,
        jitter=dcfg.jitter,
        loss_weight=dcfg.loss_weight if dcfg.loss_weight is not None else facts.distill_loss_weight,
        optim=MethodOptim(lr=dcfg.lr, weight_decay=dcfg.weight_decay, clip_norm=dcfg.grad_clip_norm,
                          stage_lr=dcfg.decoder_warmup_lr),
        method_only_iters=dcfg.decoder_warmup_iters,
        position_prior=dcfg.position_prior,
        position_scale=dcfg.position_scale,
        diagnostic_images=dcfg.diagnostic_images,
        ablation_weights=dcfg.ablation_weights,
    )


METHODS: dict[str, Callable[[DistillConfig, MethodContext], DistillMethod]] = {
    "icd": build_icd,
    "fitnet": build_fitnet,
    "mimic": build_mimic,
    "fgfi": build_fgfi,
    "chen2017": build_chen2017,
    "fbkd": build_fbkd,
    "gid": build_gid,
    "defeat": build_defeat,
}


def build_method(dcfg: DistillConfig, ctx: MethodContext) -> DistillMethod:
    """The method ``dcfg.method`` names; ConfigError listing the valid names otherwise."""
    if dcfg.method not in METHODS:
        raise ConfigError(
            f"config key 'distill.method' is {dcfg.method!r}; valid choices: {', '.join((*METHODS, NO_METHOD))}"
        )
    return METHODS[dcfg.method](dcfg, ctx)


def build_distiller(
    dcfg: DistillConfig,
    student: DetectorAdapter,
    teacher: FrozenTeacher | None,
    *,
    prior: DatasetPrior,
    fresh_start: bool = True,
) -> tuple[Distiller, InheritReport | None]:
    """Student + the configured method, checked against the teacher; at a fresh start with
    ``distill.inherit`` the student first inherits the teacher's neck and heads (ICD_SPEC §8)."""
    if dcfg.method == NO_METHOD:
        return Distiller(student), None
    if teacher is None:
        raise ConfigError(f"distill.method {dcfg.method!r} needs a teacher (the 'teacher' section)")
    levels = tuple(dcfg.levels or student.level_names)
    strides = tuple(check_alignment(teacher, student, levels))
    report = inherit_weights(teacher, student) if dcfg.inherit and fresh_start else None
    method = build_method(dcfg, MethodContext(teacher, student, prior, levels, strides))
    return Distiller(student, method, levels=levels, strides=strides, warmup_iters=warmup_iters(dcfg)), report
