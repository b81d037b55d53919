"""Every registered method on every detector family, decided by capability.

A method runs on a family exactly when the family's kind is one the method is defined for and
the adapters provide the extras it needs there (``icdistill.distill.core.registry``). Each cell
the registry supports trains two iterations on the tiny shapes data with the trainer's own step;
each cell it refuses must fail with an error naming what is missing. The matrix is parametrised
over the registry and the family table, so a new method or family is covered without editing
this file; docs/method.md shows the same matrix (compared below).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from icdistill.config import load_config
from icdistill.data.build import build_datasets
from icdistill.data.prior import compute_prior
from icdistill.detectors import build_detector, freeze_as_teacher
from icdistill.detectors.families import FAMILIES, family_facts
from icdistill.distill.build import build_distiller
from icdistill.distill.core.registry import (
    family_kind, method_names, method_spec, missing_capability, support_matrix_markdown,
)
from icdistill.engine.distributed import DistContext
from icdistill.engine.step import StepContext, build_optimisers, train_step
from icdistill.errors import ConfigError
from icdistill.structures import collate_batch

DOCS = Path(__file__).resolve().parents[1] / "docs" / "method.md"
# The cheapest settings each method accepts; everything else is the method's default.
CHEAP = ["distill.warmup_iters=0", "distill.icd.decoder_warmup_iters=0", "distill.icd.hidden_dim=32",
         "distill.icd.num_heads=4", "distill.gid.min_box_size=2"]


def tiny(family: str, num_classes: int, width: int = 32):
    torch.manual_seed(0)
    # 32 sampled RoIs per image instead of 512: the RoI heads dominate a CPU step otherwise.
    rois = {"box_batch_size_per_image": 32} if family_facts(family).two_stage else {}
    return build_detector(family, backbone="resnet18", num_classes=num_classes, fpn_channels=width,
                          anchor_sizes=(16, 32, 64, 128, 256), **rois)


@pytest.fixture(scope="module")
def shapes(tiny_overrides):
    """Two training images of the tiny shapes data (with masks) as one batch, and the prior."""
    cfg = load_config(None, tiny_overrides)
    train, _ = build_datasets(cfg.data, with_masks=True, progress=False)
    return collate_batch([train[0], train[1]]), compute_prior(train), train.num_classes


@pytest.fixture(scope="module")
def teachers(shapes):
    """One frozen tiny teacher per family, built once."""
    num_classes = shapes[2]
    return {family: freeze_as_teacher(tiny(family, num_classes)) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", method_names())
def test_every_supported_cell_trains_and_every_refused_cell_names_what_is_missing(
        method, family, shapes, teachers, tiny_overrides):
    batch, prior, num_classes = shapes
    teacher, student = teachers[family], tiny(family, num_classes)
    cfg = load_config(None, [*tiny_overrides, f"model.family={family}", f"distill.method={method}", *CHEAP])
    reason = missing_capability(method_spec(method), family, student.supported_extras)
    if reason is not None:
        with pytest.raises(ConfigError) as err:
            build_distiller(cfg.distill, student, teacher, prior=prior)
        missing = method_spec(method).needs.get(family_kind(family), frozenset()) - student.supported_extras
        assert all(name in str(err.value) for name in missing) and family in str(err.value)
        return
    distiller, _ = build_distiller(cfg.distill, student, teacher, prior=prior)
    opts = build_optimisers(cfg, distiller, total_iters=2, device=torch.device("cpu"))
    step = StepContext(distiller, distiller, teacher, opts, DistContext(),
                       student_clip_value=cfg.solver.grad_clip_value, clip_plain_runs=True)
    before = [p.detach().clone() for p in distiller.student.parameters() if p.requires_grad]
    for iteration in range(2):
        total, losses = train_step(step, batch, iteration)
        assert math.isfinite(float(total.detach()))
    assert any(k.startswith(f"distill/{method}/") for k in losses), sorted(losses)
    after = [p.detach() for p in distiller.student.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # the student trained


def test_a_family_lacking_an_extra_is_refused_naming_it(shapes, teachers):
    """An adapter that provides no extras (as a new family might) cannot run a method that needs
    some: the error names each missing extra; a method needing none still builds."""
    _, prior, num_classes = shapes
    for family in ("retinanet", "faster_rcnn"):
        teacher, student = teachers[family], tiny(family, num_classes)
        student.supported_extras = frozenset()  # shadows the class attribute on this instance
        for method in method_names():
            cfg = load_config(None, [f"distill.method={method}", *CHEAP])
            needs = method_spec(method).needs.get(family_kind(family), frozenset())
            if not needs:
                assert build_distiller(cfg.distill, student, teacher, prior=prior)[0].method.name == method
                continue
            with pytest.raises(ConfigError, match=f"needs the extras {', '.join(sorted(needs))}"):
                build_distiller(cfg.distill, student, teacher, prior=prior)


def test_the_matrix_in_docs_is_the_registrys(teachers):
    provided = {family: teacher.supported_extras for family, teacher in teachers.items()}
    page = DOCS.read_text()
    table = page.split("<!-- method matrix: begin -->\n")[1].split("\n<!-- method matrix: end -->")[0]
    assert table == support_matrix_markdown(provided)
