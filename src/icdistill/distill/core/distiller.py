"""The student plus at most one distillation method as ONE trainable module returning a dict of
named losses.

The trainer only sums and logs what this returns, so plain training is the same loop with
``distill.method: none``. The frozen teacher lives outside (see
:func:`icdistill.detectors.freeze_as_teacher`) and is passed in, which keeps it out of DDP, the
optimisers and the checkpoint.
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from icdistill.detectors.base import DetectorAdapter
from icdistill.detectors.weights import FrozenTeacher
from icdistill.distill.core.inputs import DistillInputs
from icdistill.distill.core.method import DistillMethod
from icdistill.errors import ModelMismatchError


def describe_levels(detector: DetectorAdapter) -> str:
    """``"p3 (8), p4 (16), ..."``: a detector's level names with their strides."""
    return ", ".join(f"{n} ({s})" for n, s in zip(detector.level_names, detector.strides))


def check_alignment(teacher: DetectorAdapter, student: DetectorAdapter, levels: Sequence[str]) -> list[int]:
    """Raise ModelMismatchError unless both detectors produce ``levels`` at the same strides.

    Teacher and student may be of different families (FCOS -> RetinaNet, Mask R-CNN -> Faster
    R-CNN): what must agree are the distilled levels' names and strides. The error lists both
    detectors' levels with their strides. Returns the strides of ``levels``.
    """
    both = (f"teacher ({teacher.family}) levels: {describe_levels(teacher)}; "
            f"student ({student.family}) levels: {describe_levels(student)}")
    strides = []
    for name in levels:
        missing = [who for who, det in (("teacher", teacher), ("student", student)) if name not in det.level_names]
        if missing:
            raise ModelMismatchError(
                f"distill.levels names '{name}', which the {' and '.join(missing)} does not produce ({both}); "
                "distil levels both produce at the same strides (distill.levels), or pick a teacher whose levels align"
            )
        t_stride = teacher.strides[teacher.level_names.index(name)]
        s_stride = student.strides[student.level_names.index(name)]
        if t_stride != s_stride:
            raise ModelMismatchError(
                f"feature level '{name}' has stride {t_stride} in the teacher but {s_stride} in the student "
                f"({both}); distilled levels must align"
            )
        strides.append(t_stride)
    if teacher.num_classes != student.num_classes:
        raise ModelMismatchError(
            f"the teacher has {teacher.num_classes} classes but the student has {student.num_classes}; "
            "both must match the training data"
        )
    return strides


class Distiller(nn.Module):
    """The trainable whole: ``student`` (a DetectorAdapter) and ``method`` (a DistillMethod or None).

    Args:
        student: the detector being trained.
        method: the distillation method, or None for plain training.
        levels: names of the distilled feature levels (e.g. p3..p7).
        strides: their strides in pixels.
        warmup_iters: distillation warm-up; before it the student features reach the method
            detached, so the distillation loss trains only the method's parts (the ICD release's
            BYPASS_DISTILL).
    """

    def __init__(
        self,
        student: DetectorAdapter,
        method: DistillMethod | None = None,
        *,
        levels: Sequence[str] = (),
        strides: Sequence[int] = (),
        warmup_iters: int = 0,
    ) -> None:
        super().__init__()
        self.student = student
        self.method = method
        self.levels = tuple(levels)
        self.strides = tuple(strides)
        self.warmup_iters = warmup_iters

    @property
    def method_only_iters(self) -> int:
        """Iterations of the method-only stage that precedes the main one (0 without a method)."""
        return self.method.method_only_iters if self.method is not None else 0

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
        teacher: FrozenTeacher | None = None,
        iteration: int = 0,
        method_only: bool = False,
    ) -> dict[str, Tensor]:
        """Named losses: ``det/*`` (the student's) and the method's ``distill/<method>/*``.

        Args:
            images: float Tensor[B, 3, Hp, Wp], normalised and padded (the teacher sees the same).
            image_sizes: (h, w) of each unpadded image.
            targets: boxes xyxy pixels, contiguous labels.
            teacher: the frozen teacher (needed with a method).
            iteration: main-stage iteration, for the distillation warm-up.
            method_only: the method-only stage: the student is not run.
        """
        losses: dict[str, Tensor] = {}
        features, extras, det = None, {}, None
        if not method_only:
            features = self.student.features(images)
            wanted = self.method.requires if self.method is not None else ()
            det, extras = self.student.forward_train(images, image_sizes, features, targets, extras=wanted)
            losses.update({f"det/{name}": value for name, value in det.items()})
        if self.method is None:
            return losses
        if teacher is None:
            raise ValueError("distillation needs the teacher")
        inputs = DistillInputs(
            images=images, image_sizes=image_sizes, targets=targets, iteration=iteration,
            levels=self.levels, strides=self.strides, teacher=teacher,
            teacher_features=teacher.features(images), student=self.student, student_features=features,
            student_extras=extras, detach_student=iteration < self.warmup_iters,
            teacher_extra_names=tuple(self.method.requires), student_losses=det,
        )
        losses.update(self.method(inputs))
        return losses
