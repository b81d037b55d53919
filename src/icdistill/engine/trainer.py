"""One loop for plain and distilled training.

The loop sees only the distiller's dict of named losses: it sums them, steps two optimisers
(student SGD, ICD AdamW), logs, checkpoints atomically and evaluates. Iterations are global:
``[0, D)`` is the optional decoder warm-up stage (ICD module only, aux losses, student not run),
``[D, D + max_iter)`` the main stage.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from icdistill.config import Config, save_config
from icdistill.data import build_test_loader, build_train_loader
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
from icdistill.engine.evaluate import (
    evaluate_detector,
    save_attention_examples,
    save_detection_examples,
    write_metrics_json,
)
from icdistill.viz import save_training_curves
from icdistill.engine.optim import (
    build_icd_optimizer,
    build_icd_scheduler,
    build_student_optimizer,
    build_student_scheduler,
    clip_gradients,
)
from icdistill.errors import ConfigError, TrainingDivergedError


@dataclass
class RunResult:
    out_dir: Path
    metrics: dict[str, float]
    train_seconds: float
    iterations: int
    extra: dict[str, Any] = field(default_factory=dict)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False, progress: bool = True) -> RunResult:
    """Train (``distill.method: none``) or distil a student; evaluate it; write the run directory.

    Writes ``config.yaml``, ``prior.json``, ``metrics.jsonl``, ``tb/``, ``checkpoints/last.pt``,
    ``metrics.json``, ``student.pt`` and ``viz/`` (training curves, detections and, for ICD,
    attention overlays).
    """
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    last_path = ckpt_dir / "last.pt"
    if resume and not last_path.is_file():
        raise ConfigError(f"--resume: no checkpoint at {last_path}")
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(exist_ok=True)
    save_config(cfg, out / "config.yaml")
    solver, dcfg = cfg.solver, cfg.distill
    device = resolve_device(solver.device)
    _seed_everything(solver.seed)

    train_set, test_set = build_datasets(cfg, progress=progress)
    report = data_report(train_set, test_set)
    (out / "data_report.json").write_text(json.dumps(report, indent=2))
    print(f"data: {len(train_set)} training images ({train_set.report_summary()}), "
          f"{len(test_set)} test images ({test_set.report_summary()}); see {out / 'data_report.json'}")
    evaluator = build_evaluator(cfg, test_set)
    models = build_run_models(cfg, train_set, fresh_start=not resume)
    models.prior.save(out / "prior.json")
    if models.inherit_report is not None:
        print(f"inheriting: {models.inherit_report.summary()}")
    distiller = models.distiller.to(device)
    teacher = models.teacher.to(device) if models.teacher is not None else None
    icd = distiller.icd

    decoder_iters = dcfg.decoder_warmup_iters if icd is not None else 0
    total_iters = decoder_iters + solver.max_iter
    student_opt = build_student_optimizer(
        distiller.student, base_lr=student_lr(cfg), momentum=solver.momentum, weight_decay=solver.weight_decay
    )
    student_sched = build_student_scheduler(
        student_opt, max_iter=solver.max_iter, warmup_iters=solver.warmup_iters,
        warmup_factor=solver.warmup_factor, steps=solver.steps, gamma=solver.gamma,
    )
    icd_opt = icd_sched = None
    if icd is not None:
        icd_opt = build_icd_optimizer(icd, lr=dcfg.lr, weight_decay=dcfg.weight_decay)
        icd_sched = build_icd_scheduler(icd_opt, max_iter=total_iters)

    start_iter, elapsed_before = 0, 0.0
    if resume:
        state = load_checkpoint(last_path)
        distiller.load_state_dict(state["trainable"])
        student_opt.load_state_dict(state["student_optimizer"])
        student_sched.load_state_dict(state["student_scheduler"])
        if icd_opt is not None:
            icd_opt.load_state_dict(state["icd_optimizer"])
            icd_sched.load_state_dict(state["icd_scheduler"])
        restore_rng_state(state["rng"])
        start_iter, elapsed_before = state["iteration"], state.get("train_seconds", 0.0)
        print(f"resumed from {last_path} at iteration {start_iter}")
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()

    def checkpoint_state(next_iter: int, seconds: float) -> dict[str, Any]:
        return {
            "format": TRAIN_CHECKPOINT_FORMAT,
            "iteration": next_iter,
            "train_seconds": seconds,
            "trainable": distiller.state_dict(),
            "student_optimizer": student_opt.state_dict(),
            "student_scheduler": student_sched.state_dict(),
            "icd_optimizer": icd_opt.state_dict() if icd_opt is not None else None,
            "icd_scheduler": icd_sched.state_dict() if icd_sched is not None else None,
            "rng": capture_rng_state(),
            "config": cfg.to_dict(),
            "model_config": cfg.to_dict()["model"],
            "class_names": train_set.class_names,
        }

    loader = build_train_loader(
        train_set, batch_size=solver.ims_per_batch, seed=solver.seed, start_iter=start_iter,
        num_workers=cfg.data.num_workers,
    )
    test_loader = build_test_loader(test_set, batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers)
    writer = SummaryWriter(str(out / "tb"))
    metrics_log = out / "metrics.jsonl"
    distiller.train()
    started = time.perf_counter()
    bar = tqdm(total=total_iters, initial=start_iter, disable=not progress, desc=out.name, dynamic_ncols=True)
    batches = iter(loader)
    for it in range(start_iter, total_iters):
        batch = next(batches).to(device)
        decoder_stage = it < decoder_iters
        main_iter = it - decoder_iters
        teacher_feats = teacher.features(batch.images) if teacher is not None else None
        losses = distiller(
            batch.images, batch.image_sizes, batch.targets, teacher_feats,
            iteration=max(main_iter, 0), decoder_only=decoder_stage,
        )
        total = sum(losses.values())
        if not torch.isfinite(total):
            bad = [k for k, v in losses.items() if not torch.isfinite(v)]
            raise TrainingDivergedError(
                f"non-finite loss at iteration {it}: {', '.join(bad) or 'total'} "
                f"({', '.join(f'{k}={float(v):.4g}' for k, v in losses.items())}); "
                f"the last good checkpoint is {last_path}. Lower solver.base_lr or check the data."
            )
        student_opt.zero_grad(set_to_none=True)
        if icd_opt is not None:
            icd_opt.zero_grad(set_to_none=True)
        total.backward()
        if not decoder_stage:
            if icd is not None and dcfg.student_grad_clip_value is not None:
                clip_gradients(distiller.student.parameters(), value=dcfg.student_grad_clip_value)
            student_opt.step()
            student_sched.step()
        if icd is not None:
            clip_gradients(icd.parameters(), max_norm=dcfg.grad_clip_norm)
            icd_opt.step()
            icd_sched.step()

        done = it + 1
        bar.update(1)
        if done % solver.log_period == 0 or done == total_iters:
            record = {"iter": done, "loss/total": total.item(), **{k: v.item() for k, v in losses.items()}}
            record["lr/student"] = student_opt.param_groups[0]["lr"]
            if icd_opt is not None:
                record["lr/icd"] = icd_opt.param_groups[0]["lr"]
            _append_jsonl(metrics_log, record)
            for key, value in record.items():
                if key != "iter":
                    writer.add_scalar(key, value, done)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3f}" for k, v in record.items() if k.startswith(("loss/", "distill/", "aux/"))})
        is_last = done == total_iters
        if is_last or done % solver.checkpoint_period == 0:
            state = checkpoint_state(done, elapsed_before + time.perf_counter() - started)
            save_checkpoint(last_path, state)
            if not is_last:  # periodic snapshots stay; last.pt is what --resume reads
                save_checkpoint(ckpt_dir / f"model_{done:07d}.pt", state)
        if cfg.eval.period and not decoder_stage and done % cfg.eval.period == 0 and not is_last:
            periodic = evaluate_detector(distiller.student, test_loader, evaluator, device, progress=False)
            _append_jsonl(metrics_log, {"iter": done, **periodic})
            for key, value in periodic.items():
                if not math.isnan(value):
                    writer.add_scalar(f"eval/{key}", value, done)
            distiller.train()
    bar.close()
    train_seconds = elapsed_before + time.perf_counter() - started

    metrics = evaluate_detector(distiller.student, test_loader, evaluator, device, progress=progress)
    metrics["time/train_s"] = round(train_seconds, 2)
    metrics["time/iter_s"] = round(train_seconds / max(total_iters, 1), 4)
    write_metrics_json(out / "metrics.json", metrics, train_set.class_names)
    for key, value in metrics.items():
        if not math.isnan(value):
            writer.add_scalar(f"final/{key}", value, total_iters)
    writer.close()
    save_student(distiller, cfg, train_set.class_names, out / "student.pt")
    save_training_curves(out / "viz" / "training_curves.png", metrics_log)
    if cfg.eval.viz_images > 0:
        save_detection_examples(distiller.student, test_set, out / "viz", cfg.eval.viz_images, device)
        if icd is not None and teacher is not None:
            save_attention_examples(distiller, teacher, test_set, out / "viz", cfg.eval.viz_images, device)
    return RunResult(out, metrics, train_seconds, total_iters)


def save_student(distiller: torch.nn.Module, cfg: Config, class_names: list[str], path: Path) -> None:
    """``student.pt``: the student detector only, loadable with torchvision alone."""
    save_checkpoint(path, student_checkpoint(distiller.student.model.state_dict(), cfg.to_dict()["model"], class_names))
