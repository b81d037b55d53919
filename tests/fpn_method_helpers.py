"""Shared pieces of the CWD / PKD / MGD tests: one real Distiller step of a method built by its
own builder from its own config section, on tiny detectors of any family."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from distill_helpers import PRIOR, SIZES, targets_for, tiny
from icdistill.detectors import freeze_as_teacher
from icdistill.detectors.families import family_facts
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.distiller import Distiller


def direct_step(build, section, family: str, *, teacher_family: str | None = None, teacher_width: int = 64,
                student_width: int = 32, weight_scale: float = 1.0):
    """One forward/backward of ``build(section, ctx)`` between a tiny ``teacher_family`` teacher
    (default: ``family``) and a tiny ``family`` student. Returns (losses, distiller, teacher)."""
    torch.manual_seed(0)
    teacher = freeze_as_teacher(tiny(teacher_family or family, teacher_width))
    student = tiny(family, student_width)
    levels = tuple(student.level_names)
    strides = tuple(student.strides)
    ctx = MethodContext(teacher, student, PRIOR, levels, strides, weight_scale=weight_scale)
    distiller = Distiller(student, build(section, ctx), levels=levels, strides=strides).train()
    images = torch.randn(2, 3, 64, 96)
    # Families that predict masks train on box-filling instance masks.
    targets = targets_for("mask_rcnn" if family_facts(family).masks else family)
    losses = distiller(images, SIZES, targets, teacher=teacher, iteration=100)
    sum(losses.values()).backward()
    return losses, distiller, teacher


def assert_teacher_gets_no_gradient(distiller, teacher, method_losses) -> None:
    """The method's losses are finite and reach the student's backbone, never the teacher."""
    for name, value in method_losses.items():
        assert torch.isfinite(value), name
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in distiller.parameters()}
    # The distilled maps come out of the backbone (its FPN, or C4 / DC5's last stage).
    backbone = [p for n, p in distiller.student.named_parameters() if "backbone" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone)


def fake_context(family: str, student_channels: int, teacher_channels: int, levels, *, weight_scale: float = 1.0,
                 levels_configured: bool = False) -> SimpleNamespace:
    """What a builder reads from a MethodContext, without detectors: the student's family and
    both widths."""
    return SimpleNamespace(student=SimpleNamespace(family=family, out_channels=student_channels),
                           teacher=SimpleNamespace(out_channels=teacher_channels), levels=tuple(levels),
                           weight_scale=weight_scale, levels_configured=levels_configured)
