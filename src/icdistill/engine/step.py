"""One training step: forward the trainable whole, sum its named losses, backward, clip, step.

The trainer and ``benchmarks/speed.py`` call the same :func:`train_step`. Iterations are
global: ``[0, M)`` is the method's optional method-only stage (only the method trains; the
student is not run), ``[M, M + max_iter)`` the main stage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from icdistill.config import Config
from icdistill.detectors.families import family_facts
from icdistill.detectors.weights import FrozenTeacher
from icdistill.distill.core.distiller import Distiller
from icdistill.distill.core.method import OWN_ADAMW, STUDENT_SGD
from icdistill.engine.distributed import DistContext, average_gradients
from icdistill.engine.optim import (
    build_method_optimizer,
    build_method_scheduler,
    build_student_optimizer,
    build_student_scheduler,
    clip_gradients,
    scale_lr,
)
from icdistill.errors import ConfigError, TrainingDivergedError
from icdistill.structures import Batch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Optimisers:
    """The student's SGD (holding the method's parameters too when the method asks for it),
    the method's own optimiser if it has one, their schedules and the AMP scaler."""

    student: torch.optim.Optimizer
    student_sched: torch.optim.lr_scheduler.LRScheduler
    method: torch.optim.Optimizer | None = None
    method_sched: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "student_optimizer": self.student.state_dict(),
            "student_scheduler": self.student_sched.state_dict(),
            "method_optimizer": self.method.state_dict() if self.method is not None else None,
            "method_scheduler": self.method_sched.state_dict() if self.method_sched is not None else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student_optimizer"])
        self.student_sched.load_state_dict(state["student_scheduler"])
        if self.method is not None:
            self.method.load_state_dict(state["method_optimizer"])
            self.method_sched.load_state_dict(state["method_scheduler"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])


def student_lr(cfg: Config) -> float:
    """``solver.base_lr``, or the family's reference LR scaled linearly to the global batch."""
    if cfg.solver.base_lr is not None:
        return cfg.solver.base_lr
    return scale_lr(family_facts(cfg.model.family).reference_lr, cfg.solver.ims_per_batch)


def build_optimisers(cfg: Config, distiller: Distiller, total_iters: int, device: torch.device) -> Optimisers:
    """SGD over the student (and a ``student``-optimised method), the method's own AdamW with a
    cosine schedule over ``total_iters`` otherwise, and a grad scaler for fp16."""
    solver, method = cfg.solver, distiller.method
    in_student = method is not None and method.optim.kind == STUDENT_SGD
    if in_student and method.method_only_iters:
        raise ConfigError(f"a method optimised with the student's SGD cannot have a method-only stage ({method.name})")
    student = build_student_optimizer(
        distiller if in_student else distiller.student,
        base_lr=student_lr(cfg), momentum=solver.momentum, weight_decay=solver.weight_decay,
    )
    student_sched = build_student_scheduler(
        student, max_iter=solver.max_iter, warmup_iters=solver.warmup_iters,
        warmup_factor=solver.warmup_factor, steps=solver.steps, gamma=solver.gamma,
    )
    opts = Optimisers(student, student_sched)
    if method is not None and method.optim.kind == OWN_ADAMW:
        opts.method = build_method_optimizer(method, lr=method.optim.lr, weight_decay=method.optim.weight_decay)
        stage_lr = method.optim.stage_lr
        opts.method_sched = build_method_scheduler(
            opts.method, max_iter=total_iters, stage_iters=method.method_only_iters,
            stage_factor=stage_lr / method.optim.lr if stage_lr is not None else 1.0,
        )
    if solver.amp == "fp16":
        opts.scaler = torch.amp.GradScaler(device.type)
    return opts


@dataclass
class StepContext:
    """What a step touches. ``model`` is ``distiller`` or its DDP wrapper."""

    distiller: Distiller
    model: nn.Module
    teacher: FrozenTeacher | None
    opts: Optimisers
    ctx: DistContext
    amp: str | None = None
    channels_last: bool = False
    student_clip_value: float | None = None
    clip_plain_runs: bool = True
    checkpoint_path: Path | None = None

    @property
    def method_only_iters(self) -> int:
        return self.distiller.method_only_iters


def autocast(amp: str | None, device: torch.device):
    """The mixed-precision context of ``solver.amp`` (a no-op for fp32)."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


def train_step(step: StepContext, batch: Batch, iteration: int) -> tuple[Tensor, dict[str, Tensor]]:
    """One optimisation step at global ``iteration`` on ``batch`` (already on the device).

    Returns the summed loss and the named losses. Raises TrainingDivergedError on a non-finite
    loss, before any parameter changes.
    """
    images = batch.images.contiguous(memory_format=torch.channels_last) if step.channels_last else batch.images
    method_only = iteration < step.method_only_iters
    with autocast(step.amp, images.device):
        # The method-only stage leaves the student unused, which DDP does not allow without
        # find_unused_parameters; it bypasses DDP and averages the method's grads itself.
        losses = (step.distiller if method_only else step.model)(
            images, batch.image_sizes, batch.targets, step.teacher,
            iteration=max(iteration - step.method_only_iters, 0), method_only=method_only,
        )
    total = sum(losses.values())
    if not torch.isfinite(total):
        bad = [k for k, v in losses.items() if not torch.isfinite(v)]
        raise TrainingDivergedError(
            f"non-finite loss at iteration {iteration}: {', '.join(bad) or 'total'} "
            f"({', '.join(f'{k}={float(v):.4g}' for k, v in losses.items())}); "
            f"the last good checkpoint is {step.checkpoint_path}. Lower solver.base_lr or check the data."
        )
    _backward_and_step(step, total, method_only)
    return total, losses


def _backward_and_step(step: StepContext, total: Tensor, method_only: bool) -> None:
    """Backward, clipping (the student by value: ``solver.grad_clip_value`` in every run, or in
    distillation runs only; the method's own parameters by L2 norm), optimiser and schedule steps."""
    opts, method = step.opts, step.distiller.method
    own = opts.method is not None
    in_student_sgd = method is not None and not own
    opts.student.zero_grad(set_to_none=True)
    if own:
        opts.method.zero_grad(set_to_none=True)
    (opts.scaler.scale(total) if opts.scaler is not None else total).backward()
    if method_only:
        average_gradients(method.parameters(), step.ctx)
    stepped = ([] if method_only else [opts.student]) + ([opts.method] if own else [])
    if opts.scaler is not None:
        for opt in stepped:
            opts.scaler.unscale_(opt)
    clip_student = step.student_clip_value is not None and (method is not None or step.clip_plain_runs)
    if not method_only and clip_student:
        # A method in the student's SGD is clipped with the student.
        clipped = step.distiller.parameters() if in_student_sgd else step.distiller.student.parameters()
        clip_gradients(clipped, value=step.student_clip_value)
    if own and method.optim.clip_norm is not None:
        clip_gradients(method.parameters(), max_norm=method.optim.clip_norm)
    for opt in stepped:
        opts.scaler.step(opt) if opts.scaler is not None else opt.step()
    if opts.scaler is not None:
        opts.scaler.update()
    if not method_only:
        opts.student_sched.step()
    if own:
        opts.method_sched.step()
