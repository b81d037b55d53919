"""One loop for plain and distilled training, one process or many (torchrun + DDP).

The loop sees only the distiller's dict of named losses: it sums them, steps two optimisers
(student SGD, ICD AdamW), logs, checkpoints atomically and evaluates. Iterations are global:
``[0, D)`` is the optional decoder warm-up stage (ICD module only, aux losses, student not run),
``[D, D + max_iter)`` the main stage.

Under torchrun the one trainable module (student + ICD module) is wrapped in DDP; the frozen
teacher stays outside. Rank 0 alone writes the run directory; checkpoints hold the unwrapped
module, so they load into a single process and resume under another world size.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from icdistill.config import Config, save_config
from icdistill.data import build_test_loader, build_train_loader
from icdistill.distill.distiller import Distiller
from icdistill.engine.build import (
    TRAIN_CHECKPOINT_FORMAT,
    build_datasets,
    build_evaluator,
    build_run_models,
    data_report,
    resolve_device,
    student_checkpoint,
    student_lr,
)
from icdistill.engine.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from icdistill.engine.distributed import (
    DistContext,
    average_gradients,
    barrier,
    init_distributed,
    reduce_for_logging,
)
from icdistill.engine.evaluate import (
    evaluate_detector,
    save_attention_examples,
    save_detection_examples,
    write_metrics_json,
)
from icdistill.engine.optim import (
    build_icd_optimizer,
    build_icd_scheduler,
    build_student_optimizer,
    build_student_scheduler,
    clip_gradients,
)
from icdistill.errors import ConfigError, TrainingDivergedError
from icdistill.viz import save_training_curves

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class RunResult:
    out_dir: Path
    metrics: dict[str, float]
    train_seconds: float
    iterations: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Optimisers:
    """The student's SGD and the ICD module's AdamW, with their schedules and the AMP scaler."""

    student: torch.optim.Optimizer
    student_sched: torch.optim.lr_scheduler.LRScheduler
    icd: torch.optim.Optimizer | None = None
    icd_sched: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "student_optimizer": self.student.state_dict(),
            "student_scheduler": self.student_sched.state_dict(),
            "icd_optimizer": self.icd.state_dict() if self.icd is not None else None,
            "icd_scheduler": self.icd_sched.state_dict() if self.icd_sched is not None else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student_optimizer"])
        self.student_sched.load_state_dict(state["student_scheduler"])
        if self.icd is not None:
            self.icd.load_state_dict(state["icd_optimizer"])
            self.icd_sched.load_state_dict(state["icd_scheduler"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])


def build_optimisers(cfg: Config, distiller: Distiller, total_iters: int, device: torch.device) -> Optimisers:
    solver, dcfg = cfg.solver, cfg.distill
    student = build_student_optimizer(
        distiller.student, base_lr=student_lr(cfg), momentum=solver.momentum, weight_decay=solver.weight_decay
    )
    student_sched = build_student_scheduler(
        student, max_iter=solver.max_iter, warmup_iters=solver.warmup_iters,
        warmup_factor=solver.warmup_factor, steps=solver.steps, gamma=solver.gamma,
    )
    opts = Optimisers(student, student_sched)
    if distiller.distill_module is not None:
        opts.icd = build_icd_optimizer(distiller.distill_module, lr=dcfg.lr, weight_decay=dcfg.weight_decay)
        opts.icd_sched = build_icd_scheduler(opts.icd, max_iter=total_iters)
    if solver.amp == "fp16":
        opts.scaler = torch.amp.GradScaler(device.type)
    return opts


class RunLog:
    """``metrics.jsonl`` + TensorBoard, written by the main process only."""

    def __init__(self, out: Path, enabled: bool, fresh: bool) -> None:
        self.path = out / "metrics.jsonl"
        self.enabled = enabled
        if enabled and fresh and self.path.exists():
            self.path.unlink()
        self.writer = SummaryWriter(str(out / "tb")) if enabled else None

    def log(self, step: int, record: dict[str, float], prefix: str = "", jsonl: bool = True) -> None:
        """One record at ``step``: a metrics.jsonl line (unless ``jsonl`` is False) and
        TensorBoard scalars, both named ``prefix + key`` (periodic evaluations: ``eval/bbox/AP``).
        NaN is skipped in TensorBoard and written as null in metrics.jsonl (strict JSON)."""
        if not self.enabled:
            return
        if jsonl:
            line = {prefix + k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}
            with self.path.open("a") as f:
                f.write(json.dumps({"iter": step, **line}) + "\n")
        for key, value in record.items():
            if not math.isnan(value):
                self.writer.add_scalar(prefix + key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _autocast(cfg: Config, device: torch.device):
    if cfg.solver.amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[cfg.solver.amp])


def _check_solver(cfg: Config, ctx: DistContext) -> int:
    """Per-process batch size; errors for AMP/batch settings this machine cannot run."""
    solver = cfg.solver
    if solver.amp == "fp16" and ctx.device.type != "cuda":
        raise ConfigError("solver.amp 'fp16' needs a GPU; use 'bf16' on CPU or null")
    if solver.ims_per_batch % ctx.world_size:
        raise ConfigError(
            f"solver.ims_per_batch ({solver.ims_per_batch}) must be divisible by the number of "
            f"processes ({ctx.world_size})"
        )
    return solver.ims_per_batch // ctx.world_size


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Train (``distill.method: none``) or distil a student; evaluate it; write the run directory.

    Writes ``config.yaml``, ``data_report.json``, ``prior.json``, ``metrics.jsonl``, ``tb/``,
    ``checkpoints/last.pt``, ``metrics.json``, ``per_class.md``, ``student.pt`` and ``viz/``
    (training curves, detections and, for ICD, attention overlays). Under torchrun only rank 0
    writes; every rank returns the same RunResult shape (metrics only on rank 0).
    """
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    if resume and not last_path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {last_path}")
    ctx = init_distributed(resolve_device(cfg.solver.device))
    device, main = ctx.device, ctx.is_main
    per_rank_batch = _check_solver(cfg, ctx)
    solver, dcfg = cfg.solver, cfg.distill
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    _seed_everything(solver.seed)  # the same initial weights on every rank (DDP checks them)

    train_set, test_set = build_datasets(cfg, progress=progress and main)
    if main:
        (out / "data_report.json").write_text(json.dumps(data_report(train_set, test_set), indent=2))
        print(f"data: {len(train_set)} training images ({train_set.report_summary()}), "
              f"{len(test_set)} test images ({test_set.report_summary()}); see {out / 'data_report.json'}")
    evaluator = build_evaluator(cfg, test_set)
    models = build_run_models(cfg, train_set, fresh_start=not resume)
    if main:
        models.prior.save(out / "prior.json")
        if models.inherit_report is not None:
            print(f"inheriting: {models.inherit_report.summary()}")
    distiller = models.distiller.to(device)
    teacher = models.teacher.to(device) if models.teacher is not None else None
    icd = distiller.icd
    if device.type == "cuda" and solver.channels_last:
        distiller.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)

    decoder_iters = dcfg.decoder_warmup_iters if icd is not None else 0  # FitNet has no decoder
    total_iters = decoder_iters + solver.max_iter
    opts = build_optimisers(cfg, distiller, total_iters, device)
    # Training time excludes the periodic evaluations, which are timed separately (time/eval_s).
    start_iter, elapsed_before, eval_before = 0, 0.0, 0.0
    if resume:
        state = load_checkpoint(last_path)
        distiller.load_state_dict(state["trainable"])
        opts.load_state_dict(state)
        restore_rng_state(state["rng"])
        start_iter, elapsed_before = state["iteration"], state.get("train_seconds", 0.0)
        eval_before = state.get("eval_seconds", 0.0)
        if main:
            print(f"resumed from {last_path} at iteration {start_iter}")
    if ctx.distributed:
        # Each rank draws its own fake instances; rank 0 keeps the checkpointed stream.
        torch.manual_seed(solver.seed + 1000003 * ctx.rank + start_iter)
        if device.type == "cuda" and solver.sync_bn:
            distiller = torch.nn.SyncBatchNorm.convert_sync_batchnorm(distiller)
        model = DistributedDataParallel(distiller, device_ids=[ctx.local_rank] if device.type == "cuda" else None)
    else:
        model = distiller

    def checkpoint_state(next_iter: int, seconds: float, eval_seconds: float) -> dict[str, Any]:
        return {
            "format": TRAIN_CHECKPOINT_FORMAT,
            "iteration": next_iter,
            "train_seconds": seconds,
            "eval_seconds": eval_seconds,
            "world_size": ctx.world_size,
            "trainable": distiller.state_dict(),
            **opts.state_dict(),
            "rng": capture_rng_state(),
            "config": cfg.to_dict(),
            "model_config": cfg.to_dict()["model"],
            "class_names": train_set.class_names,
        }

    loader = build_train_loader(
        train_set, batch_size=per_rank_batch, seed=solver.seed, start_iter=start_iter,
        num_workers=cfg.data.num_workers, rank=ctx.rank, world_size=ctx.world_size,
    )
    test_loader = build_test_loader(
        test_set, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers,
        rank=ctx.rank, world_size=ctx.world_size,
    )
    run_log = RunLog(out, enabled=main, fresh=not resume)
    distiller.train()
    started, eval_here = time.perf_counter(), 0.0  # eval_here: periodic evaluation seconds in this process
    bar = tqdm(total=total_iters, initial=start_iter, disable=not (progress and main), desc=out.name, dynamic_ncols=True)
    batches = iter(loader)
    for it in range(start_iter, total_iters):
        batch = next(batches).to(device)
        images = batch.images.contiguous(memory_format=torch.channels_last) if (
            device.type == "cuda" and solver.channels_last) else batch.images
        decoder_stage = it < decoder_iters
        with _autocast(cfg, device):
            teacher_feats = teacher.features(images) if teacher is not None else None
            # The decoder warm-up stage leaves the student unused, which DDP does not allow
            # without find_unused_parameters; it bypasses DDP and averages the ICD grads itself.
            losses = (distiller if decoder_stage else model)(
                images, batch.image_sizes, batch.targets, teacher_feats,
                iteration=max(it - decoder_iters, 0), decoder_only=decoder_stage,
            )
        total = sum(losses.values())
        if not torch.isfinite(total):
            bad = [k for k, v in losses.items() if not torch.isfinite(v)]
            raise TrainingDivergedError(
                f"non-finite loss at iteration {it}: {', '.join(bad) or 'total'} "
                f"({', '.join(f'{k}={float(v):.4g}' for k, v in losses.items())}); "
                f"the last good checkpoint is {last_path}. Lower solver.base_lr or check the data."
            )
        _backward_and_step(total, distiller, opts, cfg, ctx, decoder_stage)

        done = it + 1
        bar.update(1)
        if done % solver.log_period == 0 or done == total_iters:
            record = reduce_for_logging({"loss/total": total.item(), **{k: v.item() for k, v in losses.items()}}, ctx)
            record["lr/student"] = opts.student.param_groups[0]["lr"]
            if opts.icd is not None:
                record["lr/icd"] = opts.icd.param_groups[0]["lr"]
            run_log.log(done, record)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in record.items() if k.startswith(("loss/", "distill/", "aux/"))})
        is_last = done == total_iters
        if main and (is_last or done % solver.checkpoint_period == 0):
            state = checkpoint_state(done, elapsed_before + time.perf_counter() - started - eval_here,
                                     eval_before + eval_here)
            save_checkpoint(last_path, state)
            if not is_last:  # periodic snapshots stay; last.pt is what --resume reads
                save_checkpoint(ckpt_dir / f"model_{done:07d}.pt", state)
        if cfg.eval.period and not decoder_stage and done % cfg.eval.period == 0 and not is_last:
            eval_started = time.perf_counter()
            periodic = evaluate_detector(distiller.student, test_loader, evaluator, device, progress=False, ctx=ctx)
            run_log.log(done, periodic, prefix="eval/")
            distiller.train()
            eval_here += time.perf_counter() - eval_started
    bar.close()
    train_seconds = elapsed_before + time.perf_counter() - started - eval_here

    metrics = evaluate_detector(distiller.student, test_loader, evaluator, device, progress=progress and main, ctx=ctx)
    if main:
        metrics["time/train_s"] = round(train_seconds, 2)
        metrics["time/iter_s"] = round(train_seconds / max(total_iters, 1), 4)
        metrics["time/eval_s"] = round(eval_before + eval_here, 2)  # periodic evaluations, not in train_s
        metrics["world_size"] = ctx.world_size
        write_metrics_json(out / "metrics.json", metrics, train_set.class_names)
        final = {k: v for k, v in metrics.items() if k.startswith(("bbox/", "segm/"))}
        run_log.log(total_iters, final, prefix="final/", jsonl=False)  # metrics.json holds them
        save_student(distiller, cfg, train_set.class_names, out / "student.pt")
        save_training_curves(out / "viz" / "training_curves.png", run_log.path)
        if cfg.eval.viz_images > 0:
            save_detection_examples(distiller.student, test_set, out / "viz", cfg.eval.viz_images, device)
            if icd is not None and teacher is not None:
                save_attention_examples(distiller, teacher, test_set, out / "viz", cfg.eval.viz_images, device)
    run_log.close()
    barrier(ctx)
    return RunResult(out, metrics, train_seconds, total_iters, extra={"rank": ctx.rank, "world_size": ctx.world_size})


