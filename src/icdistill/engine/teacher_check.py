"""The teacher check: before the first step of a distillation run, is the frozen teacher a
trained detector of this data?

The most common silent failure of distillation is a teacher that was not really loaded (the
wrong file, a head re-initialised for another class count, weights of another data set) or
that does not fit the data (its classes in another order): the student then ends where the
baseline ends, after hours of training. Evaluating the teacher on a few test images costs
seconds and catches both. The check is this project's design, not the paper's.

Its numbers are ``teacher/bbox/AP``, ``teacher/bbox/AP50``, … (percent, the run's evaluator,
boxes only) plus ``teacher/images``; the run puts them into ``metrics.json``, ``metrics.jsonl``
and the training checkpoint (a resumed run reuses them instead of evaluating again).
"""

from __future__ import annotations

import math
import time
from typing import Mapping, Sequence

import torch
from torch.utils.data import Subset

from icdistill.config import DistillConfig, EvalConfig
from icdistill.data import CocoDetection, build_test_loader
from icdistill.detectors.base import DetectorAdapter
from icdistill.detectors.build import unsafe_pickle_opt_in
from icdistill.detectors.weights import is_checkpoint_path
from icdistill.engine.evaluate import evaluate_detector
from icdistill.errors import ConfigError, TeacherCheckError
from icdistill.evaluation import build_evaluator
from icdistill.files import capture_rng_state, load_checkpoint, restore_rng_state

PREFIX = "teacher/"
OVERRIDE = "--set distill.check_teacher=false"


def check_teacher(
    distill_cfg: DistillConfig,
    eval_cfg: EvalConfig,
    teacher: DetectorAdapter,
    teacher_weights: str | None,
    test_set: CocoDetection,
    device: torch.device,
    *,
    known: Mapping[str, float] | None = None,
    verbose: bool = True,
    allow_unsafe_pickle: bool = False,
) -> dict[str, float]:
    """The teacher's ``teacher/*`` numbers; raises :class:`TeacherCheckError` when the teacher
    must not be distilled from.

    With ``known`` numbers (a resumed run's checkpoint holds them) nothing is evaluated again;
    they are returned as they are. Off (``distill.check_teacher: false``): ``known`` or ``{}``.
    Otherwise: class names saved in the teacher's file (``teacher_weights``, a detector file or
    training checkpoint) must equal ``test_set.class_names`` in order; then the teacher is evaluated on up to
    ``distill.check_teacher_images`` test images spread evenly over the test set, and its box AP
    must reach ``distill.check_teacher_min_ap``. Every process of a torchrun job runs the same
    check on the same images, so all of them stop together. The random generators are left as
    they were: a run trains the same with the check on or off.
    """
    if not distill_cfg.check_teacher:
        return dict(known or {})
    if known:
        if verbose:
            print(f"teacher check: box AP {known.get(PREFIX + 'bbox/AP', math.nan):.2f} (from the checkpoint)")
        return dict(known)
    _validate(distill_cfg)
    check_class_names(teacher_class_names(teacher_weights, allow_unsafe_pickle), test_set.class_names, teacher_weights)
    if len(test_set) == 0:
        if verbose:
            print("warning: teacher check: the test set is empty; the teacher's AP is not checked")
        return {}
    start = time.perf_counter()
    metrics = evaluate_teacher(teacher, test_set, eval_cfg, device, distill_cfg.check_teacher_images)
    seconds = time.perf_counter() - start
    ap = metrics[PREFIX + "bbox/AP"]
    images = int(metrics[PREFIX + "images"])
    if ap is None or math.isnan(ap):
        if verbose:
            print(f"warning: teacher check: no box AP on {images} test images (no ground truth in them?); not checked")
        return metrics
    if ap < distill_cfg.check_teacher_min_ap:
        raise TeacherCheckError(_low_ap_message(metrics, distill_cfg.check_teacher_min_ap, teacher_weights))
    if verbose:
        print(f"teacher check: box AP {ap:.2f} (AP50 {metrics.get(PREFIX + 'bbox/AP50', math.nan):.2f}) on "
              f"{images} test images, at least distill.check_teacher_min_ap={distill_cfg.check_teacher_min_ap:g} "
              f"({seconds:.1f} s)")
    return metrics


