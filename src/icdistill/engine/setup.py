"""Everything a run needs before its first step, each piece from its own config section.

Every check that can fail on user input (missing files, class counts, teacher checkpoint,
level alignment) runs here, before any training step.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from icdistill.config import Config, save_config
from icdistill.data import (
    CocoDetection,
    DatasetPrior,
    build_datasets,
    build_test_loader,
    build_train_loader,
    compute_prior,
    data_report,
    resolve_with_masks,
)
from icdistill.detectors import build_model, build_teacher, family_facts
from icdistill.detectors.data_needs import require_masks, require_segmentations
from icdistill.detectors.weights import FrozenTeacher
from icdistill.distill.build import NO_METHOD, build_distiller
from icdistill.distill.core.distiller import Distiller
from icdistill.distill.inherit import inherit_weights
from icdistill.engine.distributed import DistContext, init_distributed
from icdistill.engine.ema import StudentEMA
from icdistill.engine.report import RunLog
from icdistill.engine.step import StepContext, build_optimisers
from icdistill.engine.teacher_check import check_teacher
from icdistill.errors import ConfigError
from icdistill.evaluation import COCOEvaluator, build_evaluator
from icdistill.files import (
    ResumePoint,
    ensure_writable_dir,
    find_resume_checkpoint,
    remove_stale_temp_files,
    restore_rng_state,
)


def resolve_device(name: str) -> torch.device:
    """``solver.device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("solver.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# The method-only stage (e.g. a decoder warm-up) draws its batches and random numbers from a
# stream of its own, seeded from solver.seed + this offset, so that the student's stream (its
# batches, its random draws) is the same in every row of one seed: a baseline and a distilled
# run of seed k are paired, batch for batch.
METHOD_STAGE_SEED_OFFSET = 1 << 30
# Under torchrun each rank draws its own random samples (e.g. fake instances); rank 0 keeps seed.
RANK_SEED_STRIDE = 1000003


def student_stream_seed(seed: int, rank: int = 0) -> int:
    """The seed of the global generators at the student's first step (every row alike)."""
    return seed + RANK_SEED_STRIDE * rank


def method_stage_seed(seed: int) -> int:
    """The seed of the method-only stage's sampler and generators (never the student's)."""
    return seed + METHOD_STAGE_SEED_OFFSET


def per_rank_batch_size(cfg: Config, ctx: DistContext) -> int:
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


def load_data(cfg: Config, out: Path, ctx: DistContext, progress: bool) -> tuple[CocoDetection, CocoDetection]:
    """Training and test sets; the main process writes ``data_report.json`` and a summary."""
    require_masks(cfg.model.family, cfg.data)  # before any loading: a mask family needs them
    with_masks = resolve_with_masks(cfg.data, family_facts(cfg.model.family).masks)
    train_set, test_set = build_datasets(cfg.data, with_masks=with_masks, progress=progress and ctx.is_main)
    require_segmentations(cfg.model.family, cfg.data, train_set)  # box-only data: no mask targets
    if ctx.is_main:
        (out / "data_report.json").write_text(json.dumps(data_report(train_set, test_set), indent=2))
        print(f"data: {len(train_set)} training images ({train_set.report_summary()}), "
              f"{len(test_set)} test images ({test_set.report_summary()}); see {out / 'data_report.json'}")
    return train_set, test_set


def build_models(
    cfg: Config, train_set: CocoDetection, *, fresh_start: bool, main: bool
) -> tuple[Distiller, FrozenTeacher | None, DatasetPrior]:
    """Student first (its initial weights depend on ``solver.seed`` alone), then the frozen
    teacher (for a method, or for ``distill.inherit``), then the method. What the teacher and the
    method consume of the global generators does not reach the student's training: the
    global generator is re-seeded with ``solver.seed`` here and again before the first step
    (:func:`begin_stream`).

    ``distill.method: none`` with ``distill.inherit`` is the protocol's ``baseline+inherit`` row:
    the student inherits the teacher's matching neck/head tensors and trains without any
    distillation loss."""
    student = build_model(cfg.model, train_set.num_classes, "model")
    prior = compute_prior(train_set)
    plain = cfg.distill.method == NO_METHOD
    teacher = build_teacher(cfg.teacher, train_set.num_classes) if not plain or cfg.distill.inherit else None
    distiller, inherit_report = build_distiller(cfg.distill, student, None if plain else teacher, prior=prior,
                                                fresh_start=fresh_start, seed=cfg.solver.seed)
    if plain and teacher is not None and fresh_start:
        inherit_report = inherit_weights(teacher, student)
    if main and inherit_report is not None:
        print(f"inheriting: {inherit_report.summary()}")
    # The teacher's and the method's initialisations drew from the global generator; re-seed so
    # a distilled run's student draws what its baseline draws (e.g. a two-stage RoI sampling).
    torch.manual_seed(cfg.solver.seed)
    return distiller, teacher, prior


def begin_stream(run: "Run") -> None:
    """Seed the global generators for the first step of a fresh run: the method-only stage's own
    seed when the run has one, else the student's (:func:`begin_student_stage` switches later)."""
    seed = run.cfg.solver.seed
    first_is_method = run.step.method_only_iters > 0
    seed_everything(method_stage_seed(seed) if first_is_method else student_stream_seed(seed, run.ctx.rank))


def begin_student_stage(run: "Run", method_stage_seconds: float) -> None:
    """At the first student step after a method-only stage: reseed to the student's stream (what
    a run without that stage has at its first step) and keep the stage's training seconds."""
    seed_everything(student_stream_seed(run.cfg.solver.seed, run.ctx.rank))
    run.method_stage_seconds = method_stage_seconds


@dataclass
class Run:
    """A run ready for its first (or resumed) step."""

    cfg: Config
    out: Path
    ctx: DistContext
    train_set: CocoDetection
    test_set: CocoDetection
    evaluator: COCOEvaluator
    step: StepContext
    train_loader: DataLoader
    test_loader: DataLoader
    log: RunLog
    start_iter: int = 0
    train_seconds_before: float = 0.0
    eval_seconds_before: float = 0.0
    teacher_metrics: dict[str, float] = field(default_factory=dict)  # the teacher check's teacher/*
    method_loader: DataLoader | None = None  # the method-only stage's own batches (None: no stage left)
    method_stage_seconds: float = 0.0  # training seconds of the method-only stage (0: none)
    ema: StudentEMA | None = None  # solver.ema: the averaged student, what is evaluated and saved

    @property
    def distiller(self) -> Distiller:
        return self.step.distiller

    @property
    def total_iters(self) -> int:
        return self.step.method_only_iters + self.cfg.solver.max_iter

    @property
    def student_start_iter(self) -> int:
        """The student iteration the run starts (or resumes) at; 0 inside the method-only stage."""
        return max(self.start_iter - self.step.method_only_iters, 0)

    @property
    def last_checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.pt"


def setup_run(cfg: Config, out: Path, *, resume: bool, progress: bool) -> Run:
    """Data, models, optimisers, loaders and log of a run; with ``resume`` the state of
    ``out/checkpoints/last.pt`` (or, when that is truncated or corrupt, of the newest valid
    periodic snapshot). Under torchrun the trainable whole is wrapped in DDP."""
    last = out / "checkpoints" / "last.pt"
    point = (find_resume_checkpoint(last.parent, allow_unsafe_pickle=cfg.model.allow_unsafe_pickle)
             if resume else None)  # before any work: it may fail
    ctx = init_distributed(resolve_device(cfg.solver.device))
    device, solver = ctx.device, cfg.solver
    per_rank_batch = per_rank_batch_size(cfg, ctx)
    if ctx.is_main:
        ensure_writable_dir(last.parent)  # a read-only or full --out stops here, naming it
        save_config(cfg, out / "config.yaml")
    seed_everything(solver.seed)  # the same initial weights on every rank (DDP checks them)
    train_set, test_set = load_data(cfg, out, ctx, progress)
    evaluator = build_evaluator(cfg.eval, test_set, with_masks=family_facts(cfg.model.family).masks)
    distiller, teacher, prior = build_models(cfg, train_set, fresh_start=not resume, main=ctx.is_main)
    if ctx.is_main:
        prior.save(out / "prior.json")
    channels_last = device.type == "cuda" and solver.channels_last
    distiller.to(device, memory_format=torch.channels_last) if channels_last else distiller.to(device)
    if teacher is not None:
        teacher.to(device, memory_format=torch.channels_last) if channels_last else teacher.to(device)
    opts = build_optimisers(cfg, distiller, distiller.method_only_iters + solver.max_iter, device)
    step = StepContext(distiller, distiller, teacher, opts, ctx, amp=solver.amp, channels_last=channels_last,
                       student_clip_value=solver.grad_clip_value, clip_plain_runs=solver.grad_clip_runs == "all",
                       checkpoint_path=last)
    run = Run(cfg, out, ctx, train_set, test_set, evaluator, step, None, None, None)  # loaders below
    if solver.ema:
        run.ema = StudentEMA(distiller.student, decay=solver.ema_decay, tau=solver.ema_tau)
    begin_stream(run)  # a resume replaces it with the checkpoint's generators
    if point is not None:
        resume_from(run, point)
    teacher_known = bool(run.teacher_metrics)
    if teacher is not None:  # before any step; a resumed run reuses the checkpoint's numbers
        run.teacher_metrics = check_teacher(cfg.distill, cfg.eval, teacher, cfg.teacher.weights, test_set, device,
                                            known=run.teacher_metrics, verbose=ctx.is_main,
                                            allow_unsafe_pickle=cfg.teacher.allow_unsafe_pickle)
    if distiller.method is None:
        step.teacher = None  # an inheriting baseline needed the teacher only to start from
    step.model = wrap_for_distributed(distiller, run)
    build_loaders(run, per_rank_batch)
    run.log = RunLog(out, enabled=ctx.is_main, fresh=not resume, resume_at=run.start_iter if resume else None)
    if run.teacher_metrics and not teacher_known:
        run.log.log(run.start_iter, run.teacher_metrics)
    distiller.train()
    return run


def build_loaders(run: Run, per_rank_batch: int) -> None:
    """The student's training loader (seeded by ``solver.seed``, from the student iteration the
    run starts at), the method-only stage's own loader while that stage has iterations left, and
    the test loader."""
    cfg, ctx, seed = run.cfg, run.ctx, run.cfg.solver.seed
    shared = dict(batch_size=per_rank_batch, num_workers=cfg.data.num_workers, rank=ctx.rank,
                  world_size=ctx.world_size)
    run.train_loader = build_train_loader(run.train_set, seed=seed, start_iter=run.student_start_iter, **shared)
    if run.start_iter < run.step.method_only_iters:
        run.method_loader = build_train_loader(run.train_set, seed=method_stage_seed(seed),
                                               start_iter=run.start_iter, **shared)
    run.test_loader = build_test_loader(run.test_set, batch_size=cfg.eval.batch_size,
                                        num_workers=cfg.data.num_workers, rank=ctx.rank, world_size=ctx.world_size)


def resume_from(run: Run, point: ResumePoint) -> None:
    """Restore the trainable whole, optimisers, RNG and clocks from a training checkpoint; the
    main process removes the temp files of a checkpoint write that was killed."""
    state = point.state
    run.distiller.load_state_dict(state["trainable"])
    run.step.opts.load_state_dict(state)
    restore_rng_state(state["rng"])
    run.start_iter = state["iteration"]
    run.train_seconds_before = state.get("train_seconds", 0.0)
    run.eval_seconds_before = state.get("eval_seconds", 0.0)
    run.method_stage_seconds = state.get("method_stage_seconds", 0.0)
    if run.ema is not None:
        if not state.get("ema"):
            raise ConfigError(f"{point.path} was written without solver.ema; resume it with --set solver.ema=false "
                              "or start a fresh run")
        run.ema.load_state_dict(state["ema"])
    run.teacher_metrics = dict(state.get("teacher_check") or {})
    if run.ctx.is_main:
        if point.fallback_message():
            print(point.fallback_message())
        remove_stale_temp_files(point.path.parent)
        print(f"resumed from {point.path} at iteration {run.start_iter}")


def wrap_for_distributed(distiller: Distiller, run: Run) -> torch.nn.Module:
    """DDP around the trainable whole under torchrun (SyncBN on GPUs if asked), else itself."""
    ctx = run.ctx
    if not ctx.distributed:
        return distiller
    # Each rank draws its own random samples (e.g. fake instances); rank 0 keeps the
    # checkpointed stream.
    torch.manual_seed(student_stream_seed(run.cfg.solver.seed, ctx.rank) + run.start_iter)
    module = distiller
    if ctx.device.type == "cuda" and run.cfg.solver.sync_bn:
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(distiller)
    return DistributedDataParallel(module, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