def _backward_and_step(
    total: torch.Tensor, distiller: Distiller, opts: Optimisers, cfg: Config, ctx: DistContext, decoder_stage: bool
) -> None:
    """Backward, clipping (§7: student by value in distillation runs, the distillation module
    by L2 norm), steps."""
    icd, dcfg = distiller.distill_module, cfg.distill
    opts.student.zero_grad(set_to_none=True)
    if opts.icd is not None:
        opts.icd.zero_grad(set_to_none=True)
    (opts.scaler.scale(total) if opts.scaler is not None else total).backward()
    if decoder_stage:
        average_gradients(icd.parameters(), ctx)
    stepped = [] if decoder_stage else [opts.student]
    if icd is not None:
        stepped.append(opts.icd)
    if opts.scaler is not None:
        for opt in stepped:
            opts.scaler.unscale_(opt)
    if not decoder_stage and icd is not None and dcfg.student_grad_clip_value is not None:
        clip_gradients(distiller.student.parameters(), value=dcfg.student_grad_clip_value)
    if icd is not None:
        clip_gradients(icd.parameters(), max_norm=dcfg.grad_clip_norm)
    for opt in stepped:
        opts.scaler.step(opt) if opts.scaler is not None else opt.step()
    if opts.scaler is not None:
        opts.scaler.update()
    if not decoder_stage:
        opts.student_sched.step()
    if icd is not None:
        opts.icd_sched.step()


def save_student(distiller: torch.nn.Module, cfg: Config, class_names: list[str], path: Path) -> None:
    """``student.pt``: the student detector only, loadable with torchvision alone."""
    save_checkpoint(path, student_checkpoint(distiller.student.model.state_dict(), cfg.to_dict()["model"], class_names))
