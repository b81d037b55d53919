"""The GPU check (issue #25): the toolkit's GPU paths at COCO size, in one prepared run of < 8 minutes.

    python benchmarks/gpu_check.py --out gpu_check            # one H100/H200-class GPU
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check  # CPU smoke run at tiny size

What it measures, most important first, each cell the trainer's own ``train_step`` on what the
toolkit's builders make of the default (paper) config, R-101 teacher -> R-50 student (FPN 256),
random weights, synthetic 800x1333 images with COCO-like instances (``coco_like_targets``):

1. the student's step alone, + the teacher's forward, and ICD, for RetinaNet and Faster R-CNN at
   2 images per step, in fp32, bf16 autocast, fp16 autocast with the gradient scaler, and bf16 with
   channels_last (``solver.amp``, ``solver.channels_last``): seconds per step and peak memory
   (``torch.cuda.max_memory_allocated``, reset per cell); ICD's overhead ratio
   (ICD step / student + teacher step);
2. a bf16 training run (200 steps) through the trainer's setup (``engine.setup.setup_run``) on a
   small synthetic shapes set at COCO size that it can overfit: each loss finite, and falling;
3. the same reference steps and ICD at 8 images per step;
4. every other method of the slot (``slot_methods``: FitNet and each comparison method, new
   methods included without editing this file) at 2, then 8 images, bf16 first.

A time budget (``--budget-s``) bounds the run: a cell starts only when its estimated cost (from
the cells measured so far) fits what is left, and a cell stops before a step that would pass the
deadline; every cell not measured is recorded with its reason (budget, out of memory, not
supported by the family, error, or a CPU skip: fp16 and channels_last are GPU paths). Writes
``gpu_check.json`` and ``gpu_check.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import math
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable, Sequence

# The budget counts from here, before torch's import: on a fresh GPU machine the imports and CUDA's
# start are part of the run. (Hence the late imports below.)
PROCESS_START = time.monotonic()
# ruff: noqa: E402

import numpy as np
import torch

from icdistill.config import Config, load_config
from icdistill.detectors import build_model, family_facts, freeze_as_teacher
from icdistill.distill.build import NO_METHOD, build_distiller
from icdistill.engine.distributed import DistContext
from icdistill.engine.setup import setup_run
from icdistill.engine.step import StepContext, autocast, build_optimisers, train_step
from icdistill.errors import ConfigError
from icdistill.files import detector_file, save_checkpoint
from icdistill.structures import Batch, collate_batch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed.py beside this file
from speed import UniformPrior, peak_allocated_mb  # noqa: E402

STUDENT, WITH_TEACHER = "student", "student+teacher"
# Precision modes: name -> (solver.amp, solver.channels_last).
MODES = {"fp32": (None, False), "bf16": ("bf16", False), "fp16": ("fp16", False), "bf16_channels_last": ("bf16", True)}
CPU_SKIPS = {"fp16": "fp16 autocast with the gradient scaler needs a GPU (solver.amp: fp16 is GPU-only)",
             "bf16_channels_last": "solver.channels_last applies on GPUs only"}
StepResult = tuple[torch.Tensor, dict[str, torch.Tensor]]
MAIN_STAGE = 10**6  # an iteration past every warm-up: the methods' full step
TRAINING_RUN = "training_run"


def slot_methods() -> tuple[str, ...]:
    """Every distillation method of the slot, in its registry order (``none`` excluded)."""
    from icdistill.distill.core.registry import method_names

    return tuple(name for name in method_names() if name != NO_METHOD)


@dataclass(frozen=True)
class Settings:
    """What one check measures. The defaults are the GPU check; :data:`TINY` the CPU smoke run."""

    size: tuple[int, int] = (800, 1333)
    batches: tuple[int, ...] = (2, 8)
    families: tuple[str, ...] = ("retinanet", "faster_rcnn")
    student_backbone: str = "resnet50"
    teacher_backbone: str = "resnet101"
    fpn_channels: int = 256
    num_classes: int = 80
    methods: tuple[str, ...] = ()  # empty: every method of the slot
    warmup: int = 2
    iters: int = 5
    budget_s: float = 450.0
    reserve_s: float = 10.0  # kept back from the budget for writing the results
    train_steps: int = 200
    train_images: int = 8
    train_image_size: tuple[int, int] = (480, 640)  # shapes images, resized to `size` by the data config
    overrides: tuple[str, ...] = ()  # config overrides for every cell and the training run
    sampled_rois: int | None = None  # two-stage families' sampled RoIs per image (None: torchvision's 512)

    def slot(self) -> tuple[str, ...]:
        return self.methods or slot_methods()


TINY = Settings(size=(64, 96), batches=(2, 4), student_backbone="resnet18", teacher_backbone="resnet18",
                fpn_channels=32, num_classes=3, warmup=0, iters=1, budget_s=300.0, reserve_s=2.0,
                train_steps=30, train_images=2, train_image_size=(64, 96),
                overrides=("distill.icd.hidden_dim=32",), sampled_rois=32)


@dataclass(frozen=True)
class Cell:
    """One measurement: ``step`` is ``student``, ``student+teacher`` or a method name."""

    family: str
    batch: int
    precision: str
    step: str

    @property
    def key(self) -> str:
        return f"{self.family}/{self.batch}/{self.precision}/{self.step}"


def plan(settings: Settings) -> list[Cell | str]:
    """Cells (and the training run) in the order they are measured: most important first."""
    methods = settings.slot()
    core = (STUDENT, WITH_TEACHER) + (("icd",) if "icd" in methods else ())
    others = sorted((m for m in methods if m != "icd"), key=lambda m: m != "fitnet")  # FitNet first
    small, *large = sorted(settings.batches)
    items: list[Cell | str] = [Cell(f, small, p, s) for p in MODES for f in settings.families for s in core]
    items.append(TRAINING_RUN)
    items += [Cell(f, b, p, s) for b in large for p in ("bf16", "fp32", "fp16") for f in settings.families
              for s in core]
    for batch in (small, *large):
        items += [Cell(f, batch, p, m) for p in ("bf16", "fp32", "fp16") for f in settings.families for m in others]
    return items


# ---- synthetic COCO-size data ---------------------------------------------------------------------

# COCO train2017: 7.3 instances per image on average, a long tail (clipped here at 50); by COCO's
# area ranges 41 % small (< 32^2 px), 34 % medium (< 96^2), 25 % large; drawn here at 800 px.
MEAN_INSTANCES, MAX_INSTANCES = 7.0, 50
AREA_MIX = (0.41, 0.34, 0.25)


def coco_like_targets(num_images: int, size: tuple[int, int], num_classes: int, seed: int = 0) -> list[dict]:
    """Random targets with COCO's instance counts (geometric, mean 7, 1..50) and box-size mix;
    sizes scale with the image's short side relative to 800. Boxes: float Tensor[N, 4], xyxy
    pixels inside ``size`` (h, w); labels: int64 Tensor[N] in [0, num_classes)."""
    rng = np.random.default_rng(seed)
    h, w = size
    scale = min(h, w) / 800
    edges = [max(8 * scale, 2.0), max(32 * scale, 3.0), max(96 * scale, 4.0), 0.9 * min(h, w)]
    targets = []
    for i in range(num_images):
        n = int(min(rng.geometric(1 / MEAN_INSTANCES), MAX_INSTANCES))
        kind = rng.choice(3, size=n, p=AREA_MIX)
        side = rng.uniform(np.take(edges, kind), np.take(edges, kind + 1))  # sqrt of the area
        ratio = np.exp(rng.uniform(math.log(1 / 3), math.log(3), size=n))  # w / h
        bw, bh = np.minimum(side * np.sqrt(ratio), w - 1), np.minimum(side / np.sqrt(ratio), h - 1)
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        boxes = np.stack([x0, y0, x0 + bw, y0 + bh], axis=1)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.tensor(rng.integers(0, num_classes, size=n), dtype=torch.int64),
                        "image_id": i})
    return targets


def coco_like_batch(num_images: int, size: tuple[int, int], num_classes: int, seed: int = 0) -> Batch:
    """Random images of ``size`` (speed does not depend on pixels) with :func:`coco_like_targets`."""
    g = torch.Generator().manual_seed(seed)
    targets = coco_like_targets(num_images, size, num_classes, seed)
    return collate_batch([(torch.rand(3, *size, generator=g), t) for t in targets])


# ---- one cell: the trainer's step on the builders' models ----------------------------------------


@dataclass
class FamilyModels:
    """One family's frozen teacher and the student's initial weights, on the CPU between cells:
    a cell moves the teacher and the batch to the device and trains its own copy of the student,
    so cells do not depend on each other and each peak memory is the cell's own."""

    cfg: Config
    teacher: torch.nn.Module
    student_template: torch.nn.Module


