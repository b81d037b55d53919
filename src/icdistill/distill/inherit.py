"""Inheriting strategy (the ICD paper's, docs/method.md "Inheriting"): start the student's neck and heads from the teacher's.

At a fresh start (never on resume), after the student's backbone got its ImageNet weights, every
tensor of the student's FPN and detection heads whose name *and* shape match a teacher tensor is
copied from the teacher. The backbone body is never touched. Mismatches (different FPN widths,
class counts, families) are reported, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..detectors.base import DetectorAdapter

# Parameter/buffer name prefixes (in ``adapter.model``) that make up the neck and the heads.
NECK_PREFIXES = ("backbone.fpn.",)
HEAD_PREFIXES = ("head.", "rpn.", "roi_heads.")
INHERITED_PREFIXES = NECK_PREFIXES + HEAD_PREFIXES


@dataclass
class InheritReport:
    """What :func:`inherit_weights` did.

    Attributes:
        copied: student tensor names (``adapter.model`` state-dict names) now equal to the teacher's.
        skipped: (name, reason) for neck/head tensors left as they were, e.g.
            ``("backbone.fpn.layer_blocks.0.0.weight", "shape (256,256,3,3) vs (128,128,3,3)")``
            (teacher vs student) or ``("head.x.weight", "not in teacher")``.
        unused: the teacher's neck/head tensors the student has no tensor of that name for
            (e.g. a Mask R-CNN teacher's ``roi_heads.mask_head.*`` for a Faster R-CNN student).
    """

    copied: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self, max_listed: int = 5) -> str:
        """One line, e.g. ``"copied 48 tensors, skipped 2: a (shape ...), b (not in teacher)"``."""
        text = f"copied {len(self.copied)} tensors, skipped {len(self.skipped)}"
        if self.skipped:
            listed = ", ".join(f"{name} ({reason})" for name, reason in self.skipped[:max_listed])
            more = f", ... and {len(self.skipped) - max_listed} more" if len(self.skipped) > max_listed else ""
            text += f": {listed}{more}"
        if self.unused:
            listed = ", ".join(self.unused[:max_listed])
            more = f", ... and {len(self.unused) - max_listed} more" if len(self.unused) > max_listed else ""
            text += f"; {len(self.unused)} teacher tensors have no student counterpart: {listed}{more}"
        return text


def _shape(t: Tensor) -> str:
    return "(" + ",".join(str(s) for s in t.shape) + ")"


@torch.no_grad()
def inherit_weights(teacher: DetectorAdapter, student: DetectorAdapter) -> InheritReport:
    """Copy the teacher's matching neck and head parameters and buffers into ``student`` in place.

    Only tensors under ``backbone.fpn.*`` (lateral, output and extra-level convs) and the heads
    (``head.*`` for RetinaNet/FCOS, ``rpn.*`` and ``roi_heads.*`` for Faster R-CNN) are considered,
    and only when the teacher has a tensor of the same name and shape; dtype and device follow the
    student. Works across families, widths and class counts: whatever does not match is skipped,
    and teacher tensors without a student counterpart are listed (``unused``). For Faster R-CNN C4
    the box head is res5 (``roi_heads.box_head.res5.*``), so it is inherited with the heads.

    Returns:
        An :class:`InheritReport` listing copied and skipped student tensor names.
    """
    teacher_state = teacher.model.state_dict()
    # state_dict() tensors share storage with the student's parameters and buffers, so copy_()
    # writes into the live model (and keeps optimiser references valid).
    student_state = student.model.state_dict(keep_vars=False)
    report = InheritReport()
    for name, target in student_state.items():
        if not name.startswith(INHERITED_PREFIXES):
            continue  # the backbone body and anything else stay the student's own
        source = teacher_state.get(name)
        if source is None:
            report.skipped.append((name, "not in teacher"))
        elif tuple(source.shape) != tuple(target.shape):
            report.skipped.append((name, f"shape {_shape(source)} vs {_shape(target)}"))
        else:
            target.copy_(source)
            report.copied.append(name)
    report.unused = [n for n in teacher_state if n.startswith(INHERITED_PREFIXES) and n not in student_state]
    return report
