"""Shared pieces of the method tests (fbkd, gid, defeat): DistillInputs on constructed
features, one real Distiller step on tiny detectors, and the CLI run on conftest's session
teacher (``tiny_teacher``)."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import torch

from icdistill.cli import main
from icdistill.config import load_config
from icdistill.demo import demo_config_path
from icdistill.data.prior import DatasetPrior
from icdistill.detectors import build_detector, freeze_as_teacher
from icdistill.distill.build import build_method
from icdistill.distill.core.context import MethodContext
from icdistill.distill.core.distiller import Distiller
from icdistill.distill.core.inputs import DistillInputs

NUM_CLASSES = 3
SIZES = [(64, 96), (60, 70)]
TARGETS = [
    {"boxes": torch.tensor([[4.0, 4, 40, 30]]), "labels": torch.tensor([0])},
    {"boxes": torch.tensor([[10.0, 10, 30, 50], [40, 5, 60, 25]]), "labels": torch.tensor([1, 2])},
]
PRIOR = DatasetPrior(names=["a", "b", "c"], freq=[2.0, 1.0, 1.0], w_mean=[0.2] * 3, w_std=[0.05] * 3,
                     h_mean=[0.2] * 3, h_std=[0.05] * 3, num_images=10)


def targets_for(family: str) -> list[dict]:
    """TARGETS, with box-filling instance masks (uint8 [N, h, w]) for Mask R-CNN."""
    if family != "mask_rcnn":
        return TARGETS
    out = []
    for t, (h, w) in zip(TARGETS, SIZES):
        masks = torch.zeros(len(t["boxes"]), h, w, dtype=torch.uint8)
        for m, (x1, y1, x2, y2) in zip(masks, t["boxes"].long().tolist()):
            m[y1:y2, x1:x2] = 1
        out.append({**t, "masks": masks})
    return out


def inputs_for(teacher, student, sizes, strides, *, targets=(), iteration=10, names=None) -> DistillInputs:
    """DistillInputs holding features only (no detectors): per level float[B, C, H, W]."""
    names = names or [f"p{3 + i}" for i in range(len(teacher))]
    return DistillInputs(
        images=torch.zeros(teacher[0].shape[0], 3, 1, 1), image_sizes=list(sizes), targets=list(targets),
        iteration=iteration, levels=names, strides=strides, teacher=None,
        teacher_features=OrderedDict(zip(names, teacher)), student=None,
        student_features=None if student is None else OrderedDict(zip(names, student)),
    )


def tiny(family: str, width: int):
    return build_detector(family, backbone="resnet18", num_classes=NUM_CLASSES, fpn_channels=width,
                          anchor_sizes=(16, 32, 64, 128, 256))


def method_step(method: str, family: str, *sets: str, teacher_width: int = 64, student_width: int = 32):
    """One Distiller forward/backward of ``method`` on tiny ``family`` detectors (teacher FPN
    ``teacher_width``, student ``student_width``). Returns (losses, distiller, teacher)."""
    torch.manual_seed(0)
    teacher = freeze_as_teacher(tiny(family, teacher_width))
    student = tiny(family, student_width)
    dcfg = load_config(None, [f"distill.method={method}", *sets]).distill
    levels = tuple(dcfg.levels or student.level_names)
    ctx = MethodContext(teacher, student, PRIOR, levels, tuple(student.strides[student.level_names.index(n)] for n in levels))
    distiller = Distiller(student, build_method(dcfg, ctx), levels=levels, strides=ctx.strides).train()
    images = torch.randn(2, 3, 64, 96)
    losses = distiller(images, SIZES, targets_for(family), teacher=teacher, iteration=5000)
    sum(losses.values()).backward()
    return losses, distiller, teacher


def assert_gradients_reach_only_student_and_method(distiller, teacher, method_losses) -> None:
    """Every method loss is finite; the method's backward alone reaches the student's FPN and
    the method's own parameters, and never the teacher."""
    for name, value in method_losses.items():
        assert torch.isfinite(value), name
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    teacher_ids = {id(p) for p in teacher.parameters()}
    assert not teacher_ids & {id(p) for p in distiller.parameters()}  # no optimiser can reach it
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.method.parameters())
    fpn = [p for n, p in distiller.student.named_parameters() if "fpn" in n]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in fpn)


def cli_distill(tmp_path: Path, teacher: Path, tiny_overrides: list[str], empty_config: Path, method: str,
                *sets: str) -> tuple[dict, list[dict]]:
    """``icdistill distill --set distill.method=<method>`` with a RetinaNet teacher of the tiny
    model's size: (metrics.json, metrics.jsonl rows)."""
    run = tmp_path / method
    args = ["--no-progress", "distill", str(empty_config), "--out", str(run),
            *[f"--set={s}" for s in tiny_overrides], f"--set=distill.method={method}",
            "--set=distill.warmup_iters=0", "--set=teacher.family=retinanet", "--set=teacher.backbone=resnet18",
            "--set=teacher.fpn_channels=32", "--set=teacher.anchor_sizes=[16, 32, 64, 128, 256]",
            f"--set=teacher.weights={teacher}", "--set=solver.max_iter=2", "--set=eval.viz_images=0",
            *[f"--set={s}" for s in sets]]
    assert main(args) == 0
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return json.loads((run / "metrics.json").read_text()), log


def assert_recipes_follow_the_paper_protocols(method: str, family: str) -> None:
    """The shipped VOC (Table 7: 07+12, 18k) and COCO (1x) recipes of ``method`` distil R-101 ->
    R-50 of ``family`` without a detached warm-up, and its BCCD recipe selects it."""
    root = demo_config_path("student").parents[1]
    voc = load_config(root / "voc" / f"{family}_R50_{method}.yaml")
    coco = load_config(root / "coco" / f"{family}_R50_1x_{method}.yaml")
    for cfg in (voc, coco):
        assert cfg.distill.method == method and cfg.distill.warmup_iters == 0
        assert (cfg.teacher.backbone, cfg.model.backbone, cfg.teacher.family) == ("resnet101", "resnet50", family)
    assert voc.solver.max_iter == 18000 and voc.data.train_years == ("2007", "2012")
    assert coco.solver.max_iter == 90000
    assert load_config(root / "voc" / f"bccd_{method}.yaml").distill.method == method