def family_models(family: str, settings: Settings) -> FamilyModels:
    """The default config of ``family`` (+ ``settings.overrides``), its random teacher and student
    from the toolkit's model builder."""
    cfg = load_config(None, model_overrides(family, settings))
    torch.manual_seed(0)
    teacher = freeze_as_teacher(build_model(cfg.teacher, settings.num_classes, "teacher"))
    return FamilyModels(cfg, teacher, build_model(cfg.model, settings.num_classes, "model"))


def model_overrides(family: str, settings: Settings) -> list[str]:
    """The ``model`` and ``teacher`` sections of ``settings`` as config overrides."""
    sets = []
    for role, backbone in (("model", settings.student_backbone), ("teacher", settings.teacher_backbone)):
        sets += [f"{role}.family={family}", f"{role}.backbone={backbone}",
                 f"{role}.fpn_channels={settings.fpn_channels}"]
        if settings.sampled_rois is not None and family_facts(family).two_stage:
            sets.append(f"{role}.box_batch_size_per_image={settings.sampled_rois}")
    return sets + list(settings.overrides)


def place(module: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """``module`` on ``device`` in the memory format the trainer's setup gives it."""
    return module.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def cell_step(cell: Cell, models: FamilyModels, batch: Batch, device: torch.device) -> Callable[[], StepResult]:
    """The cell's training step as a closure returning ``train_step``'s (total, named losses):
    ``solver.amp`` and ``solver.channels_last`` of its precision mode, a fresh copy of the
    student, the method's default weight and options."""
    amp, channels_last = MODES[cell.precision]
    cfg = models.cfg
    cfg = dataclasses.replace(cfg, solver=dataclasses.replace(cfg.solver, amp=amp, channels_last=channels_last))
    method = NO_METHOD if cell.step in (STUDENT, WITH_TEACHER) else cell.step
    dcfg = dataclasses.replace(cfg.distill, method=method, warmup_iters=0,
                               icd=dataclasses.replace(cfg.distill.icd, decoder_warmup_iters=0))
    teacher = place(models.teacher, device, channels_last)
    batch = batch.to(device)
    student = copy.deepcopy(models.student_template)
    distiller = build_distiller(dcfg, student, teacher, prior=UniformPrior(student.num_classes))[0]
    distiller = place(distiller, device, channels_last).train()
    opts = build_optimisers(cfg, distiller, total_iters=10**9, device=device)
    step = StepContext(distiller, distiller, teacher, opts, DistContext(device=device), amp=amp,
                       channels_last=channels_last, student_clip_value=cfg.solver.grad_clip_value,
                       clip_plain_runs=cfg.solver.grad_clip_runs == "all")
    if cell.step != WITH_TEACHER:
        return lambda: train_step(step, batch, MAIN_STAGE)
    images = batch.images.contiguous(memory_format=torch.channels_last) if channels_last else batch.images

    def with_teacher_forward() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with autocast(amp, device):  # the teacher's forward as the distiller runs it
            teacher.features(images)
        return train_step(step, batch, MAIN_STAGE)
    return with_teacher_forward


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_cell(step: Callable[[], object], settings: Settings, device: torch.device, deadline: float) -> dict:
    """Warm-up steps, then up to ``settings.iters`` timed steps, none started when it would end
    past ``deadline`` (by the steps seen so far); the peak memory of the cell (CUDA: since its
    start; CPU: one more step under the profiler)."""
    seen: list[float] = []
    timed: list[float] = []
    for i in range(settings.warmup + settings.iters):
        if seen and time.monotonic() + max(seen) > deadline:
            break
        start = time.perf_counter()
        step()
        synchronize(device)
        seen.append(time.perf_counter() - start)
        if i >= settings.warmup:
            timed.append(seen[-1])
    if not timed:
        return {"status": "skipped", "reason": f"the time budget ran out during the cell's warm-up "
                                               f"({len(seen)} of {settings.warmup} steps)"}
    out = {"status": "measured", "s_per_iter": statistics.median(timed), "s_per_iter_min": min(timed),
           "iters": len(timed)}
    if device.type == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    elif time.monotonic() + 2 * max(seen) <= deadline:  # the profiler slows the step
        out["peak_mem_mb"] = peak_allocated_mb(step)
    return out


def cpu_skip(cell: Cell, device: torch.device) -> dict | None:
    """The skip record of a GPU-only precision mode on the CPU, else None."""
    if device.type == "cpu" and cell.precision in CPU_SKIPS:
        return {"status": "skipped", "reason": CPU_SKIPS[cell.precision]}
    return None


def run_cell(cell: Cell, models: FamilyModels, batch: Batch, settings: Settings, device: torch.device,
             deadline: float) -> dict:
    """One cell measured, or why not: a CPU skip, ``not_supported`` (the method's ConfigError for
    this family), ``out_of_memory`` or ``error`` (the exception; the traceback goes to stderr)."""
    start = time.monotonic()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        result = time_cell(cell_step(cell, models, batch, device), settings, device, deadline)
    except ConfigError as e:
        result = {"status": "not_supported", "reason": str(e).split(";")[0]}
    except torch.cuda.OutOfMemoryError as e:
        result = {"status": "out_of_memory", "reason": str(e).splitlines()[0]}
    except Exception as e:  # noqa: BLE001 -- a check reports every failure and goes on
        traceback.print_exc()
        result = {"status": "error", "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    # Out of the handlers, the exception's frames (and the cell's tensors they hold) are gone.
    place(models.teacher, torch.device("cpu"), False)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["cell_s"] = time.monotonic() - start
    return result


# ---- the budget ---------------------------------------------------------------------------------


def estimate_s(cell: Cell, done: Sequence[tuple[Cell, dict]]) -> float | None:
    """What ``cell`` will likely cost (build, warm-up, timed steps): the dearest measured cell of
    the same family and precision (else family, else any) per image, times its images; None
    before anything is measured."""
    measured = [(c, r) for c, r in done if r["status"] == "measured"]
    for keep in (lambda c: c.family == cell.family and c.precision == cell.precision,
                 lambda c: c.family == cell.family, lambda c: True):
        similar = [r["cell_s"] / c.batch for c, r in measured if keep(c)]
        if similar:
            return max(similar) * cell.batch
    return None


def budget_skip(estimate: float | None, deadline: float) -> dict | None:
    """The skip record of a cell that would not fit before ``deadline``, else None."""
    left = deadline - time.monotonic()
    if left <= 0 or (estimate is not None and estimate > left):
        needs = f"~{estimate:.0f} s needed, " if estimate is not None else ""
        return {"status": "skipped", "reason": f"time budget: {needs}{max(left, 0):.0f} s left"}
    return None


# ---- the training run ---------------------------------------------------------------------------


def training_config(settings: Settings, device: torch.device, root: Path, teacher_file: Path | None) -> Config:
    """ICD on the first family in bf16 through the trainer's config: a small shapes set resized to
    ``settings.size``, ``settings.train_steps`` steps at the smallest batch, no warm-up stages
    beyond a tenth of the run, the random teacher's file (no teacher check: it is random)."""
    h, w = settings.size
    family, warmup = settings.families[0], max(settings.train_steps // 10, 1)
    sets = ["data.format=shapes", f"data.shapes.root={root / 'shapes'}",
            f"data.shapes.num_train={settings.train_images}", "data.shapes.num_test=2",
            f"data.shapes.image_height={settings.train_image_size[0]}",
            f"data.shapes.image_width={settings.train_image_size[1]}", f"data.min_sizes=[{min(h, w)}]",
            f"data.max_size={max(h, w)}", f"data.test_size={min(h, w)}", "distill.method=icd",
            "distill.check_teacher=false",
            f"distill.warmup_iters={warmup}", "solver.amp=bf16", f"solver.device={device.type}",
            f"solver.ims_per_batch={min(settings.batches)}", f"solver.max_iter={settings.train_steps}",
            "solver.base_lr=0.01", f"solver.warmup_iters={warmup}", f"solver.checkpoint_period={10**9}",
            "eval.report=false", *model_overrides(family, settings)]
    return load_config(None, sets + ([f"teacher.weights={teacher_file}"] if teacher_file else []))


def random_teacher_file(cfg: Config, path: Path) -> Path:
    """A detector file of a random teacher for ``cfg``'s data (generated here if needed)."""
    from icdistill.data import build_datasets

    train_set, _ = build_datasets(cfg.data, with_masks=False, progress=False)
    torch.manual_seed(1)
    teacher = build_model(cfg.teacher, train_set.num_classes, "teacher")
    model_config = {k: getattr(cfg.teacher, k) for k in ("family", "backbone", "fpn_channels", "head_norm")}
    return save_checkpoint(path, detector_file(teacher.model.state_dict(), model_config, train_set.class_names))


def loss_summary(history: dict[str, list[float]]) -> dict[str, dict]:
    """Per loss: mean of the first and of the last tenth of the steps, all finite, fell."""
    out = {}
    for name, values in history.items():
        window = max(len(values) // 10, 1)
        first, last = statistics.fmean(values[:window]), statistics.fmean(values[-window:])
        out[name] = {"first": first, "last": last, "finite": all(math.isfinite(v) for v in values),
                     "fell": last < first}
    return out


def training_run(settings: Settings, device: torch.device, deadline: float, estimate: float | None) -> dict:
    """The bf16 ICD run through ``setup_run`` and ``train_step``: per-step losses, stopped before
    a step that would pass ``deadline``; skipped when not even a tenth of it fits."""
    skip = budget_skip(estimate / 10 if estimate is not None else None, deadline)
    if skip:
        return skip
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = training_config(settings, device, root, None)
        cfg = training_config(settings, device, root, random_teacher_file(cfg, root / "teacher.pt"))
        run = setup_run(cfg, root / "run", resume=False, progress=False)
        history: dict[str, list[float]] = {"total": []}
        batches, seen = iter(run.train_loader), []
        for it in range(run.total_iters):
            if seen and time.monotonic() + max(seen) > deadline:
                break
            t0 = time.perf_counter()
            total, losses = train_step(run.step, next(batches).to(device), it)
            synchronize(device)
            seen.append(time.perf_counter() - t0)
            history["total"].append(float(total.detach()))
            for name, value in losses.items():
                history.setdefault(name, []).append(float(value.detach()))
        del run
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    summary = loss_summary(history)
    return {"status": "measured", "family": settings.families[0], "precision": "bf16", "method": "icd",
            "steps_requested": settings.train_steps, "steps_run": len(seen), "cell_s": time.monotonic() - start,
            "s_per_iter": statistics.median(seen), "all_finite": all(s["finite"] for s in summary.values()),
            "total_fell": summary["total"]["fell"], "losses": summary, "total_curve": history["total"]}


def training_estimate(settings: Settings, done: Sequence[tuple[Cell, dict]]) -> float | None:
    """The training run's likely cost: its steps at the cost of the bf16 ICD cell it resembles."""
    for c, r in done:
        if (c.family, c.precision, c.step, c.batch) == (settings.families[0], "bf16", "icd", min(settings.batches)) \
                and r["status"] == "measured":
            return settings.train_steps * r["s_per_iter"]
    return None


# ---- the whole check ----------------------------------------------------------------------------


def run_check(settings: Settings, device: torch.device, started: float | None = None) -> dict:
    """Every item of :func:`plan` measured or skipped within ``settings.budget_s`` (from
    ``started``, a ``time.monotonic()`` reading; now if None); the result as a JSON-able dict."""
    started = time.monotonic() if started is None else started
    deadline = started + settings.budget_s - settings.reserve_s
    models: dict[str, FamilyModels] = {}
    batches: dict[int, Batch] = {}
    done: list[tuple[Cell, dict]] = []
    training: dict = {}
    for item in plan(settings):
        if item == TRAINING_RUN:
            training = training_run(settings, device, deadline, training_estimate(settings, done))
            print(f"training run: {training.get('steps_run', 0)} steps, {training.get('reason', '')}", flush=True)
            continue
        result = (cpu_skip(item, device) or budget_skip(estimate_s(item, done), deadline))
        if result is None:
            if item.family not in models:
                models[item.family] = family_models(item.family, settings)
            if item.batch not in batches:
                batches[item.batch] = coco_like_batch(item.batch, settings.size, settings.num_classes)
            result = run_cell(item, models[item.family], batches[item.batch], settings, device, deadline)
        done.append((item, result))
        print(f"{item.key}: {result.get('s_per_iter', result.get('reason'))}", flush=True)
    return assemble(settings, device, done, training, time.monotonic() - started)


def overhead_ratios(done: Sequence[tuple[Cell, dict]]) -> dict[str, float]:
    """ICD step / student + teacher step, per ``family/batch/precision`` where both were measured."""
    seconds = {c.key: r["s_per_iter"] for c, r in done if r["status"] == "measured"}
    out = {}
    for c, _ in done:
        if c.step == "icd" and c.key in seconds:
            reference = dataclasses.replace(c, step=WITH_TEACHER).key
            if reference in seconds:
                out[f"{c.family}/{c.batch}/{c.precision}"] = seconds[c.key] / seconds[reference]
    return out


def assemble(settings: Settings, device: torch.device, done: Sequence[tuple[Cell, dict]], training: dict,
             elapsed: float) -> dict:
    """The JSON result: settings and machine, every cell, ICD's overhead, the training run."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "date": date.today().isoformat(),
        "device": gpu or f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "settings": {**dataclasses.asdict(settings), "methods": list(settings.slot())},
        "elapsed_s": elapsed,
        "cells": [{**dataclasses.asdict(c), **r} for c, r in done],
        "icd_overhead_ratio": overhead_ratios(done),
        "training_run": training,
        "not_measured": [f"{c.key}: {r['status']}: {r['reason']}" for c, r in done if r["status"] != "measured"],
    }


# ---- output -------------------------------------------------------------------------------------


def cell_text(row: dict | None) -> str:
    if row is None:
        return ""
    if row["status"] != "measured":
        return row["status"].replace("_", " ")
    mem = f" · {row['peak_mem_mb']:.0f} MB" if "peak_mem_mb" in row else ""
    return f"{row['s_per_iter']:.3f} s{mem}"


def markdown(result: dict) -> str:
    """The result as markdown: one table per family and batch (steps x precision modes: seconds
    per step · peak MB), ICD's overhead ratios, the training run, what was not measured."""
    s = result["settings"]
    lines = [f"# GPU check: {result['device']}, torch {result['torch']}, {result['date']}", "",
             f"{s['teacher_backbone']} -> {s['student_backbone']} (FPN {s['fpn_channels']}), random weights, "
             f"synthetic {s['size'][0]}x{s['size'][1]} images with COCO-like instances; median of up to "
             f"{s['iters']} steps after {s['warmup']} warm-up steps; {result['elapsed_s']:.0f} s of a "
             f"{s['budget_s']:.0f} s budget.", ""]
    cells = {(c["family"], c["batch"], c["precision"], c["step"]): c for c in result["cells"]}
    for family in s["families"]:
        for batch in sorted(s["batches"]):
            steps = list(dict.fromkeys(c["step"] for c in result["cells"]
                                       if (c["family"], c["batch"]) == (family, batch)))
            if not steps:
                continue
            lines += [f"## {family}, {batch} images per step", "", "| step | " + " | ".join(MODES) + " |",
                      "|---|" + "---:|" * len(MODES)]
            lines += [f"| {step} | " + " | ".join(cell_text(cells.get((family, batch, p, step))) for p in MODES) + " |"
                      for step in steps]
            lines.append("")
    lines += ["## ICD overhead (ICD step / student + teacher step)", ""]
    lines += [f"- {key}: **{ratio:.3f}**" for key, ratio in result["icd_overhead_ratio"].items()] or ["- not measured"]
    t = result["training_run"]
    lines += ["", "## Training run (bf16, ICD)", ""]
    if t.get("status") == "measured":
        lines.append(f"{t['family']}, {t['steps_run']} of {t['steps_requested']} steps, {t['s_per_iter']:.3f} s/step; "
                     f"all losses finite: **{t['all_finite']}**; total loss fell: **{t['total_fell']}**.")
        lines += ["", "| loss | first tenth | last tenth |", "|---|---:|---:|"]
        lines += [f"| {k} | {v['first']:.4g} | {v['last']:.4g} |" for k, v in t["losses"].items()]
    else:
        lines.append(f"not run: {t.get('reason', 'no result')}")
    lines += ["", "## Not measured", ""] + ([f"- {x}" for x in result["not_measured"]] or ["- none"])
    return "\n".join(lines) + "\n"


def write_outputs(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    (out / "gpu_check.md").write_text(markdown(result))


def parse_settings(argv: Sequence[str] | None = None) -> tuple[Settings, str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for gpu_check.json / .md")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and models: a CPU smoke run")
    parser.add_argument("--budget-s", type=float, help="seconds for the whole run (default 450; tiny 300)")
    parser.add_argument("--methods", nargs="+", help="methods to measure (default: every method of the slot)")
    parser.add_argument("--families", nargs="+", help="detector families (default: retinanet faster_rcnn)")
    parser.add_argument("--batches", type=int, nargs="+", help="images per step (default: 2 8)")
    parser.add_argument("--iters", type=int, help="timed steps per cell (default 5)")
    parser.add_argument("--train-steps", type=int, help="steps of the bf16 training run (default 200)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every cell, e.g. distill.icd.hidden_dim=128")
    args = parser.parse_args(argv)
    settings = TINY if args.tiny else Settings()
    unknown = sorted(set(args.methods or ()) - set(slot_methods()))
    if unknown:
        parser.error(f"--methods: unknown method(s) {', '.join(unknown)}; the slot has {', '.join(slot_methods())}")
    changes = {"budget_s": args.budget_s, "methods": tuple(args.methods or ()) or None,
               "families": tuple(args.families or ()) or None, "batches": tuple(args.batches or ()) or None,
               "iters": args.iters, "train_steps": args.train_steps}
    settings = dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})
    if args.overrides:
        settings = dataclasses.replace(settings, overrides=settings.overrides + tuple(args.overrides))
    return settings, args.device, args.out


def main(argv: Sequence[str] | None = None) -> dict:
    settings, device_name, out = parse_settings(argv)
    if device_name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available; use --device cpu (with --tiny)")
    device = torch.device("cuda" if device_name == "auto" and torch.cuda.is_available() else
                          "cpu" if device_name == "auto" else device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its kernels once
    result = run_check(settings, device, PROCESS_START)
    write_outputs(result, out)
    print(markdown(result))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return result


if __name__ == "__main__":
    main()
