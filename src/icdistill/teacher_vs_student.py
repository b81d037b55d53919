"""Is the teacher weaker than its student, is a distilled student below its baseline? The
comparisons and their words, shared by a run (printout, ``metrics.json``), its ``report.html``,
``icdistill compare`` and the accuracy benchmark. No torch.

The teacher check (engine/teacher_check.py) stops a teacher below an AP floor; a teacher that
passes it can still be weaker than the student it is meant to teach (a teacher trained from
scratch for too short a time). Distillation then pulls the student toward a worse detector and
it ends below a baseline trained without the teacher, with nothing else telling the user why.
Both flags are this project's design, not the paper's.

The teacher's box AP is the teacher check's, on ``teacher/images`` test images; the student's is
on the whole test set at a periodic or the final evaluation.
"""

from __future__ import annotations

from typing import Mapping

TEACHER_AP = "teacher/bbox/AP"
WEAKER_KEY = "teacher/weaker_than_student"  # 1.0 when the student's AP exceeded the teacher's, else 0.0
EXCEEDED_AT_KEY = "teacher/exceeded_at_iter"  # the first evaluation's iteration where it did
MEANING = ("a teacher weaker than its student has little to teach: distilling from it pulls the student "
           "toward a worse detector and usually ends below a baseline trained without it. Train a stronger "
           "teacher (longer, or from pretrained weights) and compare the student with its baseline "
           "(icdistill compare RUN BASELINE_RUN --baseline BASELINE_RUN)")


def teacher_is_weaker(student_ap: float | None, teacher_ap: float | None) -> bool:
    """True when both APs are known and the student's is above the teacher's."""
    return student_ap is not None and teacher_ap is not None and student_ap > teacher_ap


def weaker_teacher_message(student_ap: float, teacher_ap: float, iteration: int, images: float | None) -> str:
    """The warning a run prints (and report.html shows) the first time its student passes the teacher."""
    on = f" on {int(images)} test images" if images else ""
    return (f"the teacher is weaker than the student: teacher box AP {teacher_ap:.2f}{on} (teacher check), "
            f"student box AP {student_ap:.2f} at iteration {iteration}; {MEANING}")


def note_student_ap(teacher_metrics: dict[str, float], student_ap: float | None, iteration: int) -> str | None:
    """Update ``teacher_metrics`` (a run's ``teacher/*``) with an evaluation's student AP: sets
    :data:`WEAKER_KEY` and, the first time the student passes the teacher, :data:`EXCEEDED_AT_KEY`.
    Returns the warning to print at that first time, else None. Nothing without a teacher AP."""
    teacher_ap = teacher_metrics.get(TEACHER_AP)
    if teacher_ap is None or teacher_ap != teacher_ap:  # no teacher check, or NaN
        return None
    first = teacher_is_weaker(student_ap, teacher_ap) and EXCEEDED_AT_KEY not in teacher_metrics
    teacher_metrics.setdefault(WEAKER_KEY, 0.0)
    if first:
        teacher_metrics[WEAKER_KEY] = 1.0
        teacher_metrics[EXCEEDED_AT_KEY] = float(iteration)
        return weaker_teacher_message(student_ap, teacher_ap, iteration, teacher_metrics.get("teacher/images"))
    return None


def weaker_teacher_note(metrics: Mapping[str, float | None]) -> str | None:
    """The sentence for a finished run's page, from its ``metrics.json``; None when not flagged."""
    if not metrics.get(WEAKER_KEY):
        return None
    at = metrics.get(EXCEEDED_AT_KEY)
    where = f" from iteration {int(at)} on" if at is not None else ""
    return (f"The teacher is weaker than the student: the student's box AP passed the teacher's "
            f"{metrics.get(TEACHER_AP)} (teacher check){where}; {MEANING}.")


def below_baseline(student_ap: float | None, baseline_ap: float | None) -> bool:
    """True when both APs are known and the distilled student ended below its baseline."""
    return student_ap is not None and baseline_ap is not None and student_ap < baseline_ap


def row_flags(student_ap: float | None, teacher_ap: float | None, baseline_ap: float | None) -> list[str]:
    """The short flags of a distilled student's row in a comparison table."""
    flags = []
    if teacher_is_weaker(student_ap, teacher_ap):
        flags.append("teacher weaker than student")
    if below_baseline(student_ap, baseline_ap):
        flags.append("below baseline")
    return flags
