"""One loop for plain and distilled training, one process or many (torchrun + DDP).

The loop sees only the trainable whole's dict of named losses (:func:`.step.train_step` sums,
backpropagates and steps); it logs, checkpoints atomically and evaluates. Setup is in
:mod:`.setup`, what is written into the run directory in :mod:`.report`.

Under torchrun the trainable whole (student + distillation method) is wrapped in DDP; the
frozen teacher stays outside. Rank 0 alone writes the run directory; checkpoints hold the
unwrapped module, so they load into a single process and resume under another world size.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from icdistill.config import Config
from icdistill.engine.report import (
    Clock,
    RunResult,
    finish_run,
    log_step,
    periodic_evaluation,
    save_training_checkpoint,
)
from icdistill.engine.setup import begin_student_stage, setup_run
from icdistill.engine.step import train_step


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Train (``distill.method: none``) or distil a student; evaluate it; write the run directory.

    Writes ``config.yaml``, ``data_report.json``, ``prior.json``, ``metrics.jsonl``, ``tb/``,
    ``checkpoints/last.pt``, ``metrics.json``, ``per_class.md``, ``detector.pt`` and ``viz/``.
    Under torchrun only rank 0 writes; every rank returns the same RunResult shape (metrics only
    on rank 0).
    """
    run = setup_run(cfg, Path(out_dir), resume=resume, progress=progress)
    solver, main = cfg.solver, run.ctx.is_main
    clock = Clock(run.train_seconds_before, run.eval_seconds_before)
    bar = tqdm(total=run.total_iters, initial=run.start_iter, disable=not (progress and main),
               desc=run.out.name, dynamic_ncols=True)
    # The method-only stage [0, M) reads its own stream; the student's stream starts at student
    # iteration 0 whatever M is, so runs of one seed see the same batches (setup.build_loaders).
    student_batches, stage_iters = iter(run.train_loader), run.step.method_only_iters
    method_batches = iter(run.method_loader) if run.method_loader is not None else None
    for it in range(run.start_iter, run.total_iters):
        if it == stage_iters and stage_iters > 0:
            begin_student_stage(run, clock.train_seconds())
        batch = next(method_batches if it < stage_iters else student_batches)
        total, losses = train_step(run.step, batch.to(run.ctx.device), it)
        if run.ema is not None and it >= stage_iters:
            run.ema.update(run.distiller.student)
        done = it + 1
        bar.update(1)
        is_last = done == run.total_iters
        if done % solver.log_period == 0 or is_last:
            log_step(run, done, total, losses, bar)
        if main and (is_last or done % solver.checkpoint_period == 0):
            save_training_checkpoint(run, done, clock, snapshot=not is_last)
        in_main_stage = it >= run.step.method_only_iters
        if cfg.eval.period and in_main_stage and done % cfg.eval.period == 0 and not is_last:
            clock.timed(lambda: periodic_evaluation(run, done))
    bar.close()
    return finish_run(run, clock, progress)