def _validate(distill_cfg: DistillConfig) -> None:
    if distill_cfg.check_teacher_images < 1:
        raise ConfigError(
            f"config key 'distill.check_teacher_images' must be at least 1, got {distill_cfg.check_teacher_images}; "
            f"to skip the teacher check use {OVERRIDE}"
        )
    if not 0.0 <= distill_cfg.check_teacher_min_ap <= 100.0:
        raise ConfigError(
            f"config key 'distill.check_teacher_min_ap' is a box AP in percent (0 to 100), "
            f"got {distill_cfg.check_teacher_min_ap}"
        )


def evaluate_teacher(
    teacher: DetectorAdapter, test_set: CocoDetection, eval_cfg: EvalConfig, device: torch.device, max_images: int
) -> dict[str, float]:
    """``teacher/bbox/*`` of ``teacher`` on ``min(max_images, len(test_set))`` test images at
    evenly spaced indices (a test set sorted by class or source is still sampled across), scored
    by the evaluator of ``eval.evaluator`` (COCO or VOC), boxes only (a Mask R-CNN teacher of a
    box-only student is checked on boxes); plus ``teacher/images``."""
    count = min(max_images, len(test_set))
    indices = [i * len(test_set) // count for i in range(count)]
    loader = build_test_loader(Subset(test_set, indices), batch_size=eval_cfg.batch_size)
    evaluator = build_evaluator(eval_cfg, test_set, with_masks=False)
    rng = capture_rng_state()
    try:
        metrics = evaluate_detector(teacher, loader, evaluator, device, progress=False)
    finally:
        restore_rng_state(rng)
    out = {PREFIX + k: v for k, v in metrics.items() if k.startswith("bbox/")}
    out[PREFIX + "images"] = count
    return out


def teacher_class_names(weights: str | None, allow_unsafe_pickle: bool = False) -> list[str] | None:
    """Class names saved in a teacher's detector file or training checkpoint; None for
    torchvision weights names, files without names, or no weights. Read weights-only unless
    ``teacher.allow_unsafe_pickle`` (``allow_unsafe_pickle``)."""
    if not weights or not is_checkpoint_path(weights):
        return None
    names = load_checkpoint(weights, allow_unsafe_pickle=allow_unsafe_pickle,
                            opt_in=unsafe_pickle_opt_in("teacher")).get("class_names")
    return [str(n) for n in names] if names else None


def check_class_names(teacher: Sequence[str] | None, data: Sequence[str], source: str | None) -> None:
    """Raise :class:`TeacherCheckError` when the teacher's class names (None: unknown, not
    checked) differ from the data's, in names or in order."""
    if teacher is None or list(teacher) == list(data):
        return
    if sorted(teacher) == sorted(data):
        what = "the same names in another order"
    else:
        only_teacher = [n for n in teacher if n not in data]
        only_data = [n for n in data if n not in teacher]
        what = f"only the teacher's: {_few(only_teacher)}; only the data's: {_few(only_data)}"
    first = next((i for i, (a, b) in enumerate(zip(teacher, data)) if a != b), min(len(teacher), len(data)))
    raise TeacherCheckError(
        f"teacher check: the teacher ({source}) was trained on {len(teacher)} classes {_few(teacher)} but the "
        f"data has {len(data)} classes {_few(data)} ({what}; first difference at class {first}); the teacher "
        f"would teach each class as another. Use a teacher trained on this data's classes (data.class_names "
        f"sets their order), or {OVERRIDE} to distil anyway"
    )


def _few(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', …' if len(names) > limit else ''}]"


def _low_ap_message(metrics: Mapping[str, float], min_ap: float, source: str | None) -> str:
    ap, ap50 = metrics[PREFIX + "bbox/AP"], metrics.get(PREFIX + "bbox/AP50", math.nan)
    return (
        f"teacher check: the teacher ({source}) scores box AP {ap:.2f} (AP50 {ap50:.2f}) on "
        f"{int(metrics[PREFIX + 'images'])} test images, below distill.check_teacher_min_ap={min_ap:g}: an "
        f"untrained or wrongly loaded teacher (another file, a head re-initialised for another class count, "
        f"weights of another data set) has nothing to teach. Check teacher.weights and the teacher section, or "
        f"lower the threshold (--set distill.check_teacher_min_ap=0.1) or {OVERRIDE} to distil anyway"
    )
