"""What a run writes into its directory: the step log (``metrics.jsonl`` + TensorBoard), the
training checkpoint, and at the finish ``metrics.json``, ``per_class.md``, the detector file
and the pictures. Only the main process writes."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from torch import nn
from torch.utils.tensorboard import SummaryWriter

from icdistill.engine.distributed import barrier, reduce_for_logging
from icdistill.engine.evaluate import evaluate_detector, save_detection_examples, write_metrics_json
from icdistill.errors import OutputError
from icdistill.files import (
    DETECTOR_FILE,
    TRAIN_CHECKPOINT_FORMAT,
    METRICS_LOG,
    append_metrics_record,
    capture_rng_state,
    detector_file,
    drop_metrics_after,
    prune_snapshots,
    save_checkpoint,
    snapshot_name,
)
from icdistill.reporting import write_run_report
from icdistill.reporting.curves import save_training_curves
from icdistill.teacher_vs_student import note_student_ap

if TYPE_CHECKING:  # the setup imports this module
    from icdistill.engine.setup import Run

# Loss-name prefixes shown in the progress bar.
BAR_PREFIXES = ("loss/", "distill/", "aux/")


@dataclass
class RunResult:
    out_dir: Path
    metrics: dict[str, float]
    train_seconds: float
    iterations: int
    extra: dict[str, Any] = field(default_factory=dict)


class RunLog:
    """``metrics.jsonl`` + TensorBoard, written by the main process only."""

    def __init__(self, out: Path, enabled: bool, fresh: bool, resume_at: int | None = None) -> None:
        self.path = out / METRICS_LOG
        self.enabled = enabled
        if enabled and fresh and self.path.exists():
            self.path.unlink()
        if enabled and resume_at is not None and self.path.exists():
            drop_metrics_after(self.path, resume_at)
        self.writer = SummaryWriter(str(out / "tb")) if enabled else None

    def log(self, step: int, record: dict[str, float], prefix: str = "", jsonl: bool = True) -> None:
        """One record at ``step``: a metrics.jsonl line (unless ``jsonl`` is False) and
        TensorBoard scalars, both named ``prefix + key`` (periodic evaluations: ``eval/bbox/AP``).
        NaN is skipped in TensorBoard and written as null in metrics.jsonl (strict JSON)."""
        if not self.enabled:
            return
        if jsonl:  # a full disk: OutputError
            append_metrics_record(self.path, step, {prefix + k: v for k, v in record.items()})
        for key, value in record.items():
            if not math.isnan(value):
                self.writer.add_scalar(prefix + key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Clock:
    """Training seconds without the periodic evaluations, which are counted apart."""

    def __init__(self, train_before: float, eval_before: float) -> None:
        self.started = time.perf_counter()
        self.train_before, self.eval_before, self.eval_here = train_before, eval_before, 0.0

    def train_seconds(self) -> float:
        return self.train_before + time.perf_counter() - self.started - self.eval_here

    def eval_seconds(self) -> float:
        return self.eval_before + self.eval_here

    def timed(self, fn):
        start = time.perf_counter()
        out = fn()
        self.eval_here += time.perf_counter() - start
        return out


def log_step(run: Run, done: int, total, losses: dict, bar) -> None:
    """The step's losses (averaged over ranks) and learning rates, into the log and the bar."""
    record = reduce_for_logging({"loss/total": total.item(), **{k: v.item() for k, v in losses.items()}}, run.ctx)
    opts = run.step.opts
    record["lr/student"] = opts.student.param_groups[0]["lr"]
    if opts.method is not None:
        record["lr/method"] = opts.method.param_groups[0]["lr"]
    run.log.log(done, record)
    bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in record.items() if k.startswith(BAR_PREFIXES)})


def save_training_checkpoint(run: Run, next_iter: int, clock: Clock, *, snapshot: bool) -> None:
    """``checkpoints/last.pt`` (what ``--resume`` reads) and, with ``snapshot``, a periodic
    ``checkpoints/model_<iter>.pt`` beside it; both atomic. Snapshots beyond the newest
    ``solver.keep_checkpoints`` are deleted.

    Raises:
        OutputError: a full, read-only or forbidden folder; names the file and the last good
            checkpoint, which is left intact.
    """
    cfg = run.cfg.to_dict()
    state = {
        "format": TRAIN_CHECKPOINT_FORMAT,
        "iteration": next_iter,
        "train_seconds": clock.train_seconds(),
        "eval_seconds": clock.eval_seconds(),
        "method_stage_seconds": run.method_stage_seconds,
        "ema": run.ema.state_dict() if run.ema is not None else None,  # solver.ema: resume is exact
        "world_size": run.ctx.world_size,
        "trainable": run.distiller.state_dict(),
        **run.step.opts.state_dict(),
        "rng": capture_rng_state(),
        "config": cfg,
        "model_config": cfg["model"],
        "class_names": run.train_set.class_names,
        "teacher_check": run.teacher_metrics,  # teacher/* of the teacher check; a resume reuses them
    }
    last = run.last_checkpoint
    try:
        save_checkpoint(last, state)
        if snapshot:
            save_checkpoint(last.parent / snapshot_name(next_iter), state)
            prune_snapshots(last.parent, run.cfg.solver.keep_checkpoints)
    except OutputError as exc:
        kept = (f"the last good checkpoint {last} is kept: run again with --resume once it can be written"
                if last.is_file() else "no checkpoint of this run was written yet")
        raise OutputError(f"{exc}; {kept}") from exc


