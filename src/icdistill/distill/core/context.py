"""What a method's builder is given besides its own config section."""

from __future__ import annotations

from dataclasses import dataclass

from icdistill.data.prior import DatasetPrior
from icdistill.detectors.base import DetectorAdapter
from icdistill.detectors.weights import FrozenTeacher
from icdistill.distill.core.method import MethodOptim


@dataclass(frozen=True)
class MethodContext:
    """Made by :func:`icdistill.distill.build.build_distiller` once the detectors are checked to
    align at ``levels``.

    Attributes:
        teacher: the frozen teacher adapter.
        student: the student adapter.
        prior: the training set's class / box-size prior.
        levels: the distilled level names, finest first (``distill.levels`` or all the student's).
        strides: the stride of each of ``levels`` in pixels.
        weight_scale: ``distill.weight_scale``: multiplies every distillation term of the method.
        levels_configured: ``distill.levels`` was given (a method with its own default levels
            keeps the user's choice).
        own_optim: the shared settings of a method that trains its own parts with its own AdamW
            (``distill.lr``, ``weight_decay``, ``grad_clip_norm``).
        seed: ``solver.seed``, for a method that draws random numbers from a generator of its
            own (the global one is the student's, e.g. a two-stage student's RoI sampling).
    """

    teacher: FrozenTeacher
    student: DetectorAdapter
    prior: DatasetPrior
    levels: tuple[str, ...]
    strides: tuple[int, ...]
    weight_scale: float = 1.0
    levels_configured: bool = False
    own_optim: MethodOptim = MethodOptim()
    seed: int = 0

    @property
    def num_classes(self) -> int:
        """C, the number of object classes (the student's)."""
        return self.student.num_classes
