"""What a distillation method reads in one training step: one lazily filled object.

Features at the distilled levels, image sizes, valid-token masks, targets and the iteration are
always there; the detectors' extras (:mod:`icdistill.detectors.extras`: anchors, dense head
outputs, RPN outputs, sampled RoIs, a box-head call, RoIAlign) are computed only when a method
reads them. The student's captured extras come from its one training forward; the teacher's are
computed on first use under ``inference_mode`` and cached for the step.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import cached_property
from typing import Any, Sequence

import torch
from torch import Tensor

from icdistill.detectors.base import DetectorAdapter
from icdistill.detectors.extras import roi_align
from icdistill.detectors.weights import FrozenTeacher

TEACHER, STUDENT = "teacher", "student"


def valid_token_mask(
    level_shapes: Sequence[tuple[int, int]], strides: Sequence[int], image_sizes: Sequence[tuple[int, int]], device
) -> list[Tensor]:
    """Per level a bool Tensor[B, H_l, W_l]: token (y, x) is valid iff y < ceil(h_b/stride) and
    x < ceil(w_b/stride)."""
    masks = []
    for (height, width), stride in zip(level_shapes, strides):
        rows = torch.arange(height, device=device)
        cols = torch.arange(width, device=device)
        per_image = [
            (rows[:, None] < math.ceil(h / stride)) & (cols[None, :] < math.ceil(w / stride))
            for h, w in image_sizes
        ]
        masks.append(torch.stack(per_image))
    return masks


class DistillInputs:
    """The inputs of :meth:`DistillMethod.forward` for one step.

    Args:
        images: float Tensor[B, 3, Hp, Wp], normalised and padded (teacher and student saw it).
        image_sizes: (h, w) of each unpadded image.
        targets: per image ``boxes`` float[N, 4] xyxy pixels of the resized image, ``labels``
            int64[N] contiguous 0..C-1.
        iteration: the main-stage iteration (0 during a method-only stage).
        levels, strides: the distilled level names and their strides.
        teacher, teacher_features: the frozen teacher and all its levels.
        student, student_features: the student and all its levels, or None in a method-only
            stage (the student is not run).
        student_extras: what the student's training forward captured (the method's ``requires``).
        detach_student: the distillation warm-up: student features reach the method detached.
        student_losses: the student's detection losses of this step (un-prefixed torchvision
            names, e.g. ``classification``, ``loss_objectness``), for methods that reweight a
            hard loss (Chen et al. 2017's mu); None in a method-only stage.
        teacher_extra_names: the teacher extras computed together on the first read of any
            (the method's ``requires``).
    """

    def __init__(
        self,
        *,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
        iteration: int,
        levels: Sequence[str],
        strides: Sequence[int],
        teacher: FrozenTeacher,
        teacher_features: "OrderedDict[str, Tensor]",
        student: DetectorAdapter,
        student_features: "OrderedDict[str, Tensor] | None",
        student_extras: dict[str, Any] | None = None,
        detach_student: bool = False,
        teacher_extra_names: Sequence[str] = (),
        student_losses: dict[str, Tensor] | None = None,
    ) -> None:
        self.images = images
        self.image_sizes = image_sizes
        self.targets = targets
        self.iteration = iteration
        self.levels = tuple(levels)
        self.strides = tuple(strides)
        self.teacher = teacher
        self.student = student
        self.all_teacher_features = teacher_features
        self.all_student_features = student_features
        self._student_extras = student_extras or {}
        self._teacher_extras: dict[str, Any] = {}
        self.detach_student = detach_student
        self.teacher_extra_names = tuple(teacher_extra_names)
        self.student_losses = student_losses

    @property
    def has_student(self) -> bool:
        """False in a method-only stage (no student features, no student extras)."""
        return self.all_student_features is not None

    @cached_property
    def teacher_levels(self) -> list[Tensor]:
        """The teacher's distilled levels, detached: float Tensor[B, C_t, H_l, W_l] each."""
        return [self.all_teacher_features[name].detach() for name in self.levels]

    @cached_property
    def student_levels(self) -> list[Tensor] | None:
        """The student's distilled levels, float Tensor[B, C_s, H_l, W_l] each (detached during
        the distillation warm-up), or None in a method-only stage."""
        if self.all_student_features is None:
            return None
        levels = [self.all_student_features[name] for name in self.levels]
        return [f.detach() for f in levels] if self.detach_student else levels

    @cached_property
    def valid_masks(self) -> list[Tensor]:
        """Per distilled level a bool Tensor[B, H_l, W_l], False on padding."""
        shapes = [(f.shape[-2], f.shape[-1]) for f in self.teacher_levels]
        return valid_token_mask(shapes, self.strides, self.image_sizes, self.images.device)

    def extra(self, role: str, name: str) -> Any:
        """The ``teacher``'s or ``student``'s extra ``name`` (see :mod:`icdistill.detectors.extras`).

        The student's must have been declared in the method's ``requires`` (it comes from the
        training forward); the teacher's is computed on first use."""
        if role == STUDENT:
            if not self.has_student:
                raise RuntimeError(f"the student's {name!r} extra does not exist in a method-only stage (the student is not run)")
            if name not in self._student_extras:
                raise KeyError(
                    f"the student's {name!r} extra was not captured: add it to the method's `requires` "
                    f"(captured: {', '.join(self._student_extras) or 'none'})"
                )
            return self._student_extras[name]
        if role != TEACHER:
            raise ValueError(f"role must be 'teacher' or 'student', got {role!r}")
        if name not in self._teacher_extras:
            # Everything the method declared comes from one teacher pass (the head or RPN runs once).
            names = {name} | (set(self.teacher_extra_names) & set(self.teacher.supported_extras))
            self._teacher_extras.update(self.teacher.extras(
                self.images, self.image_sizes, self.all_teacher_features, sorted(names), self.targets
            ))
        return self._teacher_extras[name]

    def box_head(self, role: str, boxes: list[Tensor]) -> tuple[Tensor, Tensor]:
        """A two-stage detector's box head on given per-image boxes (float [R_b, 4] xyxy):
        class_logits float[R, C+1], box_regression float[R, 4(C+1)]; the teacher's without
        gradient."""
        detector, features = self._detector(role)
        return detector.box_head(features, boxes, self.image_sizes)

    def roi_align(
        self, role: str, boxes: list[Tensor], *, levels: Sequence[str] | None = None,
        output_size: int = 7, sampling_ratio: int = 2,
    ) -> Tensor:
        """RoIAlign of per-image boxes from ``levels`` (default: the distilled ones), each box
        from its FPN level: float Tensor[sum R_b, C, output_size, output_size]."""
        _, features = self._detector(role)
        if role == STUDENT and self.detach_student:
            features = OrderedDict((k, v.detach()) for k, v in features.items())
        return roi_align(features, boxes, self.image_sizes, levels=levels or self.levels,
                         output_size=output_size, sampling_ratio=sampling_ratio)

    def _detector(self, role: str) -> tuple[DetectorAdapter, "OrderedDict[str, Tensor]"]:
        if role == TEACHER:
            return self.teacher, self.all_teacher_features
        if role != STUDENT:
            raise ValueError(f"role must be 'teacher' or 'student', got {role!r}")
        if self.all_student_features is None:
            raise RuntimeError("the student is not run in a method-only stage")
        return self.student, self.all_student_features