def method_metrics(run: Run) -> dict[str, float]:
    """The method's own numbers on the test set (main process only; {} without a method)."""
    method, teacher = run.distiller.method, run.step.teacher
    if method is None or teacher is None or not run.ctx.is_main:
        return {}
    return method.evaluate(teacher=teacher, dataset=run.test_set, levels=run.distiller.levels,
                           strides=run.distiller.strides, device=run.ctx.device)


@contextlib.contextmanager
def evaluated_student(run: Run) -> Iterator[nn.Module]:
    """The student as it is evaluated and saved: with ``solver.ema`` its averaged weights (the
    trained ones are back after the block), else itself."""
    student = run.distiller.student
    if run.ema is None:
        yield student
        return
    with run.ema.applied(student):
        yield student


def periodic_evaluation(run: Run, done: int) -> None:
    """``eval/*`` metrics of the student and the method's own at iteration ``done``, into the log."""
    with evaluated_student(run) as student:
        metrics = evaluate_detector(student, run.test_loader, run.evaluator, run.ctx.device, progress=False, ctx=run.ctx)
    metrics.update(method_metrics(run))
    run.log.log(done, metrics, prefix="eval/")
    warn_if_teacher_weaker(run, metrics, done)
    run.distiller.train()


def warn_if_teacher_weaker(run: Run, metrics: dict[str, float], done: int) -> None:
    """Compare an evaluation's student AP with the teacher check's; the first time the student
    passes the teacher, print why that matters. The flag lands in ``teacher/*`` (checkpoint,
    ``metrics.json``, report.html)."""
    note = note_student_ap(run.teacher_metrics, metrics.get("bbox/AP"), done)
    if note is not None and run.ctx.is_main:
        print(f"warning: {note}")


def finish_run(run: Run, clock: Clock, progress: bool) -> RunResult:
    """Final evaluation; the main process writes ``metrics.json``, ``per_class.md``, the
    detector file, ``viz/`` (training curves, detections, the method's pictures) and
    ``report.html`` (with ``pr_curves.json``, :mod:`icdistill.reporting`)."""
    ctx, distiller = run.ctx, run.distiller
    train_seconds = clock.train_seconds()
    with evaluated_student(run) as student:
        metrics = evaluate_detector(student, run.test_loader, run.evaluator, ctx.device,
                                    progress=progress and ctx.is_main, ctx=ctx)
    metrics.update(method_metrics(run))
    warnings = distiller.method.warnings(metrics) if distiller.method is not None else []
    weaker = note_student_ap(run.teacher_metrics, metrics.get("bbox/AP"), run.total_iters)
    warnings += [weaker] if weaker is not None else []
    if ctx.is_main:
        for note in warnings:
            print(f"warning: {note}")
        metrics.update(run.teacher_metrics)  # the teacher check's teacher/* ({} when off)
        metrics.update(time_metrics(run, train_seconds))
        metrics["time/eval_s"] = round(clock.eval_seconds(), 2)  # periodic evaluations, not in train_s
        metrics["world_size"] = ctx.world_size
        write_metrics_json(run.out / "metrics.json", metrics, run.train_set.class_names)
        final = {k: v for k, v in metrics.items() if "/" in k and not k.startswith("time/")}
        run.log.log(run.total_iters, final, prefix="final/", jsonl=False)  # metrics.json holds them
        with evaluated_student(run):  # detector.pt and its pictures: the weights that were evaluated
            save_detector_file(run, run.out / DETECTOR_FILE)
            save_pictures(run)
        if run.cfg.eval.report:
            write_run_report(run.out, pr_curves=getattr(run.evaluator, "pr_curves", None))  # report.html
    run.log.close()
    barrier(ctx)
    return RunResult(run.out, metrics, train_seconds, run.total_iters,
                     extra={"rank": ctx.rank, "world_size": ctx.world_size, "warnings": warnings})


def time_metrics(run: Run, train_seconds: float) -> dict[str, float]:
    """``time/train_s`` (all training, evaluations excluded), ``time/iter_s`` (seconds per STUDENT
    iteration: the method-only stage is not in it, so a method is never made to look cheaper per
    step by iterations that do not train the student) and ``time/method_stage_s`` (the method-only
    stage's seconds, 0 without one)."""
    stage = run.method_stage_seconds if run.step.method_only_iters else 0.0
    return {"time/train_s": round(train_seconds, 2),
            "time/iter_s": round((train_seconds - stage) / max(run.cfg.solver.max_iter, 1), 4),
            "time/method_stage_s": round(stage, 2)}


def save_detector_file(run: Run, path: Path) -> None:
    """The trained detector only, loadable with torchvision alone (:func:`icdistill.files.detector_file`)."""
    state = run.distiller.student.model.state_dict()
    save_checkpoint(path, detector_file(state, run.cfg.to_dict()["model"], run.train_set.class_names))


def save_pictures(run: Run) -> None:
    """``viz/``: training curves, detections on test images and the method's own pictures."""
    viz = run.out / "viz"
    if run.cfg.eval.report:
        save_training_curves(viz / "training_curves.png", run.log.path)
    count = run.cfg.eval.viz_images
    if count <= 0:
        return
    device = run.ctx.device
    save_detection_examples(run.distiller.student, run.test_set, viz, count, device)
    method, teacher = run.distiller.method, run.step.teacher
    if method is not None and teacher is not None:
        method.save_pictures(teacher=teacher, dataset=run.test_set, levels=run.distiller.levels,
                             strides=run.distiller.strides, out_dir=viz, count=count, device=device)
