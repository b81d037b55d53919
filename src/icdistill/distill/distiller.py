"""Student + ICD module as ONE trainable module that returns a dict of named losses.

The trainer only sums and logs what this returns, so plain training is the same loop with
``distill.method: none``. The frozen teacher lives outside (see
:func:`icdistill.detectors.freeze_as_teacher`); its features are passed in, which keeps it out of
DDP and out of the optimisers.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from torch import Tensor, nn

from icdistill.detectors.base import DetectorAdapter
from icdistill.distill.fitnet import FitNetModule
from icdistill.distill.icd import ICDModule
from icdistill.errors import ModelMismatchError


def check_alignment(teacher: DetectorAdapter, student: DetectorAdapter, levels: Sequence[str]) -> list[int]:
    """Raise ModelMismatchError unless both detectors produce ``levels`` at the same strides.

    Returns the strides of ``levels``.
    """
    strides = []
    for name in levels:
        missing = [who for who, det in (("teacher", teacher), ("student", student)) if name not in det.level_names]
        if missing:
            raise ModelMismatchError(
                f"distill.levels names '{name}', which the {' and '.join(missing)} does not produce "
                f"(teacher levels: {', '.join(teacher.level_names)}; student levels: {', '.join(student.level_names)})"
            )
        t_stride = teacher.strides[teacher.level_names.index(name)]
        s_stride = student.strides[student.level_names.index(name)]
        if t_stride != s_stride:
            raise ModelMismatchError(
                f"feature level '{name}' has stride {t_stride} in the teacher ({teacher.family}) but "
                f"{s_stride} in the student ({student.family}); distilled levels must align"
            )
        strides.append(t_stride)
    if teacher.num_classes != student.num_classes:
        raise ModelMismatchError(
            f"the teacher has {teacher.num_classes} classes but the student has {student.num_classes}; "
            "both must match the training data"
        )
    return strides


class Distiller(nn.Module):
    """The trainable whole: ``student`` (a DetectorAdapter) and, for ICD, ``icd`` (or, for the
    FitNet baseline, ``fitnet``).

    Args:
        student: the detector being trained.
        icd: the ICD module, or None for plain training.
        fitnet: a FitNet module instead of ``icd`` (full-map imitation baseline).
        levels: names of the distilled feature levels (e.g. p3..p7).
        strides: their strides in pixels.
        warmup_iters: distillation warm-up; before it the student tokens are detached, so the
            distillation loss trains only the adapter (§7).
    """

    def __init__(
        self,
        student: DetectorAdapter,
        icd: ICDModule | None = None,
        *,
        fitnet: FitNetModule | None = None,
        levels: Sequence[str] = (),
        strides: Sequence[int] = (),
        warmup_iters: int = 0,
    ) -> None:
        super().__init__()
        self.student = student
        if icd is not None and fitnet is not None:
            raise ValueError("a distiller has one distillation module: icd or fitnet")
        self.icd = icd
        self.fitnet = fitnet
        self.levels = tuple(levels)
        self.strides = tuple(strides)
        self.warmup_iters = warmup_iters

    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
        teacher_features: "OrderedDict[str, Tensor] | None" = None,
        iteration: int = 0,
        decoder_only: bool = False,
    ) -> dict[str, Tensor]:
        """Named losses: ``det/*`` (student), ``aux/*`` and ``distill/icd`` (ICD).

        Args:
            images: float Tensor[B, 3, Hp, Wp], normalised and padded (the teacher saw the same).
            image_sizes: (h, w) of each unpadded image.
            targets: boxes xyxy pixels, contiguous labels.
            teacher_features: the teacher's levels (needed when ``icd`` is set).
            iteration: main-stage iteration, for the distillation warm-up.
            decoder_only: the decoder warm-up stage: the student is not run, only aux losses.
        """
        losses: dict[str, Tensor] = {}
        student_levels = None
        if not decoder_only:
            features = self.student.features(images)
            for name, value in self.student.losses(images, image_sizes, features, targets).items():
                losses[f"det/{name}"] = value
            student_levels = [features[name] for name in self.levels]
            if iteration < self.warmup_iters:
                student_levels = [f.detach() for f in student_levels]
        module = self.distill_module
        if module is not None:
            if teacher_features is None:
                raise ValueError("distillation needs the teacher's features")
            teacher_levels = [teacher_features[name] for name in self.levels]
            losses.update(module(teacher_levels, student_levels, targets, image_sizes, self.strides))
        return losses

    @property
    def distill_module(self) -> nn.Module | None:
        """The trainable distillation module (ICD or FitNet), optimised with AdamW (§7)."""
        return self.icd if self.icd is not None else self.fitnet
